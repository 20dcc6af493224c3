"""S4D on analog in-memory computing crossbars (aihwkit): the fused single-step kernel [S24] and model mapping.

One crossbar per SSM channel h computes a whole recurrent step in one matrix-vector product. In
aihwkit's orientation a tile holds W (outputs, inputs) and computes W @ input:

                  u_t     x_{t-1} (N reals)          u_{t-1}
    x_t (N)    [  B̄        Ā  (2×2 blocks)            0   ]
    y_{t-1}    [  0        C̄  (2·Re C, -2·Im C)       D   ]

Complex modes are real pairs (Re, Im), interleaved, so Ā is block diagonal with [[Re, -Im], [Im, Re]]
blocks, B̄ enters as (Re B̄, Im B̄) and y = 2·Re(C·x) = C̄·x.

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
           column then reads about x_t / (s_n·r_h) (s_n: the state mapping below), within ±1, so an ADC
           range of 1-2 suits the kernel; with
           aihwkit's default out_bound 12 a 4-bit ADC rounds every state to 0, and 8 bits leave under 5.
           Pass a kernel-specific config as `to_analog(..., ssm_rpu_config=...)`.

State mapping. The state x_t leaves through the ADC and returns through the DAC every step, on the
grid of its channel's DAC range. Its modes differ in size by orders of magnitude (a slow mode integrates
hundreds of inputs, a fast one a few), so on one grid the small modes are rounded away, and a mode whose
per-step change is below half an ADC level stops moving (the dead band of fixed-point recursive
filters). "balanced" (the default where calibration inputs are given) maps each mode as x/s_n, with
s_n = peak |x_n| / peak |u| of its channel on the calibration inputs: a similarity transform that
leaves Ā unchanged and holds B̄/s_n and s_n·C̄, computes the same y, and gives every mode the input's
range on the converters. "direct" holds the state as it is, as [S24] draws it.

Digital around the crossbar: the ADC's state passes the state quantizer of a PTQ/QAT model (its
`quant.state`, where the model re-quantizes the state) and is fed back through the DAC next step; y is
aligned back to y_t. A PTQ/QAT model's quantized Ā, B̄, C, D are what the crossbars hold; its
partial-product quantizers have no place here, as Ā x and B̄ u add up in the analog column.

Execution: all H crossbars and the whole batch advance in one vectorized step, `CrossbarStack.step`
(aihwkit's torch-tile forward, with noise and bound management, in place) or, for input or output
asymmetry, its twin `CrossbarStack.step_ref` = `AnalogMVM.matmul` on the (H, out, in) stack.
Iterative bound management decides for the whole stack, as aihwkit's MVM does for a batch: when any
crossbar clips, all repeat the read at half scale. Likewise noise management's all-zero shortcut
(read 0, draw no output noise) applies when the inputs of every crossbar are zero. `FusedS4D.scan_ref` is the per-channel loop of the
same aihwkit tiles, and is what compiled (C++) tiles run, as only their own forward simulates
forward.w_noise.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .model import S4DModel
from .s4d import S4D, check_input

DRIFT_TIMES = {"1s": 1.0, "1h": 3600.0, "1d": 86400.0, "1y": 365 * 86400.0}  # t_inference, seconds


# -- crossbar layout ----------------------------------------------------------------------------
def crossbar_matrices(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Discrete system (Ā, B̄, C (H, n) complex; D (H,)) -> crossbar weights W (H, N+1, N+2), N = 2n."""
    H, n = dA.shape
    N = 2 * n
    W = dA.real.new_zeros(H, N + 1, N + 2)
    re, im = torch.arange(0, N, 2), torch.arange(1, N, 2)  # state rows; state inputs are columns 1 + row
    W[:, re, 0], W[:, im, 0] = dB.real, dB.imag  # B̄ u_t
    W[:, re, 1 + re], W[:, re, 1 + im] = dA.real, -dA.imag  # Ā x_{t-1}, one 2×2 block per mode
    W[:, im, 1 + re], W[:, im, 1 + im] = dA.imag, dA.real
    W[:, N, 1 + re], W[:, N, 1 + im] = 2 * C.real, -2 * C.imag  # C̄ x_{t-1}
    W[:, N, N + 1] = D  # D u_{t-1}
    return W


