"""The fused kernel's scan on the CPU: a step's elementwise work compiled (numba), its product BLAS's.

`StaticScan`'s step on the CPU is some eighty torch operations, each a pass over megabyte tensors: the
input range, the DAC, the float64 product's casts, about twenty integer passes of the counter-based
hash, Box-Muller, the output noise, the ADC and the periphery. At the benchmark's sizes (H 16, N 64,
batch 500) those passes cost more than the float64 product itself (a profile: 4.5 of a step's 8 ms).
`fused_scan` runs the same step as compiled loops, each one pass over the batch, around the two
things that stay torch's:

  noise management  per vector (abs max, max): its divisor's reciprocal and the silent vectors
  dac       each attempt's inputs [u_t, x_{t-1}, u_{t-1}] through the input range, the attempt's input
            scale, the DAC and its bound: the product's float64 operand
  product   torch's float64 bmm, weight64 (H, columns, N+2) @ x (H, N+2, B), as `ColumnGroup.matmul` runs it
  uniforms  every sequence's counter-based hash of the read (aimc_ssm.analog.draws): Box-Muller's
            radius and angle uniforms
  log, sqrt, cos, sin   torch's, on the uniforms: its vectorized functions, whose last bit a compiled
            loop would not reproduce (not even the square root's: torch's float32 sqrt on the CPU is not
            correctly rounded, measured on 15 % of values)
  read      the product rounded to float32, the normals times the output-noise strengths, the ADC and its
            bound, bound management's decision per sequence, the attempt's output factor
  finish    silent vectors, the periphery's factors, the state register and y

Every value sees the float32 operations of `StaticScan` in the same order, with the same draws and the
same product, so the outputs agree bit for bit with its twin `fused_scan_ref` (`StaticScan.run`, itself
`FusedS4D.scan_plain`'s outputs; tests/test_analog_numba_scan.py):
  - numba compiles without fast-math: no fused multiply-adds, true divisions (torch divides a CPU tensor
    by a scalar truly), float32 values meet only float32 constants;
  - rounding is half to even (np.rint), as torch.round;
  - 1 / tensor is torch's reciprocal, a correctly rounded division.
Tensors are laid out (H, ·, B): a sequence is a lane of every vector operation and no operation mixes
lanes, so a sequence's outputs do not depend on its batch-mates.

Scope (`unsupported` says why a scan is not run): per-sequence reads of float32 inputs on the CPU, with
the fast step's noise and bound management (`mvm.fast_path_supports`), no input noise or stochastic
rounding, no PTQ/QAT state quantizer; one or two column groups (y_adc_range), any copies, mapping and
output noise. `FusedS4D.scan` runs `StaticScan` for the rest. Everything runs on torch's threads: the
product and the transcendental functions in torch, the loops over the crossbars split between as many
of numba's threads (`threads.match_torch_threads`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from ..threads import match_torch_threads
from .draws import FMIX, LANE_STRIDE, MASK, counter
from .kernel import StaticScan, compiled_scan_unsupported, scan_inputs
from .mvm import attempt_scales, bound_management_attempts, converter_step, noise_management_code

F32 = np.float32
TWO_PI = F32(2 * math.pi)  # torch multiplies a float32 tensor by a Python scalar rounded to float32
UNIFORM = F32(2.0**-24)
# the hash's constants as uint64: numba turns arithmetic that mixes uint64 and int64 into float64
U64 = np.uint64
FMIX0, FMIX1, MASK64, LANE64, BITS24 = U64(FMIX[0]), U64(FMIX[1]), U64(MASK), U64(LANE_STRIDE), U64(0xFFFFFF)


@njit(cache=True, error_model="numpy", inline="always")
def _hash32(x):
    """`draws.hash32` of a 32-bit pattern held in a uint64."""
    x ^= x >> U64(16)
    x = (x * FMIX0) & MASK64
    x ^= x >> U64(13)
    x = (x * FMIX1) & MASK64
    return x ^ (x >> U64(16))


@njit(cache=True, error_model="numpy", inline="always")
def _input_row(i, u_t, u_prev, register, h):
    """Row i of crossbar h's input vectors [u_t, x_{t-1}, u_{t-1}] (B,): the row groups of copies read the same."""
    N = register.shape[1]
    return u_t[h] if i == 0 else (u_prev[h] if i == N + 1 else register[h, i - 1])


