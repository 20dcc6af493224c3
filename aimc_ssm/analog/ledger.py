"""Energy and latency of a deployed model: what one inference converts, reads and computes, and its price.

    ledger(analog_model, length)            counts of one inference of `length` steps (batch 1), read
                                            from the model `to_analog` deployed: per step and one-off
    EnergyModel                             prices and times: ADC, DAC, crossbar reads, digital operations
    device_energy_model(device, **changes)  a device file's ENERGY_MODEL over the defaults
    price(tally, energy_model)              Cost (energy by part, latency) of a step, a sequence, an inference
    ledger_columns(ledger, energy_model)    flat CSV columns for the studies

What is counted. A *step* is one input time step in steady state; an *inference* is one sequence of
L steps, `Ledger.per_step` L times plus `Ledger.per_sequence`, the one-off work: every fused kernel's
flush step (L inputs take L + 1 steps, aimc_ssm.analog.kernel), the mean pooling's division by L and
the decoder, which reads the pooled vector once.

  analog reads  one matrix-vector product of one crossbar, by the size used (rows × columns): every
                tile of an AnalogLinear (aihwkit splits a Linear larger than mapping.max_input_size ×
                max_output_size into a TileModuleArray of tiles; its size is in_size × out_size), and
                one fused crossbar per SSM channel, copies·(N+2) rows × (N+1) columns.
  DAC, ADC      one conversion per row and per column of a read, by resolution in bits (aihwkit's
                n-bit resolution 1/(2^n − 2) is n bits; any other, log2(steps + 2); None: a converter
                that does not quantize). aihwkit converts every row, each copy's row group too. A
                perfect forward (forward.is_perfect) has no converters: no conversions. A kernel with a
                y_adc_range is one read whose y column has an ADC gain of its own (kernel.py): the same
                conversions as without; the simulation's two MVMs are one read of the periphery.
                Iterative bound management repeats reads as the data require; counted is the first.
  digital       the periphery's operations, by purpose, one count per element (`DIGITAL_OPS` gives
                the adds, multiplies and table look-ups of each): input scaling (the DAC range and
                noise management), a column's output factor (input range, mapping scale, drift
                compensation and learned scale folded into one multiply), the Linears' bias and
                partial sums of tiles split along the inputs, the incremental mapping's add of the
                previous state, state and activation quantizers, GELU, the mixing's GLU or ReLU,
                norms, the residual, the mean pooling.

Latency (`Tally.serial_reads`, `Tally.serial_ops`): within a step the stages run one after the
other, with no pipelining between layers or steps. The H crossbars of a fused kernel are read in
parallel (one read time); the tiles of a Linear one after the other; a digital stage applies its
operations to all its elements at once, one operation after the other (reductions of norms as one
operation). An inference then takes L step latencies plus the one-off work's: an upper bound that a
pipelined chip beats.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields

from torch import nn

from ..core.model import HardGELU
from .devices import DeviceError, device_path, import_device_file, parse_value, res_to_steps
from .kernel import FusedS4D, fused_layers

# -- counting -------------------------------------------------------------------------------------------
# purpose -> operations per element; `EnergyModel` prices an add, a multiply and a table look-up
QUANTIZATION = {"multiply": 2, "add": 1}  # onto the grid, round (and saturate), back to the value
DIGITAL_OPS = {
    "input_scale": {"multiply": 1},  # x / r before the DAC: the DAC range r, noise management's divisor
    "max_search": {"add": 1},  # noise management's largest |x| of an input vector: one comparison an element
    "output_scale": {"multiply": 1},  # a column's digital factors, folded into one per column
    "bias": {"add": 1},
    "partial_sum": {"add": 1},  # a Linear split along its inputs over tiles: their outputs added
    "incremental_add": {"add": 1},  # the incremental mapping: x_t = x_{t-1} + the ADC's read
    "state_quantization": QUANTIZATION,  # a PTQ/QAT model's state quantizer on the fed-back state
    "activation_quantization": QUANTIZATION,  # a PTQ/QAT model's activation quantizer after the SSM
    "gelu": {"lookup": 1},
    "relu": {"add": 1},  # a comparison
    "glu": {"lookup": 1, "multiply": 1},  # sigmoid of the gate half, times the value half
    "layer_norm": {"add": 4, "multiply": 3},  # mean and variance sums, centre, times 1/σ, affine
    "layer_norm_rsqrt": {"lookup": 1},  # 1/σ, once a vector
    "batch_norm": {"multiply": 1, "add": 1},  # inference: a fixed affine map per channel
    "residual": {"add": 1},
    "pooling": {"add": 1},  # the mean over time, accumulated every step
    "pooling_scale": {"multiply": 1},  # and divided by L once
}


def op_count(purpose: str) -> int:
    """Operations per element of a purpose of `DIGITAL_OPS`, one after the other."""
    return sum(DIGITAL_OPS[purpose].values())


@dataclass
class Tally:
    """Conversions, reads and digital operations of one piece of work, and its critical path.

    dac, adc: conversions by bits (None: a converter that does not quantize); reads: analog reads by
    the crossbar size used, (rows, columns); digital: elements by purpose (`DIGITAL_OPS`).
    serial_reads, serial_ops: reads and digital operations on the critical path (module docstring).
    Adding tallies puts their work one after the other; `tally * k` repeats it k times.
    """

    dac: Counter = field(default_factory=Counter)
    adc: Counter = field(default_factory=Counter)
    reads: Counter = field(default_factory=Counter)
    digital: Counter = field(default_factory=Counter)
    serial_reads: int = 0
    serial_ops: int = 0

    def __add__(self, other: Tally) -> Tally:
        return Tally(
            self.dac + other.dac, self.adc + other.adc, self.reads + other.reads, self.digital + other.digital,
            self.serial_reads + other.serial_reads, self.serial_ops + other.serial_ops,
        )

    def __mul__(self, k: int) -> Tally:
        def times(counter):
            return Counter({key: k * n for key, n in counter.items()})

        return Tally(times(self.dac), times(self.adc), times(self.reads), times(self.digital), k * self.serial_reads, k * self.serial_ops)

    def stage(self, purpose: str, elements: int) -> Tally:
        """Add a digital stage: `purpose` on `elements` elements at once (its operations once on the critical path)."""
        if elements > 0:
            self.digital[purpose] += elements
            self.serial_ops += op_count(purpose)
        return self

    @property
    def dac_conversions(self) -> int:
        return sum(self.dac.values())

    @property
    def adc_conversions(self) -> int:
        return sum(self.adc.values())

    @property
    def analog_reads(self) -> int:
        return sum(self.reads.values())

    @property
    def cells_read(self) -> int:
        """Cells read, summed over reads: rows × columns of each."""
        return sum(rows * cols * n for (rows, cols), n in self.reads.items())

    def operations(self) -> Counter:
        """Digital operations by kind (add, multiply, lookup)."""
        ops = Counter()
        for purpose, elements in self.digital.items():
            for kind, count in DIGITAL_OPS[purpose].items():
                ops[kind] += count * elements
        return ops

    @property
    def digital_ops(self) -> int:
        return sum(self.operations().values())


@dataclass
class Ledger:
    """What one inference of a sequence of `length` steps (batch 1) converts, reads and computes."""

    length: int
    per_step: Tally  # one input time step in steady state
    per_sequence: Tally  # once a sequence: the kernels' flush steps, the pooling's division, the decoder

    @property
    def per_inference(self) -> Tally:
        return self.per_step * self.length + self.per_sequence


def converter_bits(res: float) -> float | None:
    """Bits of an aihwkit converter resolution: n for aihwkit's n-bit 1/(2^n − 2), else log2(steps + 2);
    None where it does not quantize."""
    steps = res_to_steps(res)
    if steps is None:
        return None
    bits = math.log2(steps + 2)
    return int(bits) if bits.is_integer() else round(bits, 3)


def crossbar_read(io, rows: int, cols: int) -> Tally:
    """One read of a crossbar of rows × cols used, with io's converters (none on a perfect forward)."""
    tally = Tally(reads=Counter({(rows, cols): 1}), serial_reads=1)
    if not io.is_perfect:
        tally.dac[converter_bits(io.inp_res)] += rows
        tally.adc[converter_bits(io.out_res)] += cols
    return tally