def crossbar_grid_steps(ssm: S4D) -> tuple[torch.Tensor, ...] | None:
    """Grid steps (Ā, B̄, C (H, n) complex; D (H,)) of the parts a PTQ/QAT quantizer put on a uniform
    grid, 0 elsewhere; None for a model without quantized SSM parameters.

    Cells are then integer levels times their step (`crossbar_matrices` of the steps). Ā and B̄ are on
    a grid where they are quantized after discretization, Ā in cartesian form only (polar Ā is on a
    grid of |Ā| and ∠Ā); C, D always.
    """
    from .quantizers import to_planes
    from .s4d import discretize

    quant = ssm.quant
    if quant is None:
        return None
    dt, A, B, C = ssm.continuous_parameters()
    dA, dB = discretize(dt, A, B, ssm.discretization)

    def steps(quantizer, z):  # complex (H, n): the steps of (Re, Im), 0 off a uniform cartesian grid
        parts = getattr(quantizer, "parts", quantizer)
        if parts.is_float or getattr(quantizer, "form", "cartesian") != "cartesian":
            return torch.zeros_like(z)
        planes = to_planes(z) if z.is_complex() else z
        grid = parts.grid(planes)  # levels scale·(q + offset)
        if grid.offset:  # 1-bit symmetric levels ±r/2 sit between integers
            return torch.zeros_like(z)
        scale = torch.as_tensor(grid.scale).expand_as(planes)
        return torch.complex(scale[0], scale[1]) if z.is_complex() else scale

    if quant.parameterization == "continuous":  # A and B were quantized before discretization
        step_A = step_B = torch.zeros_like(dA)
    else:
        step_A, step_B = steps(quant.A, dA), steps(quant.B, dB)
    grid_steps = (step_A, step_B, steps(quant.C, C), steps(quant.D, ssm.D))
    if not any(step.abs().amax() > 0 for step in grid_steps):  # every quantizer float, as in a pruned float model
        return None
    return tuple(step.detach().cpu() for step in grid_steps)


