"""All crossbars of a layer in one vectorized analog matrix-vector product per step.

`CrossbarStack.step` is aihwkit's torch-tile forward (input range, `AnalogMVM` with its noise and bound
management, mapping scales, drift compensation) for every crossbar and the whole batch at once, in
place; `CrossbarStack.step_ref` is its twin, aihwkit's `AnalogMVM.matmul` itself on the stack, and
`tiles_forward` the tiles' own forward, one tile after the other.

Column groups. A periphery with a per-column ADC gain reads some columns with their own ADC range. Both
twins simulate it as `column_groups`: the output columns split into groups, each read by one aihwkit MVM
with its own IO parameters (its own bound management, noise draws and converters), group after group.

Batched or per sequence. aihwkit's torch tile decides for its whole batch: iterative bound management
repeats the read of every vector when any output clips, and its noise comes from torch's one stream.
`step` and `step_ref` do the same with `TorchDraws` (the default), and agree to the last bit. A chip
sees one sequence and its periphery decides for its own reads, so with `SequenceDraws`
(aimc_ssm.analog.draws) `step` decides bound management per crossbar and sequence, skips the reads of
a crossbar whose inputs are all zero (aihwkit's shortcut, per vector), draws every sequence's noise
from its own stream, and accumulates each product in float64 before rounding it to float32: BLAS sums
a row in an order that depends on the batch's size, and rounding a float64 sum to float32 hides that
order. A sequence's outputs are then the same, bit for bit, alone or inside any batch (tests).

Fast step and plain twin. `step` and `step_plain` compute the same reads, bit for bit; `step` keeps its
float64 operands and noise buffers from step to step and draws the normals of a read in one pass
(`SequenceDraws.normal_`), and once `capture_steps` holds its counter in a device tensor it decides
nothing on the host, so that it can be captured once in a CUDA graph and replayed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .draws import TorchDraws
from .layout import fold_copies


def fast_path_supports(io) -> bool:
    """Whether `CrossbarStack.step` runs these IO settings: one pass, no asymmetry, noise management
    none / constant / abs_max / max, bound management none / iterative (all a torch tile runs but asymmetry)."""
    from aihwkit.simulator.parameters.enums import AnalogMVType, BoundManagementType, NoiseManagementType

    managed = (NoiseManagementType.NONE, NoiseManagementType.CONSTANT, NoiseManagementType.ABS_MAX, NoiseManagementType.MAX)
    return io.is_perfect or (
        io.mv_type == AnalogMVType.ONE_PASS
        and io.noise_management in managed
        and io.bound_management in (BoundManagementType.NONE, BoundManagementType.ITERATIVE)
        and not (io.inp_asymmetry or io.out_asymmetry)
    )


def converter_step(res: float, bound: float) -> float:
    """One level of an aihwkit converter in its normalized units: res of the full range 2·bound, or
    (res > 1) the full range over res steps."""
    return (1 / res if res > 1.0 else res) * 2 * bound


def bound_management_gives_up(io, reduction: float) -> bool:
    """aihwkit's limits of iterative bound management: past max_bm_factor, or past max_bm_res over the DAC step."""
    res = io.inp_res if io.inp_res <= 1.0 else 1 / io.inp_res
    res *= 2 * io.inp_bound
    return reduction > io.max_bm_factor or (res > 0 and reduction > io.max_bm_res / res)


def bound_management_attempts(io) -> int:
    """The most reads iterative bound management makes of one vector: the first attempt (reduction 2^a,
    a from 0) at which `bound_management_gives_up` settles every vector, plus one."""
    reduction, attempts = 1.0, 1
    while not bound_management_gives_up(io, reduction):
        reduction, attempts = 2.0 * reduction, attempts + 1
    return attempts


