"""Training-step time of the project's S4D model against a minimal channels-first S4D, measured in one run.

    .venv/bin/python benchmarks/bench_s4d.py                  # CPU (one thread), four sizes, L 784, batch 64 (1024 for the last)
    .venv/bin/python benchmarks/bench_s4d.py --threads 0      # CPU with torch's thread count
    .venv/bin/python benchmarks/bench_s4d.py --quick          # smaller batches, fewer repeats: under 20 s on a CPU
    .venv/bin/python benchmarks/bench_s4d.py --device cuda    # the same on a GPU
    .venv/bin/python benchmarks/bench_s4d.py --norm layer     # both models with a post-norm LayerNorm

A training step is forward, cross-entropy, backward and an AdamW step, on (B, 784, 1) inputs and 10 classes.
The project's model is `S4DModel(ModelConfig(...))` in convolution mode, with the optimizer groups of
`parameter_groups` (aimc_ssm.core.train.fit's). The baseline is written here in the plain channels-first
form of the S4D paper's minimal layer: activations (B, H, L), the ZOH kernel as the Vandermonde product
exp(dt·A·l) contracted with einsum, the FFT convolution along the last axis under autograd, then GELU, a
1x1 Conv1d to 2H channels and GLU, the residual, and a post-norm where `--norm layer` asks for one. It
has the same parameters as the project's model (B trainable, 3,850 of them at H 16) and the same
optimizer groups, so both models do the same arithmetic in their own layouts.

On a GPU two more columns time both models with their forward and backward replayed from CUDA graphs:
the project's through `TrainingForward`, as aimc_ssm.core.train.fit replays them (the same kernels,
launched at once), the baseline's through torch.cuda.make_graphed_callables. The ratios against the eager
baseline say what a user of each code gets; graphed against graphed says what is left between the
models. fit's own checks (a finite loss and gradients) and its scheduler are in no column. On a CPU fit
steps eagerly: the project column is its step.

The steps take turns, so load from other processes hits each alike; each time is the
median over the repeats after the warm-up steps. The ratio is project / baseline time: below 1 the
project's step is faster. On a CPU both run on one thread unless --threads says otherwise (0: torch's
choice): on a machine whose cores other processes share, every parallel region can wait a scheduler
time slice for its second thread, and those waits, not the arithmetic, then set the times.
"""
from __future__ import annotations

import argparse
import copy
import math
from dataclasses import dataclass

import torch
from common import add_device_flags, alternating_medians, default_groups, machine, torch_device, training_step
from torch import nn

from aimc_ssm import ModelConfig, S4DModel
from aimc_ssm.core.train import TrainConfig, TrainingForward

LENGTH, CLASSES, D_STATE = 784, 10, 64


@dataclass(frozen=True)
class Case:
    name: str
    d_model: int
    n_layers: int
    batch: int
    quick_batch: int  # --quick: a smaller batch, the same model


CASES = (
    Case("H16, 1 layer", 16, 1, 64, 64),
    Case("H128, 4 layers", 128, 4, 64, 4),
    Case("H256, 4 layers", 256, 4, 64, 2),
    Case("H16, batch 1024", 16, 1, 1024, 128),
)


# -- the baseline --------------------------------------------------------------------------------
class ChannelsFirstS4D(nn.Module):
    """A minimal S4D layer on (B, H, L): S4D-Lin init, ZOH, kernel by Vandermonde product, FFT convolution."""

    def __init__(self, d_model: int, d_state: int, dt_min: float = 1e-3, dt_max: float = 1e-1):
        super().__init__()
        H, n = d_model, d_state // 2
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, n)))
        self.A_imag = nn.Parameter(math.pi * torch.arange(n).float().repeat(H, 1))
        self.B = nn.Parameter(torch.view_as_real(torch.ones(H, n, dtype=torch.cfloat)))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, n, dtype=torch.cfloat)))
        self.D = nn.Parameter(torch.randn(H))

    def dynamics(self) -> list[nn.Parameter]:
        return [self.log_dt, self.log_A_real, self.A_imag]

    def kernel(self, L: int) -> torch.Tensor:
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag  # (H, n)
        dtA = torch.exp(self.log_dt)[:, None] * A
        CB = torch.view_as_complex(self.C) * torch.view_as_complex(self.B) * (torch.exp(dtA) - 1) / A  # C·B̄
        vandermonde = torch.exp(dtA[..., None] * torch.arange(L, device=A.device))  # (H, n, L)
        return 2 * torch.einsum("hn,hnl->hl", CB, vandermonde).real  # (H, L)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (B, H, L)
        L = u.shape[-1]
        u_f = torch.fft.rfft(u, n=2 * L)
        K_f = torch.fft.rfft(self.kernel(L), n=2 * L)
        return torch.fft.irfft(u_f * K_f, n=2 * L)[..., :L] + self.D[:, None] * u