@torch.no_grad()
def signal_peaks(dA: torch.Tensor, dB: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest |u| per channel (H,) and largest |Re x|, |Im x| per mode (H, n) of the system
    x_t = Ā x_{t-1} + B̄ u_t (Ā, B̄ (H, n)) on inputs u (B, L, H)."""
    x = torch.zeros(u.shape[0], *dA.shape, dtype=dA.dtype, device=u.device)  # (B, H, n)
    peak = torch.zeros(dA.shape, device=u.device)
    for t in range(u.shape[1]):
        x = dA * x + dB * u[:, t, :, None]
        peak = torch.maximum(peak, torch.view_as_real(x).abs().amax(dim=(0, 3)))
    return u.abs().amax(dim=(0, 1)), peak


def real_state(x: torch.Tensor) -> torch.Tensor:
    """Complex state (B, H, n) -> crossbar layout (H, B, N): (Re, Im) pairs interleaved."""
    B, H, n = x.shape
    return torch.view_as_real(x.transpose(0, 1)).reshape(H, B, 2 * n)


def complex_state(x: torch.Tensor) -> torch.Tensor:
    """Crossbar layout (H, B, N) -> complex state (B, H, n)."""
    H, B, N = x.shape
    return torch.view_as_complex(x.reshape(H, B, N // 2, 2).contiguous()).transpose(0, 1)


# -- all crossbars of a layer, one vectorized step -------------------------------------------------
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


def column_scales(tiles: list) -> torch.Tensor:
    """aihwkit's digital mapping scale α of every output column of every tile: (H, out)."""
    n_out = tiles[0].tile.weight.shape[0]
    scales = [t.get_mapping_scales() for t in tiles]
    return torch.stack([
        t.tile.weight.new_ones(n_out) if s is None else s.detach().reshape(-1).expand(n_out) for t, s in zip(tiles, scales)
    ])


class CrossbarStack:
    """The H crossbars of a layer stacked for one vectorized step: (H, B, in) -> (H, B, out).

    Reads the tiles' current (programmed, drifted) weights and digital scales once per sequence.
    `step` is aihwkit's torch tile forward (input range, `AnalogMVM` with its noise and bound management,
    mapping scales, drift compensation) for all crossbars and the whole batch at once, in aihwkit's order of operations
    and random draws but in place, in buffers reused every step: allocating fresh megabyte tensors
    every step costs more than the arithmetic. `step_ref` is its twin, `AnalogMVM.matmul` itself on
    the (H, out, in) stack; the two agree to the last bit, noise included.
    """

    def __init__(self, tiles: list):
        self.io = tiles[0].rpu_config.forward
        self.weight = torch.stack([t.tile.weight.detach() for t in tiles])  # (H, out, in), |w| ≤ ω: conductances
        self.weight_t = self.weight.permute(0, 2, 1)  # aihwkit's bmm operand
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
        self.drift_alpha = torch.stack([t.alpha.detach().reshape(1, 1) for t in tiles]) if compensated else None
        learned = tiles[0].out_scaling_alpha is not None
        self.out_scale = per_column(t.out_scaling_alpha for t in tiles) if learned else None
        noisy_outputs = tiles[0].tile.out_noise_values is not None
        self.out_noise_values = per_column(t.tile.out_noise_values for t in tiles) if noisy_outputs else None
        self.buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, shape: tuple) -> torch.Tensor:
        if name not in self.buffers or self.buffers[name].shape != shape:
            self.buffers[name] = self.weight.new_empty(shape)
        return self.buffers[name]

    def quantize_(self, x: torch.Tensor, res: float, bound: float, stochastic: bool) -> torch.Tensor:
        """aihwkit's UniformQuantize (x/res, round, ×res; res = 2·bound/steps), in place."""
        res = (1 / res if res > 1.0 else res) * 2 * bound
        x.div_(res)
        if stochastic:
            # one buffer per shape: the DAC's and the ADC's would otherwise reallocate each other's every step
            x.add_(self.buffer(f"rounding{tuple(x.shape)}", x.shape).uniform_(-0.5, 0.5))
        return x.round_().mul_(res)

    def step(self, inp: torch.Tensor) -> torch.Tensor:
        """Digital inputs (H, B, in), overwritten -> digital outputs (H, B, out) in a buffer reused next step.

        `AnalogMVM.matmul` in aihwkit's order of operations: noise management scales each input vector
        (constant or by its largest entry), iterative bound management repeats the whole read at half
        the input scale while any output of the stack clips, up to aihwkit's limits.
        """
        from aihwkit.simulator.parameters.enums import BoundManagementType

        io = self.io
        H, B, _ = inp.shape
        x = inp
        out = self.buffer("output", (H, B, self.weight.shape[1]))
        if self.input_range is not None:  # TorchInferenceTile.pre_forward
            # clamp_min_/clamp_max_ equal clamp_ with both tensor bounds, whose CPU kernel has no
            # vectorized loop for two broadcast operands (10x slower on the (H, B, N+2) input)
            x.clamp_min_(self.neg_input_range).clamp_max_(self.input_range).div_(self.input_range)
        if io.is_perfect:
            torch.bmm(x, self.weight_t, out=out)
            return self.periphery_out_(out)
        nm = self.noise_management_values(x)  # 1.0, a constant or (H, B, 1)
        if isinstance(nm, torch.Tensor):
            if io.inp_noise <= 0 and not nm.any():
                return self.periphery_out_(out.zero_())  # aihwkit's shortcut: all inputs zero, no draws
            nm.masked_fill_(nm <= 0, 1.0)
        if io.bound_management == BoundManagementType.NONE:
            scale = 1.0 / nm
            self.read_(x, out, scale)
        else:
            work = self.buffer("bound_managed_input", x.shape)
            res = io.inp_res if io.inp_res <= 1.0 else 1 / io.inp_res
            res *= 2 * io.inp_bound
            reduction, passed = 0.5, False
            while not passed:
                reduction *= 2.0
                scale = 1.0 / nm / reduction
                passed = self.read_(work.copy_(x), out, scale)
                passed = passed or reduction > io.max_bm_factor or (res > 0 and reduction > io.max_bm_res / res)
        if isinstance(scale, torch.Tensor) or scale != 1.0 or io.out_scale != 1.0:
            out.mul_(io.out_scale / scale)
        return self.periphery_out_(out)

    def noise_management_values(self, x: torch.Tensor):
        """aihwkit's noise-management divisor of every input vector: 1.0, a constant, or (H, B, 1)."""
        from aihwkit.simulator.parameters.enums import NoiseManagementType

        io, kind = self.io, self.io.noise_management
        if kind == NoiseManagementType.NONE:
            return 1.0
        if kind == NoiseManagementType.CONSTANT:
            return io.nm_thres if io.nm_thres > 0 else 1.0
        values = self.buffer("noise_management", (*x.shape[:2], 1))
        torch.amax(x.abs() if kind == NoiseManagementType.ABS_MAX else x, dim=-1, keepdim=True, out=values)
        return values.clamp_max_(io.nm_thres) if io.nm_thres > 0 else values

    def read_(self, x: torch.Tensor, out: torch.Tensor, scale) -> bool:
        """One analog read of x (scaled, consumed) into out: DAC, input noise, matmul, output noise, ADC.
        Returns whether no output clipped at the ADC bound."""
        io = self.io
        if isinstance(scale, torch.Tensor) or scale != 1.0:
            x.mul_(scale)
        if io.inp_res > 0:  # DAC
            self.quantize_(x, io.inp_res, io.inp_bound, io.inp_sto_round)
        if io.inp_bound > 0:
            x.clamp_(-io.inp_bound, io.inp_bound)
        if io.inp_noise > 0:
            x.add_(self.buffer("input_noise", x.shape).normal_().mul_(io.inp_noise))
        torch.bmm(x, self.weight_t, out=out)
        if self.out_noise_values is not None:
            out.add_(self.buffer("output_noise", out.shape).normal_().mul_(self.out_noise_values))
        elif io.out_noise > 0:
            out.add_(self.buffer("output_noise", out.shape).normal_().mul_(io.out_noise))
        if io.out_res > 0:  # ADC
            self.quantize_(out, io.out_res, io.out_bound, io.out_sto_round)
        if io.out_bound <= 0:
            return True
        from aihwkit.simulator.parameters.enums import BoundManagementType

        # max and min are two vectorized reductions; |out| <= bound as a boolean tensor costs more than both
        within = io.bound_management == BoundManagementType.NONE or bool(max(out.amax(), -out.amin()) <= io.out_bound)
        out.clamp_(-io.out_bound, io.out_bound)
        return within

    def periphery_out_(self, out: torch.Tensor) -> torch.Tensor:
        """The tile's digital output scales, in aihwkit's order, in place."""
        out.mul_(self.scale)
        if self.drift_alpha is not None:
            out.mul_(self.drift_alpha)  # global drift compensation (inference)
        if self.out_scale is not None:
            out.mul_(self.out_scale)
        return out

    def step_ref(self, inp: torch.Tensor) -> torch.Tensor:
        """Reference twin of `step`: aihwkit's `AnalogMVM.matmul` on the (H, out, in) stack.

        It runs every setting of a torch tile, asymmetry too; like `step`, its bound-management check is
        one for the whole stack (aihwkit's torch tile decides once per batch), so clipping in one
        crossbar rescales all.
        """
        from aihwkit.simulator.tiles.analog_mvm import AnalogMVM

        if self.out_noise_values is not None:
            raise ValueError("AnalogMVM.matmul broadcasts out_noise_values for 2-D weights only; use step")
        x = inp
        if self.input_range is not None:
            x = torch.clamp(x, -self.input_range, self.input_range) / self.input_range
        return self.periphery_out_(AnalogMVM.matmul(self.weight, x, self.io, False, is_test=True))


