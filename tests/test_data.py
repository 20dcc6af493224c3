"""Tests for aimc_ssm.core.data: embedded datasets, file loaders on tiny generated files, errors."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from aimc_ssm.core.data import (
    CIFAR_FILES,
    DATASETS,
    MNIST_FILES,
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    SequenceData,
    load_dataset,
    make_loaders,
)

# ----------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------


def splits(data: SequenceData):
    return {"train": data.train, "val": data.val, "test": data.test}


def row_keys(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


def write_idx(path: Path, array: np.ndarray, magic: int, gz: bool = False) -> Path:
    """Write a uint8 IDX file (big-endian header: magic, then one uint32 per dim)."""
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_mnist_dir(directory: Path, gz: bool, n_train: int = 60, n_test: int = 20):
    """Tiny fake MNIST: n/10 images per class, random 28x28 pixels."""
    rng = np.random.default_rng(1)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        write_idx(directory / f"{prefix}-images-idx3-ubyte", images, 2051, gz)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte", labels, 2049, gz)
        arrays[prefix] = (images, labels)
    return arrays


def make_cifar_dir(directory: Path, n_per_batch: int = 20):
    """Tiny fake CIFAR-10 python batches (protocol-2 pickles with bytes keys)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    batches = {}
    for name in CIFAR_FILES:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [i % 10 for i in range(n_per_batch)]
        with open(directory / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f, protocol=2)
        batches[name] = (data, labels)
    return batches


@pytest.fixture(scope="module")
def smnist() -> SequenceData:
    return load_dataset("smnist")


@pytest.fixture(scope="module")
def digits() -> SequenceData:
    return load_dataset("digits")


# ----------------------------------------------------------------------------
# embedded datasets
# ----------------------------------------------------------------------------


def test_known_names():
    assert DATASETS == ("smnist", "digits", "mnist", "scifar")


def test_smnist_shapes_dtypes(smnist):
    assert (smnist.name, smnist.seq_len, smnist.d_input, smnist.d_output) == ("smnist", 784, 1, 10)
    assert smnist.permutation is None
    sizes = {k: len(ds) for k, ds in splits(smnist).items()}
    assert sizes == {"train": 4000, "val": 500, "test": 500}
    for ds in splits(smnist).values():
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(ds), 784, 1) and y.shape == (len(ds),)


def test_smnist_normalisation(smnist):
    x = torch.cat([ds.tensors[0] for ds in splits(smnist).values()])
    raw = (x * MNIST_STD + MNIST_MEAN) * 255  # back to 0..255 pixels
    assert torch.allclose(raw, raw.round(), atol=1e-3)
    assert raw.min().round() == 0 and raw.max().round() == 255
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1) < 0.1


def test_smnist_balanced_and_disjoint(smnist):
    expected = {"train": 400, "val": 50, "test": 50}
    for key, ds in splits(smnist).items():
        assert torch.bincount(ds.tensors[1], minlength=10).tolist() == [expected[key]] * 10
    keys = [row_keys(ds.tensors[0]) for ds in splits(smnist).values()]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_smnist_split_is_deterministic(smnist):
    again = load_dataset("smnist", seed=0)
    for a, b in zip(splits(smnist).values(), splits(again).values()):
        assert all(torch.equal(ta, tb) for ta, tb in zip(a.tensors, b.tensors))


def test_digits_shapes_normalisation_balance(digits):
    assert (digits.seq_len, digits.d_input, digits.d_output) == (64, 1, 10)
    sizes = [len(ds) for ds in splits(digits).values()]
    assert sum(sizes) == 1797 and sizes[0] > 1200 and 250 < sizes[1] < 290 and 250 < sizes[2] < 290
    x_train = digits.train.tensors[0]
    assert x_train.shape == (sizes[0], 64, 1) and x_train.dtype == torch.float32
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-3
    all_counts = np.bincount(np.concatenate([ds.tensors[1].numpy() for ds in splits(digits).values()]))
    for ds in splits(digits).values():
        counts = torch.bincount(ds.tensors[1], minlength=10).numpy()
        np.testing.assert_allclose(counts, all_counts * len(ds) / 1797, atol=1.5)  # stratified