class ChannelsFirstBlock(nn.Module):
    def __init__(self, d_model: int, norm: str):
        super().__init__()
        self.ssm = ChannelsFirstS4D(d_model, D_STATE)
        self.mixing = nn.Conv1d(d_model, 2 * d_model, kernel_size=1)
        self.norm = nn.LayerNorm(d_model) if norm == "layer" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, L)
        z = nn.functional.glu(self.mixing(nn.functional.gelu(self.ssm(x))), dim=1) + x
        return z if self.norm is None else self.norm(z.transpose(1, 2)).transpose(1, 2)


class BaselineModel(nn.Module):
    """Linear encoder -> blocks on (B, H, L) -> mean over time -> Linear decoder: (B, L, 1) -> (B, 10)."""

    def __init__(self, d_model: int, n_layers: int, norm: str):
        super().__init__()
        self.encoder = nn.Linear(1, d_model)
        self.blocks = nn.ModuleList(ChannelsFirstBlock(d_model, norm) for _ in range(n_layers))
        self.decoder = nn.Linear(d_model, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x).transpose(1, 2)  # (B, H, L)
        for block in self.blocks:
            z = block(z)
        return self.decoder(z.mean(dim=-1))

    def parameter_groups(self, train: TrainConfig) -> list[dict]:
        """The project's groups: the SSM dynamics at ssm_lr without weight decay, the rest at lr."""
        dynamics = [p for block in self.blocks for p in block.ssm.dynamics()]
        ids = {id(p) for p in dynamics}
        rest = [p for p in self.parameters() if id(p) not in ids]
        return [
            {"params": rest, "lr": train.lr, "weight_decay": train.weight_decay},
            {"params": dynamics, "lr": train.ssm_lr, "weight_decay": 0.0},
        ]


def measure(case: Case, batch: int, norm: str, device: torch.device, warmup: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.randn(batch, LENGTH, 1, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    train = TrainConfig()
    project = S4DModel(ModelConfig(d_model=case.d_model, d_state=D_STATE, n_layers=case.n_layers, norm=norm)).to(device)
    baseline = BaselineModel(case.d_model, case.n_layers, norm).to(device)
    if device.type == "cuda":  # both models replayed from CUDA graphs: copies of the same inits, optimizers of their own
        graphed, graphed_baseline = copy.deepcopy(project).train(), copy.deepcopy(baseline).train()
    steps = {
        "project": training_step(project, default_groups(project), lambda x: project(x, "conv"), x, y),
        "baseline": training_step(baseline, baseline.parameter_groups(train), baseline, x, y),
    }
    if device.type == "cuda":
        steps["project graphed"] = training_step(graphed, default_groups(graphed), TrainingForward(graphed, "conv"), x, y)
        forward = torch.cuda.make_graphed_callables(graphed_baseline, (x.clone(),))
        steps["baseline graphed"] = training_step(graphed_baseline, graphed_baseline.parameter_groups(train), forward, x, y)
    return alternating_medians(steps, device, warmup, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_flags(parser)
    parser.add_argument("--quick", action="store_true", help="smaller batches, fewer repeats; small batches weigh the kernel, whose cost is per step, more")
    parser.add_argument("--norm", default="none", choices=["none", "layer"], help="post-norm of both models (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per model (default: 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per model first (default: 2, quick 1)")
    args = parser.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if repeats < 1 or warmup < 0:
        parser.error(f"--repeats must be >= 1 and --warmup >= 0, got {repeats} and {warmup}")
    device = torch_device(parser, args)
    if device.type == "cuda" and warmup < 1:
        parser.error("--warmup must be >= 1 on a GPU: the first step captures the CUDA graphs")

    print(f"{machine(device)}; L {LENGTH}, N {D_STATE}, norm {args.norm}; median of {repeats} steps after {warmup} warm-up")
    graphs = device.type == "cuda"
    header = f"{'case':18s} {'batch':>6s} {'project ms':>11s} {'baseline ms':>12s} {'project/baseline':>17s}"
    if graphs:
        header += f" {'graphed: project ms':>20s} {'baseline ms':>12s} {'project/eager baseline':>23s} {'project/baseline':>17s}"
    print(header)
    for case in CASES:
        batch = case.quick_batch if args.quick else case.batch
        t = measure(case, batch, args.norm, device, warmup, repeats)
        row = f"{case.name:18s} {batch:6d} {1e3 * t['project']:11.1f} {1e3 * t['baseline']:12.1f} {t['project'] / t['baseline']:17.2f}"
        if graphs:
            project, baseline = t["project graphed"], t["baseline graphed"]
            row += f" {1e3 * project:20.1f} {1e3 * baseline:12.1f} {project / t['baseline']:23.2f} {project / baseline:17.2f}"
        print(row)


if __name__ == "__main__":
    main()