def noise_management_code(kind) -> int:
    """The compiled scans' code of one of the fast step's noise managements: 0 none or constant (one scale for
    every vector, `attempt_scales`), 1 abs max, 2 max (per vector)."""
    from aihwkit.simulator.parameters.enums import NoiseManagementType as Kind

    return {Kind.NONE: 0, Kind.CONSTANT: 0, Kind.ABS_MAX: 1, Kind.MAX: 2}[kind]


def attempt_scales(io, attempts: int) -> list[list[float]]:
    """[input scales, output factors] of every bound-management attempt where noise management is none or
    constant: `CrossbarStack.mvm_per_sequence_`'s scale = 1 / nm / 2^attempt and out_scale / scale, in
    Python floats as it computes them (a per-vector nm is the compiled scans')."""
    from aihwkit.simulator.parameters.enums import NoiseManagementType

    if io.is_perfect:
        return [[1.0], [1.0]]  # a perfect read scales neither its inputs nor its outputs (`CrossbarStack.step_once`)
    nm = io.nm_thres if io.noise_management == NoiseManagementType.CONSTANT and io.nm_thres > 0 else 1.0
    scales = [1.0 / nm / 2.0**a for a in range(attempts)]
    return [scales, [io.out_scale / scale for scale in scales]]


def column_scales(tiles: list) -> torch.Tensor:
    """aihwkit's digital mapping scale α of every output column of every tile: (H, out)."""
    n_out = tiles[0].tile.weight.shape[0]
    scales = [t.get_mapping_scales() for t in tiles]
    return torch.stack([
        t.tile.weight.new_ones(n_out) if s is None else s.detach().reshape(-1).expand(n_out) for t, s in zip(tiles, scales)
    ])


def column_groups(io, last_column_io, n_out: int) -> list[tuple[slice, object]]:
    """The output columns read as one MVM each, with their IO parameters: all n_out columns with io, or,
    given last_column_io, the others with io and then the last column with last_column_io. A perfect
    forward has no converters to set apart: one group."""
    if last_column_io is None or io.is_perfect:
        return [(slice(0, n_out), io)]
    return [(slice(0, n_out - 1), io), (slice(n_out - 1, n_out), last_column_io)]


@dataclass
class ColumnGroup:
    """One group of a stack's output columns (`column_groups`) and what its MVM reads."""

    columns: slice
    io: object  # aihwkit IOParameters
    weight: torch.Tensor  # (H, columns, in), contiguous: `step` and `step_ref` multiply the same operand
    out_noise_values: torch.Tensor | None  # (H, 1, columns): aihwkit's per-output noise strengths
    weight64: torch.Tensor | None  # (H, columns, in / copies) float64, contiguous: the per-sequence product's operand, copies summed
    weight_t: torch.Tensor = field(init=False)  # aihwkit's bmm operand
    buffers64: dict = field(init=False, default_factory=dict)  # float64 operands by input shape, reused every step

    def __post_init__(self):
        self.weight_t = self.weight.permute(0, 2, 1)

    def matmul(self, x: torch.Tensor, out: torch.Tensor, per_sequence: bool) -> torch.Tensor:
        """x (H, B, in) @ weight_t into out (H, B, columns); per sequence accumulated in float64, the
        row groups that read the same inputs summed first (`CrossbarStack`'s shared_copies; module docstring).

        Per sequence the product runs as weight64 (H, columns, in) @ x^T (H, in, B), the batch the
        GEMM's last axis: on the project's CPU (MKL, float64) a quarter faster than x @ weight^T, and the
        layout of the compiled CPU scan (aimc_ssm.analog.numba_scan), whose products it gives bit for
        bit. `matmul_plain`'s product, bit for bit (the same bmm on the same float64 operands), through
        float64 buffers kept from step to step instead of fresh ones."""
        if not per_sequence:
            return torch.bmm(x, self.weight_t, out=out)
        x = x[..., : self.weight64.shape[2]]  # one row group: every other reads the same inputs
        H, B, rows = x.shape
        if x.shape not in self.buffers64:
            self.buffers64[x.shape] = (x.new_empty((H, rows, B), dtype=torch.float64), out.new_empty((H, out.shape[2], B), dtype=torch.float64))
        x64, out64 = self.buffers64[x.shape]
        torch.bmm(self.weight64, x64.copy_(x.transpose(1, 2)), out=out64)
        return out.copy_(out64.transpose(1, 2))

    def matmul_plain(self, x: torch.Tensor, out: torch.Tensor, per_sequence: bool) -> torch.Tensor:
        """Plain twin of `matmul`."""
        if not per_sequence:
            return torch.bmm(x, self.weight_t, out=out)
        x64 = x[..., : self.weight64.shape[2]].double().transpose(1, 2).contiguous()  # (H, in, B)
        return out.copy_(torch.bmm(self.weight64, x64).transpose(1, 2))


