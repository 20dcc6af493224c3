"""The fused single-step kernel [S24]: an S4D layer as one aihwkit crossbar per channel.

One crossbar per SSM channel h computes a whole recurrent step in one matrix-vector product; its
weights are the layout of aimc_ssm.analog.layout (inputs [u_t, x_{t-1}, u_{t-1}], outputs [x_t, y_{t-1}]).

Time index and skip term. The y column reads x_{t-1}, so step t outputs y_{t-1} = C̄ x_{t-1} + D u_{t-1}.
D sits on an extra input row driven by u_{t-1}, held one step in a digital register: the skip term
pairs with its own step and stays on the crossbar with the rest of the SSM (a D cell on the u_t row
would be right only for D = 0, the case [S24] deploys). L inputs take L + 1 steps: the first output
(y_{-1}) is dropped, a last step with u_L = 0 flushes y_{L-1}, and the output is aligned back to y_t.

Scaling, with aihwkit's own mechanisms on every crossbar (an `AnalogLinear` tile):
  weights  aihwkit's weight_scaling_omega mapping: W is divided by α = max|W|/ω so the largest weight
           reaches g_max, per output column where mapping.weight_scaling_columnwise is set (the shipped
           devices set it: the state columns and the y column have very different ranges); α is
           multiplied back in digital. ω is mapping.weight_scaling_omega, or 1 where a device leaves it 0.
  inputs   a static DAC range per crossbar, aihwkit's input range (pre_post.input_range, switched on for
           the crossbars of any device with converters): inputs are clipped to ±r_h and divided by r_h
           before the DAC, outputs multiplied by r_h. r_h is calibrated as the largest |u| and mapped
           |x| of the channel on calibration inputs (`to_analog(..., calibration_inputs=x)`); inputs
           that drive a channel harder than the calibration did clip at the DAC.
  ADC      forward.out_bound is in units of the normalized product (|input| ≤ 1, |weight| ≤ 1). A state
           column reads its output over r_h and over its largest weight: x_t / (s_n·r_h) over about |Ā|
           (s_n: the mapping below), or under the incremental mapping the increment x_t - x_{t-1} over
           max(|Re Ā - 1|, |Im Ā|, |B̄/s|). Either stays within about ±1.4 on the calibration inputs
           (measured), up to about ±1.5 on others, so an ADC range of 1.5-2 suits the state columns; with
           aihwkit's default out_bound 12 a 4-bit ADC rounds every state to 0, and 8 bits leave under 5.
           Pass a kernel-specific config as `to_analog(..., ssm_rpu_config=...)`. The y column reads
           C̄x_{t-1} + Du_{t-1} over its largest weight, a sum over all modes that reaches 4-6 on real
           inputs: one range of 2 for the whole crossbar clips it. `y_adc_range` gives the y column an ADC
           range of its own at the same resolution, as a periphery with a per-column ADC gain does: the
           crossbar is then read as two column groups (aimc_ssm.analog.mvm.column_groups), the N state
           columns with the config's IO settings and the y column with forward.out_bound = y_adc_range,
           each one aihwkit MVM with its own noise draws and bound management. Without converters
           (a perfect forward) it has no effect.
  copies   `copies` = k devices per weight: the tile has k·(N+2) input rows, k row groups that the same
           inputs [u_t, x_{t-1}, u_{t-1}] drive, each holding W/k (aimc_ssm.analog.layout.replicate_copies),
           and a column sums its k devices. aihwkit programs every device on its own and its column-wise
           mapping gives each group the full conductance range, so programming noise, drift and read
           noise average over k devices: relative weight errors fall as 1/√k. The analog sum is k times
           the single copy's read in normalized units, so the kernel multiplies forward.out_bound (and
           y_adc_range) by k: every signal keeps its ADC levels, and the output noise, absolute per read,
           falls to 1/k of the signal. aihwkit converts every row, so input noise and stochastic DAC
           rounding are drawn per group. Cost: k times the cells (`crossbar_cells`), the same ADC
           conversions per step. Where the groups read the same inputs (no input noise, a deterministic
           DAC: `copies_share_inputs`), per-sequence reads sum the copies' weights before the product:
           the same column sum, a k-th of the simulation's work.

Mapping (`MAPPINGS`, set by `calibrate`). The state x_t leaves through the ADC and returns through the
DAC every step, on the grid of its channel's DAC range. Its modes differ in size by orders of magnitude
(a slow mode integrates hundreds of inputs, a fast one a few), so on one grid the small modes are
rounded away, and a mode whose per-step change is below half an ADC level stops moving (the dead band
of fixed-point recursive filters). And the crossbar's cells are programmed relative to their column:
aihwkit maps each output column so that its largest weight fills the conductance range, so a cell's
programming error, and the column's output noise and ADC step, are relative to that weight. With Ā on
the crossbar it is about 1, while a slow mode's stability margin 1 - |λ| is about 1e-3.
  "direct"       holds the state as it is, as [S24] draws it.
  "balanced"     (the default where calibration inputs are given) holds mode n as x/s_n, with
                 s_n = peak |x_n| / peak |u| of its channel on the calibration inputs: a similarity
                 transform that leaves Ā unchanged and holds B̄/s_n and s_n·C̄, computes the same y, and
                 gives every mode the input's range on the converters.
  "incremental"  the balanced scaling, and the crossbar holds Ā - I instead of Ā (Re Ā - 1 on the
                 diagonal of every 2×2 block); the digital periphery adds the previous state to the
                 ADC's read, x_t = x_{t-1} + ADC[(Ā - I) x_{t-1} + B̄ u_t]. The state columns' largest
                 weight drops from about 1 to max(|Re Ā - 1|, |Im Ā|, |B̄/s|), and with it their
                 programming error, output noise and ADC step in signal units: small for a mode that
                 turns and is driven slowly, no gain for one that turns fast (|Im Ā| near 1). DAC
                 rounding of the state is multiplied by Ā - I instead of Ā. The y column is unchanged.

Digital around the crossbar: a state register holds the mapped state x_{t-1}, exactly, for the DAC to
read next step; it takes the ADC's state read (under "incremental", its own value plus the read) and
passes it through the state quantizer of a PTQ/QAT model (its `quantization.state`, where the model
re-quantizes the state and `state_quantizer` is on). y is aligned back to y_t. A PTQ/QAT model's
quantized Ā, B̄, C, D are what the crossbars hold; its partial-product quantizers have no place here,
as Ā x and B̄ u add up in the analog column. aimc_ssm.analog.stability reads a programmed kernel back
into the dynamics it now computes.

Execution: all H crossbars and the whole batch advance in one vectorized step, `CrossbarStack.step`
(aihwkit's torch-tile forward, with noise and bound management, in place) or, for input or output
asymmetry, its twin `CrossbarStack.step_ref` = `AnalogMVM.matmul` on the (H, out, in) stack; with
y_adc_range each makes two MVMs a step, state columns first. `reads` says who decides: "per-sequence"
(the default) reads as a chip does, each crossbar's periphery deciding for its own sequence (iterative
bound management repeats only the reads that clipped, an all-zero input reads 0 without draws) and
every sequence drawing its noise from its own stream (aimc_ssm.analog.draws): a sequence's outputs do
not depend on its batch-mates. "batched" is aihwkit's torch tile: bound management decides for the
whole stack and batch (per column group), when any crossbar clips all repeat the read at half scale,
the all-zero shortcut applies when every input is zero, and the draws come from torch's one stream, as
the twins `step_ref` and `scan_ref` draw them; the paths other than "fused" read batched. `FusedS4D.scan_ref`
is the per-channel loop of the same aihwkit tiles (aimc_ssm.analog.mvm.tiles_forward), and is what
compiled (C++) tiles run, as only their own forward simulates forward.w_noise; their MVM reads all
columns with one ADC range, so they take no y_adc_range.

Speed. `scan` is the fast path and `scan_plain` its plain twin (one `CrossbarStack.step_plain` after
the other): the same outputs, bit for bit. The fast step reuses its buffers (a fresh megabyte tensor
costs more than the arithmetic on it) and draws all normals of a read in one pass. On the CPU, compiled
loops (numba; `numba`, on by default) run the settings that aimc_ssm.analog.numba_scan admits: each of
the step's elementwise stages one pass over the batch around torch's float64 product and transcendental
functions, with `StaticScan`'s outputs bit for bit. A GPU step is a few
dozen small kernels, so there the cost is their launches: with per-sequence reads, whose draws are pure
functions of counters, `StaticScan` holds the scan's buffers at fixed addresses and the step counter in
a device tensor, captures `graph_steps` steps once in a CUDA graph and replays them over the sequence
(iterative bound management then makes its fixed number of masked attempts instead of looping while a
read clips: the same outputs without a host decision). `compile_step` compiles the step
(torch.compile, fusing its elementwise chains) before the capture: fewer, larger kernels, at the price
of a compilation for each new shape of input. Faster still, where it runs the settings (the shipped
pcm and ideal devices; `triton_scan.unsupported` names what it does not run), the whole scan is one
persistent Triton kernel (aimc_ssm.analog.triton_scan, `triton`, the default on a GPU): a program per
crossbar and block of sequences holds its crossbar and state on chip for all steps, with the same
draws and order of float32 operations as `StaticScan`, whose outputs it gives bit for bit but where
its float64 product rounds to another float32 (rare: that module's docstring).
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..core.s4d import S4D, check_input
from .draws import SequenceDraws, sequence_keys
from .layout import complex_state, crossbar_matrices, real_state, replicate_copies, signal_peaks, state_diagonal
from .mvm import CrossbarStack, fast_path_supports, tiles_forward


def crossbar_config(rpu_config, copies: int = 1):
    """The kernel's copy of a device config: a static, calibrated DAC range wherever there is a DAC, and
    the ADC range times `copies`, as k copies sum k reads (module docstring)."""
    config = copy.deepcopy(rpu_config)
    if not config.forward.is_perfect:
        input_range = config.pre_post.input_range
        input_range.enable, input_range.learn_input_range, input_range.init_from_data = True, False, 0
        config.forward.out_bound *= copies
    return config


def y_column_io(io, y_adc_range: float | None, copies: int = 1):
    """The IO parameters of the y column, read as a column group of its own: the kernel's `io` with
    forward.out_bound = y_adc_range × copies; None without a y_adc_range or without converters."""
    if y_adc_range is None or io.is_perfect:
        return None
    y_io = copy.deepcopy(io)
    y_io.out_bound = y_adc_range * copies
    return y_io


def copies_share_inputs(io) -> bool:
    """Whether every copy's row group reads the same inputs at the product: no input noise and no
    stochastic DAC rounding, both drawn per row. Then a column's sum over copies is the product with
    the copies' summed weights, which per-sequence reads compute (`CrossbarStack`'s shared_copies)."""
    return io.is_perfect or not (io.inp_noise > 0 or (io.inp_res > 0 and io.inp_sto_round))


def check_crossbar_fits(mapping, n_in: int, n_out: int) -> None:
    too_small = (0 < mapping.max_input_size < n_in) or (0 < mapping.max_output_size < n_out)
    if too_small:
        raise ValueError(
            f"the fused kernel needs one {n_in}×{n_out} crossbar (inputs × outputs) per channel, but the device's "
            f"tiles are {mapping.max_input_size}×{mapping.max_output_size}: raise tile_size to {max(n_in, n_out)} "
            f"or use a smaller d_state or fewer copies"
        )


def check_options(copies: int, y_adc_range: float | None) -> None:
    if isinstance(copies, bool) or not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a positive integer (devices per weight), got {copies!r}")
    if y_adc_range is not None and not y_adc_range > 0:
        raise ValueError(f"y_adc_range must be a positive ADC range (or None: the kernel's), got {y_adc_range!r}")


def scan_inputs(u: torch.Tensor) -> torch.Tensor:
    """u (B, L, H) -> the scan's inputs (L+1, H, B), time-major so that every step reads a contiguous slab;
    the last step's u_L = 0 flushes y_{L-1} out of the crossbars."""
    return nn.functional.pad(u, (0, 0, 0, 1)).permute(1, 2, 0).contiguous()


