"""The deployed quantized recurrence on the CPU, compiled to one loop over time (numba).

`eager_scan` (aimc_ssm.quant.qrecurrent) runs a step as 11 elementwise passes over the whole
(2, H, B, n) state and a sum over the modes, each pass streamed from memory: at the benchmark's sizes
the state (2 MB) outgrows a core's L2 cache, and the passes cost more than their arithmetic.
`compiled_scan` runs a block of up to LANES sequences through all L steps at once, their states
(2, H, n, lanes) side by side so that every operation of a step is one vector operation across the
block's sequences, and the block's arrays (512 KB at H = 16, n = 32, 64 lanes) stay in the core's L2
cache from the first step to the last. No operation mixes lanes, so a sequence's result does not
depend on its block-mates (nor on the zeros that pad the last block). Blocks are independent and
spread over the threads torch is given.

It is bit for bit `eager_scan`, its twin with the same signature (tests/test_numba_scan.py): every
value sees the same float32 operations in the same order.
- numba compiles without fast-math, so LLVM neither contracts a·b + c into a fused multiply-add nor
  turns x / scale into a multiplication by a reciprocal; float32 values meet only float32 constants.
  Where torch itself fuses (its addcmul, built with FMA, computes c + a·b with one rounding), `fma`
  does too: `torch_addcmul_fuses` probes which of the two roundings torch's addcmul takes, once.
- Rounding is half to even (np.rint), as torch.round.
- y's sum over the modes follows torch.sum's order for a contiguous row (`_row_sums`), with torch's
  vector width on this CPU found once by probing torch.sum (`torch_sum_width`).
- error_model="numpy": a division by zero gives IEEE's inf or nan, as in torch, not an exception (the
  exception's check would also keep the loops from vectorizing).

`unsupported` names what it does not run, which `quantized_scan` then scans eagerly: autograd,
devices other than the CPU, dtypes other than float32, polar or ternary quantizers, quantizers still
observing, dynamic ranges pooled over the batch, with a held zero point or at a percentile that
selects below the extremes, rows of 64 vectors or more (torch.sum then cascades its partial sums),
and a CPU whose torch.sum order or addcmul rounding was not recognised. Static ranges (the deployed
chip's) and dynamic per-sequence extremes run, per tensor, channel or plane, with any clamp and
partial products.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange, types
from numba.extending import intrinsic

from ..threads import match_torch_threads
from .quantizers import ComplexQuantizer, _kth_largest_rank, _symmetric_steps, grid

# what a quantizer does each step
NONE, STATIC, DYNAMIC_SYMMETRIC, DYNAMIC_ASYMMETRIC = range(4)
# the step's quantizers, in the order the loop applies them
SLOTS = ("partial_Ax", "partial_Bu", "state")
# sequences per block: on the project's CPU (1 thread, batch 500, an earlier form of this loop) 32 to
# 128 lanes ran the benchmark about equally fast and 16 a third slower: every inner loop pays its
# entry checks (LLVM's run-time alias tests) over fewer values
LANES = 64
VECTOR = 16  # floats in the widest vector register (AVX-512): blocks are whole vectors
# torch.sum folds rows of fewer vectors than this without its cascade of partial sums
MAX_VECTORS = 64


@dataclass(frozen=True)
class Rounding:
    """One quantizer of the step as the compiled loop reads it.

    mode: NONE, STATIC (the frozen grid below) or DYNAMIC_* (the grid of each step's extremes).
    per_plane, per_channel: dynamic ranges of their own per plane (Re, Im) and per channel (always
        per sequence).
    clamp: values clamped at ±clamp first (inf: no clamp).
    span, offset: the grid's integer span and level offset.
    q_min, q_max: the integer bounds where q_lo is one number (symmetric grids); q_tensor: q_lo is per
        range (asymmetric: q - q_lo is clamped to [0, span], then q_lo added back, as
        `_clamp_and_scale_` does).
    steps: a symmetric grid's integer steps either side of zero (scale = r / steps).
    scale, q_lo: (2, H) float32, a static grid per plane and channel.
    """

    mode: int
    per_plane: bool = True
    per_channel: bool = True
    clamp: float = np.inf
    span: float = 0.0
    offset: float = 0.0
    q_min: float = 0.0
    q_max: float = 0.0
    q_tensor: bool = False
    steps: float = 1.0
    scale: np.ndarray | None = None
    q_lo: np.ndarray | None = None


def unsupported(u: torch.Tensor, quant, n: int) -> str | None:
    """Why `compiled_scan` cannot scan u (B, L, H) with the quantizers `quant` over n modes (None: it can)."""
    if torch.is_grad_enabled() and u.requires_grad:
        return "autograd: the compiled loop has no backward"
    if u.device.type != "cpu":
        return f"device {u.device.type}: the compiled loop runs on the CPU"
    if u.dtype != torch.float32:
        return f"dtype {u.dtype}: the compiled loop computes in float32"
    width = torch_sum_width()
    if width is None:
        return "torch.sum's order over a row was not recognised on this CPU"
    if torch_addcmul_fuses() is None:
        return "torch's addcmul rounds in neither way the loop knows on this CPU"
    if n // width >= MAX_VECTORS:
        return f"{n} modes: torch.sum cascades rows of {MAX_VECTORS} vectors or more"
    for name in SLOTS:
        why = _quantizer_unsupported(getattr(quant, name), u.shape[-1], n)
        if why:
            return f"{name} quantizer: {why}"
    return None


def _quantizer_unsupported(quantizer: ComplexQuantizer | None, H: int, n: int) -> str | None:
    if quantizer is None or quantizer.is_float:
        return None
    parts, config = quantizer.parts, quantizer.parts.config
    if quantizer.form != "cartesian":
        return f"{quantizer.form} form"
    if config.ternary:
        return "ternary levels"
    if parts.observing:
        return "observing (calibration)"
    if parts.is_static:
        return "static ranges not calibrated yet" if parts.lo is None else None
    if config.zero_point_bits is not None:
        return "dynamic ranges with a held zero point"
    if parts.batch_dim is None:
        return "dynamic ranges pooled over the batch (the quantizer has no batch axis)"
    r = _rounding(quantizer, H, n)
    per_range = n * (1 if r.per_channel else H) * (1 if r.per_plane else 2)
    if config.percentile != 100 and _kth_largest_rank(config.percentile, per_range) != per_range:
        return f"the {config.percentile}th percentile of {per_range} values is not their extreme"
    return None


def _rounding(quantizer: ComplexQuantizer | None, H: int, n: int) -> Rounding:
    """The compiled loop's view of one quantizer of the step (mode NONE for none or float)."""
    if quantizer is None or quantizer.is_float:
        return Rounding(NONE)
    parts, config = quantizer.parts, quantizer.parts.config
    probe = torch.zeros(2, 1, H, n)  # batch-major planes (2, B, H, n), as the quantizer names their axes
    clamp = np.inf if config.clamp is None else float(config.clamp)
    if parts.is_static:
        g = parts.grid(probe)
        q_tensor = torch.is_tensor(g.q_lo)
        scale = torch.broadcast_to(g.scale, probe.shape)[:, 0, :, 0]  # (2, H): static ranges span B and n
        q_lo = torch.broadcast_to(g.q_lo, probe.shape)[:, 0, :, 0] if q_tensor else torch.zeros(2, H)
        q_min = 0.0 if q_tensor else float(g.q_lo)
        return Rounding(
            STATIC, clamp=clamp, span=float(g.span), offset=float(g.offset), q_min=q_min,
            q_max=q_min + g.span, q_tensor=q_tensor, scale=_array(scale), q_lo=_array(q_lo),
        )
    kept = parts.kept_dims(probe, per_sequence=True)
    per_plane, per_channel = 0 in kept, 2 in kept
    if config.scheme == "asymmetric":
        return Rounding(DYNAMIC_ASYMMETRIC, per_plane, per_channel, clamp, span=float(2**config.bits - 1), q_tensor=True)
    one = torch.ones(1)
    g = grid(config, -one, one)  # a symmetric grid's bounds and offset are constants: only its scale follows x
    return Rounding(
        DYNAMIC_SYMMETRIC, per_plane, per_channel, clamp, span=float(g.span), offset=float(g.offset),
        q_min=float(g.q_lo), q_max=float(g.q_lo) + g.span, steps=float(_symmetric_steps(config)),
    )


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())


