"""The fused kernel's whole scan as one persistent Triton kernel: every crossbar's state stays on chip.

`FusedS4D.scan` on a GPU is a few dozen small torch kernels per step, so its cost is their launches
(CUDA graphs and a compiled step reduce, not remove them). `fused_scan` instead launches one program
per crossbar and block of sequences, which loads its crossbar once and runs all L + 1 steps in a loop:
input range, noise management, DAC, the product, output noise, ADC, bound management, the periphery's
scales and the state register, in registers, reading only u_t and writing only y_{t-1} each step.

It computes what `fused_scan_ref` (the fast step `StaticScan.run`, itself `FusedS4D.scan_plain`'s
outputs) computes, in the same order of float32 operations, with the same per-sequence noise:
  draws     the counter-based normals of `aimc_ssm.analog.draws`, hashed in the kernel from the same
            tables (`SequenceDraws.table`, per attempt, column group and step) and lanes, Box-Muller
            with CUDA's logf, cosf, sinf (libdevice, as torch's kernels call them) and correctly rounded
            sqrt and division.
  scalars   a division by a Python scalar is torch's on CUDA: a multiplication by the float32 reciprocal;
            1 / tensor is torch's reciprocal, a correctly rounded division; rounding is round-half-even;
            no fused multiply-adds (`enable_fp_fusion=False`).
  managed   noise management scales each vector by its largest entry (abs max, max) or a constant; iterative
            bound management repeats, per sequence and crossbar, the reads that clipped at half the input
            scale, each attempt with its own draws, until the last attempt takes every vector (a block
            stops once none of its vectors is pending: later attempts would change none of its outputs).
  product   float64, as per-sequence reads accumulate it, rounded to float32, with the copies' weights
            summed first as theirs are (`CrossbarStack.weight64`: copies read the same inputs). The float64
            sums run in another order than cuBLAS's and can round to another float32, about once in
            2^23 products; where that lands on an ADC decision a level differs, and the recurrence carries it.
So outputs agree with the twin to the last bit but for those rare roundings (benchmarks/bench_fused_kernel.py
prints the fraction of equal outputs; the tests hold them equal). A sequence's block holds other
sequences only as independent rows of the product: its outputs do not depend on its batch-mates (tests).

Scope (`unsupported` says why a kernel is not run): per-sequence reads on pure-PyTorch tiles, with what
their fast step runs (`mvm.fast_path_supports`: noise management none, constant, abs max or max, bound
management none or iterative), no input noise, deterministic rounding, out_scale 1, no PTQ/QAT state
quantizer, up to 128 state modes; one or two column groups (y_adc_range), any copies, any mapping, output
noise per column or not. Everything else runs `StaticScan`.

On CPU tensors, with TRITON_INTERPRET=1 set before triton is imported, Triton's interpreter runs the same
kernel in numpy: how the tests check its semantics without a GPU. There numpy's log and cosine stand in
for libdevice's, and torch divides by a Python scalar truly where the kernel multiplies by the
reciprocal (CUDA's choice): rounding onto a converter's steps hides that last bit but at an exact tie,
so the interpreter checks the order of operations, and a GPU run checks the CUDA arithmetic.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch
import triton
import triton.language as tl

from .draws import FMIX, LANE_STRIDE
from .kernel import StaticScan, compiled_scan_unsupported, scan_inputs
from .mvm import attempt_scales, bound_management_attempts, converter_step, noise_management_code

INTERPRETED: tl.constexpr = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")
if not INTERPRETED:
    from triton.language.extra import libdevice
MAX_MODES = 128  # a program holds its crossbar's float64 state block in registers: up to 128 x 128
BLOCK_B = 16  # sequences per program: the smallest tile of a Triton dot, and the fastest (measured on an H200)

TWO_PI: tl.constexpr = tl.constexpr(2 * math.pi)
ROUNDING: tl.constexpr = tl.constexpr(2.0**23)  # x + 2^23 - 2^23 rounds |x| < 2^23 to an integer, half to even
FMIX0: tl.constexpr = tl.constexpr(FMIX[0])
FMIX1: tl.constexpr = tl.constexpr(FMIX[1])
LANE: tl.constexpr = tl.constexpr(LANE_STRIDE)


def num_warps(modes: int) -> int:
    """Warps per program for a state tile of `modes` (a power of two): 4 up to 64 modes, then 8, so that
    the float64 state block the program holds for all its steps stays in registers (on an H200 the
    faster choice at 64 and at 128 modes)."""
    return 4 if modes <= 64 else 8


@triton.jit
def _log(x):
    if INTERPRETED:
        return tl.log(x)
    else:
        return libdevice.log(x)  # CUDA's logf, as torch's log kernel (tl.log is an approximation)


@triton.jit
def _cos_sin(x):
    if INTERPRETED:
        return tl.cos(x), tl.sin(x)
    else:
        return libdevice.cos(x), libdevice.sin(x)


@triton.jit
def _round_half_even(x):
    """torch.round: to the nearest integer, ties to even; exact IEEE arithmetic without fused operations."""
    a = tl.abs(x)
    r = tl.where(a < ROUNDING, (a + ROUNDING) - ROUNDING, a)
    return tl.where(x < 0, -r, r)


@triton.jit
def _hash32(x):
    """`draws.hash32` on uint32: MurmurHash3's finalizer."""
    x = x ^ (x >> 16)
    x = x * FMIX0
    x = x ^ (x >> 13)
    x = x * FMIX1
    return x ^ (x >> 16)