def input_scaling(tile) -> list[str]:
    """The digital stages on a tile's inputs before its DAC: the DAC range, noise management."""
    from aihwkit.simulator.parameters.enums import NoiseManagementType

    io = tile.rpu_config.forward
    if io.is_perfect:
        return []
    searches = io.noise_management in (NoiseManagementType.ABS_MAX, NoiseManagementType.MAX)
    scales = tile.input_range is not None or io.noise_management != NoiseManagementType.NONE
    return ["max_search"] * searches + ["input_scale"] * scales


def linear_tally(module: nn.Module) -> Tally:
    """One forward of an AnalogLinear on one input vector: its tiles read one after the other."""
    if not hasattr(module, "analog_tiles"):
        raise ValueError(
            f"expected an aihwkit AnalogLinear, got {type(module).__name__}: a ledger reads a model from "
            "aimc_ssm.analog.to_analog"
        )
    tiles = list(module.analog_tiles())
    tally = sum((crossbar_read(t.rpu_config.forward, t.in_size, t.out_size) for t in tiles), Tally())
    for purpose in input_scaling(tiles[0]):
        tally.stage(purpose, sum(t.in_size for t in tiles))
    tally.stage("output_scale", sum(t.out_size for t in tiles))
    array = module.analog_module
    splits = len(getattr(array, "in_sizes", [array.in_size]))
    for _ in range(splits - 1):  # the tiles along the inputs add up, one sum after the other
        tally.stage("partial_sum", module.out_features)
    if getattr(array, "bias", None) is not None:  # aihwkit's digital bias
        tally.stage("bias", module.out_features)
    return tally