# -- torch.sum's order over a row ----------------------------------------------------------------
@njit(cache=True, error_model="numpy")
def _row_sums(terms, width, out, acc):
    """out (lanes) = Σ_k terms[k] for terms (n, lanes): every lane's sum in torch.sum's order for a
    contiguous row of n floats (n < 64·width), all lanes at once. acc: (4, lanes) float32 scratch.

    torch adds vectors of `width` floats into four sums, vector i into sum i % 4 and the vectors after
    the last group of four into the first, adds the four in turn, then takes the scalar tail and the
    vector's elements one after the other; a row shorter than one vector goes the same way with
    single floats for vectors."""
    n, lanes = terms.shape
    if n < width:
        width = 1
    vectors = n // width
    whole = vectors // 4
    out[:] = 0
    for i in range(vectors * width, n):
        for j in range(lanes):
            out[j] = out[j] + terms[i, j]
    for element in range(width):
        acc[:] = 0
        for i in range(whole):
            for q in range(4):
                row = terms[(4 * i + q) * width + element]
                for j in range(lanes):
                    acc[q, j] = acc[q, j] + row[j]
        for i in range(4 * whole, vectors):
            row = terms[i * width + element]
            for j in range(lanes):
                acc[0, j] = acc[0, j] + row[j]
        for j in range(lanes):
            out[j] = out[j] + (acc[0, j] + acc[1, j] + acc[2, j] + acc[3, j])