@njit(cache=True, error_model="numpy", inline="always")
def _ranged(v, r, has_range):
    """`CrossbarStack.step_once`'s input range: clamped at ±r, then divided by r."""
    return min(max(v, -r), r) / r if has_range else v


# Each loop below is a function of one crossbar h; the functions after them (`_noise_management`, `_dac`,
# `uniforms`, `_read`, `_finish`) split the crossbars into `parts` contiguous parts, one per thread (numba's
# prange over the parts), and call it for every crossbar of a part in turn. A crossbar's loop is the same
# compiled code in any part, and crossbars share nothing they write, so the outputs do not depend on the
# split; the split is explicit so that the tests can vary it beyond the machine's threads.
@njit(cache=True, error_model="numpy")
def _crossbar_noise_management(h, u_t, u_prev, register, ranges, has_range, nm_kind, nm_thres, inverse, silent):
    """Noise management per vector of crossbar h (nm_kind 1 abs max, 2 max, of its inputs through the input
    range): the reciprocal of the divisor into inverse[h] and the all-zero vectors into silent[h], as
    `CrossbarStack.noise_management_values` and `mvm_` find them."""
    N, B = register.shape[1:]
    r = ranges[h]
    nm = np.full(B, -np.inf, np.float32)
    for i in range(N + 2):
        values = _input_row(i, u_t, u_prev, register, h)
        for b in range(B):  # the branches are the same for every b: LLVM takes them out of the loop
            v = _ranged(values[b], r, has_range)
            nm[b] = max(nm[b], abs(v) if nm_kind == 1 else v)
    for b in range(B):
        divisor = min(nm[b], nm_thres) if nm_thres > 0 else nm[b]
        silent[h, b] = divisor == 0
        inverse[h, b] = F32(1.0) / (divisor if divisor > 0 else F32(1.0))


@njit(cache=True, error_model="numpy")
def _crossbar_dac(h, u_t, u_prev, register, ranges, has_range, inverse, per_vector, reduction, scale, dac, in_step,
                  clip, in_bound, x64):
    """The float64 operand x64[h] (N+2, B) of one attempt's read: the inputs through the input range, times
    the attempt's input scale (per vector inverse / reduction, else the scalar scale), the DAC's rounding
    onto in_step, its bound."""
    R, B = x64.shape[1:]
    r = ranges[h]
    scales = np.empty(B, np.float32)
    for b in range(B):
        scales[b] = inverse[h, b] / reduction if per_vector else scale
    for i in range(R):
        values, operand = _input_row(i, u_t, u_prev, register, h), x64[h, i]
        for b in range(B):  # the branches are the same for every b: LLVM takes them out of the loop
            v = _ranged(values[b], r, has_range)
            if per_vector or scale != 1:
                v = v * scales[b]
            if dac:
                v = np.rint(v / in_step) * in_step
            if clip:
                v = min(max(v, -in_bound), in_bound)
            operand[b] = v


@njit(cache=True, error_model="numpy")
def _crossbar_uniforms(h, base, radius, angle):
    """Box-Muller's uniforms of crossbar h in one read (`SequenceDraws.normal_`): radius[h] (P, B) in
    (0, 1) and angle[h] (P, B) times 2π, from every sequence's hash of the read (base) and the lane."""
    P, B = radius.shape[1:]
    for k in range(P):
        radius_lane = (U64(h * 2 * P + k) * LANE64) & MASK64
        angle_lane = (U64(h * 2 * P + P + k) * LANE64) & MASK64
        radius_row, angle_row = radius[h, k], angle[h, k]
        for b in range(B):
            bits = _hash32((base[b] + radius_lane) & MASK64)
            radius_row[b] = (F32((bits >> U64(8)) & BITS24) + F32(0.5)) * UNIFORM
            bits = _hash32((base[b] + angle_lane) & MASK64)
            angle_row[b] = (F32((bits >> U64(8)) & BITS24) * UNIFORM) * TWO_PI


