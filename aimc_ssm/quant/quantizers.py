"""Uniform fake quantization with straight-through gradients.

A quantizer rounds x onto a uniform grid and maps it back to real values ("fake" quantization:
the arithmetic stays in float, the values are those a b-bit device would hold):

    x_q = s · clamp(round(x / s), q_lo, q_hi)

The step s and the integer range [q_lo, q_hi] (a `Grid`) come from a range of x, per tensor, per
channel or per time step:

    symmetric   r = max|x| (or the p-th percentile of |x|),  s = r / (2^(b-1) - 1),  q in ±(2^(b-1) - 1)
                2^b - 1 levels with zero exact; b = 1 has the two levels ±r/2 instead
                symmetric_grid="q-levels": s = r / 2^(b-1), q in ±2^(b-1), [S25]'s grid of q = 2^b
                "levels" (q + 1 values: one more than b bits hold; b = 1 is ternary with the abs-max s)
    asymmetric  [lo, hi] = [min x, max x] (or the (100-p)-th and p-th percentiles),
                s = (hi - lo) / (2^b - 1),  q_lo = round(lo / s),  q_hi = q_lo + 2^b - 1   ([Z25])
                zero_point_bits=z: the integers are stored signed, from -2^(b-1), with the zero point
                zp = -2^(b-1) - q_lo held on a signed z-bit integer, clamped to [-2^(z-1), 2^(z-1) - 1]
                as [Z25]'s code does; a clamped zero point moves the whole grid (q_lo = -2^(b-1) - zp)
    ternary     s = mean|x| (BitNet b1.58), q in {-1, 0, +1}

so b bits never give more than 2^b levels, except [S25]'s q-levels grid. `clamp=c` clamps x at ±c
before its range is taken ([Z25] clamps the state at ±50 and y at ±1000).

Ranges are either dynamic (taken from the tensor being quantized, every call) or static: observed
during calibration (running min of the lows, max of the highs, as torch.ao's MinMaxObserver), then
frozen. A dynamic range is never pooled over a batch: an activation quantizer is told its tensor's
batch axis (`batch_dim`) and takes one range per sequence (per sequence and channel, per sequence and
step), so that a sequence's result does not depend on the other sequences of its batch, as on a chip
that sees one sequence at a time. Weights have no batch axis; static ranges are constants. Gradients
pass straight through the rounding ("identity"), or only where x fell inside the grid's range ("clipped").

Complex tensors are quantized as two real planes stacked on a leading axis, (Re, Im) in the
"cartesian" form, (|z|, ∠z) in the "polar" form ([Z25]), with a range of their own per plane
(complex_range="planes") or one range shared by both ("joint", [Z25]'s code for Ā, B̄ and C).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..io import from_dict_strict

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel", "step")
RANGES = ("dynamic", "static")
STES = ("identity", "clipped")
COMPLEX_FORMS = ("cartesian", "polar")
COMPLEX_RANGES = ("planes", "joint")
SYMMETRIC_GRIDS = ("narrow", "q-levels")
MIN_BITS, MAX_BITS = 1, 16
MIN_ZERO_POINT_BITS, MAX_ZERO_POINT_BITS = 1, 32
Z25_PERCENTILE = 99.999  # [Z25] clips the 0.001 % outliers on either side


@dataclass(frozen=True)
class QuantizerConfig:
    """How one tensor is quantized. Immutable; `dataclasses.replace` makes variants.

    Attributes:
        bits: 1 to 16 bits, or None for float (no quantization). b bits give at most 2^b levels:
            symmetric 2^b - 1 (zero exact; b = 1: ±r/2), asymmetric 2^b, ternary 3 (needs bits=2);
            [S25]'s q-levels grid 2^b + 1.
        scheme: "symmetric" (grid ±r around zero, [S25]) or "asymmetric" (grid over [lo, hi], [Z25]).
        percentile: clip the range at this percentile (nearest rank) instead of the extremes:
            of |x| for symmetric, of x at p and 100 - p for asymmetric. None picks the recipes'
            choices: 99.999 for asymmetric ([Z25]), 100 (abs-max) for symmetric ([S25]).
        granularity: "tensor" (one range), "channel" (one range per channel; which axis is the
            channel is fixed by the tensor's role, see aimc_ssm.quant.quantize) or "step" (one range
            per time step, over the channels: activations only, dynamic ranges only, [Z25]'s y).
            Dynamic ranges of activations are, in addition, always one per sequence (module docstring).
        ranges: "dynamic" (from each tensor quantized) or "static" (calibrated, then frozen).
        ste: straight-through gradient, "identity" (everywhere, [S25]) or "clipped" (zero where x
            fell outside the grid's range, [Z25]).
        ternary: levels {-1, 0, +1}·s with BitNet b1.58's s = mean|x|; needs bits=2 and the
            symmetric scheme. (symmetric bits=2 has the same levels with the abs-max s of [S25].)
        complex_range: for complex tensors, "planes" (a range per plane: Re and Im, or |z| and ∠z)
            or "joint" (one range over both planes, [Z25]'s code for Ā, B̄, C and the state).
        zero_point_bits: asymmetric only: the zero point held on a signed integer of this many bits
            (1 to 32) and clamped to it, as [Z25]'s code does (16 there); None: unlimited.
        symmetric_grid: symmetric only: "narrow" (±(2^(b-1) - 1)) or "q-levels" (±2^(b-1), [S25]'s
            q = 2^b levels with scale (q/2)/max|x|).
        clamp: clamp the values at ±clamp before they are quantized (and before their range is
            taken); None: no clamp. A float quantizer clamps nothing.
    """

    bits: int | None = 8
    scheme: str = "symmetric"
    percentile: float | None = None
    granularity: str = "tensor"
    ranges: str = "dynamic"
    ste: str = "identity"
    ternary: bool = False
    complex_range: str = "planes"
    zero_point_bits: int | None = None
    symmetric_grid: str = "narrow"
    clamp: float | None = None

    def __post_init__(self):
        if self.bits is not None and not _is_integer_in(self.bits, MIN_BITS, MAX_BITS):
            raise ValueError(
                f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, or None for float; got {self.bits!r}"
            )
        for name, allowed in (
            ("scheme", SCHEMES),
            ("granularity", GRANULARITIES),
            ("ranges", RANGES),
            ("ste", STES),
            ("complex_range", COMPLEX_RANGES),
            ("symmetric_grid", SYMMETRIC_GRIDS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {allowed}")
        if self.ternary:
            if self.scheme != "symmetric" or self.bits not in (2, None):
                raise ValueError(
                    "ternary levels {-1, 0, +1} are symmetric and take 2 bits: "
                    "use QuantizerConfig(bits=2, scheme='symmetric', ternary=True)"
                )
            if self.percentile not in (None, 100):
                raise ValueError("a ternary scale is mean|x|, which no percentile clips; leave percentile=None")
        if self.percentile is None:
            default = Z25_PERCENTILE if self.scheme == "asymmetric" else 100.0
            object.__setattr__(self, "percentile", default)
        if not 50 < self.percentile <= 100:
            raise ValueError(f"percentile must be in (50, 100] (100 keeps the extremes), got {self.percentile}")
        self._check_grid_options()

    def _check_grid_options(self) -> None:
        if self.granularity == "step" and self.ranges == "static":
            raise ValueError(
                "granularity='step' takes one range per time step of each sequence, which a calibrated "
                "constant cannot hold: use ranges='dynamic', or granularity 'channel' or 'tensor' for static ranges"
            )
        if self.zero_point_bits is not None:
            if self.scheme != "asymmetric":
                raise ValueError(
                    f"zero_point_bits={self.zero_point_bits!r} limits an asymmetric grid's zero point; a "
                    f"{self.scheme} grid has none: use scheme='asymmetric' or zero_point_bits=None"
                )
            if not _is_integer_in(self.zero_point_bits, MIN_ZERO_POINT_BITS, MAX_ZERO_POINT_BITS):
                raise ValueError(
                    f"zero_point_bits must be an integer from {MIN_ZERO_POINT_BITS} to {MAX_ZERO_POINT_BITS} "
                    f"(16 in [Z25]), or None for an unlimited zero point; got {self.zero_point_bits!r}"
                )
        if self.symmetric_grid == "q-levels" and (self.scheme != "symmetric" or self.ternary):
            raise ValueError(
                "symmetric_grid='q-levels' is [S25]'s abs-max grid ±2^(b-1): it needs scheme='symmetric' and "
                "ternary=False; leave symmetric_grid='narrow' otherwise"
            )
        if self.clamp is not None and (
            isinstance(self.clamp, bool) or not isinstance(self.clamp, (int, float)) or not 0 < self.clamp < math.inf
        ):
            raise ValueError(f"clamp must be a positive finite number (values clamped at ±clamp), or None; got {self.clamp!r}")

    @property
    def is_float(self) -> bool:
        return self.bits is None

    @property
    def levels(self) -> int | None:
        """Number of grid levels (None for float)."""
        if self.bits is None:
            return None
        if self.ternary:
            return 3
        if self.symmetric_grid == "q-levels":
            return 2**self.bits + 1
        if self.scheme == "asymmetric" or self.bits == 1:
            return 2**self.bits
        return 2**self.bits - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantizerConfig":
        return from_dict_strict(cls, d, "quantizer config")


def _is_integer_in(value, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


FLOAT = QuantizerConfig(bits=None)


# -- the rounding ------------------------------------------------------------------------------
class Grid(NamedTuple):
    """The levels scale·(q + offset) for integers q in [q_lo, q_lo + span].

    scale and q_lo broadcast against the tensor quantized (numbers or tensors); span is a number."""

    scale: torch.Tensor
    q_lo: torch.Tensor | float
    span: int
    offset: float = 0.0


def _clamp_and_scale_(q: torch.Tensor, g: Grid) -> torch.Tensor:
    """q (rounded, in place) -> scale·(clamp(q, q_lo, q_lo + span) + offset)."""
    if torch.is_tensor(g.q_lo):  # per-range bounds: shift so that clamp takes numbers (much faster);
        # the shift also turns a -0.0 level into +0.0, which the sequence keys of noisy reads hash
        q = q.sub_(g.q_lo).clamp_(0, g.span).add_(g.q_lo)
    else:
        q = q.clamp_(g.q_lo, g.q_lo + g.span)
    if g.offset:
        q = q.add_(g.offset)
    return q.mul_(g.scale)


def _rounded(x: torch.Tensor, g: Grid) -> torch.Tensor:
    """round(x / scale - offset), a new tensor."""
    return (x / g.scale - g.offset if g.offset else x / g.scale).round_()


class _RoundOntoGrid(torch.autograd.Function):
    """Rounding onto a Grid with a straight-through gradient (zero outside the grid if clipped)."""

    @staticmethod
    def forward(ctx, x, g: Grid, clipped: bool):
        q = _rounded(x, g)
        ctx.clipped = clipped
        if clipped:
            ctx.save_for_backward((q >= g.q_lo) & (q <= g.q_lo + g.span))
        return _clamp_and_scale_(q, g)

    @staticmethod
    def backward(ctx, grad):
        if ctx.clipped:
            (inside,) = ctx.saved_tensors
            grad = grad * inside
        return grad, None, None


def fake_quantize(x: torch.Tensor, g: Grid, clipped: bool = False) -> torch.Tensor:
    """Round x onto the grid g; the gradient passes straight through (where round(x/s) fell
    inside the grid if clipped)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _RoundOntoGrid.apply(x, g, clipped)
    return _clamp_and_scale_(_rounded(x, g), g)


def fake_quantize_(x: torch.Tensor, g: Grid) -> torch.Tensor:
    """fake_quantize in place, without autograd: the inference recurrence's own buffers."""
    x = x.div_(g.scale)
    if g.offset:
        x = x.sub_(g.offset)
    return _clamp_and_scale_(x.round_(), g)


def grid(config: QuantizerConfig, lo: torch.Tensor, hi: torch.Tensor) -> Grid:
    """The Grid of `config` for ranges [lo, hi] (scale and q_lo shaped as lo and hi)."""
    bits = config.bits
    if config.ternary or config.scheme == "symmetric":
        r = hi  # lo = -hi for these schemes
        steps = _symmetric_steps(config)
        scale = torch.where(r > 0, r / steps, torch.ones_like(r))  # an all-zero range: any step keeps 0
        if bits == 1 and config.symmetric_grid == "narrow" and not config.ternary:
            return Grid(scale, -1.0, 1, 0.5)  # levels ±r/2
        return Grid(scale, float(-steps), 2 * steps)
    span = 2**bits - 1
    scale = (hi - lo) / span
    # a constant tensor (lo = hi = v) gets the step |v|, which puts v itself on the grid
    degenerate = torch.where(lo != 0, lo.abs(), torch.ones_like(lo))
    scale = torch.where(scale > 0, scale, degenerate)
    q_lo = torch.round(lo / scale)
    if config.zero_point_bits is not None:
        q_lo = _held_zero_point(q_lo, bits, config.zero_point_bits)
    return Grid(scale, q_lo, span)


def _symmetric_steps(config: QuantizerConfig) -> int:
    """Integer steps on either side of zero of a symmetric (or ternary) grid."""
    if config.ternary:
        return 1
    if config.symmetric_grid == "q-levels":
        return 2 ** (config.bits - 1)  # [S25]: q/2 with q = 2^b
    return 1 if config.bits == 1 else 2 ** (config.bits - 1) - 1


def _held_zero_point(q_lo: torch.Tensor, bits: int, zero_point_bits: int) -> torch.Tensor:
    """q_lo once its zero point is held on a signed `zero_point_bits` integer ([Z25]'s code): the levels
    are stored as signed integers from -2^(b-1), so the zero point is zp = -2^(b-1) - q_lo; a zero point
    clamped to its integer's range moves the grid with it."""
    lowest = -(2 ** (bits - 1))
    limit = 2 ** (zero_point_bits - 1)
    zero_point = (lowest - q_lo).clamp(-limit, limit - 1)
    return lowest - zero_point


# -- ranges ------------------------------------------------------------------------------------
def _kth_largest_rank(p: float, n: int) -> int:
    """Nearest-rank position (1-based, ascending) of the p-th percentile among n values."""
    return min(n, max(1, math.ceil(p / 100 * n)))


def tensor_ranges(x: torch.Tensor, config: QuantizerConfig, kept: tuple[int, ...]):
    """(lo, hi) of x over every axis not in `kept` (non-negative axes), shaped to broadcast against x."""
    x = x.detach()
    reduced = tuple(d for d in range(x.dim()) if d not in kept)
    symmetric = config.scheme == "symmetric" or config.ternary
    if not reduced:  # one value per range: the value itself
        return (-x.abs(), x.abs()) if symmetric else (x, x)
    if config.ternary:
        hi = x.abs().mean(dim=reduced, keepdim=True)
        return -hi, hi
    p = config.percentile
    per_range = x.numel() // math.prod(x.shape[d] for d in kept)
    # below 100/(100-p) values per range the nearest rank is the extreme itself: max and min are two
    # fast reductions where a selection (kthvalue) costs ten times more, e.g. on the re-quantized state
    if p == 100 or _kth_largest_rank(p, per_range) == per_range:
        hi, lo = x.amax(dim=reduced, keepdim=True), x.amin(dim=reduced, keepdim=True)
        if symmetric:
            hi = torch.maximum(hi, -lo)
            return -hi, hi
        return lo, hi
    # percentiles: move the kept axes first and flatten the rest into one axis to select along
    keepdim_shape = [x.shape[d] if d in kept else 1 for d in range(x.dim())]
    flat = x.movedim(kept, tuple(range(len(kept)))).reshape(*[x.shape[d] for d in kept], -1)
    k = _kth_largest_rank(p, flat.shape[-1])
    if symmetric:
        hi = flat.abs().kthvalue(k, dim=-1).values.reshape(keepdim_shape)
        return -hi, hi
    hi = flat.kthvalue(k, dim=-1).values.reshape(keepdim_shape)
    lo = flat.kthvalue(flat.shape[-1] + 1 - k, dim=-1).values.reshape(keepdim_shape)
    return lo, hi


class FakeQuantizer(nn.Module):
    """Fake-quantizes real tensors according to one QuantizerConfig.

    Args:
        config: the QuantizerConfig.
        channel_dim: axis holding channels (negative, so leading axes may vary), used when
            config.granularity == "channel".
        planes: axis 0 holds the two planes of a complex tensor, each with ranges of its own.
        batch_dim: axis holding the sequences of a batch (negative), for activations: dynamic ranges
            keep it, one range per sequence, never pooled over the batch. None for weights.
        step_dim: axis holding the time steps (negative), used when config.granularity == "step".

    Static ranges live in the buffers `lo` and `hi` (None until calibrated), shaped by the kept axes
    other than the batch's, so they travel with `state_dict`. While `observing` is set (see
    aimc_ssm.quant.quantize.calibrate) the quantizer records ranges and passes its input through unchanged.
    """

    def __init__(
        self,
        config: QuantizerConfig,
        channel_dim: int | None = None,
        planes: bool = False,
        batch_dim: int | None = None,
        step_dim: int | None = None,
    ):
        super().__init__()
        for name, axis in (("channel_dim", channel_dim), ("batch_dim", batch_dim), ("step_dim", step_dim)):
            if axis is not None and not (isinstance(axis, int) and axis < 0):
                raise ValueError(f"{name} must be a negative axis (counted from the end), got {axis!r}")
        if config.granularity == "channel" and channel_dim is None:
            raise ValueError("per-channel quantization needs the tensor's channel_dim")
        if config.granularity == "step" and step_dim is None:
            raise ValueError(
                "granularity='step' needs the tensor's time axis (step_dim): only activations (batch, length, "
                "channels) have one; use granularity 'tensor' or 'channel' for weights and the state"
            )
        self.config = config
        self.channel_dim = channel_dim if config.granularity == "channel" else None
        self.step_dim = step_dim if config.granularity == "step" else None
        self.batch_dim = batch_dim
        self.planes = planes
        self.name = ""  # set by quantize_ to the module path, for error messages
        self.observing = False
        self.observations = 0
        self.register_buffer("lo", None)
        self.register_buffer("hi", None)

    @property
    def is_float(self) -> bool:
        return self.config.is_float

    @property
    def is_static(self) -> bool:
        return not self.config.is_float and self.config.ranges == "static"

    def kept_dims(self, x: torch.Tensor, per_sequence: bool) -> tuple[int, ...]:
        """The axes of x that get ranges of their own; the batch's where ranges are per sequence."""
        dims = {0} if self.planes else set()
        for axis in (self.channel_dim, self.step_dim, self.batch_dim if per_sequence else None):
            if axis is not None:
                dims.add(axis % x.dim())
        return tuple(sorted(dims))

    def ranges(self, x: torch.Tensor):
        """(lo, hi) broadcastable against x: the frozen static ranges or those of x itself (per sequence)."""
        if not self.is_static:
            return tensor_ranges(x, self.config, self.kept_dims(x, per_sequence=True))
        if self.lo is None:
            raise RuntimeError(
                f"static quantizer {self.name or 'FakeQuantizer'!r} has no range yet: run "
                "aimc_ssm.quant.quantize.calibrate(model, batches, mode) in the mode that uses it (the state "
                "and y exist only in 'recurrent' mode, the state's conv-mode proxy only in 'conv'), or use ranges='dynamic'"
            )
        kept = self.kept_dims(x, per_sequence=False)
        shape = [x.shape[d] if d in kept else 1 for d in range(x.dim())]
        return self.lo.reshape(shape), self.hi.reshape(shape)

    def grid(self, x: torch.Tensor) -> Grid:
        """The Grid for quantizing x (already clamped), broadcastable against x."""
        lo, hi = self.ranges(x)
        return grid(self.config, lo, hi)

    def clamped(self, x: torch.Tensor) -> torch.Tensor:
        """x clamped at ±config.clamp (x itself without a clamp)."""
        c = self.config.clamp
        return x if c is None else x.clamp(-c, c)

    def observe(self, x: torch.Tensor) -> None:
        """Widen the static ranges to those of x (clamped as it will be quantized), over every sequence."""
        x = self.clamped(x)
        kept = self.kept_dims(x, per_sequence=False)
        lo, hi = tensor_ranges(x, self.config, kept)
        compact = [x.shape[d] for d in kept]
        lo, hi = lo.reshape(compact), hi.reshape(compact)
        if self.observations:
            lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.lo, self.hi = lo, hi
        self.observations += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.is_float:
            return x
        if self.observing:
            self.observe(x)
            return x
        x = self.clamped(x)
        return fake_quantize(x, self.grid(x), self.config.ste == "clipped")

    def quantize_(self, x: torch.Tensor) -> torch.Tensor:
        """forward in place, without autograd (for buffers of the inference recurrence)."""
        if self.config.is_float or self.observing:
            return self.forward(x)  # x unchanged either way: one place decides what observing records
        if self.config.clamp is not None:
            x = x.clamp_(-self.config.clamp, self.config.clamp)
        return fake_quantize_(x, self.grid(x))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # calibrated ranges have a shape only known after calibration: take the stored one
        for key in ("lo", "hi"):
            stored = state_dict.get(prefix + key)
            setattr(self, key, None if stored is None else torch.empty_like(stored))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        c = self.config
        if c.is_float:
            return "float"
        kind = "ternary" if c.ternary else f"{c.scheme}, p={c.percentile:g}"
        options = [f"bits={c.bits}", kind, c.granularity, c.ranges, f"ste={c.ste}"]
        if c.symmetric_grid != "narrow":
            options.append(c.symmetric_grid)
        if c.zero_point_bits is not None:
            options.append(f"zero_point_bits={c.zero_point_bits}")
        if c.clamp is not None:
            options.append(f"clamp={c.clamp:g}")
        return ", ".join(options)


# -- complex tensors as two real planes --------------------------------------------------------
def to_planes(z: torch.Tensor, form: str = "cartesian") -> torch.Tensor:
    """Complex z (...) -> real (2, ...): (Re, Im) or (|z|, ∠z)."""
    if form == "polar":
        return torch.stack((z.abs(), z.angle()))  # complex abs/angle have zero gradient at z = 0
    return torch.stack((z.real, z.imag))


def polar_to_cartesian(planes: torch.Tensor) -> torch.Tensor:
    """Polar planes (|z|, ∠z) -> cartesian planes (Re z, Im z)."""
    magnitude, angle = planes[0], planes[1]
    return torch.stack((magnitude * torch.cos(angle), magnitude * torch.sin(angle)))


def from_planes(planes: torch.Tensor, form: str = "cartesian") -> torch.Tensor:
    """Inverse of to_planes: real (2, ...) -> complex (...)."""
    if form == "polar":
        planes = polar_to_cartesian(planes)
    return torch.complex(planes[0], planes[1])


class ComplexQuantizer(nn.Module):
    """Fake-quantizes complex tensors as two real planes, with a range per plane or one for both.

    form: "cartesian" quantizes Re and Im, "polar" quantizes |z| and ∠z ([Z25]).
    channel_dim, batch_dim: channel and batch axes of the complex tensor (negative; see FakeQuantizer).
    The planes' quantizer is `.parts`; config.complex_range decides whether the planes share its ranges.
    """

    def __init__(
        self, config: QuantizerConfig, form: str = "cartesian", channel_dim: int | None = None, batch_dim: int | None = None
    ):
        super().__init__()
        if form not in COMPLEX_FORMS:
            raise ValueError(f"unknown complex form {form!r}; choose one of {COMPLEX_FORMS}")
        self.form = form
        planes = config.complex_range == "planes"
        self.parts = FakeQuantizer(config, channel_dim=channel_dim, planes=planes, batch_dim=batch_dim)

    @property
    def is_float(self) -> bool:
        return self.parts.is_float

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Complex (...) -> quantized complex (...)."""
        if self.is_float:
            return z
        return from_planes(self.parts(to_planes(z, self.form)), self.form)

    def quantize_planes(self, planes: torch.Tensor) -> torch.Tensor:
        """Cartesian planes (2, ...) -> cartesian planes of the quantized value (the recurrence's layout)."""
        if self.is_float:
            return planes
        if self.form == "cartesian":
            return self.parts(planes)
        return polar_to_cartesian(self.parts(to_planes(torch.complex(planes[0], planes[1]), "polar")))

    def quantize_planes_(self, planes: torch.Tensor) -> torch.Tensor:
        """quantize_planes in place, without autograd."""
        if self.is_float:
            return planes
        if self.form == "cartesian":
            return self.parts.quantize_(planes)
        return planes.copy_(self.quantize_planes(planes))

    def extra_repr(self) -> str:
        return f"form={self.form}"