def kernel_tally(kernel: FusedS4D) -> Tally:
    """One step of a fused kernel: its H crossbars read at once, then the state's periphery."""
    H, N = kernel.d_model, kernel.d_state
    io = kernel.rpu_config.forward
    read = crossbar_read(io, kernel.copies * (N + 2), N + 1)
    tally = read * H
    tally.serial_reads = 1  # the channels' crossbars in parallel
    for purpose in input_scaling(kernel.tiles[0]):
        tally.stage(purpose, H * (N + 2))  # the copies' rows take the same scaled inputs
    tally.stage("output_scale", H * (N + 1))
    if kernel.incremental:
        tally.stage("incremental_add", H * N)
    if kernel.state_quantizer is not None:
        tally.stage("state_quantization", H * N)
    return tally


def norm_tally(norm: nn.Module, H: int) -> Tally:
    tally = Tally()
    if isinstance(norm, nn.Identity):
        return tally
    if getattr(norm, "kind", None) == "layer":
        return tally.stage("layer_norm", H).stage("layer_norm_rsqrt", 1)
    if getattr(norm, "kind", None) == "batch":
        return tally.stage("batch_norm", H)
    raise ValueError(f"no ledger entry for the norm {type(norm).__name__}: expected aimc_ssm.core.model.ChannelNorm or none")


def activation_tally(activation: nn.Module, H: int) -> Tally:
    if isinstance(activation, nn.Identity):
        return Tally()
    if isinstance(activation, (nn.GELU, HardGELU)):  # the quantized models' x·clamp(x + 2, 0, 4)/4 counts as GELU's lookup
        return Tally().stage("gelu", H)
    raise ValueError(f"no ledger entry for the activation {type(activation).__name__}: expected GELU or none")


def quantizer_tally(quantizer: nn.Module, H: int) -> Tally:
    if isinstance(quantizer, nn.Identity) or getattr(quantizer, "is_float", False):
        return Tally()
    if hasattr(quantizer, "is_float"):
        return Tally().stage("activation_quantization", H)
    raise ValueError(f"no ledger entry for the activation quantizer {type(quantizer).__name__}")