@triton.jit
def _normal(base, h, column, PAIRS: tl.constexpr):
    """`SequenceDraws.normal_` of `column` of crossbar h in a read of 2·PAIRS lanes: base (B, 1) uint32,
    column (1, C) int32 -> (B, C) float32. Column c < PAIRS is the cosine half of pair c, the others the
    sine half of pair c - PAIRS."""
    cosine = column < PAIRS
    pair = tl.where(cosine, column, column - PAIRS)
    lane = h * 2 * PAIRS + pair  # the radius's lane; the angle's is PAIRS further
    radius_bits = _hash32(base + lane.to(tl.uint32) * LANE)
    angle_bits = _hash32(base + (lane + PAIRS).to(tl.uint32) * LANE)
    radius = (((radius_bits >> 8) & 0xFFFFFF).to(tl.float32) + 0.5) * 5.9604644775390625e-08  # 2^-24
    radius = tl.sqrt_rn(_log(radius) * -2.0)
    angle = (((angle_bits >> 8) & 0xFFFFFF).to(tl.float32) * 5.9604644775390625e-08) * TWO_PI
    cos, sin = _cos_sin(angle)
    return radius * tl.where(cosine, cos, sin)


@triton.jit
def _convert(x, inv_res, res, bound, ROUND: tl.constexpr, CLIP: tl.constexpr):
    """A converter (DAC or ADC) as `CrossbarStack.read_` runs it: rounding onto its steps, then its bound."""
    if ROUND:
        x = _round_half_even(x * inv_res) * res
    if CLIP:
        x = tl.minimum(tl.maximum(x, -bound), bound)
    return x


@triton.jit
def _read(
    x_in, u_in, u_prev_in, scale, w_state, w_u, w_u_prev, w_y, w_y_u, w_y_u_prev, base, strength, y_strength,
    h, column, mode, in_inv_res, in_res, in_bound, state_inv_res, state_res, state_bound, y_inv_res, y_res, y_bound,
    DAC: tl.constexpr, IN_CLIP: tl.constexpr, NOISE: tl.constexpr, ADC: tl.constexpr, CHECK: tl.constexpr,
    STATE_CLIP: tl.constexpr, Y_CLIP: tl.constexpr, STATE_PAIRS: tl.constexpr, Y_PAIRS: tl.constexpr, Y_COLUMN: tl.constexpr,
):
    """One analog read (`CrossbarStack.read_`) of inputs scaled by noise and bound management (scale (B,)):
    DAC, float64 product, output noise, ADC. -> the state columns' read (B, NP), the y column's (B,), and
    whether neither clipped at its ADC bound (B,) each."""
    x_in = _convert(x_in * scale[:, None], in_inv_res, in_res, in_bound, DAC, IN_CLIP).to(tl.float64)
    u_in = _convert(u_in * scale, in_inv_res, in_res, in_bound, DAC, IN_CLIP).to(tl.float64)
    u_prev_in = _convert(u_prev_in * scale, in_inv_res, in_res, in_bound, DAC, IN_CLIP).to(tl.float64)
    read = tl.dot(x_in, w_state) + u_in[:, None] * w_u[None, :] + u_prev_in[:, None] * w_u_prev[None, :]
    read = read.to(tl.float32)  # (B, NP): x_t, or its increment
    y = (tl.sum(x_in * w_y[None, :], axis=1) + u_in * w_y_u + u_prev_in * w_y_u_prev).to(tl.float32)  # y_{t-1}
    if NOISE:
        read = read + _normal(base[:, None], h, column, STATE_PAIRS) * strength[None, :]
        y = y + tl.sum(_normal(base[:, None], h, tl.full((1, 1), Y_COLUMN, tl.int32), Y_PAIRS), axis=1) * y_strength
    read = _convert(read, state_inv_res, state_res, state_bound, ADC, False)
    y = _convert(y, y_inv_res, y_res, y_bound, ADC, False)
    state_within = tl.full(y.shape, 1, tl.int1)
    y_within = tl.full(y.shape, 1, tl.int1)
    if CHECK and STATE_CLIP:  # a column group without an ADC bound never clips
        state_within = tl.max(tl.where(mode[None, :], tl.abs(read), 0.0), axis=1) <= state_bound
    if CHECK and Y_CLIP:
        y_within = tl.abs(y) <= y_bound
    if STATE_CLIP:
        read = tl.minimum(tl.maximum(read, -state_bound), state_bound)
    if Y_CLIP:
        y = tl.minimum(tl.maximum(y, -y_bound), y_bound)
    return read, y, state_within, y_within


