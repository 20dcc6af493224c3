"""Quantized recurrent inference as deployed: the state re-quantized at every step.

    p_A = Q_p(Ā ⊙ x_{t-1}),   p_B = Q_p(B̄·u_t)      partial products (only with spec.partial_products)
    x_t = Q_x(clamp(p_A + p_B))                     the state, in cartesian or polar form (clamp: its config's)
    y_t = Q_y(clamp(2·Re(C·x_t))) + D·u_t           Q_y's ranges from the whole output, per sequence

Complex numbers travel as two real planes (Re, Im) stacked on a leading axis, so one step is a few
real tensor operations over batch, channels and modes at once (`quantized_scan`, `quantized_step`).
Without autograd, `quantized_scan` runs the compiled loop of aimc_ssm.quant.numba_scan on the CPU
(float32, the quantizers it names as supported) and `eager_scan`, its bit-exact twin, elsewhere.
`quantized_scan_ref` is the plain twin, looping over time and channel; it performs the same float
operations in the same order on the state, so both take the same rounding decisions and the tests
hold them equal. (Its sum over modes for y runs in another order: the last float bit of y before Q_y
may differ, which the float64 tests keep away from Q_y's rounding boundaries.)

Every range is one sequence's: the state's and the partial products' per sequence (and channel), y's
per sequence (and step or channel), so no sequence's output depends on the rest of its batch.

`quant` is the layer's SSMQuantization (aimc_ssm.quant.quantize): its `state` ComplexQuantizer, its
`y` FakeQuantizer and, when partial products are quantized, `partial_Ax` and `partial_Bu`.
"""
from __future__ import annotations

import torch

from .quantizers import ComplexQuantizer, Grid, fake_quantize_, grid, polar_to_cartesian, tensor_ranges, to_planes


def output_planes(C: torch.Tensor) -> torch.Tensor:
    """(2·Re C, -2·Im C) (2, H, n): y = Σ over planes and modes of these times the state planes."""
    return torch.stack((2 * C.real, -2 * C.imag))


def next_state(x: torch.Tensor, u_t: torch.Tensor, A: torch.Tensor, B: torch.Tensor, quant) -> torch.Tensor:
    """State planes x (2, B, H, n), input u_t (B, H), planes of Ā and B̄ (2, H, n) -> x_t (2, B, H, n)."""
    (xr, xi), (ar, ai) = x, A
    ax = torch.stack((xr * ar - xi * ai, xi * ar + xr * ai))  # Ā ⊙ x
    bu = B[:, None] * u_t[:, :, None]  # B̄·u_t: (2, 1, H, n) * (B, H, 1)
    if quant.partial_Ax is not None:
        ax, bu = quant.partial_Ax.quantize_planes(ax), quant.partial_Bu.quantize_planes(bu)
    return quant.state.quantize_planes(ax + bu)


