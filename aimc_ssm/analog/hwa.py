"""Hardware-aware noise: aihwkit's weight modifiers on digital tensors, and relative Gaussian noise on an
S4D layer's state matrix as a link of its transform chain ([S25]'s noise experiments).

    training_noise(kind, std)           aihwkit ADD_NORMAL / MULT_NORMAL modifier settings
    inject_weight_noise(weight, mod)    a tensor with that noise, gradients straight through
    WeightNoise(sigma, target)          the "noise" transform of an S4D layer: noise on A or Ā, every forward
    with_weight_noise(model, ...)       a copy of a model whose SSMs all draw it
    HardwareAwareKernel(ssm, ...)       an S4D layer trained through a differentiable simulation of its
                                        fused kernel: mapped cells perturbed by the device's noise model,
                                        converters with straight-through rounding, output noise
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..core.model import S4DModel
from ..core.s4d import SSMTransform
from .deploy import ZERO_CELLS
from .kernel import check_mapping, crossbar_config, mapping_scales, y_column_io
from .layout import crossbar_matrices, replicate_copies
from .mvm import converter_step

NOISE_TARGETS = ("A", "A_bar")


def training_noise(kind: str = "add", std: float = 0.02):
    """aihwkit weight-modifier settings for noise injection during training, resampled every forward.

    "add": ADD_NORMAL, w + std·max|w|·ξ; "mult": MULT_NORMAL, w·(1 + std·ξ). Give it to an rpu config
    (config.modifier = training_noise(...)) or to `inject_weight_noise` for a digital tensor.
    """
    from aihwkit.simulator.parameters import WeightModifierParameter, WeightModifierType

    kinds = {"add": WeightModifierType.ADD_NORMAL, "mult": WeightModifierType.MULT_NORMAL}
    if kind not in kinds:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {sorted(kinds)}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return WeightModifierParameter(type=kinds[kind], std_dev=std, rel_to_actual_wmax=True)


def inject_weight_noise(weight: torch.Tensor, modifier) -> torch.Tensor:
    """`weight` with the modifier's noise (aihwkit's torch-tile modifier); gradients pass straight through."""
    from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile

    return TorchSimulatorTile.modify_weight(weight, modifier, 1)


class WeightNoise(SSMTransform):
    """Relative Gaussian noise on an S4D layer's state matrix, drawn at every forward: its "noise" transform.

    target "A": the continuous A, Re and Im each with std 2·sigma·max|·| (sigma of the range
    [-max|·|, max|·|]), before discretization and any quantizer, as [S25]; "A_bar": the deployed Ā,
    after its quantizer, as a crossbar holding Ā would perturb it. The noise is aihwkit's ADD_NORMAL
    weight modifier (`training_noise`), so gradients pass straight through it and the same layer
    trains hardware-aware with aimc_ssm.core.train.fit.
    """

    graph_safe = True  # the noise is drawn on the device (see HardwareAwareKernel)

    def __init__(self, sigma: float, target: str):
        super().__init__()
        if target not in NOISE_TARGETS:
            raise ValueError(f"unknown noise target {target!r}; choose one of {NOISE_TARGETS}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma, self.target = sigma, target
        self.modifier = training_noise("add", 2 * sigma)

    def perturb(self, z: torch.Tensor) -> torch.Tensor:
        return torch.complex(inject_weight_noise(z.real, self.modifier), inject_weight_noise(z.imag, self.modifier))

    def continuous(self, ssm, dt, A, B, C):
        if self.sigma > 0 and self.target == "A":
            A = self.perturb(A)
        return dt, A, B, C

    def discrete(self, ssm, dA, dB, C, D):
        if self.sigma > 0 and self.target == "A_bar":
            dA = self.perturb(dA)
        return dA, dB, C, D

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, target={self.target}"


def with_weight_noise(model: S4DModel, sigma: float, target: str) -> S4DModel:
    """A copy of `model` (float or quantized, pruned or not) whose SSMs draw relative Gaussian noise on A or Ā every forward."""
    model = copy.deepcopy(model)
    for block in model.blocks:
        block.ssm.set_transform("noise", WeightNoise(sigma, target))
    return model


# -- hardware-aware training through the fused kernel ------------------------------------------------------
@dataclass(frozen=True)
class KernelHWA:
    """What the differentiable kernel forward (`HardwareAwareKernel`) simulates of a deployment.

    mapping           the kernels' mapping (aimc_ssm.analog.kernel): the cells the noise acts on
    copies            devices per weight, as FusedS4D's `copies`: their errors average
    y_adc_range       the y column's own ADC range, as FusedS4D's (None: the kernel's)
    noise_scale       × the device's programming noise, drift and output noise (0: converters only)
    t_inference       seconds of drift the cell perturbations are drawn for
    stability_margin  |Ā| of every mode held at most 1 − margin in the forward (0: off)
    zero_cells        "programmed" or "unprogrammed": whether cells whose target is zero draw device
                      error, as aimc_ssm.analog.deploy.program's
    """

    mapping: str = "incremental"
    copies: int = 1
    y_adc_range: float | None = None
    noise_scale: float = 1.0
    t_inference: float = 3600.0
    stability_margin: float = 0.0
    zero_cells: str = "programmed"

    def __post_init__(self):
        if self.noise_scale < 0 or self.t_inference < 0 or not 0 <= self.stability_margin < 1:
            raise ValueError(
                f"need noise_scale >= 0, t_inference >= 0 and 0 <= stability_margin < 1; got {self.noise_scale}, "
                f"{self.t_inference}, {self.stability_margin}"
            )
        if not isinstance(self.copies, int) or self.copies < 1 or (self.y_adc_range is not None and self.y_adc_range <= 0):
            raise ValueError(f"need copies >= 1 and y_adc_range > 0 (or None); got {self.copies}, {self.y_adc_range}")
        if self.zero_cells not in ZERO_CELLS:
            raise ValueError(f"zero_cells must be one of {ZERO_CELLS}, got {self.zero_cells!r}")


class _RoundStraightThrough(torch.autograd.Function):
    """round(x), with the identity as gradient: a converter's rounding in a trainable forward."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def convert(x: torch.Tensor, res: float, bound: float) -> torch.Tensor:
    """aihwkit's converter (UniformQuantize, then the bound clip) with a straight-through rounding;
    res as aihwkit's inp_res / out_res (a fraction of the full range 2·bound, or a step count); <= 0: no rounding."""
    if res > 0:
        step = converter_step(res, bound)
        x = _RoundStraightThrough.apply(x / step) * step
    return x.clamp(-bound, bound) if bound > 0 else x


class HardwareAwareKernel(nn.Module):
    """An S4D layer trained through a differentiable simulation of its fused kernel: u (B, L, H) -> y (B, L, H).

    Wraps the layer, whose parameters (and quantization) train. Every forward maps the layer's deployed
    system onto the crossbar weights its `FusedS4D` would hold (same mapping, state scales and DAC ranges,
    from `peaks` = (u_peak (H,), x_peak (H, n)) of aimc_ssm.analog.deploy.measure_signals), perturbs the
    cells with a fresh draw of the device's programming noise and drift (its aihwkit noise model, on the
    weights normalized per column as aihwkit maps them, so the error is relative to each column's range;
    exact global drift compensation per crossbar), and steps the recurrence as `FusedS4D.scan` does: DAC
    and ADC rounding at the calibrated ranges (straight-through gradients), output noise, the periphery's
    scales and, for the incremental mapping, the digital add. Without noise on the `ideal` device it
    computes what the deployed kernel computes.
    """

    @property
    def graph_safe(self) -> bool:
        """Whether fit may replay this layer's training step from CUDA graphs (aimc_ssm.core.train.graphable),
        each replay drawing afresh: its forward decides nothing on the host, and neither do aihwkit's PCM-like
        and state-independent noise models on a single conductance pair (the shipped devices'). Other
        models or converters may (Hermes' masked indexing, a custom pair's numpy interpolation), which a
        capture refuses: those layers train eagerly."""
        from aihwkit.inference import PCMLikeNoiseModel, SinglePairConductanceConverter, StateIndependentNoiseModel

        model = self.config.noise_model
        on_device = type(model) in (PCMLikeNoiseModel, StateIndependentNoiseModel) and type(
            model.g_converter) is SinglePairConductanceConverter  # exact types: subclasses may read to the host
        return self.hwa.noise_scale == 0 or on_device

    def __init__(self, ssm, kernel_config, peaks: tuple[torch.Tensor, torch.Tensor], hwa: KernelHWA = KernelHWA()):
        super().__init__()
        check_mapping(hwa.mapping)
        self.ssm, self.hwa = ssm, hwa
        self.config = crossbar_config(kernel_config, hwa.copies)  # the ADC range of k summed copies
        self.y_io = y_column_io(self.config.forward, hwa.y_adc_range, hwa.copies)
        scales, ranges = mapping_scales(*peaks, hwa.mapping)
        self.register_buffer("state_scales", scales.to(ssm.D.device))  # (H, n)
        # (H,); a channel that never moves gets range 1, as FusedS4D.set_input_ranges gives it
        self.register_buffer("input_ranges", torch.where(ranges > 0, ranges, 1.0).to(ssm.D.device))
        self.d_model, self.d_state = ssm.d_model, ssm.d_state

    def extra_repr(self) -> str:
        return f"{self.hwa}"

    def crossbar_weights(self) -> torch.Tensor:
        """The mapped crossbar weights W (H, N+1, N+2) of the layer's current deployed system."""
        dA, dB, C, D = self.ssm.ssm_parameters()
        if self.hwa.stability_margin > 0:  # the modes' magnitude held inside the margin, their angle kept
            magnitude = dA.abs()
            dA = dA * (magnitude.clamp(max=1 - self.hwa.stability_margin) / magnitude.clamp_min(1e-30))
        s = self.state_scales
        W = crossbar_matrices(dA, dB / s, C * s, D, incremental=self.hwa.mapping == "incremental")
        return replicate_copies(W, self.hwa.copies)  # (H, N+1, k·(N+2))

    def perturbed(self, W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalized weights with this draw's device error, per-column scales α (H, N+1, 1)).

        The error is a constant of the draw (no gradient through the noise model); the gradient reaches
        the weights straight through it."""
        alpha = W.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-12)  # aihwkit's column-wise mapping, ω = 1
        normalized = W / alpha
        model = self.config.noise_model
        if self.hwa.noise_scale == 0 or not self.training:
            return normalized, alpha
        with torch.no_grad():
            target = normalized.detach()
            noisy = model.apply_noise(target, self.hwa.t_inference)
            compensation = target.abs().mean(dim=(1, 2), keepdim=True) / noisy.abs().mean(dim=(1, 2), keepdim=True).clamp_min(1e-12)
            error = (noisy * compensation - target) * self.hwa.noise_scale
            if self.hwa.zero_cells == "unprogrammed":
                error = torch.where(target == 0, 0.0, error)
        return normalized + error, alpha

    def forward(self, u: torch.Tensor, mode: str = "recurrent") -> torch.Tensor:
        """u (B, L, H) -> y (B, L, H); the crossbars are recurrent by nature: "conv" runs them too."""
        B, L, H = u.shape
        N = self.d_state
        io = self.config.forward
        weights, alpha = self.perturbed(self.crossbar_weights())
        weights_t = weights.transpose(1, 2)  # (H, k·(N+2), N+1): the bmm operand
        copies = self.hwa.copies
        r = self.input_ranges[:, None, None]  # (H, 1, 1)
        periphery = (alpha.transpose(1, 2) * r)  # (H, 1, N+1): column scales × input range
        out_noise = io.out_noise * self.hwa.noise_scale if self.training else 0.0
        incremental = self.hwa.mapping == "incremental"
        u_steps = nn.functional.pad(u, (0, 0, 0, 1)).permute(1, 2, 0)  # (L+1, H, B); u_L = 0 flushes y_{L-1}
        x = u.new_zeros(H, B, N)  # the mapped state in the periphery's register
        u_prev = u.new_zeros(H, B)
        ys = []
        for t in range(L + 1):
            inp = torch.cat([u_steps[t][..., None], x, u_prev[..., None]], dim=-1)  # (H, B, N+2)
            inp = torch.maximum(torch.minimum(inp, r), -r) / r  # the static input range
            if not io.is_perfect:
                inp = convert(inp, io.inp_res, io.inp_bound)  # DAC
            out = torch.bmm(inp.repeat(1, 1, copies), weights_t)  # (H, B, N+1): every copy's row group driven alike
            if not io.is_perfect:
                if out_noise > 0:
                    out = out + out_noise * torch.randn_like(out)
                if self.y_io is None:
                    out = convert(out, io.out_res, io.out_bound)  # ADC
                else:  # the y column's own ADC range
                    out = torch.cat([convert(out[..., :N], io.out_res, io.out_bound), convert(out[..., N:], io.out_res, self.y_io.out_bound)], dim=-1)
            out = out * periphery
            x = x + out[..., :N] if incremental else out[..., :N]
            ys.append(out[..., N])  # y_{t-1}
            u_prev = u_steps[t]
        return torch.stack(ys[1:], dim=0).permute(2, 0, 1)  # (B, L, H)


class LinearWeightNoise(nn.Module):
    """Parametrization drawing aihwkit's ADD_NORMAL noise on a Linear's weight at every training forward."""

    graph_safe = True  # the noise is drawn on the device (see HardwareAwareKernel)

    def __init__(self, std: float):
        super().__init__()
        self.modifier = training_noise("add", std)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return inject_weight_noise(weight, self.modifier) if self.training else weight


def through_kernels(model: S4DModel, kernel_config, peaks: dict, hwa: KernelHWA = KernelHWA(), linear_noise: float = 0.0) -> S4DModel:
    """A copy of `model` that trains through its deployment: every SSM a `HardwareAwareKernel` (peaks by
    module name, as aimc_ssm.analog.deploy.measure_signals gives them) and, if linear_noise > 0, every
    Linear drawing ADD_NORMAL weight noise of that std (relative to its largest weight) while training.
    `deployable` turns it back into the model it trains."""
    from torch.nn.utils import parametrize

    model = copy.deepcopy(model)
    for i, block in enumerate(model.blocks):
        block.ssm = HardwareAwareKernel(block.ssm, kernel_config, peaks[f"blocks.{i}.ssm"], hwa)
    if linear_noise > 0:
        for linear in [model.encoder, model.decoder, *(block.mixing for block in model.blocks)]:
            parametrize.register_parametrization(linear, "weight", LinearWeightNoise(linear_noise), unsafe=True)
    return model


def deployable(model: S4DModel) -> S4DModel:
    """The model `through_kernels` trains, in place: its SSM layers back, the training noise gone."""
    from torch.nn.utils import parametrize

    for block in model.blocks:
        if isinstance(block.ssm, HardwareAwareKernel):
            block.ssm = block.ssm.ssm
    for linear in [model.encoder, model.decoder, *(block.mixing for block in model.blocks)]:
        chain = list(linear.parametrizations.weight) if parametrize.is_parametrized(linear, "weight") else []
        if any(isinstance(p, LinearWeightNoise) for p in chain):
            # back to the master weight, then the parametrizations that stay (a QAT weight quantizer)
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
            for p in chain:
                if not isinstance(p, LinearWeightNoise):
                    parametrize.register_parametrization(linear, "weight", p, unsafe=True)
    return model