@njit(cache=True, error_model="numpy", inline="always")
def _converted(product, radius, trig, strength, noise, adc, out_step):
    """A read's float64 product rounded to float32, plus its Box-Muller normal (radius·trig) times the
    noise strength, rounded onto the ADC's steps: `CrossbarStack.read_`'s order."""
    v = F32(product)
    if noise:
        v = v + (radius * trig) * strength
    if adc:
        v = np.rint(v / out_step) * out_step
    return v


@njit(cache=True, error_model="numpy")
def _crossbar_read(h, out64, radius, cos, sin, strength, noise, adc, out_step, clip, out_bound, check, per_vector,
                   inverse, reduction, factor, out_scale, last, pending, trial, out, first_column):
    """One attempt's read of a column group by crossbar h (`CrossbarStack.read_` and `mvm_per_sequence_`):
    the float64 product rounded to float32, plus the normals (radius (H, P, B) times cos or sin) times
    strength[h], the ADC, its bound; the vectors still pending that did not clip (or all at the last
    attempt) take the read times the attempt's output factor into out[h] from first_column. Returns how
    many of its vectors are still pending."""
    C, B = out64.shape[1:]
    P = radius.shape[1]
    factors = np.empty(B, np.float32)
    for b in range(B):
        factors[b] = (F32(1.0) / (inverse[h, b] / reduction)) * out_scale if per_vector else factor
    peak = np.zeros(B, np.float32)
    for c in range(C):
        k = c if c < P else c - P
        radius_k, trig, s = radius[h, k], cos[h, k] if c < P else sin[h, k], strength[h, c]
        product, row, target = out64[h, c], trial[h, c], out[h, first_column + c]
        if check:  # the loops' other branches are the same for every b: LLVM takes them out of the loop
            for b in range(B):
                v = _converted(product[b], radius_k[b], trig[b], s, noise, adc, out_step)
                peak[b] = max(peak[b], abs(v))
                row[b] = min(max(v, -out_bound), out_bound) if clip else v
        else:  # no bound to check: every vector takes this read, straight into out, times its factor
            for b in range(B):
                v = _converted(product[b], radius_k[b], trig[b], s, noise, adc, out_step)
                target[b] = (min(max(v, -out_bound), out_bound) if clip else v) * factors[b]
    if not check:
        for b in range(B):
            pending[h, b] = False
        return 0
    left = 0
    done = np.empty(B, np.bool_)
    for b in range(B):
        done[b] = pending[h, b] and (last or peak[b] <= out_bound)
        pending[h, b] = pending[h, b] and not done[b]
        left += pending[h, b]
    for c in range(C):
        row, target = trial[h, c], out[h, first_column + c]
        for b in range(B):
            target[b] = row[b] * factors[b] if done[b] else target[b]
    return left


@njit(cache=True, error_model="numpy")
def _crossbar_finish(h, out, silent, any_silent, factors, incremental, register, y):
    """Crossbar h's outputs out[h] (N+1, B): silent vectors read 0, the periphery's factors (F, H, N+1)
    in order, the state columns into the register (added under the incremental mapping), the y column into y."""
    C, B = out.shape[1:]
    N = C - 1
    F = factors.shape[0]  # 1 to 3: the mapping scales, drift compensation, learned output scales
    for c in range(C):
        f0, f1, f2 = factors[0, h, c], factors[min(1, F - 1), h, c], factors[F - 1, h, c]
        row = out[h, c]
        target = y[h] if c == N else register[h, c]
        for b in range(B):  # the branches are the same for every b: LLVM takes them out of the loop
            v = F32(0.0) if any_silent and silent[h, b] else row[b]
            v = v * f0
            if F > 1:
                v = v * f1
            if F > 2:
                v = v * f2
            if incremental and c < N:
                target[b] += v
            else:
                target[b] = v


