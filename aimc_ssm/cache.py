"""Train once, reuse everywhere: the cache of trained models (float, QAT, hardware-aware).

Every trained model of the suite lives in `cache_dir/<kind>-<config hash>/` (aimc_ssm.core.train's
run directory: best.pt, last.pt, metrics.json), keyed by everything that decides its weights, so that
studies with equal configs share it and an interrupted training resumes. `train_once` is the one
mechanism; the three kinds differ only in the model they start from and the key:

    float_model(model_cfg, train_cfg)                    float-<hash>: trained from a seeded init
    qat_model(model_cfg, train_cfg, spec, finetune_from) qat-<hash>: QAT from scratch ([S25]) or
                                                         fine-tuned from the float model ([Z25])
    hwa_model(base, ..., sigma, target)                  hwa-<hash>: fine-tuned with relative weight
                                                         noise on A or Ā drawn every forward
    kernel_hwa_model(base, ..., kernel_config, hwa)      kernel-hwa-<hash>: fine-tuned through a
                                                         differentiable simulation of its deployment

Runs that share a cache at the same time train each model once: `train_once` holds a lock on the entry
(`<kind>-<hash>.lock` beside it) while it trains, and a second run waits for it and reuses the model.
An entry is used only whole and only by the run it belongs to: its `config.json` names the configs
(their hash), the package version and the checkpoint format (aimc_ssm.io.run_identity), and every
checkpoint is read against its checksum. An entry that is truncated, from another version or of other
configs is cleared with a CacheWarning and trained again; a kill leaves an entry that resumes.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
from filelock import FileLock

from .analog.hwa import KernelHWA, deployable, through_kernels, with_weight_noise
from .core.data import SequenceData
from .core.model import ModelConfig, S4DModel
from .core.train import TrainConfig, first_training_batches, fit, training_data
from .io import (
    RUN_CONFIG,
    CheckpointError,
    checksum_path,
    config_key,
    load_checkpoint,
    remove_temporaries,
    run_config_mismatch,
    run_identity,
    verified_bytes,
    write_run_config,
)
from .quant.precision import PrecisionSpec
from .quant.quantize import CALIBRATION_BATCHES, prepare_qat, quantize_, without_state_quantizer

DEFAULT_CACHE = Path("results/models")
RUN_FILES = ("best.pt", "last.pt", "metrics.json")  # what aimc_ssm.core.train.fit writes into a run directory


class CacheWarning(UserWarning):
    """A cache entry that could not be used (truncated, from another version, of other configs) is trained again."""


def run_dir_of(kind: str, *key_parts, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Where a model of `kind` with these configs is trained and cached: cache_dir/<kind>-<config hash>."""
    return Path(cache_dir) / f"{kind}-{config_key(*key_parts)}"


def train_once(
    run_dir: Path,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    initial: Callable[[SequenceData], S4DModel],
    architecture: Callable[[], S4DModel],
    meta: dict,
    progress: bool = True,
) -> tuple[S4DModel, dict]:
    """The model of `run_dir`: trained once with `fit`, then read back from its best checkpoint.

    initial(data) builds the model that training starts from; architecture() builds one of the same
    structure (quantizers, transforms) that the cached weights load into. Another process training the
    same run_dir is waited for; files in run_dir that are not this run's, or not whole, are cleared
    with a CacheWarning and the model is trained again (module docstring).
    """
    run_dir = Path(run_dir)
    identity = run_identity(model_cfg, train_cfg, meta)
    # a model that does not fit its data fails before anything is written
    data = None if (run_dir / "metrics.json").exists() else training_data(model_cfg, train_cfg)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(lock_path(run_dir)):
        finished = finished_run(run_dir, identity, architecture)
        if finished is not None:
            return finished
        if data is None:  # a finished entry that could not be used
            data = training_data(model_cfg, train_cfg)
        run_dir.mkdir(exist_ok=True)
        remove_run_temporaries(run_dir)  # of killed writers; under the lock this process is the only writer
        write_run_config(run_dir, identity, {"model": model_cfg.to_dict(), "train": asdict(train_cfg), "meta": meta})
        model = initial(data)
        metrics = fit(model, data, train_cfg, run_dir, meta, progress)
    return model.cpu().eval(), metrics