GRAPH_STEPS = 16  # steps per CUDA graph: one capture costs about as much as 16 eager steps
MAPPINGS = ("balanced", "direct", "incremental")  # see the module docstring
READS = ("per-sequence", "batched")  # who decides a read: every sequence, or the batch (module docstring)


def check_mapping(mapping: str) -> None:
    if mapping not in MAPPINGS:
        raise ValueError(f"unknown mapping {mapping!r}; choose one of {MAPPINGS}")


def mapping_scales(u_peak: torch.Tensor, x_peak: torch.Tensor, mapping: str) -> tuple[torch.Tensor, torch.Tensor]:
    """State scales s (H, n) and DAC ranges r_h (H,) of a mapping, from `signal_peaks` (u_peak (H,), x_peak (H, n)).

    "balanced" and "incremental": s_n = peak|x_n| / peak|u| of the channel, so every mode spans the
    input's range; "direct": s_n = 1. The DAC range r_h is the largest |u| or mapped |x| of the channel.
    """
    check_mapping(mapping)
    scales = torch.ones_like(x_peak)
    if mapping != "direct":
        live = (x_peak > 0) & (u_peak[:, None] > 0)  # a mode that never moves keeps its scale
        scales = torch.where(live, x_peak / u_peak[:, None], scales)
    return scales, torch.maximum(u_peak, (x_peak / scales).amax(dim=-1))