@functools.cache
def torch_sum_width() -> int | None:
    """The vector width (floats) of torch.sum's loop over a contiguous row on this CPU, or None if no
    width reproduces it (`_row_sums`).

    Probed once on heavy-tailed rows of every length up to 80, where another order of the additions
    shows within a few rows."""
    generator = torch.Generator().manual_seed(0)
    out, acc = np.empty(VECTOR, np.float32), np.empty((4, VECTOR), np.float32)
    rows = [torch.randn(VECTOR, n, generator=generator) * torch.randn(VECTOR, n, generator=generator).mul(4).exp()
            for n in range(1, 81)]
    for width in (8, 16, 4, 32):
        for r in rows:
            _row_sums(np.ascontiguousarray(r.numpy().T), width, out, acc)
            if not np.array_equal(out, torch.sum(r, -1).numpy()):
                break
        else:
            return width
    return None


# -- torch's addcmul: y's terms -------------------------------------------------------------------
@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c rounded once (LLVM's fma), as torch's vectorized addcmul computes c + a·b."""
    def codegen(context, builder, signature, args):
        return builder.fma(*args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@njit(cache=True, error_model="numpy")
def _output_term(re, im, c_re, c_im, fused):
    """A mode's term of 2·Re(C·x) = Re x·(2 Re C) + Im x·(-2 Im C), as `eager_scan`'s addcmul computes it:
    the second product added to the first with one rounding (fused) or two."""
    return fma(im, c_im, re * c_re) if fused else re * c_re + im * c_im


@functools.cache
def torch_addcmul_fuses() -> bool | None:
    """Whether torch's addcmul on this CPU adds its product with one rounding (a fused multiply-add, as
    its vector loop does where it is compiled with FMA), with two, or (None) in neither way; probed
    once on `eager_scan`'s shapes, a vector loop (32 modes) and a scalar one (5 modes)."""
    generator = torch.Generator().manual_seed(0)
    found = set()
    for n in (32, 5):
        re, im, c_re, c_im = (torch.randn(3, 40, n, generator=generator) for _ in range(4))
        c_re, c_im = c_re[:, :1], c_im[:, :1]  # (H, 1, n), broadcast over the batch as in eager_scan
        got = torch.mul(re, c_re).addcmul_(im, c_im).numpy()
        flat = [np.ascontiguousarray(t.expand_as(re).numpy()).ravel() for t in (re, im, c_re, c_im)]
        matches = {fused for fused in (True, False) if np.array_equal(_output_terms(*flat, fused), got.ravel())}
        if len(matches) != 1:
            return None
        found |= matches
    return found.pop() if len(found) == 1 else None


@njit(cache=True, error_model="numpy")
def _output_terms(re, im, c_re, c_im, fused):
    """`_output_term` of flat arrays."""
    out = np.empty_like(re)
    for i in range(re.shape[0]):
        out[i] = _output_term(re[i], im[i], c_re[i], c_im[i], fused)
    return out


