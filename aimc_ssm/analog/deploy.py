"""A trained S4D model on analog crossbars: conversion, calibration, programming and drift.

    to_analog(model, rpu_config, ...)     a copy with aihwkit AnalogLinear layers and fused SSM kernels
    measure_signals / apply_signal_peaks  static DAC ranges and the kernels' mapping from signals
    program(model, t_inference)           aihwkit programming noise, then drift to t_inference seconds

Zero cells. aihwkit programs every cell of a tile, so a cell whose target weight is zero still draws
programming noise (pcm's noise polynomial has a constant term) and keeps it through drift. A fused
kernel is mostly such cells (a state column has about three nonzero weights among N + 2). A chip may
leave them at their reset state instead: `program(..., zero_cells="unprogrammed")` restores them to
zero after aihwkit's programming. A cell at zero conductance neither drifts nor draws pcm's read noise,
which scale with the conductance, so it stays zero at every read time. The default, "programmed", is
aihwkit's behaviour.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.model import S4DModel
from ..quant.quantize import without_state_quantizer
from .kernel import FusedS4D, check_mapping
from .layout import signal_peaks

ZERO_CELLS = ("programmed", "unprogrammed")  # how `program` treats cells whose target weight is zero
DRIFT_TIMES = {"1s": 1.0, "1h": 3600.0, "1d": 86400.0, "1y": 365 * 86400.0}  # t_inference, seconds


def digital_linear(module: nn.Module) -> nn.Linear:
    """A plain nn.Linear with the weights a (possibly quantized) Linear computes with."""
    if type(module) is nn.Linear:
        return module
    weight = module.weight  # a parametrized (fake-quantized) Linear computes its quantized weight here
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear.to(module.weight.device)


def default_generator(device: torch.device) -> torch.Generator:
    """torch's default random generator of `device`, which draws made there without a generator use."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def sequence_analog_linear():
    """aihwkit's AnalogLinear reading every sequence of a batch on its own, from its own stream: in eval
    mode each sequence (B, ...) runs through the tile alone, torch's generator seeded by the sequence's key
    (aimc_ssm.analog.draws.sequence_keys), so its output noise and its bound and noise management do not
    depend on its batch-mates; a tile without noise or managed reads runs the batch at once. The tile's
    periphery still decides once per call, for all L vectors of a sequence (pcm manages neither)."""
    from aihwkit.nn import AnalogLinear

    from .draws import sequence_keys

    class SequenceAnalogLinear(AnalogLinear):
        def forward(self, x_input: torch.Tensor) -> torch.Tensor:
            io = next(self.analog_tiles()).rpu_config.forward  # a layer split over tiles holds a TileModuleArray
            if self.training or io.is_perfect or x_input.dim() < 2:
                return super().forward(x_input)
            keys = sequence_keys(x_input, torch.initial_seed()).tolist()
            # the tile draws on its input's device, so that device's generator alone is seeded, and its
            # state is restored once after the batch. torch.manual_seed would seed every backend's
            # generator, and queue a call with its stack trace for each one not yet initialized, per sequence
            generator = default_generator(x_input.device)
            state = generator.get_state()
            outputs = []
            try:
                for b, key in enumerate(keys):
                    generator.manual_seed(key)
                    outputs.append(super().forward(x_input[b : b + 1]))
            finally:
                generator.set_state(state)
            return torch.cat(outputs)

    return SequenceAnalogLinear


def analog_linear(module: nn.Module, rpu_config, reads: str = "per-sequence") -> nn.Module:
    """aihwkit's AnalogLinear from a (possibly quantized) Linear, via aihwkit's conversion; reads "per-sequence"
    (`sequence_analog_linear`) or "batched" (aihwkit's tile as it is)."""
    from aihwkit.nn import AnalogLinear
    from aihwkit.nn.conversion import convert_to_analog

    layer = sequence_analog_linear() if reads == "per-sequence" else AnalogLinear
    # convert_to_analog copies the config; the Linear is a fresh one or the caller's own copy's
    return convert_to_analog(digital_linear(module), rpu_config, inplace=True, conversion_map={nn.Linear: layer}).eval()


def check_rpu_config(rpu_config) -> None:
    from aihwkit.simulator.configs import InferenceRPUConfig

    if not isinstance(rpu_config, InferenceRPUConfig):
        raise ValueError(
            f"expected an aihwkit inference RPU config, got {type(rpu_config).__name__}; "
            "load one with aimc_ssm.analog.devices.load_device('pcm')"
        )