class FusedS4D(nn.Module):
    """An S4D layer deployed as H fused crossbars (aihwkit tiles); (B, L, H) -> (B, L, H), recurrent, inference.

    Built from a trained (float, PTQ or QAT) S4D through its `ssm_parameters()`, with the state mapped
    directly until `calibrate` sets the DAC ranges and the mapping. Programming noise and drift
    act on the tiles (`program`, after calibration); the forward reads their current weights and scales.
    copies: devices per weight (k row groups per crossbar); y_adc_range: the y column's own ADC range,
    in the normalized units of one copy (None: the device's forward.out_bound); reads: "per-sequence" or
    "batched" (READS). See the module docstring.
    """

    def __init__(
        self, ssm: S4D, rpu_config, state_quantizer: bool = True, *, copies: int = 1, y_adc_range: float | None = None,
        reads: str = "per-sequence",
    ):
        super().__init__()
        from aihwkit.nn import AnalogLinear

        check_options(copies, y_adc_range)
        if reads not in READS:
            raise ValueError(f"reads must be one of {READS}, got {reads!r}")
        self.d_model, self.d_state = ssm.d_model, ssm.d_state
        self.copies, self.y_adc_range, self.reads = copies, y_adc_range, reads
        # on a GPU: whether to scan with the Triton kernel where it runs the settings (aimc_ssm.analog.triton_scan),
        # else steps per captured CUDA graph (0: launch every step eagerly), and whether to compile the step
        self.triton, self.graph_steps, self.compile_step = True, GRAPH_STEPS, False
        # on the CPU: whether to scan with the compiled loops where they run the settings (aimc_ssm.analog.numba_scan)
        self.numba = True
        n_in, n_out = copies * (self.d_state + 2), self.d_state + 1
        config = crossbar_config(rpu_config, copies)
        check_crossbar_fits(config.mapping, n_in, n_out)
        self.y_io = y_column_io(config.forward, y_adc_range, copies)  # None: one ADC range for all columns
        # state quantizer of a PTQ/QAT model: digital, applied to the state fed back every step
        quantization = ssm.quantization
        runs_state_quantizer = state_quantizer and ssm.requantizes_state()
        self.state_quantizer = quantization.state if runs_state_quantizer else None
        self.omega = config.mapping.weight_scaling_omega or 1.0
        with torch.no_grad():
            dA, dB, C, D = (p.detach().clone() for p in ssm.ssm_parameters())  # C, D would alias the layer's
        # the deployed discrete system, which the crossbars hold under the current mapping
        self.register_buffer("A_bar", dA)  # (H, n) complex
        self.register_buffer("B_bar", dB)  # (H, n) complex
        self.register_buffer("C", C)  # (H, n) complex
        self.register_buffer("D", D)  # (H,)
        self.register_buffer("state_scales", torch.ones(dA.shape, device=dA.device))  # (H, n): crossbar state x/s
        self.mapping = "direct"  # calibrate_from_peaks sets it with the scales (MAPPINGS)
        # grid steps of the parts a PTQ/QAT quantizer put on a uniform grid, for export
        self.grid_steps = quantization.grid_steps(ssm) if quantization is not None else None
        self.crossbars = nn.ModuleList(
            AnalogLinear(n_in, n_out, bias=False, rpu_config=copy.deepcopy(config), tile_module_class=config.tile_class)
            for _ in range(self.d_model)
        )
        if self.y_io is not None and not self.torch_tiles:
            raise ValueError(
                "y_adc_range needs pure-PyTorch tiles (TorchInferenceRPUConfig, e.g. the pcm device): a "
                "compiled tile reads all its columns with one ADC range"
            )
        self.to(ssm.D.device)
        self.set_state_scales(self.state_scales)
        self.eval()

    # -- configuration ------------------------------------------------------------------------
    @property
    def tiles(self) -> list:
        return [layer.analog_module for layer in self.crossbars]

    @property
    def rpu_config(self):
        return self.tiles[0].rpu_config

    @property
    def torch_tiles(self) -> bool:
        """Whether the crossbars are aihwkit's pure-PyTorch tiles (the others are compiled, C++)."""
        from aihwkit.simulator.tiles.inference_torch import TorchInferenceTile

        return isinstance(self.tiles[0], TorchInferenceTile)

    def execution(self) -> str:
        """How forward runs: "fused" (`CrossbarStack.step`), "fused_ref" (its AnalogMVM twin) or "tiles"."""
        if not self.torch_tiles:
            return "tiles"  # compiled tiles: only their own forward simulates all of their settings
        io = self.rpu_config.forward
        if fast_path_supports(io):
            return "fused"
        return "tiles" if io.out_noise_std > 0 else "fused_ref"

    @property
    def incremental(self) -> bool:
        """Whether the crossbars hold Ā - I and the periphery adds the previous state (module docstring)."""
        return self.mapping == "incremental"

    def mapped_system(self) -> tuple[torch.Tensor, ...]:
        """(Ā, B̄, C, D) in the crossbars' coordinates: the state x/s per mode, so B̄/s and s·C. The
        dynamics Ā are those of the digital system; `crossbar_weights` lays them out under the mapping."""
        s = self.state_scales
        return self.A_bar, self.B_bar / s, self.C * s, self.D

    def crossbar_weights(self) -> torch.Tensor:
        """The target weights the tiles hold, (H, N+1, copies·(N+2)): the kernel's matrix (`mapped_system`,
        its state block Ā - I under the incremental mapping) over copies in each copy's row group
        (`layout.replicate_copies`; `layout.fold_copies` sums them back)."""
        return replicate_copies(crossbar_matrices(*self.mapped_system(), incremental=self.incremental), self.copies)

    def crossbar_cells(self) -> int:
        """Cells (weights) on the layer's crossbars: copies·(N+2) inputs × (N+1) outputs × H channels."""
        return self.copies * (self.d_state + 2) * (self.d_state + 1) * self.d_model

    def crossbar_stack(self, u: torch.Tensor | None = None) -> CrossbarStack:
        """The tiles stacked for one vectorized step, the y column its own column group under y_adc_range;
        given the inputs u (B, L, H) of a per-sequence forward, each sequence draws from its own stream,
        keyed by torch's current seed and its inputs (aimc_ssm.analog.draws)."""
        draws = None
        if u is not None and self.reads == "per-sequence" and self.execution() == "fused":
            draws = SequenceDraws(sequence_keys(u, torch.initial_seed()))
        shared = self.copies if copies_share_inputs(self.rpu_config.forward) else 1
        return CrossbarStack(self.tiles, self.y_io, draws, shared_copies=shared)

    @torch.no_grad()
    def set_state_scales(self, scales: torch.Tensor) -> None:
        """Hold the state of mode n of channel h as x/scales[h, n] (H, n) and write the crossbars anew,
        under the kernel's mapping (`calibrate` sets both).

        Writes target weights: call it before `program`. aihwkit's weight_scaling_omega mapping puts
        W/α on each tile and keeps α in digital.
        """
        if scales.shape != self.state_scales.shape or not (scales > 0).all():
            raise ValueError(f"state scales must be positive, of shape {tuple(self.state_scales.shape)}; got {tuple(scales.shape)}")
        self.state_scales.copy_(scales)
        for layer, W in zip(self.crossbars, self.crossbar_weights()):
            layer.set_weights(W, None, weight_scaling_omega=self.omega)

    @property
    def level_steps(self) -> torch.Tensor | None:
        """Grid step of every crossbar cell (H, N+1, copies·(N+2)) under the current mapping, 0 where a cell
        is not on a quantizer grid; None for a model without quantized SSM parameters. Cells are integer
        levels times their step: scaling a row or column by s_n scales its step alike, and each copy holds
        the levels on a grid 1/copies as fine. Under the incremental mapping the diagonal cells hold
        Re Ā - 1, off Ā's grid unless 1 is a multiple of its step: 0."""
        if self.grid_steps is None:
            return None
        step_A, step_B, step_C, step_D = self.grid_steps
        s = self.state_scales.cpu()
        steps = crossbar_matrices(step_A, step_B / s, step_C * s, step_D).abs()
        if self.incremental:
            state_diagonal(steps).zero_()
        return replicate_copies(steps, self.copies)

    @torch.no_grad()
    def signal_peaks(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Largest |u| per channel (H,) and largest |Re x|, |Im x| per mode (H, n) of the digital
        system on u (B, L, H), the state as it is (not mapped)."""
        check_input(u, self.d_model)
        return signal_peaks(self.A_bar, self.B_bar, u)

    def calibrate(self, u: torch.Tensor, mapping: str = "balanced") -> None:
        """Set the mapping and the DAC ranges from the signals of inputs u (B, L, H); before `program`."""
        self.calibrate_from_peaks(*self.signal_peaks(u), mapping)

    @torch.no_grad()
    def calibrate_from_peaks(self, u_peak: torch.Tensor, x_peak: torch.Tensor, mapping: str = "balanced") -> None:
        """Set the mapping, its state scales and the DAC ranges (`mapping_scales`) from `signal_peaks`;
        before `program`."""
        scales, ranges = mapping_scales(u_peak, x_peak, mapping)
        self.mapping = mapping
        self.set_state_scales(scales)
        self.set_input_ranges(ranges)

    @torch.no_grad()
    def set_input_ranges(self, ranges: torch.Tensor) -> None:
        """DAC range r_h of every crossbar (H,); ignored by devices without converters."""
        for tile, r in zip(self.tiles, ranges.tolist()):
            if tile.input_range is not None:
                tile.set_input_range(r if r > 0 else 1.0)

    def input_ranges(self) -> torch.Tensor | None:
        if self.tiles[0].input_range is None:
            return None
        return torch.stack([t.input_range.detach().reshape(()) for t in self.tiles])  # (H,)

    # -- forward ------------------------------------------------------------------------------
    def forward(self, u: torch.Tensor, mode: str = "recurrent") -> torch.Tensor:
        """u (B, L, H) -> y (B, L, H). The crossbars are recurrent by nature: mode "conv" runs them too."""
        if mode not in ("conv", "recurrent"):
            raise ValueError(f"unknown mode {mode!r}; choose 'conv' or 'recurrent' (both run the recurrent crossbars)")
        if self.training:
            raise RuntimeError(
                "FusedS4D simulates inference on programmed crossbars: call model.eval(); for hardware-aware "
                "training inject noise into the digital model (aimc_ssm.analog.hwa)"
            )
        check_input(u, self.d_model)
        path = self.execution()
        if path == "tiles":
            return self.scan_ref(u)
        return self.scan(u, reference_mvm=path == "fused_ref")

    def next_state(self, register: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
        """The state register's next value (H, B, N), mapped, from its value x_{t-1} and the ADC's state
        read: the read, or under the incremental mapping x_{t-1} + read (the read is x_t - x_{t-1}),
        added in place; then the state quantizer where there is one, which quantizes the state as the
        digital model holds it (x = s·x_mapped)."""
        state = register.add_(read) if self.incremental else read
        if self.state_quantizer is None:
            return state
        s = self.state_scales
        return real_state(self.state_quantizer(complex_state(state) * s) / s)  # complex_state: (B, H, n), as the digital model holds it

    @torch.no_grad()
    def scan(self, u: torch.Tensor, reference_mvm: bool = False) -> torch.Tensor:
        """All crossbars and the whole batch advance in one vectorized step: u (B, L, H) -> y (B, L, H).

        `scan_plain`'s outputs, bit for bit, through `CrossbarStack.step` (the Triton scan: but for
        its rare float64 roundings, aimc_ssm.analog.triton_scan). On the CPU the compiled loops of
        aimc_ssm.analog.numba_scan run the scan where they run the settings (`numba`). On a GPU the step costs
        dozens of small kernels, each a launch: with per-sequence reads (whose draws are pure functions
        of their counters) the scan runs as one Triton kernel (`triton` and `triton_scan_runs`), or
        else steps through `StaticScan`, `graph_steps` steps captured once in a CUDA graph and
        replayed, with `compile_step` the step compiled (torch.compile) before capture.
        reference_mvm: step with aihwkit's AnalogMVM.matmul (`CrossbarStack.step_ref`), as `scan_plain`.
        """
        if reference_mvm:
            return self.scan_plain(u, reference_mvm=True)
        stack = self.crossbar_stack(u)
        if u.is_cuda and self.triton and triton_scan_runs(self, stack):
            from .triton_scan import fused_scan

            return fused_scan(self, stack, u)
        if u.device.type == "cpu" and self.numba:
            from . import numba_scan  # numba (a quarter second to import) loads only where its loops can run

            if numba_scan.unsupported(self, stack, u) is None:
                return numba_scan.fused_scan(self, stack, u)
        scan = StaticScan(self, stack, u)
        if u.is_cuda and stack.draws.per_sequence and self.graph_steps > 0:
            scan.capture(self.graph_steps, self.compile_step)
            return scan.replay()
        return scan.run()

    @torch.no_grad()
    def scan_plain(self, u: torch.Tensor, reference_mvm: bool = False) -> torch.Tensor:
        """Plain twin of `scan`: one `CrossbarStack.step_plain` (or `step_ref`) after the other, eagerly."""
        B, L, H = u.shape
        N = self.d_state
        stack = self.crossbar_stack(None if reference_mvm else u)
        step = stack.step_ref if reference_mvm else stack.step_plain
        u_steps = scan_inputs(u)
        inp = u.new_zeros(H, B, self.copies * (N + 2))
        groups = inp.view(H, B, self.copies, N + 2)  # every copy's row group reads [u_t, x_{t-1}, u_{t-1}]
        state = u.new_zeros(H, B, N)  # the register x_{t-1}, mapped; `next_state` may update it in place
        ys = u.new_empty(L + 1, H, B)
        for t in range(L + 1):
            groups[..., 0] = u_steps[t][..., None]
            out = step(inp)  # (H, B, N+1): [x_t (or its increment), y_{t-1}]; inp is consumed, rewritten below
            state = self.next_state(state, out[:, :, :N])
            groups[..., 1 : N + 1] = state[:, :, None]
            groups[..., N + 1] = u_steps[t][..., None]
            ys[t] = out[:, :, N]
        # (B, L, H): y_t left the crossbar at step t + 1. Contiguous: elementwise ops downstream (GELU) round
        # the last bit differently on strided views, so a view would tie a sequence's outputs to its batch's size
        return ys[1:].permute(2, 0, 1).contiguous()

    @torch.no_grad()
    def scan_ref(self, u: torch.Tensor) -> torch.Tensor:
        """Reference twin of `scan`: the same aihwkit tiles, one channel after the other, every step
        (`mvm.tiles_forward`, the y column a column group of its own under y_adc_range)."""
        B, L, H = u.shape
        N = self.d_state
        x = u.new_zeros(H, B, N)
        u_prev = u.new_zeros(B, H)
        ys = []
        for t in range(L + 1):
            u_t = u[:, t] if t < L else torch.zeros_like(u_prev)
            inputs = [
                torch.cat([u_t[:, h : h + 1], x[h], u_prev[:, h : h + 1]], dim=1).repeat(1, self.copies)
                for h in range(H)
            ]  # H × (B, copies·(N+2)): every copy's row group reads [u_t, x_{t-1}, u_{t-1}]
            outs = tiles_forward(self.tiles, inputs, self.y_io)  # H × (B, N+1)
            x = self.next_state(x, torch.stack([o[:, :N] for o in outs]))
            ys.append(torch.stack([o[:, N] for o in outs], dim=1))  # y_{t-1} (B, H)
            u_prev = u_t
        return torch.stack(ys[1:], dim=1)

    def extra_repr(self) -> str:
        N = self.d_state
        return (
            f"H={self.d_model}, N={N}, crossbar={self.copies * (N + 2)}x{N + 1}, copies={self.copies}, "
            f"y_adc_range={self.y_adc_range}, mapping={self.mapping}, execution={self.execution()}, reads={self.reads}"
        )


def compiled_scan_unsupported(kernel: FusedS4D, stack: CrossbarStack) -> str | None:
    """What neither compiled scan (aimc_ssm.analog.triton_scan on a GPU, aimc_ssm.analog.numba_scan on the
    CPU) runs, or None: they compute per-sequence reads with the fast step's noise and bound management
    (`mvm.fast_path_supports`), deterministic converters and no input noise, and no state quantizer."""
    io = stack.io
    if not stack.draws.per_sequence:
        return "batched reads draw from torch's stream"
    if not fast_path_supports(io):
        return "IO settings the fast step does not run (mvm.fast_path_supports)"
    if kernel.state_quantizer is not None:
        return "a PTQ/QAT state quantizer"
    if not io.is_perfect and (io.inp_noise > 0 or io.inp_sto_round or io.out_sto_round):
        return "input noise or stochastic rounding"
    return None


def triton_scan_runs(kernel: FusedS4D, stack: CrossbarStack) -> bool:
    """Whether triton is installed and its scan (aimc_ssm.analog.triton_scan) runs these settings."""
    try:
        from .triton_scan import unsupported
    except ImportError:  # a torch build without triton: StaticScan
        return False
    return unsupported(kernel, stack) is None


def fused_layers(model) -> list[FusedS4D]:
    """The fused kernels of an analog model, one per block."""
    layers = [block.ssm for block in getattr(model, "blocks", [])]
    if not layers or not all(isinstance(layer, FusedS4D) for layer in layers):
        raise ValueError(
            "reading crossbars needs a model from aimc_ssm.analog.to_analog (its SSMs are FusedS4D crossbars)"
        )
    return layers


class StaticScan:
    """The buffers of one `FusedS4D.scan` and its step at fixed addresses, so a run of steps can be
    captured once (CUDA graphs) and replayed: the step reads u_t and writes y_{t-1} at the device step
    counter of its `CrossbarStack` (`capture_steps`), which every step advances in place.

    `run` steps eagerly, the counter a Python int unless `CrossbarStack.capture_steps` made it a tensor:
    `FusedS4D.scan_plain`'s steps, with the fast `CrossbarStack.step`. `capture` captures a run of steps once and `replay` replays it over the
    sequence, the steps past the flush reading zeros and their outputs dropped (they change no other).
    """

    def __init__(self, kernel: FusedS4D, stack: CrossbarStack, u: torch.Tensor):
        B, L, H = u.shape
        N = kernel.d_state
        self.kernel, self.stack, self.length = kernel, stack, L
        self.u_steps = scan_inputs(u)
        self.inp = u.new_zeros(H, B, kernel.copies * (N + 2))
        self.groups = self.inp.view(H, B, kernel.copies, N + 2)  # every copy's row group reads [u_t, x_{t-1}, u_{t-1}]
        self.register = u.new_zeros(H, B, N)  # x_{t-1}, mapped, where the incremental mapping adds to it
        self.ys = u.new_empty(L + 2, H, B)  # row t + 1: what step t read from the y column (y_{t-1})

    def step(self) -> None:
        N = self.kernel.d_state
        t = self.stack.steps
        u_t = self.u_steps[t] if isinstance(t, int) else self.u_steps.index_select(0, t.view(1))[0]  # (H, B)
        self.groups[..., 0] = u_t[..., None]
        out = self.stack.step(self.inp)  # (H, B, N+1): [x_t (or its increment), y_{t-1}]; advances the counter
        state = self.kernel.next_state(self.register, out[:, :, :N])
        if state is not self.register and self.kernel.incremental:
            self.register.copy_(state)  # a quantized state: the register keeps its address
        self.groups[..., 1 : N + 1] = state[:, :, None]
        self.groups[..., N + 1] = u_t[..., None]
        t = self.stack.steps
        if isinstance(t, int):
            self.ys[t] = out[:, :, N]
        else:
            self.ys.index_copy_(0, t.view(1), out[None, :, :, N])

    def outputs(self) -> torch.Tensor:
        # (B, L, H): y_t left the crossbar at step t + 1. Contiguous: elementwise ops downstream (GELU) round
        # the last bit differently on strided views, so a view would tie a sequence's outputs to its batch's size
        return self.ys[2 : self.length + 2].permute(2, 0, 1).contiguous()

    def run(self) -> torch.Tensor:
        for _ in range(self.length + 1):
            self.step()
        return self.outputs()

    def capture(self, steps: int, compile_step: bool = False) -> None:
        """Capture `steps` steps once in a CUDA graph, for ceil((L+1)/steps) replays (`replay`); with
        compile_step the step compiled (torch.compile) first. The step runs once beforehand, eagerly
        and then compiled, on a side stream, to allocate its buffers and draw tables, initialize cuBLAS
        and compile, and the scan's buffers are reset afterwards: that step is not one of the scan's."""
        L = self.length
        self.replays = -(-(L + 1) // steps)
        padding = self.replays * steps - (L + 1)
        self.u_steps = nn.functional.pad(self.u_steps, (0, 0, 0, 0, 0, padding))  # zeros past the flush
        self.ys = self.ys.new_empty(self.replays * steps + 1, *self.ys.shape[1:])
        self.stack.capture_steps(self.replays * steps)
        warm_ups = [self.step]
        if compile_step:
            warm_ups.append(torch.compile(self.step, fullgraph=True, dynamic=False))
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for step in warm_ups:
                step()
        torch.cuda.current_stream().wait_stream(side)
        for buffer in (self.inp, self.register, self.stack.steps):
            buffer.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            for _ in range(steps):
                warm_ups[-1]()

    def replay(self) -> torch.Tensor:
        """Run the scan as replays of the captured steps (`capture`): y (B, L, H)."""
        for _ in range(self.replays):
            self.graph.replay()
        return self.outputs()