def test_digits_seed_controls_split(digits):
    same = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    assert torch.equal(same.train.tensors[0], digits.train.tensors[0])
    assert not torch.equal(other.train.tensors[1], digits.train.tensors[1])


def test_permuted_is_one_fixed_permutation(digits):
    pd = load_dataset("digits", permuted=True)
    perm = pd.permutation
    assert pd.name == "pdigits" and pd.seq_len == 64
    assert sorted(perm.tolist()) == list(range(64)) and not torch.equal(perm, torch.arange(64))
    for plain, permuted in zip(splits(digits).values(), splits(pd).values()):
        x, y = plain.tensors
        xp, yp = permuted.tensors
        assert torch.equal(yp, y)
        assert torch.equal(xp, x[:, perm, :])  # same permutation for every split and sample
        assert torch.equal(xp.sort(dim=1).values, x.sort(dim=1).values)  # same multiset per sample
    assert torch.equal(load_dataset("digits", permuted=True).permutation, perm)


def test_make_loaders(digits):
    loaders = make_loaders(digits, batch_size=100, seed=3)
    again = make_loaders(digits, batch_size=100, seed=3)
    first = [y for _, y in loaders[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, (y for _, y in again[0])))
    assert not torch.equal(torch.cat(first), digits.train.tensors[1])  # train is shuffled
    assert sum(len(y) for y in first) == len(digits.train)
    for loader, ds in zip(loaders[1:], (digits.val, digits.test)):
        x, y = next(iter(loader))
        assert x.shape == (100, 64, 1)
        assert torch.equal(y, ds.tensors[1][:100])  # val/test not shuffled


def test_bad_val_fraction():
    with pytest.raises(ValueError, match="val_fraction"):
        load_dataset("digits", val_fraction=1.5)


# ----------------------------------------------------------------------------
# mnist (IDX files)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_loader(tmp_path, gz):
    arrays = make_mnist_dir(tmp_path, gz)
    data = load_dataset("mnist", root=str(tmp_path), val_fraction=0.2)
    assert (data.name, data.seq_len, data.d_input, data.d_output) == ("mnist", 784, 1, 10)
    assert [len(ds) for ds in splits(data).values()] == [48, 12, 20]
    assert torch.bincount(data.val.tensors[1], minlength=10).min() >= 1  # stratified
    x_test, y_test = data.test.tensors
    images, labels = arrays["t10k"]
    assert x_test.dtype == torch.float32 and x_test.shape == (20, 784, 1)
    expected = (images.reshape(20, 784, 1) / 255.0 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(x_test.numpy(), expected, atol=1e-5)
    assert y_test.tolist() == labels.tolist()
    train_rows = row_keys(data.train.tensors[0]) | row_keys(data.val.tensors[0])
    assert len(train_rows) == 60  # every train image used exactly once


def test_mnist_default_holdout_and_permuted(tmp_path):
    make_mnist_dir(tmp_path, gz=False, n_train=120)
    data = load_dataset("mnist", root=tmp_path)
    assert [len(ds) for ds in splits(data).values()] == [110, 10, 20]  # 1/12 held out
    again = load_dataset("mnist", root=tmp_path)
    assert torch.equal(data.val.tensors[0], again.val.tensors[0])
    pm = load_dataset("mnist", root=tmp_path, permuted=True)
    assert pm.name == "pmnist"
    assert torch.equal(pm.test.tensors[0], data.test.tensors[0][:, pm.permutation, :])


# ----------------------------------------------------------------------------
# scifar (pickled CIFAR-10 batches)
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True])
def test_scifar_loader(tmp_path, nested):
    batches = make_cifar_dir(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    data = load_dataset("scifar", root=tmp_path, val_fraction=0.2)
    assert (data.name, data.seq_len, data.d_input, data.d_output) == ("scifar", 1024, 1, 10)
    assert [len(ds) for ds in splits(data).values()] == [80, 20, 20]
    x_train = data.train.tensors[0]
    assert x_train.dtype == torch.float32 and x_train.shape == (80, 1024, 1)
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1) < 1e-3
    # the test split keeps file order: check the gray formula up to the affine normalisation
    raw, labels = batches["test_batch"]
    rgb = raw.reshape(20, 3, 1024).astype(np.float64)
    gray = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) / 255.0
    x_test = data.test.tensors[0][..., 0].numpy().astype(np.float64)
    scale, offset = np.polyfit(gray.ravel(), x_test.ravel(), 1)
    np.testing.assert_allclose(x_test, scale * gray + offset, atol=1e-4)
    assert scale > 0
    assert data.test.tensors[1].tolist() == labels