def mixing_activation_tally(activation: nn.Module, H: int) -> Tally:
    if isinstance(activation, nn.GLU):
        return Tally().stage("glu", H)
    if isinstance(activation, nn.ReLU):
        return Tally().stage("relu", H)
    raise ValueError(f"no ledger entry for the mixing activation {type(activation).__name__}: expected GLU or ReLU")


def block_tally(block: nn.Module) -> Tally:
    """One step of an S4D block (aimc_ssm.core.model.S4DBlock), its stages in the order of its forward."""
    H = block.ssm.d_model
    tally = norm_tally(block.norm, H) if block.prenorm else Tally()
    tally = tally + kernel_tally(block.ssm) + activation_tally(block.activation, H) + quantizer_tally(block.act_quant, H)
    tally = tally + linear_tally(block.mixing) + mixing_activation_tally(block.mixing_activation, H)
    if block.residual:
        tally.stage("residual", H)
    return tally if block.prenorm else tally + norm_tally(block.norm, H)


def ledger(analog_model: nn.Module, length: int) -> Ledger:
    """What one inference of a sequence of `length` steps costs `analog_model` (from
    aimc_ssm.analog.to_analog), read from its tiles, kernels and digital modules (module docstring)."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive number of time steps, got {length!r}")
    kernels = fused_layers(analog_model)
    H = kernels[0].d_model
    per_step = linear_tally(analog_model.encoder)
    for block in analog_model.blocks:
        per_step = per_step + block_tally(block)
    per_step.stage("pooling", H)
    flush = sum((kernel_tally(kernel) for kernel in kernels), Tally())
    per_sequence = flush + Tally().stage("pooling_scale", H) + linear_tally(analog_model.decoder)
    return Ledger(length, per_step, per_sequence)


# -- prices ---------------------------------------------------------------------------------------------
SURVEY_FOM_CAP_DB = 180.1  # B. Murmann's ADC Performance Survey: the envelope of FoM_S at low sample rates
SURVEY_FOM_INTERCEPT_DB, SURVEY_FOM_SLOPE_DB = 302.7, 6.46  # the envelope above ~175 MS/s: 302.7 − 6.46·ln f_s

# IBM's 64-core PCM chip (Le Gallo et al., Nature Electronics 6, 680-693, 2023): 64 cores of 256 × 256
# cells, 8-bit inputs and outputs, 63.1 TOPS at 9.76 TOPS/W. One MVM of a full core is 2·256² operations
# (a multiply and an add per cell), so it costs 2·256² / 9.76e12 J = 13.4 nJ, i.e. 2 / 9.76e12 J =
# 0.205 pJ per cell, and takes 2·256² / (63.1e12 / 64) s = 133 ns per core.
IBM_CORES, IBM_CORE_SIZE, IBM_OPS_PER_S, IBM_OPS_PER_J = 64, 256, 63.1e12, 9.76e12
IBM_MVM_OPS = 2 * IBM_CORE_SIZE**2
READ_PJ_PER_CELL = 1e12 * IBM_MVM_OPS / IBM_OPS_PER_J / IBM_CORE_SIZE**2
READ_TIME_NS = 1e9 * IBM_MVM_OPS / (IBM_OPS_PER_S / IBM_CORES)


def survey_adc_energy_j(bits: float, sample_rate_hz: float) -> float:
    """Energy of one conversion at the ADC survey's state-of-the-art bound (Murmann).

    Schreier's figure of merit FoM_S = SNDR + 10·log10((f_s/2) / P) gives P / f_s = 1 / (2·10^((FoM_S − SNDR)/10))
    per conversion, with SNDR = 6.02·bits + 1.76 dB (an ideal quantizer) and the survey's envelope
    FoM_S = min(180.1, 302.7 − 6.46·ln f_s) dB: ≈ 3 fJ, 48 fJ, 0.77 pJ at 6, 8, 10 bits up to ~175 MS/s.
    """
    sndr = 6.02 * bits + 1.76
    fom = min(SURVEY_FOM_CAP_DB, SURVEY_FOM_INTERCEPT_DB - SURVEY_FOM_SLOPE_DB * math.log(sample_rate_hz))
    return 1.0 / (2.0 * 10 ** ((fom - sndr) / 10))


PRICES = ("dac_pj", "read_pj_per_cell", "read_time_ns", "add_pj", "multiply_pj", "lookup_pj", "digital_op_time_ns")  # each >= 0


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class EnergyModel:
    """Prices and times of what a `Ledger` counts. Defaults and their sources:

    adc_sample_rate_hz  100 MS/s: sets the survey bound's figure of merit (flat up to ~175 MS/s).
    adc_measured_pj     measured energy per conversion by bits, e.g. {8: 1.2}; a resolution not in it
                        is priced at the survey bound (`survey_adc_energy_j`).
    unquantized_bits    the bits at which to price an ADC that does not quantize (aihwkit res ≤ 0);
                        None: such a ledger cannot be priced (the error says so).
    dac_pj              0.05 pJ per conversion, any resolution: a placeholder, not a measurement, of the
                        order of an 8-bit conversion at the ADC bound (48 fJ); set your DAC's figure.
    read_pj_per_cell    0.205 pJ per cell read: IBM's 64-core PCM chip (the constants above), a full
                        256 × 256 MVM at 13.4 nJ scaled by the cells a read uses. The chip's figure is the
                        whole core's, its input pulses and ADCs included, so the converters priced here
                        count again on top: at 8 bits 256 ADC conversions at the bound are 12 pJ, 0.1 % of
                        the 13.4 nJ. A device file with an array-only figure removes the double count.
    read_time_ns        133 ns per read: the same chip's MVM time per core (input pulses, integration and
                        the conversion of all columns at once, one ADC per column), for any crossbar size
                        and at any converter bits; a device file sets its own.
    add_pj, multiply_pj 0.03 and 0.2 pJ: an 8-bit integer add and multiply in 45 nm (Horowitz, "Computing's
                        energy problem", ISSCC 2014): the periphery works on the converters' words.
    lookup_pj           0.2 pJ per table look-up (GELU, sigmoid, 1/σ): a placeholder priced as a multiply.
    digital_op_time_ns  1 ns per digital operation on the critical path: a placeholder, a 1 GHz periphery.

    A device file overrides any of them with a dict ENERGY_MODEL = {"read_pj_per_cell": 0.05, ...}
    (`device_energy_model`).
    """

    adc_sample_rate_hz: float = 100e6
    adc_measured_pj: dict = field(default_factory=dict)
    unquantized_bits: float | None = None
    dac_pj: float = 0.05
    read_pj_per_cell: float = READ_PJ_PER_CELL
    read_time_ns: float = READ_TIME_NS
    add_pj: float = 0.03
    multiply_pj: float = 0.2
    lookup_pj: float = 0.2
    digital_op_time_ns: float = 1.0

    def __post_init__(self):
        measured = self.adc_measured_pj
        if not isinstance(measured, dict) or not all(is_number(b) and b > 0 and is_number(e) and e > 0 for b, e in measured.items()):
            raise ValueError(f"EnergyModel.adc_measured_pj must map bits to a positive energy in pJ, e.g. {{8: 1.2}}; got {measured!r}")
        if self.unquantized_bits is not None and not (is_number(self.unquantized_bits) and self.unquantized_bits > 0):
            raise ValueError(f"EnergyModel.unquantized_bits must be a positive number of bits or None, got {self.unquantized_bits!r}")
        if not (is_number(self.adc_sample_rate_hz) and self.adc_sample_rate_hz > 0):
            raise ValueError(f"EnergyModel.adc_sample_rate_hz must be a positive rate in Hz, got {self.adc_sample_rate_hz!r}")
        for name in PRICES:
            value = getattr(self, name)
            if not (is_number(value) and value >= 0):
                raise ValueError(f"EnergyModel.{name} must be a non-negative number, got {value!r}")

    def adc_pj(self, bits: float | None) -> float:
        """Energy of one ADC conversion at `bits` (None: a converter that does not quantize)."""
        if bits is None:
            if self.unquantized_bits is None:
                raise ValueError(
                    "the ledger has ADC conversions without a resolution (forward.out_res <= 0 on a converter that does "
                    "not quantize), which an energy needs: give the device ADC bits (--adc-bits) or set "
                    "EnergyModel.unquantized_bits (e.g. 16) to price them"
                )
            bits = self.unquantized_bits
        if bits in self.adc_measured_pj:
            return self.adc_measured_pj[bits]
        return 1e12 * survey_adc_energy_j(bits, self.adc_sample_rate_hz)

    def op_pj(self, kind: str) -> float:
        return {"add": self.add_pj, "multiply": self.multiply_pj, "lookup": self.lookup_pj}[kind]


@dataclass
class Cost:
    """Energy by part (pJ: adc, dac, read, digital) and latency (ns) of a tally."""

    energy_pj: dict
    latency_ns: float

    @property
    def total_pj(self) -> float:
        return sum(self.energy_pj.values())


def price(tally: Tally, energy: EnergyModel) -> Cost:
    """What `tally` costs under `energy`: every conversion, cell read and digital operation priced, and
    its critical path timed (module docstring)."""
    parts = {
        "adc": sum(n * energy.adc_pj(bits) for bits, n in tally.adc.items()),
        "dac": energy.dac_pj * tally.dac_conversions,
        "read": energy.read_pj_per_cell * tally.cells_read,
        "digital": sum(n * energy.op_pj(kind) for kind, n in tally.operations().items()),
    }
    latency = tally.serial_reads * energy.read_time_ns + tally.serial_ops * energy.digital_op_time_ns
    return Cost(parts, latency)


def ledger_columns(book: Ledger, energy: EnergyModel) -> dict:
    """Flat columns of a ledger and its price for a results table (energies in nJ, per inference unless named)."""
    inference, step = book.per_inference, book.per_step
    cost, step_cost = price(inference, energy), price(step, energy)
    return {
        "sequence_length": book.length,
        "energy_per_inference_nj": cost.total_pj / 1e3,
        "energy_per_step_nj": step_cost.total_pj / 1e3,
        "latency_per_inference_us": cost.latency_ns / 1e3,
        "latency_per_step_ns": step_cost.latency_ns,
        **{f"{part}_energy_nj": pj / 1e3 for part, pj in cost.energy_pj.items()},
        "adc_conversions": inference.adc_conversions,
        "dac_conversions": inference.dac_conversions,
        "analog_reads": inference.analog_reads,
        "cells_read": inference.cells_read,
        "digital_ops": inference.digital_ops,
    }


# -- device files ---------------------------------------------------------------------------------------
def device_energy_model(device, **changes) -> EnergyModel:
    """The EnergyModel of a device file: its ENERGY_MODEL dict (if any) over the defaults, then `changes`
    (values, or command-line strings read as the field's type)."""
    path = device_path(device)
    module = import_device_file(path)
    own = getattr(module, "ENERGY_MODEL", {})
    if not isinstance(own, dict):
        raise DeviceError(f"{path}: ENERGY_MODEL must be a dict of EnergyModel fields, got {type(own).__name__}")
    known = {f.name: f.default for f in fields(EnergyModel)}
    for source, values in ((f"{path}: ENERGY_MODEL", own), ("energy model override", changes)):
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise DeviceError(f"{source} has unknown fields {unknown}; EnergyModel's fields: {', '.join(known)}")
    parsed = {name: parse_value(value, 0.0) if name != "adc_measured_pj" else value for name, value in changes.items()}
    try:
        return EnergyModel(**{**own, **parsed})
    except ValueError as err:
        raise DeviceError(f"{path}: {err}") from err
