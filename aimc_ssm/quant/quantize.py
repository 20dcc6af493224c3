"""Attach a PrecisionSpec to an S4D model: post-training quantization and quantization-aware training.

    quantize_(model, spec)                       fake quantizers on every component, in place
    calibrate(model, batches, mode)              static ranges: observe, then freeze
    ptq_model(float_model, spec, batches)        PTQ: a quantized copy of a trained float model
    prepare_qat(model, spec, batches)            QAT, prepare: quantize_ and calibrate, ready to train
                                                 (aimc_ssm.cache.qat_model trains it once and caches it)
    stability_report(model)                      largest |Ā| per layer after quantization

Where the quantizers live once `quantize_` has run:

    block.ssm.quantization     SSMQuantization, the quantization link of the layer's transform chain
                               (aimc_ssm.core.s4d): A, B, C, D, dt, state, y, partial_Ax, partial_Bu,
                               state_kernel, state_input (see its docstring)
    block.input_quant          FakeQuantizer of the SSM input (spec.ssm_input)
    block.pre_activation_quant FakeQuantizer of the SSM output y + D·u (spec.pre_activation)
    block.act_quant            FakeQuantizer of the activations, the mixing input (spec.act, act_point
                               "mixing_input"); block.output_quant with act_point "block_output"
    block.activation           HardGELU in place of GELU where spec.hard_gelu
    model.encoder_input_quant, model.decoder_input_quant
                               FakeQuantizers of the model's input and of the pooled features
    block.mixing, model.encoder, model.decoder
                               weights fake-quantized through torch.nn.utils.parametrize: `.weight`
                               is the quantized weight, `.parametrizations.weight.original` the float
                               master weight that training updates; biases stay float.
    model.precision            the PrecisionSpec

Every activation quantizer knows its tensor's batch axis: dynamic ranges are one per sequence, so a
sequence's output does not depend on the other sequences of its batch.

Gradients pass the quantizers straight through (config.ste), so the same quantized model trains
with aimc_ssm.core.train.fit in conv or recurrent mode.
"""
from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.model import HardGELU, S4DModel
from ..core.s4d import SSMTransform, discretize
from .precision import PrecisionSpec
from .qrecurrent import quantized_scan, quantized_step
from .quantizers import ComplexQuantizer, FakeQuantizer, QuantizerConfig, to_planes