@njit(cache=True, error_model="numpy", inline="always")
def _part(part, parts, H):
    """The crossbars [start, stop) of one of `parts` contiguous parts of H."""
    return part * H // parts, (part + 1) * H // parts


@njit(cache=True, error_model="numpy", parallel=True)
def _noise_management(parts, u_t, u_prev, register, ranges, has_range, nm_kind, nm_thres, inverse, silent):
    """`_crossbar_noise_management` of every crossbar, in `parts` parts."""
    H = register.shape[0]
    for part in prange(parts):
        start, stop = _part(part, parts, H)
        for h in range(start, stop):
            _crossbar_noise_management(h, u_t, u_prev, register, ranges, has_range, nm_kind, nm_thres, inverse, silent)


@njit(cache=True, error_model="numpy", parallel=True)
def _dac(parts, u_t, u_prev, register, ranges, has_range, inverse, per_vector, reduction, scale, dac, in_step, clip, in_bound, x64):
    """`_crossbar_dac` of every crossbar, in `parts` parts."""
    H = register.shape[0]
    for part in prange(parts):
        start, stop = _part(part, parts, H)
        for h in range(start, stop):
            _crossbar_dac(h, u_t, u_prev, register, ranges, has_range, inverse, per_vector, reduction, scale, dac,
                          in_step, clip, in_bound, x64)


@njit(cache=True, error_model="numpy", parallel=True)
def uniforms(parts, keys, read, radius, angle):
    """`_crossbar_uniforms` of every crossbar, in `parts` parts, from the sequences' keys and the read's counter."""
    base = np.empty(keys.shape[0], np.uint64)
    for b in range(keys.shape[0]):
        base[b] = _hash32(U64(keys[b]) ^ read)
    H = radius.shape[0]
    for part in prange(parts):
        start, stop = _part(part, parts, H)
        for h in range(start, stop):
            _crossbar_uniforms(h, base, radius, angle)


@njit(cache=True, error_model="numpy", parallel=True)
def _read(parts, out64, radius, cos, sin, strength, noise, adc, out_step, clip, out_bound, check, per_vector,
          inverse, reduction, factor, out_scale, last, pending, trial, out, first_column):
    """`_crossbar_read` of every crossbar, in `parts` parts; returns how many vectors are still pending."""
    H = out64.shape[0]
    left = np.zeros(H, np.int64)
    for part in prange(parts):
        start, stop = _part(part, parts, H)
        for h in range(start, stop):
            left[h] = _crossbar_read(
                h, out64, radius, cos, sin, strength, noise, adc, out_step, clip, out_bound, check, per_vector,
                inverse, reduction, factor, out_scale, last, pending, trial, out, first_column,
            )
    return left.sum()


@njit(cache=True, error_model="numpy", parallel=True)
def _finish(parts, out, silent, any_silent, factors, incremental, register, y):
    """`_crossbar_finish` of every crossbar, in `parts` parts."""
    H = out.shape[0]
    for part in prange(parts):
        start, stop = _part(part, parts, H)
        for h in range(start, stop):
            _crossbar_finish(h, out, silent, any_silent, factors, incremental, register, y)


def unsupported(kernel, stack, u: torch.Tensor) -> str | None:
    """Why `fused_scan` cannot run this scan (module docstring), or None where it can: inputs it does not
    take, and what neither compiled scan runs (`kernel.compiled_scan_unsupported`)."""
    if u.device.type != "cpu":
        return "tensors off the CPU"
    if u.dtype != torch.float32:
        return "inputs other than float32"
    return compiled_scan_unsupported(kernel, stack)