class _ChannelMajorRounding:
    """A ComplexQuantizer applied in place to the channel-major planes (2, H, B, n) of `eager_scan`.

    A cartesian quantizer whose ranges are extremes or percentiles rounds the planes where they lie:
    those ranges do not depend on the order the values are visited in, so the channel-major values give
    the ranges a batch-major copy (2, B, H, n) would. A static grid is read once; a dynamic one is taken
    from every step's values. Any other quantizer (polar, a ternary mean, one still observing) quantizes
    a batch-major copy, as `next_state` hands it its values."""

    def __init__(self, quantizer: ComplexQuantizer, planes: torch.Tensor):
        self.quantizer = quantizer
        parts = quantizer.parts
        self.clamp = parts.config.clamp
        self.in_place = quantizer.form == "cartesian" and not parts.config.ternary and not parts.observing
        # the axes with ranges of their own, as the quantizer names them for batch-major planes
        kept = parts.kept_dims(planes.transpose(1, 2), per_sequence=True)
        self.kept = tuple(sorted({1: 2, 2: 1}.get(axis, axis) for axis in kept))  # ... and channel-major
        self.frozen = self.grid_of(planes) if self.in_place and parts.is_static else None

    @staticmethod
    def of(quantizer: ComplexQuantizer | None, planes: torch.Tensor):
        """The rounding where the quantizer quantizes anything, else None."""
        return None if quantizer is None or quantizer.is_float else _ChannelMajorRounding(quantizer, planes)

    def grid_of(self, planes: torch.Tensor) -> Grid:
        """The grid of channel-major planes (already clamped)."""
        parts = self.quantizer.parts
        if parts.is_static:  # the calibrated ranges, shaped for batch-major planes
            lo, hi = (v.transpose(1, 2) for v in parts.ranges(planes.transpose(1, 2)))
        else:  # reduced over the contiguous channel-major values, a fifth faster than over a transposed view
            lo, hi = tensor_ranges(planes, parts.config, self.kept)
        return grid(parts.config, lo, hi)

    def round_(self, planes: torch.Tensor) -> torch.Tensor:
        if not self.in_place:
            batch_major = planes.transpose(1, 2)
            batch_major.copy_(self.quantizer.quantize_planes_(batch_major.contiguous()))
            return planes
        if self.clamp is not None:
            planes = planes.clamp_(-self.clamp, self.clamp)
        return fake_quantize_(planes, self.frozen or self.grid_of(planes))


def quantized_step(u_t: torch.Tensor, x: torch.Tensor, params, quant):
    """One deployed step: u_t (B, H), complex state x (B, H, n) -> (y_t (B, H), x_t complex)."""
    dA, dB, C, D = params
    x = next_state(to_planes(x), u_t, to_planes(dA), to_planes(dB), quant)
    y = quant.y((x * output_planes(C)[:, None]).sum(-1).sum(0)[:, None])[:, 0]  # Q_y sees this step alone
    return y + D * u_t, torch.complex(x[0], x[1])


def quantized_scan(u: torch.Tensor, params, quant, x0: torch.Tensor | None = None) -> torch.Tensor:
    """The whole sequence as deployed: u (B, L, H) -> y (B, L, H); x0 complex (B, H, n) or zeros.

    With autograd (training in recurrent mode) every step allocates its results; without, the
    compiled loop (`numba_scan.compiled_scan`) runs wherever `numba_scan.unsupported` finds nothing
    against it, and `eager_scan`, which updates the state in place, everywhere else: both give the
    same bits."""
    dA, dB, C, D = params
    batch, L, H = u.shape
    A, B, C2 = to_planes(dA), to_planes(dB), output_planes(C)  # (2, H, n) each
    x = u.new_zeros(2, batch, H, dA.shape[-1]) if x0 is None else to_planes(x0)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (u, dA, dB, C, D)):
        u_steps = u.transpose(0, 1).contiguous()  # (L, B, H): one contiguous slice per step
        ys = []
        for t in range(L):
            x = next_state(x, u_steps[t], A, B, quant)
            ys.append((x * C2[:, None]).sum(-1).sum(0))
        return quant.y(torch.stack(ys, dim=1)) + D * u
    if u.device.type == "cpu":  # numba (a quarter second to import) loads only where its loop can run
        from . import numba_scan

        if numba_scan.unsupported(u, quant, A.shape[-1]) is None:
            return numba_scan.compiled_scan(u, A, B, C2, D, quant, x)
    return eager_scan(u, A, B, C2, D, quant, x)


