"""Attach a PrecisionSpec to an S4D model: post-training quantization and quantization-aware training.

    quantize_(model, spec)                       fake quantizers on every component, in place
    calibrate(model, batches, mode)              static ranges: observe, then freeze
    ptq_model(float_model, spec, batches)        PTQ: a quantized copy of a trained float model
    qat_model(model_cfg, train_cfg, spec, ...)   QAT from scratch ([S25]) or fine-tuned ([Z25]), cached
    stability_report(model)                      largest |Ā| per layer after quantization

Where the quantizers live once `quantize_` has run:

    block.ssm.quant            SSMQuantization: A, B, C, D, dt, state, partial_Ax, partial_Bu,
                               state_kernel, state_input (see its docstring)
    block.act_quant            FakeQuantizer of the activations (SSM output after its activation)
    block.mixing, model.encoder, model.decoder
                               weights fake-quantized through torch.nn.utils.parametrize: `.weight`
                               is the quantized weight, `.parametrizations.weight.original` the float
                               master weight that training updates; biases stay float.
    model.precision            the PrecisionSpec

Gradients pass the quantizers straight through (config.ste), so the same quantized model trains
with aimc_ssm.train.fit in conv or recurrent mode.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from .data import make_loaders
from .model import ModelConfig, S4DModel
from .precision import PrecisionSpec
from .qrecurrent import quantized_scan, quantized_step
from .quantizers import ComplexQuantizer, FakeQuantizer, QuantizerConfig
from .s4d import S4D, discretize
from .train import DEFAULT_CACHE, TrainConfig, config_key, fit, load_model, trained_model, training_data


class SSMQuantization(nn.Module):
    """The quantizers of one S4D layer, attached as `layer.quant` (the hook of aimc_ssm.s4d).

    Quantizers (float ones pass their input through):
        A, B, C                    ComplexQuantizer of Ā, B̄, C ("cartesian", "polar": Ā polar) or
                                   of continuous A, B, C ("continuous"); channels along H
        D                          FakeQuantizer of D (H,)
        dt                         FakeQuantizer of log dt (H,), used in "continuous" only
        state                      ComplexQuantizer of the recurrent state x (B, H, n): polar for
                                   "polar"; call it on a complex state to quantize it as deployed
        partial_Ax, partial_Bu     Ā⊙x and B̄u before the add, with the state's config and form
                                   (None unless spec.partial_products)
        state_kernel, state_input  conv-mode proxy of the state's precision: kernel K (H, L) and
                                   input u (B, L, H) (None unless spec.conv_state_proxy)
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
        self.state = ComplexQuantizer(spec.state, form, channel_dim=-2)
        self.partial_Ax = self.partial_Bu = self.state_kernel = self.state_input = None
        if spec.partial_products:
            self.partial_Ax = ComplexQuantizer(spec.state, form, channel_dim=-2)
            self.partial_Bu = ComplexQuantizer(spec.state, form, channel_dim=-2)
        if spec.conv_state_proxy:
            self.state_kernel = FakeQuantizer(spec.state, channel_dim=-2)
            self.state_input = FakeQuantizer(spec.state, channel_dim=-1)

    @property
    def requantizes_state(self) -> bool:
        """Whether the recurrence differs from the float one (partial products share the state's bits)."""
        return not self.state.is_float

    def ssm_parameters(self, ssm: S4D):
        """The quantized discrete system (Ā, B̄, C, D) of `ssm`."""
        dt, A, B, C = ssm.continuous_parameters()
        if self.parameterization == "continuous":
            if not self.dt.is_float:
                dt = torch.exp(self.dt(ssm.log_dt))  # log-domain, as [S25]
            dA, dB = discretize(dt, self.A(A), self.B(B), ssm.discretization)
        else:
            dA, dB = discretize(dt, A, B, ssm.discretization)
            dA, dB = self.A(dA), self.B(dB)
        return dA, dB, self.C(C), self.D(ssm.D)

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


def _quantize_weight(linear: nn.Linear, config: QuantizerConfig) -> None:
    if not config.is_float:
        # unsafe: the registration's trial call would fail on a static quantizer not yet calibrated
        parametrize.register_parametrization(linear, "weight", FakeQuantizer(config, channel_dim=-2), unsafe=True)