class SSMQuantization(SSMTransform):
    """The quantizers of one S4D layer: the quantization link of its transform chain (aimc_ssm.core.s4d).

    Quantizers (float ones pass their input through):
        A, B, C                    ComplexQuantizer of Ā, B̄, C ("cartesian", "polar": Ā polar) or
                                   of continuous A, B, C ("continuous"); channels along H
        D                          FakeQuantizer of D (H,)
        dt                         FakeQuantizer of log dt (H,), used in "continuous" only
        state                      ComplexQuantizer of the recurrent state x (B, H, n), ranges per
                                   sequence: polar for "polar"; call it on a complex state to quantize
                                   it as deployed (clamped first where its config clamps)
        y                          FakeQuantizer of the recurrence's output 2·Re(C·x_t) (B, L, H), before
                                   the skip term D·u is added (recurrent mode)
        partial_Ax, partial_Bu     Ā⊙x and B̄u before the add, with the state's config (no clamp) and
                                   form (None unless spec.partial_products)
        state_kernel, state_input  conv-mode proxy of the state's precision: kernel K (H, L) and
                                   input u (B, L, H), spec.proxy_config() (None unless spec.conv_state_proxy)
    """

    def __init__(self, spec: PrecisionSpec):
        super().__init__()
        self.parameterization = spec.parameterization
        form = "polar" if spec.parameterization == "polar" else "cartesian"
        self.A = ComplexQuantizer(spec.A, form, channel_dim=-2)
        self.B = ComplexQuantizer(spec.B, "cartesian", channel_dim=-2)
        self.C = ComplexQuantizer(spec.C, "cartesian", channel_dim=-2)
        self.D = FakeQuantizer(spec.D, channel_dim=-1)
        self.dt = FakeQuantizer(spec.dt, channel_dim=-1)
        self.state = ComplexQuantizer(spec.state, form, channel_dim=-2, batch_dim=-3)
        self.y = activation_quantizer(spec.y)
        self.partial_Ax = self.partial_Bu = self.state_kernel = self.state_input = None
        if spec.partial_products:
            partial = replace(spec.state, clamp=None)
            self.partial_Ax = ComplexQuantizer(partial, form, channel_dim=-2, batch_dim=-3)
            self.partial_Bu = ComplexQuantizer(partial, form, channel_dim=-2, batch_dim=-3)
        if spec.conv_state_proxy:
            self.state_kernel = FakeQuantizer(spec.proxy_config(), channel_dim=-2)
            self.state_input = activation_quantizer(spec.proxy_config())

    @property
    def requantizes_state(self) -> bool:
        """Whether the recurrence differs from the float one: a quantized state (the partial products
        share its bits) or a quantized output y."""
        return not self.state.is_float or not self.y.is_float

    def continuous(self, ssm, dt, A, B, C):
        """"continuous": log dt, A and B on their grids before discretization ([S25]); else nothing."""
        if self.parameterization != "continuous":
            return dt, A, B, C
        if not self.dt.is_float:
            dt = torch.exp(self.dt(ssm.log_dt))  # log-domain, as [S25]
        return dt, self.A(A), self.B(B), C

    def discrete(self, ssm, dA, dB, C, D):
        """Ā and B̄ on their grids (unless quantized before discretization), C and D always."""
        if self.parameterization != "continuous":
            dA, dB = self.A(dA), self.B(dB)
        return dA, dB, self.C(C), self.D(D)

    @torch.no_grad()
    def grid_steps(self, ssm) -> tuple[torch.Tensor, ...] | None:
        """Grid steps (Ā, B̄, C (H, n) complex; D (H,)) of the parts on a uniform cartesian grid, 0 elsewhere;
        None where no part is on one (every quantizer float).

        Ā and B̄ are on such a grid where they are quantized after discretization, Ā in cartesian form
        only (polar Ā is on a grid of |Ā| and ∠Ā); C, D always. A deployed value is an integer level
        times its step, which is what an export of crossbar levels needs."""
        dt, A, B, C = ssm.continuous_parameters()  # what the quantizers see: their ranges come from it
        dA, dB = discretize(dt, A, B, ssm.discretization)

        def steps(quantizer, z):  # complex (H, n) or real (H,): the steps of (Re, Im), 0 off a uniform cartesian grid
            parts = getattr(quantizer, "parts", quantizer)
            if parts.is_float or getattr(quantizer, "form", "cartesian") != "cartesian":
                return torch.zeros_like(z)
            planes = to_planes(z) if z.is_complex() else z
            grid = parts.grid(planes)  # levels scale·(q + offset)
            if grid.offset:  # 1-bit symmetric levels ±r/2 sit between integers
                return torch.zeros_like(z)
            scale = torch.as_tensor(grid.scale).expand_as(planes)
            return torch.complex(scale[0], scale[1]) if z.is_complex() else scale

        if self.parameterization == "continuous":  # A and B were quantized before discretization
            step_A = step_B = torch.zeros_like(dA)
        else:
            step_A, step_B = steps(self.A, dA), steps(self.B, dB)
        grid_steps = (step_A, step_B, steps(self.C, C), steps(self.D, ssm.D))
        if not any(step.abs().amax() > 0 for step in grid_steps):
            return None
        return tuple(step.detach().cpu() for step in grid_steps)

    def conv_operands(self, K: torch.Tensor, u: torch.Tensor):
        """Kernel (H, L) and input (B, L, H) of the convolution, through the state proxy if any."""
        if self.state_kernel is None:
            return K, u
        return self.state_kernel(K), self.state_input(u)

    def step(self, u_t, x, params):
        return quantized_step(u_t, x, params, self)

    def scan(self, u, params, x=None):
        return quantized_scan(u, params, self, x)

    def extra_repr(self) -> str:
        return f"parameterization={self.parameterization}"


def activation_quantizer(config: QuantizerConfig) -> FakeQuantizer:
    """The FakeQuantizer of an activation laid out (batch, length, channels): ranges per sequence."""
    return FakeQuantizer(config, channel_dim=-1, batch_dim=-3, step_dim=-2)


def _quantize_weight(linear: nn.Linear, config: QuantizerConfig) -> None:
    if not config.is_float:
        # unsafe: the registration's trial call would fail on a static quantizer not yet calibrated
        parametrize.register_parametrization(linear, "weight", FakeQuantizer(config, channel_dim=-2), unsafe=True)


def _check_quantizable(model: S4DModel, spec: PrecisionSpec) -> None:
    if not isinstance(spec, PrecisionSpec):
        raise TypeError(f"quantize_ needs a PrecisionSpec, got {type(spec).__name__}")
    if not isinstance(model, S4DModel):
        raise TypeError(f"quantize_ needs an S4DModel, got {type(model).__name__}")
    if precision_of(model) is not None:
        raise ValueError("model is already quantized; quantize_ a copy of the float model instead")
    if spec.hard_gelu and not all(isinstance(block.activation, nn.GELU) for block in model.blocks):
        raise ValueError(
            f"the spec's hard_gelu replaces each block's GELU, but this model has activation="
            f"{model.cfg.activation!r}: quantize a model built with activation='gelu' (the recipe's "
            "aimc_ssm.quant.precision.recipe_model_config gives it), or use a spec with hard_gelu=False"
        )


