"""Uniform fake quantization with straight-through gradients.

A quantizer rounds x onto a uniform grid and maps it back to real values ("fake" quantization:
the arithmetic stays in float, the values are those a b-bit device would hold):

    x_q = s · clamp(round(x / s), q_lo, q_hi)

The step s and the integer range [q_lo, q_hi] (a `Grid`) come from a range of x, per tensor or per
channel:

    symmetric   r = max|x| (or the p-th percentile of |x|),  s = r / (2^(b-1) - 1),  q in ±(2^(b-1) - 1)
                2^b - 1 levels with zero exact; b = 1 has the two levels ±r/2 instead ([S25], abs-max)
    asymmetric  [lo, hi] = [min x, max x] (or the (100-p)-th and p-th percentiles),
                s = (hi - lo) / (2^b - 1),  q_lo = round(lo / s),  q_hi = q_lo + 2^b - 1   ([Z25])
    ternary     s = mean|x| (BitNet b1.58), q in {-1, 0, +1}

so b bits never give more than 2^b levels. Ranges are either dynamic (taken from the tensor being
quantized, every call) or static: observed during calibration (running min of the lows, max of the
highs, as torch.ao's MinMaxObserver), then frozen. Gradients pass straight through the rounding
("identity"), or only where x fell inside the grid's range ("clipped").

Complex tensors are quantized as two real planes, stacked on a leading axis with their own ranges:
(Re, Im) in the "cartesian" form, (|z|, ∠z) in the "polar" form ([Z25]).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..io import from_dict_strict

SCHEMES = ("symmetric", "asymmetric")
GRANULARITIES = ("tensor", "channel")
RANGES = ("dynamic", "static")
STES = ("identity", "clipped")
COMPLEX_FORMS = ("cartesian", "polar")
MIN_BITS, MAX_BITS = 1, 16
Z25_PERCENTILE = 99.999  # [Z25] clips the 0.001 % outliers on either side


@dataclass(frozen=True)
class QuantizerConfig:
    """How one tensor is quantized. Immutable; `dataclasses.replace` makes variants.

    Attributes:
        bits: 1 to 16 bits, or None for float (no quantization). b bits give at most 2^b levels:
            symmetric 2^b - 1 (zero exact; b = 1: ±r/2), asymmetric 2^b, ternary 3 (needs bits=2).
        scheme: "symmetric" (grid ±r around zero, [S25]) or "asymmetric" (grid over [lo, hi], [Z25]).
        percentile: clip the range at this percentile (nearest rank) instead of the extremes:
            of |x| for symmetric, of x at p and 100 - p for asymmetric. None picks the recipes'
            choices: 99.999 for asymmetric ([Z25]), 100 (abs-max) for symmetric ([S25]).
        granularity: "tensor" (one range) or "channel" (one range per channel; which axis is the
            channel is fixed by the tensor's role, see aimc_ssm.quant.quantize).
        ranges: "dynamic" (from each tensor quantized) or "static" (calibrated, then frozen).
        ste: straight-through gradient, "identity" (everywhere, [S25]) or "clipped" (zero where x
            fell outside the grid's range, [Z25]).
        ternary: levels {-1, 0, +1}·s with BitNet b1.58's s = mean|x|; needs bits=2 and the
            symmetric scheme. (symmetric bits=2 has the same levels with the abs-max s of [S25].)
    """

    bits: int | None = 8
    scheme: str = "symmetric"
    percentile: float | None = None
    granularity: str = "tensor"
    ranges: str = "dynamic"
    ste: str = "identity"
    ternary: bool = False

    def __post_init__(self):
        if self.bits is not None and (
            isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS
        ):
            raise ValueError(
                f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, or None for float; got {self.bits!r}"
            )
        for name, allowed in (("scheme", SCHEMES), ("granularity", GRANULARITIES), ("ranges", RANGES), ("ste", STES)):
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
        if self.scheme == "asymmetric" or self.bits == 1:
            return 2**self.bits
        return 2**self.bits - 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "QuantizerConfig":
        return from_dict_strict(cls, d, "quantizer config")


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
    if torch.is_tensor(g.q_lo):  # per-range bounds: shift so that clamp takes numbers (much faster)
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
        steps = 1 if config.ternary or bits == 1 else 2 ** (bits - 1) - 1
        scale = torch.where(r > 0, r / steps, torch.ones_like(r))  # an all-zero range: any step keeps 0
        if bits == 1 and not config.ternary:
            return Grid(scale, -1.0, 1, 0.5)  # levels ±r/2
        return Grid(scale, float(-steps), 2 * steps)
    span = 2**bits - 1
    scale = (hi - lo) / span
    # a constant tensor (lo = hi = v) gets the step |v|, which puts v itself on the grid
    degenerate = torch.where(lo != 0, lo.abs(), torch.ones_like(lo))
    scale = torch.where(scale > 0, scale, degenerate)
    return Grid(scale, torch.round(lo / scale), span)


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
        channel_dim: axis holding channels (negative, so leading batch axes may vary), used when
            config.granularity == "channel".
        planes: axis 0 holds the two planes of a complex tensor, each with ranges of its own.

    Static ranges live in the buffers `lo` and `hi` (None until calibrated), shaped by the kept axes
    only, so they travel with `state_dict`. While `observing` is set (see aimc_ssm.quant.quantize.calibrate)
    the quantizer records ranges and passes its input through unchanged.
    """

    def __init__(self, config: QuantizerConfig, channel_dim: int | None = None, planes: bool = False):
        super().__init__()
        if config.granularity == "channel" and channel_dim is None:
            raise ValueError("per-channel quantization needs the tensor's channel_dim")
        if channel_dim is not None and not (isinstance(channel_dim, int) and channel_dim < 0):
            raise ValueError(f"channel_dim must be a negative axis (counted from the end), got {channel_dim!r}")
        self.config = config
        self.channel_dim = channel_dim if config.granularity == "channel" else None
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

    def kept_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        dims = {0} if self.planes else set()
        if self.channel_dim is not None:
            dims.add(self.channel_dim % x.dim())
        return tuple(sorted(dims))

    def ranges(self, x: torch.Tensor):
        """(lo, hi) broadcastable against x: the frozen static ranges or those of x itself."""
        kept = self.kept_dims(x)
        if not self.is_static:
            return tensor_ranges(x, self.config, kept)
        if self.lo is None:
            raise RuntimeError(
                f"static quantizer {self.name or 'FakeQuantizer'!r} has no range yet: run "
                "aimc_ssm.quant.quantize.calibrate(model, batches, mode) in the mode that uses it (the state "
                "exists only in 'recurrent' mode, its conv-mode proxy only in 'conv'), or use ranges='dynamic'"
            )
        shape = [x.shape[d] if d in kept else 1 for d in range(x.dim())]
        return self.lo.reshape(shape), self.hi.reshape(shape)

    def grid(self, x: torch.Tensor) -> Grid:
        """The Grid for quantizing x, broadcastable against x."""
        lo, hi = self.ranges(x)
        return grid(self.config, lo, hi)

    def observe(self, x: torch.Tensor) -> None:
        kept = self.kept_dims(x)
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
        return fake_quantize(x, self.grid(x), self.config.ste == "clipped")

    def quantize_(self, x: torch.Tensor) -> torch.Tensor:
        """forward in place, without autograd (for buffers of the inference recurrence)."""
        if self.config.is_float or self.observing:
            return self.forward(x)  # x unchanged either way: one place decides what observing records
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
        return f"bits={c.bits}, {kind}, {c.granularity}, {c.ranges}, ste={c.ste}"


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
    """Fake-quantizes complex tensors as two real planes with separate ranges.

    form: "cartesian" quantizes Re and Im, "polar" quantizes |z| and ∠z ([Z25]).
    channel_dim: channel axis of the complex tensor (negative). The planes' quantizer is `.parts`.
    """

    def __init__(self, config: QuantizerConfig, form: str = "cartesian", channel_dim: int | None = None):
        super().__init__()
        if form not in COMPLEX_FORMS:
            raise ValueError(f"unknown complex form {form!r}; choose one of {COMPLEX_FORMS}")
        self.form = form
        self.parts = FakeQuantizer(config, channel_dim=channel_dim, planes=True)

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

