"""Seeded, resumable training with atomic best-val checkpoints (the train-once caches: aimc_ssm.cache).

A run directory holds
    last.pt       model + optimizer + scheduler state after the latest epoch (resume point)
    best.pt       the best-validation model, with its full config, metrics and package versions
    metrics.json  written when the run has finished: per-epoch history and test accuracy in both modes
All files are written atomically (temporary file, then rename), so a kill never leaves half a file.
"""
from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..io import atomic_write, from_dict_strict, load_checkpoint, package_versions, save_checkpoint
from ..validation import check_train_config
from .data import SequenceData, load_dataset, make_loaders
from .model import ChannelNorm, HardGELU, ModelConfig, S4DBlock, S4DModel, parameter_groups
from .s4d import S4D


@dataclass
class TrainConfig:
    """How a model is trained. The defaults train the [Z25] model on the embedded sMNIST digits."""

    dataset: str = "smnist"  # see aimc_ssm.core.data.DATASETS
    data_dir: str | None = None  # directory with the files of "mnist" / "scifar"
    permuted: bool = False
    seed: int = 0
    epochs: int = 40
    batch_size: int = 100
    lr: float = 2e-2  # AdamW lr of everything but the SSM's log_dt and A
    weight_decay: float = 0.01
    ssm_lr: float = 1e-3  # lr of log_dt and A, which get no weight decay
    compute: str = "auto"  # torch device: "auto", "cpu" or "cuda" (not part of a model's identity)
    mode: str = "conv"  # training forward: "conv" (fast) or "recurrent" (exact deployment, slow)
    val_mode: str | None = None  # mode that picks the best epoch; None: the training mode

    def __post_init__(self):
        if self.mode not in ("conv", "recurrent"):
            raise ValueError(f"mode must be 'conv' or 'recurrent', got {self.mode!r}")
        if self.val_mode not in (None, "conv", "recurrent"):
            raise ValueError(f"val_mode must be 'conv', 'recurrent' or None (the training mode), got {self.val_mode!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs}, {self.batch_size}")
        if self.compute not in ("auto", "cpu", "cuda"):
            raise ValueError(f"compute must be 'auto', 'cpu' or 'cuda', got {self.compute!r}")
        check_train_config(self)  # positive sizes and rates, finite numbers: the one gate of every setting

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_dict_strict(cls, d, "train config")


class DivergenceError(RuntimeError):
    """Training produced a NaN or infinite loss."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("compute 'cuda' was asked for but torch sees no GPU; use --compute cpu or auto")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: nn.Module, loader, mode: str = "conv", device: torch.device | str = "cpu") -> float:
    """Accuracy of `model` on `loader` in convolution or recurrent mode."""
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x, mode).argmax(-1) == y).sum().item()
        total += len(y)
    return correct / total


def cosine_lambda(total_steps: int) -> Callable[[int], float]:
    return lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))


# modules whose training forward and backward are the same kernels every step, decided on the device alone:
# what a CUDA graph can replay. A module of another package declares it with a class attribute
# `graph_safe = True` (the hardware-aware kernel and weight noise of aimc_ssm.analog.hwa, whose noise is
# drawn on the device: a replay draws afresh). Quantizers (ranges observed on the host), pruning masks and
# analog tiles declare nothing, and keep a model eager.
GRAPHABLE_MODULES = (
    S4DModel, S4DBlock, S4D, ChannelNorm, HardGELU, nn.ModuleList, nn.ModuleDict, nn.Linear, nn.Identity,
    nn.GELU, nn.GLU, nn.ReLU, nn.Dropout, nn.LayerNorm, nn.BatchNorm1d, parametrize.ParametrizationList,
)


def graph_safe(module: nn.Module) -> bool:
    """Whether a module (a parametrized one by its own type) is one a CUDA graph can replay, hooks aside."""
    hooks = module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    if hooks:
        return False  # a hook runs host code that a replay would skip
    return parametrize.type_before_parametrizations(module) in GRAPHABLE_MODULES or getattr(module, "graph_safe", False)


def graphable(model: nn.Module, device: torch.device) -> bool:
    """Whether `TrainingForward` replays the model's training step from CUDA graphs: on a GPU, for a model
    whose every module, transforms and parametrizations included, is `graph_safe`, in either mode (a graph
    holds the recurrence's loop over time unrolled)."""
    return device.type == "cuda" and all(graph_safe(module) for module in model.modules())


class _ModeForward(nn.Module):
    """model(x, mode) as a one-argument module, the form torch.cuda.make_graphed_callables captures."""

    def __init__(self, model: nn.Module, mode: str):
        super().__init__()
        self.model, self.mode = model, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.mode)