# -- the fused kernel ----------------------------------------------------------------------------
def crossbar_config(rpu_config):
    """The kernel's copy of a device config: a static, calibrated DAC range wherever there is a DAC."""
    config = copy.deepcopy(rpu_config)
    if not config.forward.is_perfect:
        input_range = config.pre_post.input_range
        input_range.enable, input_range.learn_input_range, input_range.init_from_data = True, False, 0
    return config


def check_crossbar_fits(mapping, n_in: int, n_out: int) -> None:
    too_small = (0 < mapping.max_input_size < n_in) or (0 < mapping.max_output_size < n_out)
    if too_small:
        raise ValueError(
            f"the fused kernel needs one {n_in}×{n_out} crossbar (inputs × outputs) per channel, but the device's "
            f"tiles are {mapping.max_input_size}×{mapping.max_output_size}: raise tile_size to {max(n_in, n_out)} "
            f"or use a smaller d_state"
        )


STATE_MAPPINGS = ("balanced", "direct")  # see the module docstring


def check_state_mapping(state_mapping: str) -> None:
    if state_mapping not in STATE_MAPPINGS:
        raise ValueError(f"unknown state mapping {state_mapping!r}; choose one of {STATE_MAPPINGS}")


class FusedS4D(nn.Module):
    """An S4D layer deployed as H fused crossbars (aihwkit tiles); (B, L, H) -> (B, L, H), recurrent, inference.

    Built from a trained (float, PTQ or QAT) S4D through its `ssm_parameters()`, with the state mapped
    directly until `calibrate` sets the DAC ranges and the state mapping. Programming noise and drift
    act on the tiles (`program`, after calibration); the forward reads their current weights and scales.
    """

    def __init__(self, ssm: S4D, rpu_config):
        super().__init__()
        from aihwkit.nn import AnalogLinear

        self.d_model, self.d_state = ssm.d_model, ssm.d_state
        n_in, n_out = self.d_state + 2, self.d_state + 1
        config = crossbar_config(rpu_config)
        check_crossbar_fits(config.mapping, n_in, n_out)
        # state quantizer of a PTQ/QAT model: digital, applied to the state fed back every step
        quant = ssm.quant
        self.state_quantizer = quant.state if quant is not None and quant.requantizes_state else None
        self.omega = config.mapping.weight_scaling_omega or 1.0
        with torch.no_grad():
            dA, dB, C, D = (p.detach().clone() for p in ssm.ssm_parameters())  # C, D would alias the layer's
        # the deployed discrete system, which the crossbars hold under the current state mapping
        self.register_buffer("A_bar", dA)  # (H, n) complex
        self.register_buffer("B_bar", dB)  # (H, n) complex
        self.register_buffer("C", C)  # (H, n) complex
        self.register_buffer("D", D)  # (H,)
        self.register_buffer("state_scales", torch.ones(dA.shape, device=dA.device))  # (H, n): crossbar state x/s
        # grid steps of the parts a PTQ/QAT quantizer put on a uniform grid, for export
        self.grid_steps = crossbar_grid_steps(ssm)
        self.crossbars = nn.ModuleList(
            AnalogLinear(n_in, n_out, bias=False, rpu_config=copy.deepcopy(config), tile_module_class=config.tile_class)
            for _ in range(self.d_model)
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

    def execution(self) -> str:
        """How forward runs: "fused" (`CrossbarStack.step`), "fused_ref" (its AnalogMVM twin) or "tiles"."""
        from aihwkit.simulator.tiles.inference_torch import TorchInferenceTile

        if not isinstance(self.tiles[0], TorchInferenceTile):
            return "tiles"  # compiled tiles: only their own forward simulates all of their settings
        io = self.rpu_config.forward
        if fast_path_supports(io):
            return "fused"
        return "tiles" if io.out_noise_std > 0 else "fused_ref"

    def mapped_system(self) -> tuple[torch.Tensor, ...]:
        """(Ā, B̄, C, D) as the crossbars hold them: the state x/s per mode, so B̄/s and s·C."""
        s = self.state_scales
        return self.A_bar, self.B_bar / s, self.C * s, self.D

    @torch.no_grad()
    def set_state_scales(self, scales: torch.Tensor) -> None:
        """Hold the state of mode n of channel h as x/scales[h, n] (H, n) and write the crossbars anew.

        Writes target weights: call it before `program`. aihwkit's weight_scaling_omega mapping puts
        W/α on each tile and keeps α in digital.
        """
        if scales.shape != self.state_scales.shape or not (scales > 0).all():
            raise ValueError(f"state scales must be positive, of shape {tuple(self.state_scales.shape)}; got {tuple(scales.shape)}")
        self.state_scales.copy_(scales)
        for layer, W in zip(self.crossbars, crossbar_matrices(*self.mapped_system())):
            layer.set_weights(W, None, weight_scaling_omega=self.omega)

    @property
    def level_steps(self) -> torch.Tensor | None:
        """Grid step of every crossbar cell (H, N+1, N+2) under the current state mapping, 0 where a cell is
        not on a quantizer grid; None for a model without quantized SSM parameters. Cells are integer
        levels times their step: scaling a row or column by s_n scales its step alike."""
        if self.grid_steps is None:
            return None
        step_A, step_B, step_C, step_D = self.grid_steps
        s = self.state_scales.cpu()
        return crossbar_matrices(step_A, step_B / s, step_C * s, step_D).abs()

    @torch.no_grad()
    def signal_peaks(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Largest |u| per channel (H,) and largest |Re x|, |Im x| per mode (H, n) of the digital
        system on u (B, L, H), the state as it is (not mapped)."""
        check_input(u, self.d_model)
        return signal_peaks(self.A_bar, self.B_bar, u)

    def calibrate(self, u: torch.Tensor, state_mapping: str = "balanced") -> None:
        """Set the state mapping and the DAC ranges from the signals of inputs u (B, L, H); before `program`."""
        self.calibrate_from_peaks(*self.signal_peaks(u), state_mapping)

    @torch.no_grad()
    def calibrate_from_peaks(self, u_peak: torch.Tensor, x_peak: torch.Tensor, state_mapping: str = "balanced") -> None:
        """Set the state mapping and the DAC ranges from `signal_peaks`; before `program`.

        "balanced": s_n = peak|x_n| / peak|u| of the channel, so every mode spans the input's range;
        "direct": s_n = 1. The DAC range r_h is the largest |u| or mapped |x| of the channel.
        """
        check_state_mapping(state_mapping)
        scales = torch.ones_like(x_peak)
        if state_mapping == "balanced":
            live = (x_peak > 0) & (u_peak[:, None] > 0)  # a mode that never moves keeps its scale
            scales = torch.where(live, x_peak / u_peak[:, None], scales)
        self.set_state_scales(scales)
        self.set_input_ranges(torch.maximum(u_peak, (x_peak / scales).amax(dim=-1)))

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
                "training inject noise into the digital model (aimc_ssm.analog.training_noise)"
            )
        check_input(u, self.d_model)
        path = self.execution()
        if path == "tiles":
            return self.scan_ref(u)
        return self.scan(u, reference_mvm=path == "fused_ref")

    def feed_back(self, state: torch.Tensor) -> torch.Tensor:
        """The mapped state (H, B, N) as the next step's input: through the state quantizer where there is
        one, which quantizes the state as the digital model holds it (x = s·x_mapped)."""
        if self.state_quantizer is None:
            return state
        s = self.state_scales
        return real_state(self.state_quantizer(complex_state(state) * s) / s)

    @torch.no_grad()
    def scan(self, u: torch.Tensor, reference_mvm: bool = False) -> torch.Tensor:
        """All crossbars and the whole batch advance in one vectorized step: u (B, L, H) -> y (B, L, H).

        reference_mvm: step with aihwkit's AnalogMVM.matmul (`CrossbarStack.step_ref`).
        """
        B, L, H = u.shape
        N = self.d_state
        stack = CrossbarStack(self.tiles)
        step = stack.step_ref if reference_mvm else stack.step
        # time-major (L+1, H, B), so every step reads and writes contiguous slabs; u_L = 0 flushes y_{L-1}
        u_steps = nn.functional.pad(u, (0, 0, 0, 1)).permute(1, 2, 0).contiguous()
        inp = u.new_zeros(H, B, N + 2)  # [u_t, x_{t-1}, u_{t-1}]
        ys = u.new_empty(L + 1, H, B)
        for t in range(L + 1):
            inp[:, :, 0] = u_steps[t]
            out = step(inp)  # (H, B, N+1): [x_t, y_{t-1}]; inp is consumed, all of it rewritten below
            inp[:, :, 1 : N + 1] = self.feed_back(out[:, :, :N])
            inp[:, :, N + 1] = u_steps[t]
            ys[t] = out[:, :, N]
        return ys[1:].permute(2, 0, 1)  # (B, L, H): y_t left the crossbar at step t + 1

    @torch.no_grad()
    def scan_ref(self, u: torch.Tensor) -> torch.Tensor:
        """Reference twin of `scan`: the same aihwkit tiles, one channel after the other, every step."""
        B, L, H = u.shape
        N = self.d_state
        x = u.new_zeros(H, B, N)
        u_prev = u.new_zeros(B, H)
        ys = []
        for t in range(L + 1):
            u_t = u[:, t] if t < L else torch.zeros_like(u_prev)
            outs = [
                layer(torch.cat([u_t[:, h : h + 1], x[h], u_prev[:, h : h + 1]], dim=1))
                for h, layer in enumerate(self.crossbars)
            ]  # H × (B, N+1)
            x = self.feed_back(torch.stack([o[:, :N] for o in outs]))
            ys.append(torch.stack([o[:, N] for o in outs], dim=1))  # y_{t-1} (B, H)
            u_prev = u_t
        return torch.stack(ys[1:], dim=1)

    def extra_repr(self) -> str:
        N = self.d_state
        return f"H={self.d_model}, N={N}, crossbar={N + 2}x{N + 1}, execution={self.execution()}"


# -- model mapping --------------------------------------------------------------------------------
def digital_linear(module: nn.Module) -> nn.Linear:
    """A plain nn.Linear with the weights a (possibly quantized) Linear computes with."""
    if type(module) is nn.Linear:
        return module
    weight = module.weight  # a parametrized (fake-quantized) Linear computes its quantized weight here
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear.to(module.weight.device)


def analog_linear(module: nn.Module, rpu_config) -> nn.Module:
    """aihwkit's AnalogLinear from a (possibly quantized) Linear, via aihwkit's conversion."""
    from aihwkit.nn.conversion import convert_to_analog

    # convert_to_analog copies the config; the Linear is a fresh one or the caller's own copy's
    return convert_to_analog(digital_linear(module), rpu_config, inplace=True).eval()


def check_rpu_config(rpu_config) -> None:
    from aihwkit.simulator.configs import InferenceRPUConfig

    if not isinstance(rpu_config, InferenceRPUConfig):
        raise ValueError(
            f"expected an aihwkit inference RPU config, got {type(rpu_config).__name__}; "
            "load one with aimc_ssm.devices.load_device('pcm')"
        )


def to_analog(
    model: S4DModel,
    rpu_config,
    *,
    ssm_rpu_config=None,
    calibration_inputs: torch.Tensor | None = None,
    state_mapping: str = "balanced",
) -> S4DModel:
    """A copy of a trained (float, PTQ or QAT) S4DModel on analog crossbars, in eval mode.

    Encoder, mixing and decoder become aihwkit AnalogLinear layers built from `rpu_config` (pure-PyTorch
    or compiled tiles); each SSM becomes a `FusedS4D` on `ssm_rpu_config` (default: the same device).
    Digital parts stay digital: activations, GLU, norms, and the quantizers a PTQ/QAT model applies
    there. `calibration_inputs` (B, L, d_input) set every static DAC range and the kernels' state
    mapping ("balanced" or "direct", see the module docstring) from the source model's signals
    (`calibrate_crossbars`); without them the ranges keep the device's init value and the state is
    mapped directly. The tiles hold the target weights until `program` applies programming noise and drift.
    """
    check_rpu_config(rpu_config)
    check_state_mapping(state_mapping)
    ssm_rpu_config = rpu_config if ssm_rpu_config is None else ssm_rpu_config
    check_rpu_config(ssm_rpu_config)
    source = model
    model = copy.deepcopy(model).eval()
    model.encoder = analog_linear(model.encoder, rpu_config)
    for block in model.blocks:
        block.mixing = analog_linear(block.mixing, rpu_config)
        block.ssm = FusedS4D(block.ssm, ssm_rpu_config)
    model.decoder = analog_linear(model.decoder, rpu_config)
    if calibration_inputs is not None:
        calibrate_crossbars(model, source, calibration_inputs, state_mapping)
    return model.eval()


def calibrate_crossbars(analog_model: S4DModel, source: S4DModel, inputs: torch.Tensor, state_mapping: str = "balanced") -> None:
    """Set the static DAC ranges (aihwkit input ranges) and the kernels' state mapping of `analog_model`
    from `source`'s signals on inputs; before `program`. See `measure_signals` and `apply_signal_peaks`."""
    apply_signal_peaks(analog_model, measure_signals(source, inputs), state_mapping)


@torch.no_grad()
def measure_signals(source: S4DModel, inputs: torch.Tensor) -> dict:
    """What calibration needs of `source`'s signals on inputs (B, L, d_input), by module name: the
    largest |input| of every Linear (encoder, mixing, decoder), `signal_peaks` of every SSM layer."""
    was_training = source.training
    source.eval()
    seen: dict[str, torch.Tensor] = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].detach()

        return hook

    linears = ["encoder", "decoder"] + [f"blocks.{i}.mixing" for i in range(len(source.blocks))]
    ssms = [f"blocks.{i}.ssm" for i in range(len(source.blocks))]
    modules = dict(source.named_modules())
    handles = [modules[name].register_forward_pre_hook(record(name)) for name in linears + ssms]
    try:
        source(inputs, "recurrent")
    finally:
        for handle in handles:
            handle.remove()
        source.train(was_training)
    peaks: dict = {name: seen[name].abs().max().item() for name in linears}
    for name in ssms:
        dA, dB, _, _ = modules[name].ssm_parameters()
        peaks[name] = signal_peaks(dA.detach(), dB.detach(), seen[name])
    return peaks


def apply_signal_peaks(analog_model: S4DModel, peaks: dict, state_mapping: str = "balanced") -> None:
    """Set DAC ranges and state mappings from `measure_signals`: each crossbar gets the largest |u| and
    mapped |x| its channel sees (`FusedS4D.calibrate_from_peaks`), each analog Linear the largest |input|.
    Tiles without an input range keep none: perfect forwards (no DAC), and the Linear tiles of devices
    that scale their inputs by noise management instead. One measurement serves any number of devices."""
    modules = dict(analog_model.named_modules())
    for name, peak in peaks.items():
        if isinstance(modules[name], FusedS4D):
            modules[name].calibrate_from_peaks(*peak, state_mapping)
            continue
        for tile in modules[name].analog_tiles():
            if tile.input_range is not None:
                tile.set_input_range(peak if peak > 0 else 1.0)


@torch.no_grad()
def program(analog_model: nn.Module, t_inference: float = 0.0, reprogram: bool = True) -> nn.Module:
    """Program all tiles (aihwkit programming noise) and let them drift to t_inference seconds.

    aihwkit's `program_analog_weights` draws fresh programming noise from the target weights;
    `drift_analog_weights` applies drift and read noise up to t_inference and re-reads the global drift
    compensation. reprogram=False keeps the programmed devices and only drifts them to a new time
    (evaluate one chip at 1 s, 1 h, 1 d, 1 y: see DRIFT_TIMES).
    """
    from aihwkit.inference.utils import drift_analog_weights, program_analog_weights

    analog_model.eval()
    if reprogram:
        program_analog_weights(analog_model, None)
    drift_analog_weights(analog_model, t_inference)
    return analog_model


# -- hardware-aware training ------------------------------------------------------------------------
def training_noise(kind: str = "add", std: float = 0.02):
    """aihwkit weight-modifier settings for noise injection during training, resampled every forward.

    "add": ADD_NORMAL, w + std·max|w|·ξ; "mult": MULT_NORMAL, w·(1 + std·ξ). Give it to an rpu config
    (config.modifier = training_noise(...)) or to `inject_weight_noise` for a digital tensor.
    """
    from aihwkit.simulator.parameters import WeightModifierParameter, WeightModifierType

    kinds = {"add": WeightModifierType.ADD_NORMAL, "mult": WeightModifierType.MULT_NORMAL}
    if kind not in kinds:
        raise ValueError(f"unknown noise kind {kind!r}; choose one of {sorted(kinds)}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return WeightModifierParameter(type=kinds[kind], std_dev=std, rel_to_actual_wmax=True)


def inject_weight_noise(weight: torch.Tensor, modifier) -> torch.Tensor:
    """`weight` with the modifier's noise (aihwkit's torch-tile modifier); gradients pass straight through."""
    from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile

    return TorchSimulatorTile.modify_weight(weight, modifier, 1)