def tiles_forward(tiles: list, inputs: list[torch.Tensor], last_column_io=None) -> list[torch.Tensor]:
    """Every tile's aihwkit forward (eval) on its input (B, in) -> (B, out), one tile after the other.

    With last_column_io (torch tiles) the tile's MVM splits into `column_groups`: each group is one
    `AnalogMVM.matmul` on the tile's weight rows of its columns, between the tile's own pre_forward (input
    range) and post_forward (mapping scales, drift compensation) and learned output scaling; the groups
    run one after the other, each over all tiles, in the order `CrossbarStack.step` draws their noise.
    """
    groups = column_groups(tiles[0].rpu_config.forward, last_column_io, tiles[0].out_size)
    if len(groups) == 1:
        return [tile(x) for tile, x in zip(tiles, inputs)]
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

    prepared = [tile.pre_forward(x, x.dim() - 1, is_test=True) for tile, x in zip(tiles, inputs)]

    def read(tile, x, columns, io):
        noise = tile.tile.out_noise_values
        noise = None if noise is None else noise[columns]
        return AnalogMVM.matmul(tile.tile.weight[columns], x, io, False, is_test=True, out_noise_values=noise)

    reads = [[read(tile, x, columns, io) for tile, x in zip(tiles, prepared)] for columns, io in groups]
    outputs = []
    for tile, parts in zip(tiles, zip(*reads)):
        out = torch.cat(parts, dim=-1)
        outputs.append(tile.apply_out_scaling(tile.post_forward(out, out.dim() - 1, is_test=True)))
    return outputs