# -- the loop: a block's sequences side by side, every operation one vector across them ----------
@njit(cache=True, error_model="numpy")
def _clamp(v, c):
    """v (H, n, lanes) clamped at ±c in place."""
    H, n, lanes = v.shape
    for h in range(H):
        for k in range(n):
            row = v[h, k]
            for j in range(lanes):
                row[j] = min(max(row[j], -c), c)


@njit(cache=True, error_model="numpy")
def _extremes(v, lo, hi):
    """lo, hi (H, lanes): each lane's min and max of v (H, n, lanes) over the modes."""
    H, n, lanes = v.shape
    for h in range(H):
        lo[h] = v[h, 0]
        hi[h] = v[h, 0]
        for k in range(1, n):
            row = v[h, k]
            for j in range(lanes):
                lo[h, j] = min(lo[h, j], row[j])
                hi[h, j] = max(hi[h, j], row[j])


@njit(cache=True, error_model="numpy")
def _dynamic_grid(re, im, mode, per_plane, per_channel, span, steps, scale, q_lo, lo, hi):
    """This step's grid (scale, q_lo (2, H, lanes)) from the extremes of the planes, as `grid` forms it
    from `tensor_ranges`: a range per lane (sequence), and per plane and channel if they are kept."""
    H, _, lanes = re.shape
    _extremes(re, lo[0], hi[0])
    _extremes(im, lo[1], hi[1])
    if not per_channel:  # one range over the channels
        for p in range(2):
            for h in range(1, H):
                for j in range(lanes):
                    lo[p, 0, j] = min(lo[p, 0, j], lo[p, h, j])
                    hi[p, 0, j] = max(hi[p, 0, j], hi[p, h, j])
            for h in range(1, H):
                lo[p, h] = lo[p, 0]
                hi[p, h] = hi[p, 0]
    if not per_plane:  # one range over both planes
        for h in range(H):
            for j in range(lanes):
                lo[0, h, j] = min(lo[0, h, j], lo[1, h, j])
                hi[0, h, j] = max(hi[0, h, j], hi[1, h, j])
            lo[1, h] = lo[0, h]
            hi[1, h] = hi[0, h]
    one, f_span, f_steps = np.float32(1.0), np.float32(span), np.float32(steps)
    for p in range(2):
        for h in range(H):
            for j in range(lanes):
                if mode == DYNAMIC_SYMMETRIC:
                    r = max(hi[p, h, j], -lo[p, h, j])
                    scale[p, h, j] = r / f_steps if r > 0 else one
                else:
                    step = (hi[p, h, j] - lo[p, h, j]) / f_span
                    if not step > 0:  # a constant range: the step |lo| puts lo on the grid
                        step = abs(lo[p, h, j]) if lo[p, h, j] != 0 else one
                    scale[p, h, j] = step
                    q_lo[p, h, j] = np.rint(lo[p, h, j] / step)


@njit(cache=True, error_model="numpy")
def _on_grid(v, s, q_lo, q_tensor, span, offset, q_min, q_max):
    """v (float32) onto its grid as `fake_quantize_` puts it: v / s, − offset, round half to even, clamp
    (q − q_lo into [0, span] where q_lo is per range, else into [q_min, q_max]), + offset, × s. The
    bounds and offset come as float32, so that nothing is computed in float64."""
    q = v / s
    if offset != 0:
        q = q - offset
    q = np.rint(q)
    if q_tensor:
        q = min(max(q - q_lo, np.float32(0.0)), span) + q_lo
    else:
        q = min(max(q, q_min), q_max)
    if offset != 0:
        q = q + offset
    return q * s


@njit(cache=True, error_model="numpy")
def _round_plane(v, scale, q_lo, q_tensor, span, offset, q_min, q_max):
    """v (H, n, lanes) in place onto the grid scale, q_lo (H, lanes)."""
    H, n, lanes = v.shape
    span, offset, q_min, q_max = np.float32(span), np.float32(offset), np.float32(q_min), np.float32(q_max)
    for h in range(H):
        s, ql = scale[h], q_lo[h]
        for k in range(n):
            row = v[h, k]
            for j in range(lanes):
                row[j] = _on_grid(row[j], s[j], ql[j], q_tensor, span, offset, q_min, q_max)