def box_muller(parts: int, keys: np.ndarray, read: np.uint64, radius, angle, cos, sin) -> None:
    """One read's normals as the loops take them (`SequenceDraws.normal_`'s operations): `uniforms` from the
    sequences' keys (uint32) and the read's counter into radius and angle (H, P, B), then torch's
    radius = sqrt(-2 log radius) and the angle's cos and sin, each (H, P, B)."""
    uniforms(parts, keys, read, radius.numpy(), angle.numpy())
    radius.log_().mul_(-2.0).sqrt_()
    torch.cos(angle, out=cos)
    torch.sin(angle, out=sin)


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Group:
    """What the loops read of one column group: its converters, noise strengths, attempts and buffers
    (numpy views of torch's, made once: a step makes some twenty calls, each of which costs its arguments)."""

    def __init__(self, group, H: int, B: int):
        from aihwkit.simulator.parameters.enums import BoundManagementType

        io = group.io
        perfect = io.is_perfect
        self.first_column, columns = group.columns.start, group.weight.shape[1]
        self.weight64 = group.weight64  # (H, columns, N+2) float64
        self.out64 = torch.empty(H, columns, B, dtype=torch.float64)
        self.trial = np.empty((H, columns, B), np.float32)
        self.pairs = (columns + 1) // 2
        # Box-Muller's radius, angle, and the angle's cosine and sine, each (H, pairs, B)
        self.radius, self.angle, self.cos, self.sin = (torch.empty(H, self.pairs, B) for _ in range(4))
        self.noise = not perfect and (group.out_noise_values is not None or io.out_noise > 0)
        strength = group.out_noise_values[:, 0] if group.out_noise_values is not None else torch.full((H, columns), io.out_noise)
        self.strength = _array(strength.float())
        self.dac, self.adc = not perfect and io.inp_res > 0, not perfect and io.out_res > 0
        self.in_step = F32(converter_step(io.inp_res, io.inp_bound) if self.dac else 1.0)
        self.out_step = F32(converter_step(io.out_res, io.out_bound) if self.adc else 1.0)
        self.in_clip, self.clip = not perfect and io.inp_bound > 0, not perfect and io.out_bound > 0
        self.in_bound, self.out_bound = F32(io.inp_bound), F32(io.out_bound)
        self.per_vector = not perfect and noise_management_code(io.noise_management) > 0
        iterative = not perfect and io.bound_management == BoundManagementType.ITERATIVE
        self.check = iterative and io.out_bound > 0
        self.attempts = bound_management_attempts(io) if iterative else 1
        scales, factors = attempt_scales(io, self.attempts)  # where not per vector
        self.scales, self.factors = [F32(v) for v in scales], [F32(v) for v in factors]
        self.reductions = [F32(2.0**a) for a in range(self.attempts)]
        self.out_scale = F32(1.0 if perfect else io.out_scale)
        self.out64_array, self.radius_array = self.out64.numpy(), self.radius.numpy()
        self.cos_array, self.sin_array = self.cos.numpy(), self.sin.numpy()

    def draw(self, parts: int, keys: np.ndarray, step: int, attempt: int, index: int) -> None:
        """The radius, cosine and sine of this read's normals (`box_muller`)."""
        read = U64(counter(step, attempt, "output_noise", index))
        box_muller(parts, keys, read, self.radius, self.angle, self.cos, self.sin)