@triton.jit
def _attempt(
    read, y, pending, attempt, reduction,
    x_in, u_in, u_prev_in, inverse, w_state, w_u, w_u_prev, w_y, w_y_u, w_y_u_prev, strength, y_strength,
    h, column, mode, rows, live, t, steps, B, table_ptr, scale_ptr,
    in_inv_res, in_res, in_bound, state_inv_res, state_res, state_bound, y_inv_res, y_res, y_bound,
    GROUP: tl.constexpr, GROUPS: tl.constexpr, ATTEMPTS: tl.constexpr, NOISE_MANAGEMENT: tl.constexpr,
    DAC: tl.constexpr, IN_CLIP: tl.constexpr, NOISE: tl.constexpr, ADC: tl.constexpr, CHECK: tl.constexpr,
    STATE_CLIP: tl.constexpr, Y_CLIP: tl.constexpr, STATE_PAIRS: tl.constexpr, Y_PAIRS: tl.constexpr,
    Y_COLUMN: tl.constexpr, BLOCK: tl.constexpr,
):
    """One attempt of bound management for column group GROUP (`CrossbarStack.mvm_per_sequence_`): read
    at the attempt's input scale; the pending vectors that did not clip, or all at the last attempt,
    take this read times out_scale / scale. -> (read, y, pending)."""
    if NOISE_MANAGEMENT > 0:
        scale = inverse * reduction
        factor = tl.div_rn(1.0, scale)  # out_scale / scale, as torch's reciprocal, out_scale 1
    else:
        scale = tl.full((BLOCK,), 1.0, tl.float32) * tl.load(scale_ptr + attempt)
        factor = tl.full((BLOCK,), 1.0, tl.float32) * tl.load(scale_ptr + ATTEMPTS + attempt)
    base = tl.load(table_ptr + ((attempt * GROUPS + GROUP) * steps + t) * B + rows, mask=live, other=0)
    trial, y_trial, state_within, y_within = _read(
        x_in, u_in, u_prev_in, scale, w_state, w_u, w_u_prev, w_y, w_y_u, w_y_u_prev,
        base.to(tl.uint32, bitcast=True), strength, y_strength, h, column, mode,
        in_inv_res, in_res, in_bound, state_inv_res, state_res, state_bound, y_inv_res, y_res, y_bound,
        DAC, IN_CLIP, NOISE, ADC, CHECK, STATE_CLIP, Y_CLIP, STATE_PAIRS, Y_PAIRS, Y_COLUMN,
    )
    if GROUPS == 1:
        within = state_within & y_within
    elif GROUP == 0:
        within = state_within
    else:
        within = y_within
    done = pending & (within | (attempt == ATTEMPTS - 1))
    if GROUPS == 1 or GROUP == 0:
        read = tl.where(done[:, None], trial * factor[:, None], read)
    if GROUPS == 1 or GROUP == 1:
        y = tl.where(done, y_trial * factor, y)
    return read, y, pending & ~done