@njit(cache=True, error_model="numpy")
def _prepare(re, im, slot, modes, per_plane, per_channel, q_tensor, scalars, static_scale, static_q_lo,
             scale, q_lo, lo, hi):
    """Clamp the planes re, im (H, n, lanes) in place and set scale, q_lo (2, H, lanes) to the grid of
    quantizer `slot`, as `_ChannelMajorRounding.round_` does before it rounds:
    the static grid, or this step's from the clamped values. lo, hi (2, H, lanes): scratch."""
    H = re.shape[0]
    clamp, span, _, _, _, steps = scalars[slot]
    if clamp != np.inf:
        _clamp(re, np.float32(clamp))
        _clamp(im, np.float32(clamp))
    if modes[slot] == STATIC:
        for p in range(2):
            for h in range(H):
                scale[p, h] = static_scale[slot, p, h]
                q_lo[p, h] = static_q_lo[slot, p, h]
    else:
        _dynamic_grid(re, im, modes[slot], per_plane[slot], per_channel[slot], span, steps, scale, q_lo, lo, hi)


@njit(cache=True, error_model="numpy")
def _round(re, im, slot, modes, per_plane, per_channel, q_tensor, scalars, static_scale, static_q_lo,
           scale, q_lo, lo, hi):
    """Round the planes re, im (H, n, lanes) in place onto the grid of quantizer `slot`, as
    `_ChannelMajorRounding.round_` does: clamp, grid, rounding."""
    _prepare(re, im, slot, modes, per_plane, per_channel, q_tensor, scalars, static_scale, static_q_lo,
             scale, q_lo, lo, hi)
    _, span, offset, q_min, q_max, _ = scalars[slot]
    _round_plane(re, scale[0], q_lo[0], q_tensor[slot], span, offset, q_min, q_max)
    _round_plane(im, scale[1], q_lo[1], q_tensor[slot], span, offset, q_min, q_max)


@njit(cache=True, error_model="numpy")
def _advance(re, im, a_re, a_im, minus_a_im, b_re, b_im, u):
    """One mode's Ā ⊙ x + B̄·u_t, every product and sum rounded in `eager_scan`'s order."""
    return (re * a_re + im * minus_a_im) + b_re * u, (im * a_re + re * a_im) + b_im * u


@njit(cache=True, error_model="numpy")
def _step(x_re, x_im, bu_re, bu_im, u_t, y_t, ar, ai, minus_ai, b_re, b_im, c_re, c_im, width, fused, terms,
          acc, rounding):
    """One step of a block: state planes x_re, x_im (H, n, lanes) in place, u_t (H, lanes) ->
    y_t (H, lanes) = 2·Re(C·x_t); `rounding`: `_round`'s arguments after the slot.

    The operations of `eager_scan`'s step in its order, in as few passes over the state as that order
    allows: one where everything before y's sum is elementwise (no partial products, the state's grid
    static, no clamp), else Ā ⊙ x + B̄·u_t (its partial products rounded and added), the state's grid,
    and its rounding with y's terms."""
    modes, scalars = rounding[0], rounding[4]
    partial = modes[0] != NONE or modes[1] != NONE
    if not partial and (modes[2] == NONE or (modes[2] == STATIC and scalars[2, 0] == np.inf)):
        _elementwise_step(x_re, x_im, u_t, y_t, ar, ai, minus_ai, b_re, b_im, c_re, c_im, width, fused, terms, acc,
                          rounding)
        return
    H, n, lanes = x_re.shape
    q_tensor, scale, q_lo = rounding[3], rounding[7], rounding[8]
    for h in range(H):
        u = u_t[h]
        for k in range(n):
            a_re, a_im, minus_a_im, bk_re, bk_im = ar[h, k], ai[h, k], minus_ai[h, k], b_re[h, k], b_im[h, k]
            xr, xi, pr, pi = x_re[h, k], x_im[h, k], bu_re[h, k], bu_im[h, k]
            if partial:
                for j in range(lanes):
                    re, im = xr[j], xi[j]
                    xr[j] = re * a_re + im * minus_a_im  # Ā ⊙ x, every product rounded
                    xi[j] = im * a_re + re * a_im
                    pr[j] = bk_re * u[j]  # B̄·u_t
                    pi[j] = bk_im * u[j]
            else:
                for j in range(lanes):
                    xr[j], xi[j] = _advance(xr[j], xi[j], a_re, a_im, minus_a_im, bk_re, bk_im, u[j])
    if partial:
        if modes[0] != NONE:
            _round(x_re, x_im, 0, *rounding)
        if modes[1] != NONE:
            _round(bu_re, bu_im, 1, *rounding)
        for h in range(H):
            for k in range(n):
                xr, xi, pr, pi = x_re[h, k], x_im[h, k], bu_re[h, k], bu_im[h, k]
                for j in range(lanes):
                    xr[j] = xr[j] + pr[j]
                    xi[j] = xi[j] + pi[j]
    rounds = modes[2] != NONE
    if rounds:
        _prepare(x_re, x_im, 2, *rounding)
    _, span, offset, q_min, q_max, _ = scalars[2]
    span, offset, q_min, q_max = np.float32(span), np.float32(offset), np.float32(q_min), np.float32(q_max)
    for h in range(H):
        s_re, s_im, ql_re, ql_im = scale[0, h], scale[1, h], q_lo[0, h], q_lo[1, h]
        for k in range(n):  # the state onto its grid; 2·Re(C·x) as addcmul: x_im·c_im + x_re·c_re rounded once
            xr, xi, row, cr, ci = x_re[h, k], x_im[h, k], terms[k], c_re[h, k], c_im[h, k]
            for j in range(lanes):
                re, im = xr[j], xi[j]
                if rounds:
                    re = _on_grid(re, s_re[j], ql_re[j], q_tensor[2], span, offset, q_min, q_max)
                    im = _on_grid(im, s_im[j], ql_im[j], q_tensor[2], span, offset, q_min, q_max)
                    xr[j], xi[j] = re, im
                row[j] = _output_term(re, im, cr, ci, fused)
        _row_sums(terms, width, y_t[h], acc)


