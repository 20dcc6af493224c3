"""Random draws of a chip's own reads: every sequence its own stream, whatever else shares its batch.

A simulated chip sees one sequence at a time, so the noise of a read must not depend on which other
sequences the simulation batches with it. torch's generator is one stream for the whole tensor: a
sequence's draws then depend on its position and its batch-mates. `SequenceDraws` instead draws every
value from a counter-based generator (as Philox does, in torch operations over the whole batch at
once): a 32-bit hash of

    the sequence's key         `sequence_keys`: the forward's seed mixed with a hash of the sequence's
                               own input values, so the same sequence gets the same draws alone or
                               inside any batch, and two different sequences independent ones
    the read's counter         (step, attempt of bound management, purpose: input noise, output
                               noise, DAC or ADC rounding, column group), fixed by the call
    the element's lane         its crossbar and column

then turned into uniforms and, by the Box-Muller transform, standard normals. The noise models are
aihwkit's (its IO parameters set what is drawn and how large); only the stream differs from torch's,
so the draws agree with `torch.randn` in distribution (tests/test_draws.py), not value by value.
`TorchDraws` is torch's own stream, aihwkit's choice, for the bit-exact twins.

`hash32_ref` and `normal_ref` are the plain per-element twins of the vectorized hash and normals. `SequenceDraws.normal_`
(one pass, buffers reused) has the plain vectorized twin `normal_plain_`, and `hash32_` (in place) `hash32`.
"""
from __future__ import annotations

import math

import torch

MASK = 0xFFFFFFFF
FMIX = (0x85EBCA6B, 0xC2B2AE35)  # MurmurHash3's finalizer constants
MIX = 0x45D9F3B  # odd, below 2^31: a 32-bit value times it stays inside int64 (the keys' content sum)
LANE_STRIDE = 0x9E3779B1  # spreads neighbouring lanes over the hash's input space
PURPOSES = {"input_noise": 1, "output_noise": 2, "dac_rounding": 3, "adc_rounding": 4}


def as_int32(value: int) -> int:
    """A 32-bit pattern (any int, taken mod 2^32) as the int32 that holds it."""
    value &= MASK
    return value - (1 << 32) if value >= 1 << 31 else value


def as_int32_tensor(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) as the int32 tensor of the same bit patterns."""
    return torch.where(x >= 1 << 31, x - (1 << 32), x).to(torch.int32)


def unsigned(x: torch.Tensor) -> torch.Tensor:
    """The 32-bit patterns of an int32 tensor as non-negative int64."""
    return x.to(torch.int64) & MASK


def hash32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer of every element of an int32 tensor (its bit pattern), as int32.

    int32 products keep their low 32 bits, which is all the hash needs (and twice as fast as int64);
    right shifts are arithmetic on int32, so the sign bits they bring in are masked off."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * as_int32(FMIX[0])
    x = x ^ ((x >> 13) & 0x7FFFF)
    x = x * as_int32(FMIX[1])
    return x ^ ((x >> 16) & 0xFFFF)


def hash32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """`hash32` in place, through a scratch tensor of x's shape: the same values without fresh tensors."""
    for shift, mask, factor in ((16, 0xFFFF, FMIX[0]), (13, 0x7FFFF, FMIX[1]), (16, 0xFFFF, None)):
        x.bitwise_xor_(torch.bitwise_right_shift(x, shift, out=scratch).bitwise_and_(mask))
        if factor is not None:
            x.mul_(as_int32(factor))
    return x


def hash32_ref(x: int) -> int:
    """`hash32` of one 32-bit pattern, in unsigned Python integers."""
    x &= MASK
    x = ((x ^ (x >> 16)) * FMIX[0]) & MASK
    x = ((x ^ (x >> 13)) * FMIX[1]) & MASK
    return x ^ (x >> 16)


def counter(step: int, attempt: int, purpose: str, group: int) -> int:
    """One read's counter: distinct for every step, bound-management attempt, purpose and column group."""
    value = hash32_ref(step)
    for part in (attempt, PURPOSES[purpose], group):
        value = hash32_ref(value ^ (part * LANE_STRIDE & MASK))
    return value