class TrainingForward:
    """`model(x, mode)` in training, as `fit` runs it: forward and backward of a `graphable` model on a GPU
    replay CUDA graphs, one per batch shape, captured at its first batch (torch.cuda.make_graphed_callables,
    after warm-up iterations on a side stream); any other model, and any model on a CPU, runs eagerly.

    Why: at the sizes S4D models are trained at, a GPU step is a few hundred small kernels (the SSM kernel's
    complex arithmetic, the FFT convolution, their backward), in recurrent mode a few dozen per time step,
    whose launches, not their arithmetic, set its time. A replayed graph launches them at once. The arithmetic is the eager step's, kernel for kernel;
    `graphs=False` is the eager twin (tests/test_train.py holds the two equal).

    A model that draws noise (aimc_ssm.analog.hwa) draws other numbers than its eager twin would, from the
    same distributions: the capture's warm-up iterations advance the generator. Each batch shape holds
    its own graph and activations, so a ragged last batch costs a second set of them (in recurrent mode,
    the whole unrolled sequence's).

    The gradients a replayed backward leaves in `.grad` may be the graph's own buffers, which its next
    replay overwrites: each step's gradients must be used (the optimizer step) before the next forward,
    as in `fit`, which also sets them to None in between; accumulating them over several batches is not
    supported.
    """

    def __init__(self, model: nn.Module, mode: str, graphs: bool = True):
        self.model, self.mode = model, mode
        device = next(model.parameters()).device
        self.graphs = graphs and graphable(model, device)
        self.captured: dict[tuple, nn.Module] = {}  # (shape, dtype) of the input -> its graphed forward

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.graphs and self.model.training and torch.is_grad_enabled()):
            return self.model(x, self.mode)
        key = (tuple(x.shape), x.dtype)
        if key not in self.captured:
            # the capture's warm-up forwards run in training mode: a norm's running statistics would count
            # them as batches, so the buffers are put back to what the eager step would see
            buffers = [b.clone() for b in self.model.buffers()]
            try:
                self.captured[key] = torch.cuda.make_graphed_callables(_ModeForward(self.model, self.mode), (x.clone(),))
            finally:
                with torch.no_grad():
                    for b, saved in zip(self.model.buffers(), buffers):
                        b.copy_(saved)
        return self.captured[key](x)