@njit(cache=True, error_model="numpy")
def _elementwise_step(x_re, x_im, u_t, y_t, ar, ai, minus_ai, b_re, b_im, c_re, c_im, width, fused, terms, acc,
                      rounding):
    """`_step` where every operation before y's sum is elementwise: Ā ⊙ x + B̄·u_t, the state onto its
    static grid (if it has one) and y's terms in one pass, each state value loaded and stored once."""
    H, n, lanes = x_re.shape
    modes, q_tensor, scalars, static_scale, static_q_lo = rounding[0], rounding[3], rounding[4], rounding[5], rounding[6]
    rounds, on_range = modes[2] == STATIC, q_tensor[2]
    _, span, offset, q_min, q_max, _ = scalars[2]
    span, offset, q_min, q_max = np.float32(span), np.float32(offset), np.float32(q_min), np.float32(q_max)
    for h in range(H):
        u = u_t[h]
        s_re, s_im = static_scale[2, 0, h], static_scale[2, 1, h]
        ql_re, ql_im = static_q_lo[2, 0, h], static_q_lo[2, 1, h]
        for k in range(n):
            a_re, a_im, minus_a_im, bk_re, bk_im = ar[h, k], ai[h, k], minus_ai[h, k], b_re[h, k], b_im[h, k]
            xr, xi, row, cr, ci = x_re[h, k], x_im[h, k], terms[k], c_re[h, k], c_im[h, k]
            for j in range(lanes):
                re, im = _advance(xr[j], xi[j], a_re, a_im, minus_a_im, bk_re, bk_im, u[j])
                if rounds:
                    re = _on_grid(re, s_re, ql_re, on_range, span, offset, q_min, q_max)
                    im = _on_grid(im, s_im, ql_im, on_range, span, offset, q_min, q_max)
                xr[j], xi[j] = re, im
                row[j] = _output_term(re, im, cr, ci, fused)
        _row_sums(terms, width, y_t[h], acc)