class CrossbarStack:
    """The H crossbars of a layer stacked for one vectorized step: (H, B, in) -> (H, B, out).

    Reads the tiles' current (programmed, drifted) weights and digital scales once per sequence.
    `step` is aihwkit's torch tile forward (input range, `AnalogMVM` with its noise and bound management,
    mapping scales, drift compensation) for all crossbars and the whole batch at once, in aihwkit's order of operations
    and random draws but in place, in buffers reused every step: allocating fresh megabyte tensors
    every step costs more than the arithmetic. `step_ref` is its twin, `AnalogMVM.matmul` itself on
    the (H, out, in) stack; the two agree to the last bit, noise included.

    last_column_io: IO parameters of the last output column, read as a group of its own (`column_groups`):
    both twins then make two MVMs per step, the other columns with the tiles' IO parameters first.
    shared_copies: row groups that hold copies of one matrix and read the same inputs (no input noise, a
    deterministic DAC: `kernel.copies_share_inputs`); the per-sequence product sums their weights first.
    draws: `TorchDraws` (aihwkit's batched reads, the default) or `SequenceDraws` (every sequence on its
    own: module docstring); `step` counts the steps that key the per-sequence draws.
    """

    def __init__(self, tiles: list, last_column_io=None, draws=None, shared_copies: int = 1):
        self.draws = TorchDraws() if draws is None else draws
        self.steps = 0  # an int, or a 0-dim device tensor while captured (`capture_steps`)
        self.io = tiles[0].rpu_config.forward
        self.weight = torch.stack([t.tile.weight.detach() for t in tiles])  # (H, out, in), |w| ≤ ω: conductances
        self.weight_t = self.weight.permute(0, 2, 1)  # aihwkit's bmm operand
        # the per-sequence product's float64 weights (H, out, in / shared_copies): row groups that read the
        # same inputs summed first, as a column sums their currents; a quarter of the work for 4 copies.
        # Batched reads multiply the float32 weights and need none.
        self.weight64 = None
        if self.draws.per_sequence:
            self.weight64 = fold_copies(self.weight.double(), shared_copies) if shared_copies > 1 else self.weight.double()
        n_out = self.weight.shape[1]

        def per_column(values):  # per tile (1,) or (out,) -> (H, 1, out)
            return torch.stack([v.detach().reshape(-1).expand(n_out) for v in values])[:, None]

        self.input_range = None
        self.scale = column_scales(tiles)[:, None]
        if tiles[0].input_range is not None:
            self.input_range = torch.stack([t.input_range.detach().reshape(1, 1) for t in tiles])  # (H, 1, 1)
            self.neg_input_range = -self.input_range
            self.scale = self.input_range * self.scale  # post_forward: input range × mapping scales
        compensated = tiles[0].rpu_config.drift_compensation is not None
        self.drift_alpha = per_column(t.alpha for t in tiles) if compensated else None  # global or per column
        learned = tiles[0].out_scaling_alpha is not None
        self.out_scale = per_column(t.out_scaling_alpha for t in tiles) if learned else None
        noisy_outputs = tiles[0].tile.out_noise_values is not None
        self.out_noise_values = per_column(t.tile.out_noise_values for t in tiles) if noisy_outputs else None
        self.groups = [
            ColumnGroup(
                columns, io, self.weight[:, columns].contiguous(),  # one group: the stack itself, no copy
                None if self.out_noise_values is None else self.out_noise_values[:, :, columns],
                None if self.weight64 is None else self.weight64[:, columns].contiguous(),
            )
            for columns, io in column_groups(self.io, last_column_io, n_out)
        ]
        self.buffers: dict[str, torch.Tensor] = {}
        self.all_within = torch.ones((), dtype=torch.bool, device=self.weight.device)  # reads with no ADC bound to check

    def buffer(self, name: str, shape: tuple) -> torch.Tensor:
        if name not in self.buffers or self.buffers[name].shape != shape:
            self.buffers[name] = self.weight.new_empty(shape)
        return self.buffers[name]

    def quantize_(self, x: torch.Tensor, res: float, bound: float, stochastic: bool, draw: tuple = ()) -> torch.Tensor:
        """aihwkit's UniformQuantize (x/res, round, ×res; res = 2·bound/steps), in place; draw: the
        (attempt, purpose, group) of the stochastic rounding's uniforms."""
        res = converter_step(res, bound)
        x.div_(res)
        if stochastic:
            # one buffer per shape: the DAC's and the ADC's would otherwise reallocate each other's every step
            x.add_(self.draws.uniform_(self.buffer(f"rounding{tuple(x.shape)}", x.shape), self.steps, *draw))
        return x.round_().mul_(res)

    @property
    def captured(self) -> bool:
        """Whether the step is held in a device tensor, for a step captured once and replayed (CUDA graphs)."""
        return isinstance(self.steps, torch.Tensor)

    def capture_steps(self, steps: int) -> None:
        """Count steps in a device tensor that every step advances in place, and prepare the per-sequence
        draws of steps 0 to steps - 1 (`SequenceDraws.prepare`): nothing in `step` then depends on the
        host, so it can be captured once and replayed. Per-sequence reads only: the batched ones decide
        bound management for the batch on the host and draw from torch's stream."""
        if not self.draws.per_sequence:
            raise ValueError("a captured step needs per-sequence reads (reads='per-sequence'); batched reads run eagerly")
        self.draws.prepare(steps)
        self.steps = torch.zeros((), dtype=torch.int64, device=self.weight.device)

    def advance(self) -> None:
        if self.captured:
            self.steps.add_(1)
        else:
            self.steps += 1

    def step(self, inp: torch.Tensor) -> torch.Tensor:
        """Digital inputs (H, B, in), overwritten -> digital outputs (H, B, out) in a buffer reused next step.

        The input range, then `AnalogMVM.matmul` of every column group (`mvm_`), one after the other into
        buffers of their own, then the periphery's digital scales on all columns. `step_plain`'s outputs,
        bit for bit, with fewer and cheaper operations: float64 operands and noise drawn into buffers
        kept from step to step, every normal of a read in one pass (`SequenceDraws.normal_`). Captured
        (`capture_steps`), iterative bound management makes its fixed number of masked attempts and the
        all-zero shortcut is left to the mask of silent vectors: the same outputs without a host decision.
        """
        out = self.step_once(inp, fast=True)
        self.advance()
        return out

    def step_plain(self, inp: torch.Tensor) -> torch.Tensor:
        """Plain twin of `step`: fresh operands every step, the plain draws (`normal_plain_`), host decisions."""
        out = self.step_once(inp, fast=False)
        self.advance()
        return out

    def step_once(self, inp: torch.Tensor, fast: bool) -> torch.Tensor:
        H, B, _ = inp.shape
        x = inp
        out = self.buffer("output", (H, B, self.weight.shape[1]))
        if self.input_range is not None:  # TorchInferenceTile.pre_forward
            # clamp_min_/clamp_max_ equal clamp_ with both tensor bounds, whose CPU kernel has no
            # vectorized loop for two broadcast operands (10x slower on the (H, B, N+2) input)
            x.clamp_min_(self.neg_input_range).clamp_max_(self.input_range).div_(self.input_range)
        if self.io.is_perfect:
            matmul = self.groups[0].matmul if fast else self.groups[0].matmul_plain
            matmul(x, out, self.draws.per_sequence)
            return self.periphery_out_(out)
        if len(self.groups) == 1:
            self.mvm_(x, self.groups[0], out, 0, fast)
            return self.periphery_out_(out)
        for i, group in enumerate(self.groups):
            last = i == len(self.groups) - 1
            group_input = x if last else self.buffer("group_input", x.shape).copy_(x)  # a read consumes its input
            group_output = self.buffer(f"group_output{i}", (H, B, group.weight.shape[1]))
            out[:, :, group.columns] = self.mvm_(group_input, group, group_output, i, fast)
        return self.periphery_out_(out)

    def mvm_(self, x: torch.Tensor, group: ColumnGroup, out: torch.Tensor, index: int, fast: bool = False) -> torch.Tensor:
        """`AnalogMVM.matmul` of column group `index` in aihwkit's order of operations, into out (H, B, columns),
        which it returns; x (H, B, in) is consumed. Noise management scales each input vector (constant or
        by its largest entry), iterative bound management repeats the whole read at half the input scale
        while any output of the group, in any crossbar, clips, up to aihwkit's limits; per sequence, see
        `mvm_per_sequence_`. fast: `step`'s reads, else `step_plain`'s.
        """
        from aihwkit.simulator.parameters.enums import BoundManagementType

        io = group.io
        nm = self.noise_management_values(x, io)  # 1.0, a constant or (H, B, 1)
        silent = None  # per sequence: the vectors whose inputs are all zero read 0, drawing nothing
        if isinstance(nm, torch.Tensor):
            if io.inp_noise <= 0 and not self.captured and not nm.any():
                return out.zero_()  # aihwkit's shortcut: all inputs zero, no draws (captured: the silent mask)
            if io.inp_noise <= 0 and self.draws.per_sequence:
                silent = nm == 0
            nm.masked_fill_(nm <= 0, 1.0)
        if self.draws.per_sequence:
            out = self.mvm_per_sequence_(x, group, out, index, nm, fast)
            return out if silent is None else out.masked_fill_(silent, 0.0)
        if io.bound_management == BoundManagementType.NONE:
            scale = 1.0 / nm
            self.read_(x, group, out, scale, (0, index), fast)
        else:
            work = self.buffer("bound_managed_input", x.shape)
            reduction, passed, attempt = 0.5, False, 0
            while not passed:
                reduction *= 2.0
                scale = 1.0 / nm / reduction
                passed = self.read_(work.copy_(x), group, out, scale, (attempt, index), fast).all().item()
                passed = passed or bound_management_gives_up(io, reduction)
                attempt += 1
        if isinstance(scale, torch.Tensor) or scale != 1.0 or io.out_scale != 1.0:
            out.mul_(io.out_scale / scale)
        return out

    def mvm_per_sequence_(self, x: torch.Tensor, group: ColumnGroup, out: torch.Tensor, index: int, nm, fast: bool = False) -> torch.Tensor:
        """`mvm_` with every crossbar's periphery deciding for its own vector: iterative bound management
        repeats a read at half the input scale for the vectors that clipped only, each attempt drawing that
        vector's own noise (`SequenceDraws`). Every attempt reads the whole stack; a vector keeps the read of
        the attempt that passed it. Captured, it makes all `bound_management_attempts`: an attempt after
        every vector passed changes no output, so the outputs are those of the loop that stops there."""
        from aihwkit.simulator.parameters.enums import BoundManagementType

        io = group.io
        if io.bound_management == BoundManagementType.NONE:
            scale = 1.0 / nm
            self.read_(x, group, out, scale, (0, index), fast)
            return out.mul_(io.out_scale / scale) if isinstance(scale, torch.Tensor) or scale != 1.0 or io.out_scale != 1.0 else out
        work = self.buffer("bound_managed_input", x.shape)
        trial = self.buffer("bound_managed_output", out.shape)
        pending = torch.ones(*out.shape[:2], 1, dtype=torch.bool, device=out.device)
        reduction, attempt = 1.0, 0
        attempts = bound_management_attempts(io) if self.captured else None
        while True:
            scale = 1.0 / nm / reduction
            within = self.read_(work.copy_(x), group, trial, scale, (attempt, index), fast)
            done = pending & within if not bound_management_gives_up(io, reduction) else pending
            out.copy_(torch.where(done, trial * (io.out_scale / scale), out))
            pending &= ~done
            if attempt + 1 == attempts or (attempts is None and not pending.any()):
                return out
            reduction *= 2.0
            attempt += 1

    def noise_management_values(self, x: torch.Tensor, io):
        """aihwkit's noise-management divisor of every input vector: 1.0, a constant, or (H, B, 1)."""
        from aihwkit.simulator.parameters.enums import NoiseManagementType

        kind = io.noise_management
        if kind == NoiseManagementType.NONE:
            return 1.0
        if kind == NoiseManagementType.CONSTANT:
            return io.nm_thres if io.nm_thres > 0 else 1.0
        values = self.buffer("noise_management", (*x.shape[:2], 1))
        torch.amax(x.abs() if kind == NoiseManagementType.ABS_MAX else x, dim=-1, keepdim=True, out=values)
        return values.clamp_max_(io.nm_thres) if io.nm_thres > 0 else values

    def read_(self, x: torch.Tensor, group: ColumnGroup, out: torch.Tensor, scale, draw: tuple, fast: bool = False) -> torch.Tensor:
        """One analog read of x (scaled, consumed) by a column group into out: DAC, input noise, matmul,
        output noise, ADC. draw: (attempt, group index) of its random draws. Returns whether no output
        clipped at the ADC bound: per vector (H, B, 1) when reads are per sequence, else one for all.
        fast: `step`'s read (`ColumnGroup.matmul`, `SequenceDraws.normal_`), else `step_plain`'s."""
        io = group.io
        normal_ = self.draws.normal_ if fast else self.draws.normal_plain_
        attempt, index = draw
        if isinstance(scale, torch.Tensor) or scale != 1.0:
            x.mul_(scale)
        if io.inp_res > 0:  # DAC
            self.quantize_(x, io.inp_res, io.inp_bound, io.inp_sto_round, (attempt, "dac_rounding", index))
        if io.inp_bound > 0:
            x.clamp_(-io.inp_bound, io.inp_bound)
        if io.inp_noise > 0:
            x.add_(normal_(self.buffer("input_noise", x.shape), self.steps, attempt, "input_noise", index).mul_(io.inp_noise))
        (group.matmul if fast else group.matmul_plain)(x, out, self.draws.per_sequence)
        if group.out_noise_values is not None or io.out_noise > 0:
            noise = normal_(self.buffer(f"output_noise{tuple(out.shape)}", out.shape), self.steps, attempt, "output_noise", index)
            out.add_(noise.mul_(io.out_noise if group.out_noise_values is None else group.out_noise_values))
        if io.out_res > 0:  # ADC
            self.quantize_(out, io.out_res, io.out_bound, io.out_sto_round, (attempt, "adc_rounding", index))
        from aihwkit.simulator.parameters.enums import BoundManagementType

        if io.out_bound <= 0 or io.bound_management == BoundManagementType.NONE:
            within = self.all_within
        elif self.draws.per_sequence:
            within = out.abs().amax(dim=-1, keepdim=True) <= io.out_bound
        else:  # max and min are two vectorized reductions; |out| <= bound as a boolean tensor costs more than both
            within = torch.maximum(out.amax(), -out.amin()) <= io.out_bound
        if io.out_bound > 0:
            out.clamp_(-io.out_bound, io.out_bound)
        return within

    def periphery_out_(self, out: torch.Tensor) -> torch.Tensor:
        """The tile's digital output scales, in aihwkit's order, in place."""
        out.mul_(self.scale)
        if self.drift_alpha is not None:
            out.mul_(self.drift_alpha)  # drift compensation (inference), one factor per tile or per column
        if self.out_scale is not None:
            out.mul_(self.out_scale)
        return out

    def output_factors(self) -> torch.Tensor:
        """The digital factor on every column's normalized read (H, out), as `periphery_out_` applies it:
        input range r_h × mapping scale α × drift compensation × learned output scale."""
        H, n_out = self.weight.shape[:2]
        return self.periphery_out_(self.weight.new_ones(H, 1, n_out))[:, 0]

    def effective_weights(self) -> torch.Tensor:
        """The linear map of digital inputs to digital outputs, converters and noise aside: (H, out, in),
        in float64 for analysis. The tiles' current normalized weights times `output_factors`, over the
        input range r_h that divided the inputs before the DAC."""
        weight = self.weight.double() * self.output_factors().double()[:, :, None]
        return weight if self.input_range is None else weight / self.input_range.double()

    def step_ref(self, inp: torch.Tensor) -> torch.Tensor:
        """Reference twin of `step`: aihwkit's `AnalogMVM.matmul` on the (H, out, in) stack, once per column group.

        It runs every setting of a torch tile, asymmetry too; like `step`, its bound-management check is
        one for the whole stack and column group (aihwkit's torch tile decides once per batch), so
        clipping in one crossbar rescales all. It draws from torch's stream: the twin of batched reads only.
        """
        from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

        if self.draws.per_sequence:
            raise ValueError("step_ref is aihwkit's batched MVM; per-sequence reads run in step only")

        if self.out_noise_values is not None:
            raise ValueError("AnalogMVM.matmul broadcasts out_noise_values for 2-D weights only; use step")
        x = inp
        if self.input_range is not None:
            x = torch.clamp(x, -self.input_range, self.input_range) / self.input_range
        reads = [AnalogMVM.matmul(group.weight, x, group.io, False, is_test=True) for group in self.groups]
        return self.periphery_out_(reads[0] if len(reads) == 1 else torch.cat(reads, dim=-1))