@torch.no_grad()
def fused_scan(kernel, stack, u: torch.Tensor) -> torch.Tensor:
    """u (B, L, H) -> y (B, L, H): `fused_scan_ref`'s scan, its step compiled (module docstring).
    stack: `kernel.crossbar_stack(u)`, whose reads are per sequence; `unsupported` must be None."""
    reason = unsupported(kernel, stack, u)
    if reason is not None:
        raise ValueError(f"the compiled CPU scan does not run {reason}; use StaticScan (FusedS4D.scan chooses)")
    B, L, H = u.shape
    N = kernel.d_state
    io = stack.io
    parts = min(match_torch_threads(), H)  # the loops' parts of the crossbars, one per torch thread
    u_steps = _array(scan_inputs(u))  # (L+1, H, B)
    zeros = np.zeros((H, B), np.float32)
    groups = [_Group(group, H, B) for group in stack.groups]
    has_range = stack.input_range is not None
    ranges = _array(stack.input_range.reshape(H).float()) if has_range else np.ones(H, np.float32)
    nm_kind = 0 if io.is_perfect else noise_management_code(io.noise_management)
    nm_thres = F32(0.0 if io.is_perfect else io.nm_thres)
    factors = [stack.scale] + [f for f in (stack.drift_alpha, stack.out_scale) if f is not None]
    factors = np.stack([_array(f.expand(H, 1, N + 1)[:, 0].float()) for f in factors])  # (F, H, N+1)
    keys = _array(stack.draws.keys).view(np.uint32)
    x64 = torch.empty(H, N + 2, B, dtype=torch.float64)
    x64_array = x64.numpy()
    inverse, silent = np.ones((H, B), np.float32), np.zeros((H, B), np.bool_)
    pending = np.empty((H, B), np.bool_)
    register = np.zeros((H, N, B), np.float32)  # x_{t-1}, mapped
    out = np.empty((H, N + 1, B), np.float32)
    y = np.empty((L + 1, H, B), np.float32)  # row t: what step t read from the y column (y_{t-1})
    for t in range(L + 1):
        u_t, u_prev = u_steps[t], u_steps[t - 1] if t > 0 else zeros
        if nm_kind > 0:
            _noise_management(parts, u_t, u_prev, register, ranges, has_range, nm_kind, nm_thres, inverse, silent)
        for index, g in enumerate(groups):
            pending.fill(True)
            for attempt in range(g.attempts):
                reduction = g.reductions[attempt]
                _dac(
                    parts, u_t, u_prev, register, ranges, has_range, inverse, g.per_vector, reduction, g.scales[attempt],
                    g.dac, g.in_step, g.in_clip, g.in_bound, x64_array,
                )
                torch.bmm(g.weight64, x64, out=g.out64)
                if g.noise:
                    g.draw(parts, keys, t, attempt, index)
                left = _read(
                    parts, g.out64_array, g.radius_array, g.cos_array, g.sin_array, g.strength, g.noise, g.adc, g.out_step, g.clip, g.out_bound, g.check, g.per_vector,
                    inverse, reduction, g.factors[attempt], g.out_scale, attempt == g.attempts - 1, pending, g.trial,
                    out, g.first_column,
                )
                if left == 0:
                    break
        _finish(parts, out, silent, nm_kind > 0, factors, kernel.incremental, register, y[t])
    return torch.from_numpy(y[1:]).permute(2, 0, 1).contiguous()  # (B, L, H): y_t left the crossbar at step t + 1


@torch.no_grad()
def fused_scan_ref(kernel, stack, u: torch.Tensor) -> torch.Tensor:
    """Twin of `fused_scan`: `StaticScan`'s steps, eagerly."""
    return StaticScan(kernel, stack, u).run()


def compile_loops() -> None:
    """Compile the loops into numba's cache (the package's __pycache__) with two tiny scans, which between
    them run every loop: setup.sh calls it, so that no study or test pays the compilation. Every scan
    shares one compiled signature: the settings are values, not types."""
    from ..core.s4d import S4D
    from .devices import load_device
    from .kernel import FusedS4D

    u = torch.zeros(1, 2, 1)
    managed = {"forward.noise_management": "abs_max", "forward.bound_management": "iterative"}
    for settings in ({}, managed):
        kernel = FusedS4D(S4D(1, 2), load_device("pcm", **settings))
        fused_scan(kernel, kernel.crossbar_stack(u), u)