@triton.jit
def _scan_kernel(
    u_ptr,  # (L+1, H, B) float32, time-major, u_L = 0
    y_ptr,  # (L, H, B) float32: y_t
    w_ptr,  # (H, N+2, N+1) float64: rows [u_t, x_{t-1}, u_{t-1}], columns [x_t, y_{t-1}], copies summed
    range_ptr,  # (H,) float32 DAC ranges r_h
    factor_ptr,  # (F, H, N+1) float32: the periphery's factors per column, applied in order
    strength_ptr,  # (H, N+1) float32: output-noise std per column
    table_ptr,  # (ATTEMPTS, GROUPS, L+1, B) int32: every sequence's draw base per attempt, column group and step
    scale_ptr,  # (2, ATTEMPTS) float32: input scale and output factor of each attempt, where not per vector
    steps, B, H,
    in_inv_res, in_res, in_bound,
    state_inv_res, state_res, state_bound, y_inv_res, y_res, y_bound, nm_thres,
    N: tl.constexpr, NP: tl.constexpr, FACTORS: tl.constexpr,
    STATE_PAIRS: tl.constexpr, Y_PAIRS: tl.constexpr, Y_COLUMN: tl.constexpr, GROUPS: tl.constexpr,
    HAS_RANGE: tl.constexpr, DAC: tl.constexpr, IN_CLIP: tl.constexpr, NOISE_MANAGEMENT: tl.constexpr,
    ATTEMPTS: tl.constexpr, CHECK: tl.constexpr,
    NOISE: tl.constexpr, ADC: tl.constexpr, STATE_CLIP: tl.constexpr, Y_CLIP: tl.constexpr, INCREMENTAL: tl.constexpr,
    BLOCK: tl.constexpr,
):
    h = tl.program_id(0)
    rows = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,) sequences
    live = rows < B
    n = tl.arange(0, NP)  # state modes, padded to a power of two
    mode = n < N
    # the crossbar, once: (NP, NP) state block, the u_t and u_{t-1} rows, and the y column
    w = w_ptr + h * (N + 2) * (N + 1)
    w_state = tl.load(w + (1 + n[:, None]) * (N + 1) + n[None, :], mask=mode[:, None] & mode[None, :], other=0.0)
    w_u = tl.load(w + n, mask=mode, other=0.0)
    w_u_prev = tl.load(w + (N + 1) * (N + 1) + n, mask=mode, other=0.0)
    w_y = tl.load(w + (1 + n) * (N + 1) + N, mask=mode, other=0.0)
    w_y_u = tl.load(w + N)
    w_y_u_prev = tl.load(w + (N + 1) * (N + 1) + N)
    strength = tl.load(strength_ptr + h * (N + 1) + n, mask=mode, other=0.0)
    y_strength = tl.load(strength_ptr + h * (N + 1) + N)
    r = 1.0
    if HAS_RANGE:
        r = tl.load(range_ptr + h)
    column = n[None, :]
    x = tl.zeros((BLOCK, NP), tl.float32)  # the state register x_{t-1}, mapped
    u_prev = tl.zeros((BLOCK,), tl.float32)
    t = tl.full((), 0, tl.int64)  # offsets of long scans pass 2^31
    while t < steps:
        u_t = tl.load(u_ptr + (t * H + h) * B + rows, mask=live, other=0.0)
        # the input range (`CrossbarStack.step_once`)
        x_in, u_in, u_prev_in = x, u_t, u_prev
        if HAS_RANGE:
            x_in = tl.div_rn(tl.minimum(tl.maximum(x_in, -r), r), r)
            u_in = tl.div_rn(tl.minimum(tl.maximum(u_in, -r), r), r)
            u_prev_in = tl.div_rn(tl.minimum(tl.maximum(u_prev_in, -r), r), r)
        # noise management (`CrossbarStack.noise_management_values`): 0 none or constant, 1 abs max, 2 max
        silent = tl.zeros((BLOCK,), tl.int1)
        inverse = tl.full((BLOCK,), 1.0, tl.float32)
        if NOISE_MANAGEMENT > 0:
            if NOISE_MANAGEMENT == 1:
                nm = tl.maximum(tl.max(tl.where(mode[None, :], tl.abs(x_in), 0.0), axis=1), tl.maximum(tl.abs(u_in), tl.abs(u_prev_in)))
            else:
                nm = tl.maximum(tl.max(tl.where(mode[None, :], x_in, -float("inf")), axis=1), tl.maximum(u_in, u_prev_in))
            if nm_thres > 0:
                nm = tl.minimum(nm, nm_thres)
            silent = nm == 0  # an all-zero input vector reads 0
            inverse = tl.div_rn(1.0, tl.where(nm <= 0, 1.0, nm))  # 1.0 / nm, as torch's reciprocal
        read = tl.zeros((BLOCK, NP), tl.float32)
        y = tl.zeros((BLOCK,), tl.float32)
        # bound management (`CrossbarStack.mvm_per_sequence_`): each column group repeats the read of the
        # vectors that clipped at half the input scale, up to its last attempt, which takes every vector
        for group in tl.static_range(GROUPS):
            pending = live
            attempt = 0
            reduction = 1.0  # 1 / 2^attempt, exact
            # one read takes every vector where there is no bound management: then no loop, no test of what is pending
            while (attempt < ATTEMPTS) & ((ATTEMPTS == 1) | (tl.max(pending.to(tl.int32), axis=0) > 0)):
                read, y, pending = _attempt(
                    read, y, pending, attempt, reduction,
                    x_in, u_in, u_prev_in, inverse, w_state, w_u, w_u_prev, w_y, w_y_u, w_y_u_prev, strength, y_strength,
                    h, column, mode, rows, live, t, steps, B, table_ptr, scale_ptr,
                    in_inv_res, in_res, in_bound, state_inv_res, state_res, state_bound, y_inv_res, y_res, y_bound,
                    group, GROUPS, ATTEMPTS, NOISE_MANAGEMENT, DAC, IN_CLIP, NOISE, ADC, CHECK, STATE_CLIP, Y_CLIP,
                    STATE_PAIRS, Y_PAIRS, Y_COLUMN, BLOCK,
                )
                attempt += 1
                reduction = reduction * 0.5
        read = tl.where(silent[:, None], 0.0, read)
        y = tl.where(silent, 0.0, y)
        for f in tl.static_range(FACTORS):  # the periphery's digital scales
            factors = factor_ptr + (f * H + h) * (N + 1)
            read = read * tl.load(factors + n, mask=mode, other=0.0)[None, :]
            y = y * tl.load(factors + N)
        if INCREMENTAL:
            x = x + read
        else:
            x = read
        tl.store(y_ptr + ((t - 1) * H + h) * B + rows, y, mask=live & (t > 0))  # y_{-1} is dropped
        u_prev = u_t
        t += 1