def uniform24(bits: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """(top 24 bits of each pattern + offset) / 2^24 in float32: exact, in [0, 1) (offset 0) or (0, 1) (0.5)."""
    return (((bits >> 8) & 0xFFFFFF).to(torch.float32) + offset) * 2.0**-24


@torch.no_grad()
def sequence_keys(u: torch.Tensor, seed: int) -> torch.Tensor:
    """A 32-bit key per sequence of u (B, ...) (int32 (B,)): `seed` mixed with a hash of the sequence's
    float32 values and their positions, so that it depends on the sequence alone."""
    bits = u.detach().float().reshape(u.shape[0], math.prod(u.shape[1:])).contiguous().view(torch.int32)  # an empty batch too
    positions = hash32(torch.arange(1, bits.shape[1] + 1, device=u.device, dtype=torch.int32))
    terms = unsigned(hash32(bits ^ positions)) * MIX & MASK  # below 2^32 each: the sum stays in int64
    content = as_int32_tensor(terms.sum(dim=1) & MASK)
    return hash32(hash32(content) ^ as_int32(seed))


class TorchDraws:
    """torch's generator, one stream for the batch: aihwkit's draws, which `CrossbarStack`'s twins share."""

    per_sequence = False

    def normal_(self, out: torch.Tensor, step: int, attempt: int, purpose: str, group: int) -> torch.Tensor:
        return out.normal_()

    normal_plain_ = normal_  # one draw: nothing to make plainer

    def uniform_(self, out: torch.Tensor, step: int, attempt: int, purpose: str, group: int) -> torch.Tensor:
        return out.uniform_(-0.5, 0.5)


class SequenceDraws:
    """Every sequence's own counter-based stream (module docstring), for tensors laid out (H, B, columns).

    keys: `sequence_keys` of the batch, int32 (B,). A read's step is a Python int, or, for a step
    captured once and replayed (CUDA graphs), a 0-dim int64 tensor on the device that the replay
    advances: its draws then come from `prepare`d tables of every step's per-sequence hash. The
    counter-based draws are pure functions of their counters: nothing in them depends on the host.
    """

    per_sequence = True

    def __init__(self, keys: torch.Tensor):
        self.keys = keys.to(torch.int32)
        self.lanes: dict[tuple, torch.Tensor] = {}
        self.table_steps, self.tables = 0, {}  # `prepare`: (attempt, purpose, group) -> (steps, B) int32
        self.buffers: dict[tuple, torch.Tensor] = {}

    def lane_hashes(self, shape: tuple, count: int, device) -> torch.Tensor:
        """(H, 1, count) int32: the lane of every crossbar and draw index, spread by LANE_STRIDE."""
        key = (shape[0], count, device)
        if key not in self.lanes:
            lanes = torch.arange(shape[0] * count, device=device, dtype=torch.int64).reshape(shape[0], 1, count)
            self.lanes[key] = as_int32_tensor(lanes * LANE_STRIDE & MASK)
        return self.lanes[key]

    def pair_lane_hashes(self, shape: tuple, pairs: int, device) -> torch.Tensor:
        """(2, H, 1, pairs) int32: `lane_hashes` of 2·pairs draws with the radius half and the angle half
        of Box-Muller apart, so that each half is one contiguous slab."""
        key = ("pairs", shape[0], pairs, device)
        if key not in self.lanes:
            lanes = self.lane_hashes(shape, 2 * pairs, device)
            self.lanes[key] = lanes.reshape(shape[0], 1, 2, pairs).permute(2, 0, 1, 3).contiguous()
        return self.lanes[key]

    def prepare(self, steps: int) -> None:
        """Draw steps 0 to steps - 1 from tables of every step's per-sequence hash, built on the first
        read of each kind (`base`), so that a step held in a device tensor draws without the host."""
        self.table_steps, self.tables = steps, {}

    def table(self, attempt: int, purpose: str, group: int) -> torch.Tensor:
        """(steps, B) int32: `base` of one kind of read at every prepared step, hashed all at once."""
        key = (attempt, purpose, group)
        if key not in self.tables:
            value = hash32(torch.arange(self.table_steps, device=self.keys.device, dtype=torch.int32))
            for part in (attempt, PURPOSES[purpose], group):
                value = hash32(value ^ as_int32(part * LANE_STRIDE & MASK))  # `counter`, for every step at once
            self.tables[key] = hash32(self.keys[None, :] ^ value[:, None])
        return self.tables[key]

    def base(self, step, attempt: int, purpose: str, group: int) -> torch.Tensor:
        """(B,) int32: every sequence's hash of this read's counter, from which its lanes draw."""
        if isinstance(step, torch.Tensor):
            return self.table(attempt, purpose, group).index_select(0, step.view(1)).view(-1)
        return hash32(self.keys ^ as_int32(counter(step, attempt, purpose, group)))

    def bits(self, shape: tuple, count: int, step, attempt: int, purpose: str, group: int, device) -> torch.Tensor:
        """(H, B, count) uniform 32-bit patterns (int32) of this read."""
        base = self.base(step, attempt, purpose, group)  # (B,)
        return hash32(base[None, :, None] + self.lane_hashes(shape, count, device))  # int32 sums wrap as unsigned ones do

    def uniform_(self, out: torch.Tensor, step, attempt: int, purpose: str, group: int) -> torch.Tensor:
        """out (H, B, C) filled with uniforms in [-0.5, 0.5), as `out.uniform_(-0.5, 0.5)` draws them."""
        return out.copy_(uniform24(self.bits(out.shape, out.shape[-1], step, attempt, purpose, group, out.device)) - 0.5)

    def scratch(self, name: str, shape: tuple, dtype, device) -> torch.Tensor:
        """A buffer reused by every read of this shape: a fresh megabyte tensor costs more than the
        operation that fills it (its pages are faulted in anew)."""
        key = (name, shape, dtype, device)
        if key not in self.buffers:
            self.buffers[key] = torch.empty(shape, dtype=dtype, device=device)
        return self.buffers[key]

    def normal_(self, out: torch.Tensor, step, attempt: int, purpose: str, group: int) -> torch.Tensor:
        """out (H, B, C) filled with standard normals: Box-Muller on pairs of uniforms, both outputs used.

        `normal_plain_`'s values, bit for bit, in fewer passes and no fresh tensors: the radius and
        angle halves are hashed in place as two contiguous slabs of one buffer and each product written
        into its place in out (no concatenation), the last sine left out where C is odd. Every
        transcendental function reads a contiguous (H, B, pairs) slab, as in the plain twin, so its
        vectorized loop rounds alike."""
        H, B, C = out.shape
        pairs = (C + 1) // 2
        shape = (2, H, B, pairs)
        bits = self.scratch("bits", shape, torch.int32, out.device)
        torch.add(self.base(step, attempt, purpose, group)[None, None, :, None], self.pair_lane_hashes(out.shape, pairs, out.device), out=bits)
        hash32_(bits, self.scratch("hash", shape, torch.int32, out.device))
        bits.bitwise_right_shift_(8).bitwise_and_(0xFFFFFF)  # top 24 bits
        uniforms = self.scratch("uniforms", shape, torch.float32, out.device).copy_(bits)  # exact
        radius, angle = uniforms[0].add_(0.5).mul_(2.0**-24), uniforms[1].mul_(2.0**-24)  # (0, 1) and [0, 1)
        radius.log_().mul_(-2.0).sqrt_()
        angle.mul_(2 * math.pi)
        trig = self.scratch("trig", (H, B, pairs), torch.float32, out.device)
        sines = C - pairs
        if torch.compiler.is_compiling():  # no strided out= there; it fuses the products into their places anyway
            out[..., :pairs] = radius * torch.cos(angle)
            out[..., pairs:] = radius[..., :sines] * torch.sin(angle)[..., :sines]
            return out
        torch.mul(radius, torch.cos(angle, out=trig), out=out[..., :pairs])
        torch.mul(radius[..., :sines], torch.sin(angle, out=trig)[..., :sines], out=out[..., pairs:])
        return out

    def normal_plain_(self, out: torch.Tensor, step, attempt: int, purpose: str, group: int) -> torch.Tensor:
        """Plain twin of `normal_`: every operation of Box-Muller on (H, B, 2·pairs) bits, concatenated."""
        C = out.shape[-1]
        pairs = (C + 1) // 2
        bits = self.bits(out.shape, 2 * pairs, step, attempt, purpose, group, out.device)
        radius = torch.sqrt(-2.0 * torch.log(uniform24(bits[..., :pairs], 0.5)))  # in (0, 1): the log is finite
        angle = (2 * math.pi) * uniform24(bits[..., pairs:])
        return out.copy_(torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)[..., :C])


def normal_ref(key: int, h: int, column: int, columns: int, step: int, attempt: int, purpose: str, group: int) -> float:
    """`SequenceDraws.normal_`'s value for one sequence key (its 32-bit pattern), crossbar h and column of
    `columns`, plainly, in float64 (it agrees with the float32 normals to their precision)."""
    pairs = (columns + 1) // 2
    base = hash32_ref(key ^ counter(step, attempt, purpose, group))

    def uniform(index, offset=0.0):
        return ((hash32_ref(base + (h * 2 * pairs + index) * LANE_STRIDE) >> 8) + offset) * 2.0**-24

    pair = column % pairs
    radius = math.sqrt(-2.0 * math.log(uniform(pair, 0.5)))
    angle = 2 * math.pi * uniform(pairs + pair)
    return radius * (math.cos(angle) if column < pairs else math.sin(angle))