def lock_path(run_dir: Path) -> Path:
    """The lock of a run directory, beside it: the run directory holds only the run's own files."""
    return run_dir.with_name(run_dir.name + ".lock")


def finished_run(run_dir: Path, identity: dict, architecture: Callable[[], S4DModel]) -> tuple[S4DModel, dict] | None:
    """The model and metrics of run_dir's finished run; None where training starts or resumes. An entry
    that cannot be used is cleared with a CacheWarning, so that it is trained afresh."""
    problem = entry_problem(run_dir, identity)
    if problem is None and (run_dir / "metrics.json").exists():
        try:
            model = architecture()
            model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
            return model.eval(), json.loads((run_dir / "metrics.json").read_text())
        except (CheckpointError, FileNotFoundError, RuntimeError, KeyError, ValueError) as err:  # RuntimeError: other weights
            problem = f"its model cannot be loaded ({type(err).__name__}: {err})"
    if problem is not None:
        warnings.warn(f"cached run {run_dir} is not used: {problem}; training it again", CacheWarning, stacklevel=2)
        clear_run(run_dir)
    return None


def entry_problem(run_dir: Path, identity: dict) -> str | None:
    """Why run_dir's files cannot be used for the run of `identity` (None: they can, or there are none)."""
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    mismatch = run_config_mismatch(run_dir, identity)
    if mismatch is not None:
        return mismatch
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).exists():
            try:
                verified_bytes(run_dir / name)
            except CheckpointError as err:
                return str(err)
    return None


def run_file_paths(run_dir: Path) -> list[Path]:
    """The files a run writes into its directory: fit's, their checksums, the run's config.json."""
    return [path for name in RUN_FILES for path in (run_dir / name, checksum_path(run_dir / name))] + [run_dir / RUN_CONFIG]


def clear_run(run_dir: Path) -> None:
    """Delete a run's own files, never anything else of the folder."""
    for path in run_file_paths(run_dir):
        path.unlink(missing_ok=True)


def remove_run_temporaries(run_dir: Path) -> None:
    for path in run_file_paths(run_dir):
        remove_temporaries(path)


def seeded_model(model_cfg: ModelConfig, seed: int) -> S4DModel:
    torch.manual_seed(seed)
    return S4DModel(model_cfg)


def float_run_dir(model_cfg: ModelConfig, train_cfg: TrainConfig, cache_dir: Path = DEFAULT_CACHE) -> Path:
    return run_dir_of("float", model_cfg, train_cfg, cache_dir=cache_dir)


def float_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    cache_dir: Path = DEFAULT_CACHE,
    progress: bool = True,
    run_dir: Path | None = None,
) -> tuple[S4DModel, dict]:
    """The float model for these configs: trained once from a seeded init, then read from the cache
    (run_dir: a folder of the caller's instead of the cache's)."""
    return train_once(
        run_dir or float_run_dir(model_cfg, train_cfg, cache_dir), model_cfg, train_cfg,
        initial=lambda data: seeded_model(model_cfg, train_cfg.seed),
        architecture=lambda: S4DModel(model_cfg),
        meta=float_meta(model_cfg),
        progress=progress,
    )


def float_meta(model_cfg: ModelConfig) -> dict:
    return {"model": model_cfg.to_dict()}


def float_identity(model_cfg: ModelConfig, train_cfg: TrainConfig) -> dict:
    """The identity (aimc_ssm.io.run_identity) of the float run of these configs: what its run directory's config.json holds."""
    return run_identity(model_cfg, train_cfg, float_meta(model_cfg))