def unsupported(kernel, stack) -> str | None:
    """Why `fused_scan` cannot run this kernel's scan (module docstring), or None where it can: what
    neither compiled scan runs (`kernel.compiled_scan_unsupported`) and the limits of this one."""
    io = stack.io
    reason = compiled_scan_unsupported(kernel, stack)
    if reason is not None:
        return reason
    if len(stack.groups) > 2:
        return "more than two column groups"
    if kernel.d_state > MAX_MODES:
        return f"a state of more than {MAX_MODES} modes"
    if not io.is_perfect and io.out_scale != 1.0:
        return "an out_scale other than 1"
    return None


def converter_scalars(io, res: float, bound: float) -> tuple[float, float]:
    """(float32 reciprocal, float32 step) of a converter of resolution res over ±bound (`mvm.converter_step`),
    (1, 1) where it does not round: torch divides a float32 tensor by a Python scalar on CUDA as a
    multiplication by the float32 reciprocal, and multiplies by the float32 step."""
    if io.is_perfect or res <= 0:
        return 1.0, 1.0
    step = np.float32(converter_step(res, bound))
    return float(np.float32(1.0) / step), float(step)


@torch.no_grad()
def fused_scan(kernel, stack, u: torch.Tensor) -> torch.Tensor:
    """u (B, L, H) -> y (B, L, H): `fused_scan_ref`'s scan as one Triton kernel (module docstring).
    stack: `kernel.crossbar_stack(u)`, whose reads are per sequence; `unsupported` must be None."""
    from aihwkit.simulator.parameters.enums import BoundManagementType

    reason = unsupported(kernel, stack)
    if reason is not None:
        raise ValueError(f"the Triton scan does not run {reason}; use StaticScan (FusedS4D.scan chooses)")
    if not (u.is_cuda or INTERPRETED):
        raise ValueError(
            "the Triton scan runs on CUDA tensors; on CPU tensors only in Triton's interpreter (TRITON_INTERPRET=1 "
            "before triton is imported), and FusedS4D.scan runs StaticScan there"
        )
    B, L, H = u.shape
    N = kernel.d_state
    steps = L + 1
    u_steps = scan_inputs(u)  # (L+1, H, B)
    weight = stack.weight64.permute(0, 2, 1).contiguous()  # (H, N+2, N+1): the copies summed, as the product reads them
    factors = [stack.scale] + [f for f in (stack.drift_alpha, stack.out_scale) if f is not None]
    factors = torch.stack([f.expand(H, 1, N + 1)[:, 0] for f in factors]).float().contiguous()  # (F, H, N+1)
    strength = torch.zeros(H, N + 1, device=u.device)
    groups = stack.groups
    for group in groups:
        if group.out_noise_values is not None:
            strength[:, group.columns] = group.out_noise_values[:, 0]
        else:
            strength[:, group.columns] = group.io.out_noise  # rounded to float32, as torch rounds the scalar
    io, y_io = groups[0].io, groups[-1].io
    perfect = io.is_perfect
    iterative = not perfect and io.bound_management == BoundManagementType.ITERATIVE
    attempts = bound_management_attempts(io) if iterative else 1
    draws = stack.draws
    draws.prepare(steps)
    tables = torch.stack([
        torch.stack([draws.table(a, "output_noise", g) for g in range(len(groups))]) for a in range(attempts)
    ])  # (attempts, groups, L+1, B)
    scales = torch.tensor(attempt_scales(io, attempts), dtype=torch.float32, device=u.device)
    two_groups = len(groups) == 2
    state_columns = N if two_groups else N + 1
    y = u.new_empty(L, H, B)
    # DAC ranges; without them the kernel reads none (HAS_RANGE), and any tensor fills the argument
    ranges = stack.input_range.reshape(H).float().contiguous() if stack.input_range is not None else factors
    grid = (H, triton.cdiv(B, BLOCK_B))
    modes = max(16, triton.next_power_of_2(N))  # the state tile: a power of two, at least a dot's 16
    _scan_kernel[grid](
        u_steps, y, weight, ranges, factors, strength, tables, scales,
        steps, B, H,
        *converter_scalars(io, io.inp_res, io.inp_bound), float(io.inp_bound),
        *converter_scalars(io, io.out_res, io.out_bound), float(io.out_bound),
        *converter_scalars(y_io, y_io.out_res, y_io.out_bound), float(y_io.out_bound),
        float(io.nm_thres) if not perfect else 0.0,
        N=N, NP=modes, FACTORS=factors.shape[0],
        STATE_PAIRS=(state_columns + 1) // 2, Y_PAIRS=1 if two_groups else (N + 2) // 2, Y_COLUMN=0 if two_groups else N,
        GROUPS=len(groups), HAS_RANGE=stack.input_range is not None,
        DAC=not perfect and io.inp_res > 0, IN_CLIP=not perfect and io.inp_bound > 0,
        NOISE_MANAGEMENT=0 if perfect else noise_management_code(io.noise_management),
        ATTEMPTS=attempts, CHECK=iterative,
        NOISE=not perfect and (io.out_noise > 0 or stack.out_noise_values is not None),
        ADC=not perfect and io.out_res > 0,  # the y column's io differs from io in its bound only (kernel.y_column_io)
        STATE_CLIP=not perfect and io.out_bound > 0, Y_CLIP=not perfect and y_io.out_bound > 0,
        INCREMENTAL=kernel.incremental, BLOCK=BLOCK_B, num_warps=num_warps(modes),
        enable_fp_fusion=False,  # torch's elementwise kernels multiply and add apart
    )
    return y.permute(2, 0, 1).contiguous()  # (B, L, H); contiguous as StaticScan's outputs


@torch.no_grad()
def fused_scan_ref(kernel, stack, u: torch.Tensor) -> torch.Tensor:
    """Twin of `fused_scan`: `StaticScan`'s steps, eagerly."""
    return StaticScan(kernel, stack, u).run()
