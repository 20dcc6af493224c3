"""What the benchmarks share: the --device and --threads flags, the training step they time and how they
time it (steps taking turns, so that load from other processes hits each alike), and the best of
repeated synchronized calls."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from aimc_ssm.core.model import parameter_groups
from aimc_ssm.core.train import TrainConfig


def add_device_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0: torch's choice (default: %(default)s)")


def torch_device(parser: argparse.ArgumentParser, args: argparse.Namespace) -> torch.device:
    """The --device, checked, with torch's CPU threads set from --threads; a usage error otherwise."""
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no GPU here; run on a machine with one, or use --device cpu")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0 (0: torch's choice), got {args.threads}")
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def machine(device: torch.device) -> str:
    """What the figures were measured on, for the first line of a benchmark's output."""
    return torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fastest(fn, device: torch.device, repeats: int = 1, clock=time.perf_counter):
    """The shortest of `repeats` synchronized calls of fn, in seconds of `clock`, and its last output: on a
    shared machine the fastest run is the one least disturbed by other jobs."""
    best, out = float("inf"), None
    for _ in range(repeats):
        synchronize(device)
        start = clock()
        out = fn()
        synchronize(device)
        best = min(best, clock() - start)
    return best, out


def default_groups(model: nn.Module) -> list[dict]:
    """fit's AdamW groups for `model` at TrainConfig's default rates (aimc_ssm.core.model.parameter_groups)."""
    train = TrainConfig()
    return parameter_groups(model, train.lr, train.weight_decay, train.ssm_lr)


def training_step(model: nn.Module, groups: list[dict], forward, x: torch.Tensor, y: torch.Tensor):
    """One AdamW training step of `model` (forward, cross-entropy, backward, step) on (x, y), as a closure."""
    opt = torch.optim.AdamW(groups)

    def step():
        loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def alternating_medians(steps: dict, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per call of each step; the steps take turns, so background load hits all alike."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}