def eager_scan(u, A, B, C2, D, quant, x) -> torch.Tensor:
    """`quantized_scan` without autograd: the state updated in place, beside one buffer of products.

    The planes are laid out channel-major, (2, H, B, n): the per-channel operands (grid scale and
    bounds, Ā, B̄, the input u_t) then broadcast as scalars along runs of B or B·n contiguous
    elements, which the elementwise kernels stream at full speed, where the batch-major layout
    (2, B, H, n) breaks every such operation into runs of n. Each element still sees the operations
    of `next_state`, in the same order, so the rounding decisions and y are unchanged.

    A step is 11 elementwise passes over the state (5 for Ā ⊙ x + B̄·u_t, 5 for the rounding, 1 for
    y) and a sum over the modes: the fewest that eager operations allow while rounding as the
    quantizer does (a fused multiply-add, as in addcmul, would round Ā ⊙ x + B̄·u_t differently;
    x / scale must be a true division). At the benchmark's sizes the state (2 MB) is larger than a
    core's L2 cache and every pass streams it from L3; the division is the dearest pass. Batch chunks
    small enough to stay in L2 were measured no faster (H=16, n=32, 1 thread: 32 and 64 sequences per
    chunk took 1.4x and 1.1x the unchunked time, 125 the same): every chunk pays every operation's
    dispatch again. The views of the buffers are made once, not every step, for the same reason.
    The compiled loop (`numba_scan`) fuses a step's passes and keeps a block of states in cache.

    The twin of `numba_scan.compiled_scan`, with its signature: u (B, L, H), planes A, B, C2 (2, H, n),
    D (H,), state planes x (2, B, H, n) -> y (B, L, H)."""
    batch, L, H = u.shape
    x = x.transpose(1, 2).clone(memory_format=torch.contiguous_format)  # (2, H, B, n), the loop's own
    prod = torch.empty_like(x)
    (x_re, x_im), (prod_re, prod_im) = x.unbind(0), prod.unbind(0)  # views made once
    ar, ai = A[:, :, None]  # (H, 1, n)
    minus_ai = -ai
    B, (c_re, c_im) = B[:, :, None], C2[:, :, None]  # (2, H, 1, n), (H, 1, n) each
    state, partial_Ax, partial_Bu = (
        _ChannelMajorRounding.of(q, x) for q in (quant.state, quant.partial_Ax, quant.partial_Bu)
    )
    u_steps = u.permute(1, 2, 0)[..., None].contiguous().unbind(0)  # L views (H, B, 1), made at once
    y = u.new_empty(L, H, batch)
    for u_t, y_t in zip(u_steps, y.unbind(0)):
        torch.mul(x_im, minus_ai, out=prod_re)  # -Im x·Im Ā (negation is exact)
        torch.mul(x_re, ai, out=prod_im)  # Re x·Im Ā
        x.mul_(ar).add_(prod)  # Ā ⊙ x, in place: (Re x·Re Ā - Im x·Im Ā, Im x·Re Ā + Re x·Im Ā)
        torch.mul(B, u_t, out=prod)  # B̄·u_t
        if partial_Ax is not None:
            partial_Ax.round_(x)
            partial_Bu.round_(prod)
        x.add_(prod)
        if state is not None:
            state.round_(x)
        torch.sum(torch.mul(x_re, c_re, out=prod_re).addcmul_(x_im, c_im), -1, out=y_t)  # 2·Re(C·x_t)
    y = y.permute(2, 0, 1)  # (B, L, H)
    if not quant.y.is_float:
        y = quant.y(y.contiguous())  # its ranges from batch-major values, as the other paths take them
    # batch-major and contiguous, as the other paths return it. In the transposed layout the elementwise
    # kernels after it (GELU) ran their scalar loop over a batch but their vector loop over one sequence,
    # whose erf differ in the last bit: a sequence's output moved with the size of its batch
    return torch.add(y, D * u, out=u.new_empty(batch, L, H))


# -- reference twin -------------------------------------------------------------------------
def _round_ref(v, scale, q_lo, span, offset, clipped):
    """v onto the grid, with the quantizers' straight-through gradient (zero outside the grid if clipped)."""
    q = torch.round(v / scale - offset if offset else v / scale)
    inside = (q >= q_lo) & (q <= q_lo + span)
    q = torch.clamp(q, q_lo, q_lo + span)
    rounded = (q + offset if offset else q) * scale
    through = v * inside if clipped else v
    return through + (rounded - through).detach()