# ----------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------


def test_unknown_dataset_name():
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    message = str(info.value)
    assert "imagenet" in message and all(name in message for name in DATASETS)


@pytest.mark.parametrize("name, needle", [("mnist", "train-images-idx3-ubyte"), ("scifar", "data_batch_1")])
def test_root_none(name, needle):
    with pytest.raises(DataError) as info:
        load_dataset(name)
    message = str(info.value)
    assert "--data-dir" in message and needle in message and "http" in message


@pytest.mark.parametrize("name", ["mnist", "scifar"])
def test_missing_directory(tmp_path, name):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as info:
        load_dataset(name, root=missing)
    assert str(missing) in str(info.value)


def test_mnist_missing_file(tmp_path):
    make_mnist_dir(tmp_path, gz=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as info:
        load_dataset("mnist", root=tmp_path)
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte" in message and str(tmp_path) in message
    assert all(name in message for name in MNIST_FILES)


def test_scifar_missing_file(tmp_path):
    make_cifar_dir(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError) as info:
        load_dataset("scifar", root=tmp_path)
    message = str(info.value)
    assert "data_batch_3" in message and str(tmp_path) in message and "test_batch" in message


def test_mnist_bad_magic(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    labels = np.zeros(60, dtype=np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", labels, 2049)  # a labels file in the images slot
    with pytest.raises(DataError, match="magic number 2049, expected 2051") as info:
        load_dataset("mnist", root=tmp_path)
    assert "train-images-idx3-ubyte" in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated(tmp_path, gz):
    make_mnist_dir(tmp_path, gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    payload = path.read_bytes()[:-100]  # chop off the end of the last image
    if gz:
        path.unlink()
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    with pytest.raises(DataError, match="truncated") as info:
        load_dataset("mnist", root=tmp_path)
    assert path.name in str(info.value)


def test_mnist_corrupt_gzip_stream(tmp_path):
    make_mnist_dir(tmp_path, gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:15])  # cut inside the compressed stream
    with pytest.raises(DataError, match="corrupt"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_header_only(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="truncated"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_wrong_image_shape(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((20, 32, 32), np.uint8), 2051)
    with pytest.raises(DataError, match="28x28"):
        load_dataset("mnist", root=tmp_path)


def test_mnist_count_mismatch(tmp_path):
    make_mnist_dir(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(19, np.uint8), 2049)
    with pytest.raises(DataError, match="20 images but"):
        load_dataset("mnist", root=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"this is not a pickle", "cannot unpickle"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2), "b'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, protocol=2), r"\(N, 3072\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, protocol=2), "0..9"),
        (pickle.dumps(_Evil()), "refusing"),
    ],
    ids=["garbage", "no-labels", "bad-shape", "bad-labels", "code-execution"],
)
def test_scifar_malformed_pickle(tmp_path, content, needle):
    make_cifar_dir(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError, match=needle) as info:
        load_dataset("scifar", root=tmp_path)
    message = str(info.value)
    assert "data_batch_2" in message and "cifar" in message.lower()