@njit(parallel=True, cache=True, error_model="numpy")
def _scan_blocks(u, ar, ai, minus_ai, b_re, b_im, c_re, c_im, x0, y, width, fused, modes, per_plane, per_channel,
                 q_tensor, scalars, static_scale, static_q_lo):
    """Blocks of `lanes` sequences: u (blocks, L, H, lanes), Ā/B̄/C planes (H, n), x0 (blocks, 2, H, n, lanes)
    -> y (blocks, L, H, lanes) = 2·Re(C·x_t), before Q_y.

    width: torch.sum's vector width; fused: whether torch's addcmul rounds once (`_output_term`);
    modes, per_plane, per_channel, q_tensor (3,): the quantizers partial_Ax, partial_Bu, state;
    scalars (3, 6): clamp, span, offset, q_min, q_max, steps; static_scale, static_q_lo (3, 2, H)."""
    blocks, L, H, lanes = u.shape
    n = ar.shape[1]
    for block in prange(blocks):
        x_re, x_im = x0[block, 0].copy(), x0[block, 1].copy()  # (H, n, lanes): these sequences' own
        bu_re, bu_im = np.empty_like(x_re), np.empty_like(x_im)
        terms, acc = np.empty((n, lanes), np.float32), np.empty((4, lanes), np.float32)
        scale, q_lo = np.empty((2, H, lanes), np.float32), np.zeros((2, H, lanes), np.float32)
        lo, hi = np.empty((2, H, lanes), np.float32), np.empty((2, H, lanes), np.float32)
        rounding = (modes, per_plane, per_channel, q_tensor, scalars, static_scale, static_q_lo, scale, q_lo, lo, hi)
        for t in range(L):
            _step(x_re, x_im, bu_re, bu_im, u[block, t], y[block, t], ar, ai, minus_ai, b_re, b_im, c_re, c_im,
                  width, fused, terms, acc, rounding)


def _blocks(t: torch.Tensor, batch_axis: int, lanes: int) -> np.ndarray:
    """t with its batch axis padded with zeros to whole blocks of `lanes` and moved last, split into
    blocks: (..., B, ...) -> (blocks, ..., lanes), as a contiguous float32 array."""
    batch = t.shape[batch_axis]
    blocks = -(-batch // lanes)
    t = t.movedim(batch_axis, -1)
    padded = t.new_zeros(*t.shape[:-1], blocks * lanes)
    padded[..., :batch] = t
    return _array(padded.reshape(*t.shape[:-1], blocks, lanes).movedim(-2, 0))


def compiled_scan(u, A, B, C2, D, quant, x) -> torch.Tensor:
    """`eager_scan` compiled: u (B, L, H), planes A, B, C2 (2, H, n), D (H,), state planes x (2, B, H, n)
    -> y (B, L, H), bit for bit. Raises where `unsupported` names a reason."""
    batch, L, H = u.shape
    n = A.shape[-1]
    why = unsupported(u, quant, n)
    if why:
        raise ValueError(f"compiled_scan cannot run this scan ({why}); use qrecurrent.eager_scan")
    slots = [_rounding(getattr(quant, name), H, n) for name in SLOTS]
    lanes = min(LANES, -(-max(batch, 1) // VECTOR) * VECTOR)  # a small batch is not padded to LANES
    zeros = np.zeros((2, H), np.float32)
    planes = [_array(p) for p in (A[0], A[1], -A[1], B[0], B[1], C2[0], C2[1])]
    y = np.empty((-(-batch // lanes), L, H, lanes), np.float32)
    match_torch_threads()
    _scan_blocks(
        _blocks(u, 0, lanes), *planes, _blocks(x, 1, lanes), y, torch_sum_width(), torch_addcmul_fuses(),
        np.array([s.mode for s in slots], np.int64),
        np.array([s.per_plane for s in slots]), np.array([s.per_channel for s in slots]),
        np.array([s.q_tensor for s in slots]),
        np.array([[s.clamp, s.span, s.offset, s.q_min, s.q_max, s.steps] for s in slots], np.float64),
        np.stack([zeros if s.scale is None else s.scale for s in slots]),
        np.stack([zeros if s.q_lo is None else s.q_lo for s in slots]),
    )
    y = torch.from_numpy(y).permute(0, 3, 1, 2).reshape(-1, L, H)[:batch].contiguous()  # (B, L, H)
    if not quant.y.is_float:
        y = quant.y(y)  # its ranges from batch-major values, as the other paths take them
    return torch.add(y, D * u, out=u.new_empty(batch, L, H))


def compile_loop() -> None:
    """Compile the loop into numba's cache (the package's __pycache__) with one tiny scan: setup.sh
    calls it, so that no study or test pays the compilation (about 30 s on the project's CPU). Every
    scan shares one compiled signature: the quantizers' settings are values, not types."""
    from .precision import PrecisionSpec
    from .quantize import SSMQuantization

    quant = SSMQuantization(PrecisionSpec.channel_asym(8, 16, ranges="dynamic"))
    u, planes = torch.zeros(1, 2, 1), torch.zeros(2, 1, 1)
    compiled_scan(u, planes, planes, planes, torch.zeros(1), quant, torch.zeros(2, 1, 1, 1))
