"""The S4D classifier: Linear encoder -> n_layers S4D blocks -> mean pool -> Linear decoder.

A block is SSM -> activation (GELU or none) -> 1x1 mixing (Linear H->2H + GLU, or Linear H->H + ReLU)
-> dropout, with optional pre/post norm and a residual. Layout (batch, length, channels), so every
mixing stage is an `nn.Linear` that an analog tile can replace.

Quantization hooks: identities that aimc_ssm.quant.quantize.quantize_ replaces by activation
quantizers, at the model's input and the decoder's input (S4DModel) and, in each block, at the SSM's
input, its output before the activation, the mixing input and the mixing output (S4DBlock); quantize_
may also swap the block's GELU for `HardGELU`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..io import from_dict_strict
from .s4d import A_INITS, DISCRETIZATIONS, S4D, check_input, check_sizes

ACTIVATIONS = ("gelu", "none")
MIXINGS = ("glu", "relu")
NORMS = ("none", "layer", "batch")


@dataclass
class ModelConfig:
    """Architecture of an S4D classifier. The defaults are the [Z25] sMNIST model (3,850 parameters)."""

    d_input: int = 1  # input channels per step
    d_output: int = 10  # classes
    d_model: int = 16  # H, channels
    d_state: int = 64  # N, real state size per channel (N/2 complex modes)
    n_layers: int = 1
    activation: str = "gelu"  # after the SSM: "gelu" [Z25] or "none" [S25]
    mixing: str = "glu"  # "glu": Linear(H, 2H) + GLU; "relu": Linear(H, H) + ReLU
    norm: str = "none"  # "none", "layer" or "batch"
    prenorm: bool = False  # norm before the SSM (True) or after the residual (False)
    residual: bool = True
    dropout: float = 0.0
    trainable_B: bool = True  # [Z25] trains B; [S25] fixes B = 1
    a_init: str = "lin"  # "lin": Im A = π·n; "lin-quarter": π/4·n
    discretization: str = "zoh"  # "zoh" or "bilinear"
    dt_min: float = 1e-3
    dt_max: float = 1e-1

    def __post_init__(self):
        check_sizes(self.d_model, self.d_state)
        for name in ("d_input", "d_output", "n_layers"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name, allowed in (
            ("activation", ACTIVATIONS),
            ("mixing", MIXINGS),
            ("norm", NORMS),
            ("a_init", A_INITS),
            ("discretization", DISCRETIZATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {allowed}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        return from_dict_strict(cls, d, "model config")

    def to_dict(self) -> dict:
        return asdict(self)


class ChannelNorm(nn.Module):
    """LayerNorm or BatchNorm over the channel axis of (B, L, H) tensors."""

    def __init__(self, kind: str, H: int):
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(H) if kind == "layer" else nn.BatchNorm1d(H)

    def forward(self, x):
        if self.kind == "layer":
            return self.norm(x)
        return self.norm(x.transpose(1, 2)).transpose(1, 2)  # BatchNorm1d wants (B, H, L)


class HardGELU(nn.Module):
    """GELU's hardware-friendly stand-in x·clamp(x + 2, 0, 4)/4: x times a piecewise-linear sigmoid ([Z25])."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (torch.clamp(x + 2, 0, 4) / 4)


class S4DBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H = cfg.d_model
        self.prenorm, self.residual = cfg.prenorm, cfg.residual
        self.ssm = S4D(
            H,
            cfg.d_state,
            trainable_B=cfg.trainable_B,
            a_init=cfg.a_init,
            discretization=cfg.discretization,
            dt_min=cfg.dt_min,
            dt_max=cfg.dt_max,
        )
        self.activation = nn.GELU() if cfg.activation == "gelu" else nn.Identity()
        # quantization hooks (module docstring): SSM input, SSM output, mixing input, mixing output
        self.input_quant = nn.Identity()
        self.pre_activation_quant = nn.Identity()
        self.act_quant = nn.Identity()
        self.output_quant = nn.Identity()
        if cfg.mixing == "glu":
            self.mixing, self.mixing_activation = nn.Linear(H, 2 * H), nn.GLU(dim=-1)
        else:
            self.mixing, self.mixing_activation = nn.Linear(H, H), nn.ReLU()
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()  # p = 0 would still launch a kernel
        self.norm = ChannelNorm(cfg.norm, H) if cfg.norm != "none" else nn.Identity()

    def forward(self, x: torch.Tensor, mode: str = "conv") -> torch.Tensor:  # (B, L, H)
        z = self.norm(x) if self.prenorm else x
        z = self.pre_activation_quant(self.ssm(self.input_quant(z), mode))
        z = self.act_quant(self.activation(z))
        z = self.dropout(self.output_quant(self.mixing_activation(self.mixing(z))))
        if self.residual:
            z = z + x
        return z if self.prenorm else self.norm(z)


class S4DModel(nn.Module):
    """Sequence classifier: (B, L, d_input) -> logits (B, d_output)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder_input_quant = nn.Identity()  # quantization hook (module docstring)
        self.encoder = nn.Linear(cfg.d_input, cfg.d_model)
        self.blocks = nn.ModuleList(S4DBlock(cfg) for _ in range(cfg.n_layers))
        self.decoder_input_quant = nn.Identity()  # quantization hook
        self.decoder = nn.Linear(cfg.d_model, cfg.d_output)

    def forward(self, x: torch.Tensor, mode: str = "conv") -> torch.Tensor:
        check_input(x, self.cfg.d_input)
        z = self.encoder(self.encoder_input_quant(x))  # (B, L, H)
        for block in self.blocks:
            z = block(z, mode)
        return self.decoder(self.decoder_input_quant(z.mean(dim=1)))  # (B, d_output)


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, ssm_lr: float = 1e-3):
    """AdamW groups from the optimizer hints that modules register with their parameters (S4D's
    `optim_hints`): hinted parameters in a group of their hint's settings ("ssm_lr" stands for `ssm_lr`),
    every other trainable parameter in the default group (lr, weight_decay)."""
    named = {"ssm_lr": ssm_lr}
    default = {"params": [], "lr": lr, "weight_decay": weight_decay}
    hinted: dict[tuple, dict] = {}
    for module in model.modules():
        hints = getattr(module, "optim_hints", {})
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            if name not in hints:
                default["params"].append(p)
                continue
            settings = {k: named.get(v, v) if isinstance(v, str) else v for k, v in hints[name].items()}
            hinted.setdefault(tuple(sorted(settings.items())), {"params": [], **settings})["params"].append(p)
    return [default, *hinted.values()]