def quantize_(model: S4DModel, spec: PrecisionSpec) -> S4DModel:
    """Attach fake quantizers for every component of `spec` to `model`, in place; returns `model`.

    Quantize a copy (copy.deepcopy) to keep the float model. A float spec changes no output.
    """
    _check_quantizable(model, spec)
    for block in model.blocks:
        block.ssm.set_transform("quantization", SSMQuantization(spec))
        block.input_quant = activation_quantizer(spec.ssm_input)
        block.pre_activation_quant = activation_quantizer(spec.pre_activation)
        if spec.act_point == "mixing_input":
            block.act_quant = activation_quantizer(spec.act)
        else:
            block.output_quant = activation_quantizer(spec.act)
        if spec.hard_gelu:
            block.activation = HardGELU()
        _quantize_weight(block.mixing, spec.mixing)
    model.encoder_input_quant = activation_quantizer(spec.encoder_input)
    model.decoder_input_quant = FakeQuantizer(spec.decoder_input, channel_dim=-1, batch_dim=-2)  # (B, H)
    _quantize_weight(model.encoder, spec.coder)
    _quantize_weight(model.decoder, spec.coder)
    model.precision = spec
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantizer):
            module.name = name
    return model


def precision_of(model: nn.Module) -> PrecisionSpec | None:
    """The PrecisionSpec a model was quantized with, or None for a float model."""
    return getattr(model, "precision", None)


def _static_quantizers(model: nn.Module) -> list[FakeQuantizer]:
    return [m for m in model.modules() if isinstance(m, FakeQuantizer) and m.is_static]


@torch.no_grad()
def calibrate(model: nn.Module, batches, mode: str = "conv") -> nn.Module:
    """Static ranges: run `batches` (tensors or (x, y) pairs) in `mode` while the static quantizers
    observe, then freeze them; returns `model`.

    Observation is in float (quantizers pass values through meanwhile), as torch.ao's observers.
    Only quantizers that see data in this mode are re-calibrated: the state is met in 'recurrent'
    mode only, its conv proxy in 'conv' only, so a spec with both calibrates in both modes.
    """
    static = _static_quantizers(model)
    if not static:
        return model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    for q in static:
        q.observing, q.observations = True, 0
    try:
        seen = 0
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            model(x.to(device), mode)
            seen += 1
    finally:
        for q in static:
            q.observing = False
        model.train(was_training)
    if not seen:
        raise ValueError("calibrate got no batches; pass a few batches of training data")
    return model


CALIBRATION_BATCHES = 8  # training batches: enough for the min/max ranges of static quantizers


def calibration_modes(spec: PrecisionSpec) -> tuple[str, ...]:
    """The modes that calibrate every static quantizer of `spec`. The state and y exist in recurrent mode
    only; a recurrent pass re-observes every quantizer but the conv-mode state proxies, so a conv pass
    before it matters only for those."""
    static = spec.static()
    if "state" not in static and "y" not in static:
        return ("conv",)
    return ("conv", "recurrent") if spec.conv_state_proxy and "state" in static else ("recurrent",)


def calibrate_static(model: S4DModel, spec: PrecisionSpec, batches: list) -> None:
    """Calibrate every static quantizer of `spec` on `batches`, in each mode that reaches one."""
    for mode in calibration_modes(spec):
        calibrate(model, batches, mode)


def ptq_model(float_model: S4DModel, spec: PrecisionSpec, calibration_batches=None) -> S4DModel:
    """Post-training quantization: a quantized copy of `float_model`, calibrated if the spec has
    static ranges (in every mode that needs it, see calibration_modes)."""
    if precision_of(float_model) is not None:
        raise ValueError("ptq_model needs a float model; this one is already quantized")
    model = quantize_(copy.deepcopy(float_model), spec)
    if spec.static():
        if calibration_batches is None:
            raise ValueError(
                f"spec has static ranges for {list(spec.static())}: pass calibration_batches "
                "(a few training batches), or use ranges='dynamic'"
            )
        calibrate_static(model, spec, list(calibration_batches))
    return model.eval()


def prepare_qat(model: S4DModel, spec: PrecisionSpec, calibration_batches=None) -> S4DModel:
    """Quantization-aware training, prepare: fake quantizers on `model` in place, static ranges calibrated
    on `calibration_batches` (a few training batches), ready for aimc_ssm.core.train.fit. The trained
    model is already the deployed one (convert is the identity: the quantizers stay attached)."""
    quantize_(model, spec)
    if spec.static():
        if calibration_batches is None:
            raise ValueError(f"spec has static ranges for {list(spec.static())}: pass calibration_batches")
        calibrate_static(model, spec, list(calibration_batches))
    return model


def without_state_quantizer(model: S4DModel) -> S4DModel:
    """A copy of `model` whose recurrence does not re-quantize the state (the model itself if none does)."""
    if not any(block.ssm.requantizes_state() for block in model.blocks):
        return model
    model = copy.deepcopy(model)
    for block in model.blocks:
        if block.ssm.quantization is not None:
            block.ssm.quantization.state = ComplexQuantizer(QuantizerConfig(bits=None))
    return model


@torch.no_grad()
def stability_report(model: S4DModel) -> list[dict]:
    """Per layer: the largest |Ā| of the (quantized) system and how many modes have |Ā| >= 1,
    which grow instead of decay in recurrent mode."""
    rows = []
    for layer, block in enumerate(model.blocks):
        magnitude = block.ssm.ssm_parameters()[0].abs()
        unstable = int((magnitude >= 1).sum())
        rows.append({"layer": layer, "max_abs_A": magnitude.max().item(), "unstable_modes": unstable, "stable": unstable == 0})
    return rows