def to_analog(
    model: S4DModel,
    rpu_config,
    *,
    ssm_rpu_config=None,
    calibration_inputs: torch.Tensor | None = None,
    mapping: str = "balanced",
    state_quantizer: bool = True,
    copies: int = 1,
    y_adc_range: float | None = None,
    reads: str = "per-sequence",
) -> S4DModel:
    """A copy of a trained (float, PTQ or QAT) S4DModel on analog crossbars, in eval mode.

    Encoder, mixing and decoder become aihwkit AnalogLinear layers built from `rpu_config` (pure-PyTorch
    or compiled tiles); each SSM becomes a `FusedS4D` on `ssm_rpu_config` (default: the same device).
    Digital parts stay digital: activations, GLU, norms, and the quantizers a PTQ/QAT model applies
    there. `calibration_inputs` (B, L, d_input) set every static DAC range and the kernels' `mapping`
    (one of aimc_ssm.analog.kernel.MAPPINGS, see its module docstring) from the source model's signals
    (`measure_signals`, `apply_signal_peaks`); without them the ranges keep the device's init value and the
    state is mapped directly. The tiles hold the target weights until `program` applies programming noise and drift.
    state_quantizer: whether a PTQ/QAT model's digital state quantizer runs in the kernels' periphery on
    the fed-back state (aimc_ssm.analog.kernel); off, the converters are the state's only quantizers.
    copies (devices per weight) and y_adc_range (the y column's own ADC range) are `FusedS4D`'s: see
    aimc_ssm.analog.kernel. reads: "per-sequence" (a chip's: every sequence read on its own, from its own
    random stream, whatever its batch) or "batched" (aihwkit's tiles, which decide and draw for the batch).
    """
    check_rpu_config(rpu_config)
    check_mapping(mapping)
    ssm_rpu_config = rpu_config if ssm_rpu_config is None else ssm_rpu_config
    check_rpu_config(ssm_rpu_config)
    source = model
    model = copy.deepcopy(model).eval()
    model.encoder = analog_linear(model.encoder, rpu_config, reads)
    for block in model.blocks:
        block.mixing = analog_linear(block.mixing, rpu_config, reads)
        block.ssm = FusedS4D(block.ssm, ssm_rpu_config, state_quantizer, copies=copies, y_adc_range=y_adc_range, reads=reads)
    model.decoder = analog_linear(model.decoder, rpu_config, reads)
    if calibration_inputs is not None:
        apply_signal_peaks(model, measure_signals(source, calibration_inputs, state_quantizer), mapping)
    return model.eval()


@torch.no_grad()
def measure_signals(source: S4DModel, inputs: torch.Tensor, state_quantizer: bool = True) -> dict:
    """What calibration needs of `source`'s signals on inputs (B, L, d_input), by module name: the
    largest |input| of every Linear (encoder, mixing, decoder), `signal_peaks` of every SSM layer.
    state_quantizer: whether the deployment re-quantizes the state digitally, as `to_analog`'s."""
    if not state_quantizer:
        source = without_state_quantizer(source)
    was_training = source.training
    source.eval()
    seen: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].detach()

        return hook

    linears = ["encoder", "decoder"] + [f"blocks.{i}.mixing" for i in range(len(source.blocks))]
    ssms = [f"blocks.{i}.ssm" for i in range(len(source.blocks))]
    modules = dict(source.named_modules())
    handles = [modules[name].register_forward_pre_hook(record(name)) for name in linears + ssms]
    try:
        source(inputs, "recurrent")
    finally:
        for handle in handles:
            handle.remove()
        source.train(was_training)
    peaks: dict = {name: seen[name].abs().max().item() for name in linears}
    for name in ssms:
        dA, dB, _, _ = modules[name].ssm_parameters()
        peaks[name] = signal_peaks(dA.detach(), dB.detach(), seen[name])
    return peaks


def apply_signal_peaks(analog_model: S4DModel, peaks: dict, mapping: str = "balanced") -> None:
    """Set DAC ranges and the kernels' mapping from `measure_signals`: each crossbar gets the largest |u| and
    mapped |x| its channel sees (`FusedS4D.calibrate_from_peaks`), each analog Linear the largest |input|.
    Tiles without an input range keep none: perfect forwards (no DAC), and the Linear tiles of devices
    that scale their inputs by noise management instead. One measurement serves any number of devices."""
    modules = dict(analog_model.named_modules())
    for name, peak in peaks.items():
        if isinstance(modules[name], FusedS4D):
            modules[name].calibrate_from_peaks(*peak, mapping)
            continue
        for tile in modules[name].analog_tiles():
            if tile.input_range is not None:
                tile.set_input_range(peak if peak > 0 else 1.0)


@torch.no_grad()
def program(analog_model: nn.Module, t_inference: float = 0.0, reprogram: bool = True, zero_cells: str = "programmed") -> nn.Module:
    """Program all tiles (aihwkit programming noise) and let them drift to t_inference seconds.

    aihwkit's `program_analog_weights` draws fresh programming noise from the target weights;
    `drift_analog_weights` applies drift and read noise up to t_inference and re-reads the global drift
    compensation. reprogram=False keeps the programmed devices and only drifts them to a new time
    (evaluate one chip at 1 s, 1 h, 1 d, 1 y: see DRIFT_TIMES). zero_cells: "programmed" (aihwkit's
    behaviour) or "unprogrammed", cells whose target is zero left at zero (see the module docstring).
    """
    from aihwkit.inference.utils import drift_analog_weights, program_analog_weights
    from aihwkit.nn.modules.base import AnalogLayerBase

    if zero_cells not in ZERO_CELLS:
        raise ValueError(f"zero_cells must be one of {ZERO_CELLS}, got {zero_cells!r}")
    analog_model.eval()
    if reprogram:
        program_analog_weights(analog_model, None)
        if zero_cells == "unprogrammed":
            for layer in analog_model.modules():
                if isinstance(layer, AnalogLayerBase):
                    for tile in layer.analog_tiles():
                        unprogram_zero_cells(tile)
    drift_analog_weights(analog_model, t_inference)
    return analog_model


@torch.no_grad()
def unprogram_zero_cells(tile) -> None:
    """Set the programmed cells of a just-programmed inference tile whose target weight is zero back to
    zero, and re-read its drift-compensation baseline from the weights it now holds."""
    target = tile.reference_combined_weights
    tile.programmed_weights = torch.where(target == 0, torch.zeros_like(target), tile.programmed_weights)
    tile.tile.set_weights(tile.programmed_weights)
    compensation = getattr(tile.rpu_config, "drift_compensation", None)
    if compensation is not None:
        tile.drift_baseline = compensation.init_baseline(tile)