def qat_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    spec: PrecisionSpec,
    *,
    finetune_from: TrainConfig | None = None,
    calibration_batches: int = CALIBRATION_BATCHES,
    cache_dir: Path = DEFAULT_CACHE,
    progress: bool = True,
) -> tuple[S4DModel, dict]:
    """Quantization-aware training, run once per (configs, spec) under cache_dir/qat-<hash>/, then reloaded.

    finetune_from=None trains from scratch with the quantizers on ([S25]); a TrainConfig starts from
    the float model trained with it (`float_model`) and fine-tunes with train_cfg ([Z25]: e.g.
    TrainConfig(epochs=10, lr=1e-3)). train_cfg.mode picks conv (fast; the state only through
    spec.conv_state_proxy) or recurrent (the deployed recurrence, slower). Static ranges are
    calibrated on the first `calibration_batches` training batches before training.
    Raises aimc_ssm.core.train.DivergenceError if the loss becomes NaN or infinite.
    """
    source = asdict(finetune_from) if finetune_from is not None else {}

    def initial(data):
        if finetune_from is None:
            model = seeded_model(model_cfg, train_cfg.seed)
        else:
            model, _ = float_model(model_cfg, finetune_from, cache_dir, progress)
        return prepare_qat(model, spec, first_training_batches(data, train_cfg, calibration_batches))

    return train_once(
        run_dir_of("qat", model_cfg, train_cfg, spec.to_dict(), source, cache_dir=cache_dir), model_cfg, train_cfg,
        initial=initial,
        architecture=lambda: quantize_(S4DModel(model_cfg), spec),
        meta={"model": model_cfg.to_dict(), "precision": spec.to_dict(), "finetune_from": source or None},
        progress=progress,
    )


def hwa_model(
    base: S4DModel,
    model_cfg: ModelConfig,
    base_training: tuple,
    train_cfg: TrainConfig,
    source: dict,
    sigma: float,
    target: str,
    cache_dir: Path = DEFAULT_CACHE,
    progress: bool = True,
) -> S4DModel:
    """`base` fine-tuned with train_cfg while its SSMs draw relative Gaussian noise (sigma, on A or Ā:
    aimc_ssm.analog.hwa.WeightNoise) every forward; a model that keeps drawing it.

    base_training: the configs that made `base`, and `source` what names it (its kind and recipe): with
    sigma and target they key the cache. The state quantizer plays no part in conv-mode training, and
    without it the recurrent test at the end of training runs fast: it is left out.
    """
    key = {**source, "sigma": sigma, "target": target}
    return fine_tuned_once(
        "hwa", model_cfg, base_training, train_cfg, key, lambda: with_weight_noise(without_state_quantizer(base), sigma, target),
        cache_dir, progress,
    )


def kernel_hwa_model(
    base: S4DModel,
    model_cfg: ModelConfig,
    base_training: tuple,
    train_cfg: TrainConfig,
    source: dict,
    kernel_config,
    device_key: dict,
    peaks: dict,
    hwa: KernelHWA = KernelHWA(),
    linear_noise: float = 0.0,
    cache_dir: Path = DEFAULT_CACHE,
    progress: bool = True,
) -> S4DModel:
    """`base` (float or QAT) fine-tuned with train_cfg through a differentiable simulation of its deployment
    (aimc_ssm.analog.hwa.through_kernels: the kernels on `kernel_config`, mapped as hwa.mapping with the
    calibration `peaks`; Linear weight noise `linear_noise`), returned as a plain deployable model.

    base_training and `source` name the base model; `device_key` the device settings behind kernel_config.
    Together with hwa and linear_noise they key the cache (the peaks follow from the base model)."""
    key = {**source, "hwa": asdict(hwa), "linear_noise": linear_noise, "device": device_key}
    wrapped = lambda: through_kernels(base, kernel_config, peaks, hwa, linear_noise)  # noqa: E731
    return deployable(fine_tuned_once("kernel-hwa", model_cfg, base_training, train_cfg, key, wrapped, cache_dir, progress))


def fine_tuned_once(
    kind: str, model_cfg: ModelConfig, base_training: tuple, train_cfg: TrainConfig, key: dict, make: Callable[[], S4DModel],
    cache_dir: Path, progress: bool,
) -> S4DModel:
    """make() (a trained model with something to train through attached) fine-tuned once with train_cfg from
    a seeded start, under cache_dir/<kind>-<hash of the model, base_training, train_cfg and key>."""

    def initial(data):
        torch.manual_seed(train_cfg.seed)
        return make()

    model, _ = train_once(
        run_dir_of(kind, model_cfg, *base_training, train_cfg, key, cache_dir=cache_dir), model_cfg, train_cfg,
        initial=initial, architecture=make, meta={"model": model_cfg.to_dict(), kind.replace("-", "_"): key}, progress=progress,
    )
    return model