def fit(
    model: nn.Module,
    data: SequenceData,
    cfg: TrainConfig,
    run_dir: Path,
    meta: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train `model` (in cfg.mode); resume from run_dir/last.pt if present.

    Returns the metrics dict (also written to run_dir/metrics.json). `meta` (configs of the model
    and of anything applied to it, such as a precision spec) goes into every checkpoint.
    """
    run_dir = Path(run_dir)
    device = resolve_device(cfg.compute)
    torch.manual_seed(cfg.seed)
    model.to(device)
    train_loader, val_loader, test_loader = make_loaders(data, cfg.batch_size, cfg.seed)
    opt = torch.optim.AdamW(parameter_groups(model, cfg.lr, cfg.weight_decay, cfg.ssm_lr))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_lambda(cfg.epochs * len(train_loader)))
    meta = {"train": asdict(cfg), **(meta or {}), "versions": package_versions()}

    forward = TrainingForward(model, cfg.mode)
    history, best_val, start = [], -1.0, 0
    if (run_dir / "last.pt").exists():
        state = load_checkpoint(run_dir / "last.pt")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history, best_val, start = state["history"], state["best_val"], state["epoch"]

    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        train_loader.generator.manual_seed(cfg.seed + epoch)  # batch order a resumed run reproduces
        model.train()
        loss_sum = n = 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(forward(x), y)
            check_finite("loss", loss, epoch, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            # a finite loss can still give infinite gradients (noise injection, a mode at |Ā| = 1); one
            # such step makes every weight NaN, so it is stopped here rather than at the next forward
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            check_finite("largest gradient", nn.utils.get_total_norm(grads, norm_type=math.inf), epoch, cfg)  # no overflow
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            n += len(y)
            bar.set_postfix(loss=f"{loss_sum / n:.3f}")
        val_acc = evaluate(model, val_loader, cfg.val_mode or cfg.mode, device)
        history.append({"epoch": epoch + 1, "train_loss": loss_sum / n, "val_acc": val_acc, "seconds": time.time() - t0})
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {loss_sum / n:.4f}  val {val_acc:.4f}  ({time.time() - t0:.1f}s)")
        if val_acc > best_val:
            best_val = val_acc
            save_checkpoint({"model": model.state_dict(), "meta": meta, "epoch": epoch + 1, "val_acc": val_acc}, run_dir / "best.pt")
        save_checkpoint(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": torch.get_rng_state(),
                "history": history,
                "best_val": best_val,
                "epoch": epoch + 1,
            },
            run_dir / "last.pt",
        )

    model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
    metrics = {
        "best_val_acc": best_val,
        "test_acc_conv": evaluate(model, test_loader, "conv", device),
        "test_acc_recurrent": evaluate(model, test_loader, "recurrent", device),
        "epochs": cfg.epochs,
        "train_seconds": sum(h["seconds"] for h in history),
        "device": str(device),
        "history": history,
        **meta,
    }
    atomic_write(run_dir / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2)))
    return metrics


def training_data(model_cfg: ModelConfig, train_cfg: TrainConfig) -> SequenceData:
    """The dataset `train_cfg` names, checked against the model's input and output sizes."""
    data = load_dataset(train_cfg.dataset, root=train_cfg.data_dir, permuted=train_cfg.permuted, seed=train_cfg.seed)
    check_data_fits(model_cfg, data)
    return data


def first_training_batches(data: SequenceData, train_cfg: TrainConfig, count: int) -> list:
    """The first `count` training batches in the seeded training order: what static ranges calibrate on."""
    train_loader = make_loaders(data, train_cfg.batch_size, train_cfg.seed)[0]
    return list(itertools.islice(train_loader, count))


def check_data_fits(model_cfg: ModelConfig, data: SequenceData) -> None:
    if (model_cfg.d_input, model_cfg.d_output) != (data.d_input, data.d_output):
        raise ValueError(
            f"model has d_input={model_cfg.d_input}, d_output={model_cfg.d_output} but dataset "
            f"{data.name!r} has {data.d_input} input channels and {data.d_output} classes; set them to match"
        )


def check_finite(what: str, value: torch.Tensor, epoch: int, cfg: TrainConfig) -> None:
    if not torch.isfinite(value):
        raise DivergenceError(
            f"{what} became {value.item()} in epoch {epoch + 1}; lower --lr (now {cfg.lr}) "
            "or raise the bit widths of the quantized components"
        )


def load_model(run_dir: Path, prepare: Callable[[S4DModel, dict], None] | None = None) -> tuple[S4DModel, dict]:
    """The best-val model of a finished run and its metrics.

    prepare(model, meta), if given, runs on the freshly built model before its weights are loaded,
    for runs whose state_dict holds more than a plain S4DModel's (e.g. quantizers and their ranges).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise FileNotFoundError(f"{run_dir} holds no finished training run (no metrics.json); train it first")
    ckpt = load_checkpoint(run_dir / "best.pt")
    model = S4DModel(ModelConfig.from_dict(ckpt["meta"]["model"]))
    if prepare is not None:
        prepare(model, ckpt["meta"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), json.loads((run_dir / "metrics.json").read_text())