def quantize_(model: S4DModel, spec: PrecisionSpec) -> S4DModel:
    """Attach fake quantizers for every component of `spec` to `model`, in place; returns `model`.

    Quantize a copy (copy.deepcopy) to keep the float model. A float spec changes no output.
    """
    if not isinstance(spec, PrecisionSpec):
        raise TypeError(f"quantize_ needs a PrecisionSpec, got {type(spec).__name__}")
    if not isinstance(model, S4DModel):
        raise TypeError(f"quantize_ needs an S4DModel, got {type(model).__name__}")
    if precision_of(model) is not None:
        raise ValueError("model is already quantized; quantize_ a copy of the float model instead")
    for block in model.blocks:
        block.ssm.quant = SSMQuantization(spec)
        block.act_quant = FakeQuantizer(spec.act, channel_dim=-1)
        _quantize_weight(block.mixing, spec.mixing)
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


def install_quantization(ssm: S4D, quant: SSMQuantization, new_buffers: tuple[str, ...] = ()) -> None:
    """Make `quant` the layer's quantization, keeping the calibrated ranges and the state quantizer it had
    (which a deployment may have removed). new_buffers: state `quant` has that the old one lacks."""
    old = ssm.quant
    if old is not None:
        missing, unexpected = quant.load_state_dict(old.state_dict(), strict=False)
        if unexpected or set(missing) - set(new_buffers):
            raise ValueError(f"the layer's quantization does not match its model's spec: missing {missing}, unexpected {unexpected}")
        quant.state = old.state
    ssm.quant = quant.to(ssm.D.device)


CALIBRATION_BATCHES = 8  # training batches: enough for the min/max ranges of static quantizers


def calibration_modes(spec: PrecisionSpec) -> tuple[str, ...]:
    """The modes that calibrate every static quantizer of `spec`. A recurrent pass re-observes every
    quantizer but the conv-mode state proxies, so a conv pass before it matters only for those."""
    if "state" not in spec.static():
        return ("conv",)
    return ("conv", "recurrent") if spec.conv_state_proxy else ("recurrent",)


def calibrate_static(model: S4DModel, spec: PrecisionSpec, batches: list) -> None:
    """Calibrate every static quantizer of `spec` on `batches`, in each mode that reaches one."""
    for mode in calibration_modes(spec):
        calibrate(model, batches, mode)


def first_training_batches(data, train_cfg: TrainConfig, count: int = CALIBRATION_BATCHES) -> list:
    """The first `count` training batches in the seeded training order: what static ranges calibrate on."""
    train_loader = make_loaders(data, train_cfg.batch_size, train_cfg.seed)[0]
    return list(itertools.islice(train_loader, count))


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
    the float model trained with it (trained_model's cache) and fine-tunes with train_cfg ([Z25]:
    e.g. TrainConfig(epochs=10, lr=1e-3)). train_cfg.mode picks conv (fast; the state only through
    spec.conv_state_proxy) or recurrent (the deployed recurrence, slower). Static ranges are
    calibrated on the first `calibration_batches` training batches before training.
    Raises aimc_ssm.train.DivergenceError if the loss becomes NaN or infinite.
    """
    source = asdict(finetune_from) if finetune_from is not None else {}
    run_dir = Path(cache_dir) / f"qat-{config_key(model_cfg, train_cfg, spec.to_dict(), source)}"
    if (run_dir / "metrics.json").exists():
        return load_quantized_model(run_dir)
    data = training_data(model_cfg, train_cfg)
    if finetune_from is None:
        torch.manual_seed(train_cfg.seed)
        model = S4DModel(model_cfg)
    else:
        model, _ = trained_model(model_cfg, finetune_from, cache_dir, progress)
    quantize_(model, spec)
    if spec.static():
        calibrate_static(model, spec, first_training_batches(data, train_cfg, calibration_batches))
    meta = {"model": model_cfg.to_dict(), "precision": spec.to_dict(), "finetune_from": source or None}
    metrics = fit(model, data, train_cfg, run_dir, meta, progress)
    return model.cpu().eval(), metrics


def load_quantized_model(run_dir: Path) -> tuple[S4DModel, dict]:
    """The best-val quantized model of a finished QAT run and its metrics."""
    return load_model(run_dir, prepare=lambda model, meta: quantize_(model, PrecisionSpec.from_dict(meta["precision"])))


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