def _pick(value, plane: int, h: int):
    """The grid values of one plane and channel, for every sequence, from a (2 or 1, B or 1, H or 1, 1)
    tensor (or a number): (B or 1, 1), to broadcast against a channel's (B, n) values."""
    if not torch.is_tensor(value):
        return value
    return value[plane if value.shape[0] > 1 else 0, :, h if value.shape[2] > 1 else 0]


def _quantize_channels_ref(quantizer: ComplexQuantizer, values: list) -> list:
    """Quantize per-channel (re, im) pairs (each (B, n)) with `quantizer`, one channel at a time.

    The ranges may span channels (and planes), so the grid comes from all channels stacked; the
    rounding is then done channel by channel."""
    if quantizer.is_float:
        return values
    if quantizer.form == "polar":
        values = [(torch.complex(re, im).abs(), torch.complex(re, im).angle()) for re, im in values]
    parts = quantizer.parts
    values = [(parts.clamped(first), parts.clamped(second)) for first, second in values]
    stacked = torch.stack([torch.stack(pair) for pair in values], dim=2)  # (2, B, H, n)
    g = parts.grid(stacked.detach())  # the grid is a constant to the gradient, as in the fast path
    clipped = parts.config.ste == "clipped"
    out = []
    for h, pair in enumerate(values):
        first, second = (
            _round_ref(v, _pick(g.scale, p, h), _pick(g.q_lo, p, h), g.span, g.offset, clipped) for p, v in enumerate(pair)
        )
        if quantizer.form == "polar":
            first, second = polar_to_cartesian(torch.stack((first, second)))
        out.append((first, second))
    return out


def _quantize_output_ref(quantizer, y: torch.Tensor) -> torch.Tensor:
    """y (B, L, H) clamped and rounded onto the y quantizer's grid (float: y itself)."""
    if quantizer.is_float:
        return y
    y = quantizer.clamped(y)
    g = quantizer.grid(y.detach())
    return _round_ref(y, g.scale, g.q_lo, g.span, g.offset, quantizer.config.ste == "clipped")


def quantized_scan_ref(u: torch.Tensor, params, quant, x0: torch.Tensor | None = None) -> torch.Tensor:
    """Reference twin of `quantized_scan`: loops over time and channel, plain per-channel arithmetic;
    differentiable, with the quantizers' straight-through gradients."""
    dA, dB, C, D = params
    batch, L, H = u.shape
    zeros = u.new_zeros(batch, dA.shape[-1])
    x = [(zeros, zeros) if x0 is None else (x0[:, h].real, x0[:, h].imag) for h in range(H)]
    y = u.new_zeros(batch, L, H)  # 2·Re(C·x_t), before Q_y and the skip term
    for t in range(L):
        ax, bu = [], []
        for h in range(H):
            xr, xi = x[h]
            ar, ai, br, bi = dA.real[h], dA.imag[h], dB.real[h], dB.imag[h]
            u_th = u[:, t, h, None]  # (B, 1)
            ax.append((ar * xr - ai * xi, ar * xi + ai * xr))
            bu.append((br * u_th, bi * u_th))
        if quant.partial_Ax is not None:
            ax, bu = _quantize_channels_ref(quant.partial_Ax, ax), _quantize_channels_ref(quant.partial_Bu, bu)
        x = _quantize_channels_ref(quant.state, [(a_re + b_re, a_im + b_im) for (a_re, a_im), (b_re, b_im) in zip(ax, bu)])
        for h in range(H):
            xr, xi = x[h]
            y[:, t, h] = 2 * (C.real[h] * xr - C.imag[h] * xi).sum(-1)
    return _quantize_output_ref(quant.y, y) + D * u
