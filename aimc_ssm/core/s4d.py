"""S4D: the diagonal structured state-space layer, in convolution and recurrent mode.

Per channel h (H channels) and complex mode n (N/2 modes; conjugate symmetry keeps half of N):

    continuous   A = -exp(log_A_real) + i·A_imag,  dt = exp(log_dt)
    ZOH          Ā = exp(dt·A),  B̄ = B·(exp(dt·A) - 1)/A
    convolution  K_l = 2·Re Σ_n C_n·B̄_n·Ā_n^l,   y = K * u + D·u     (training)
    recurrence   x_t = Ā ⊙ x_{t-1} + B̄·u_t,     y_t = 2·Re(C·x_t) + D·u_t  (deployment)

Everything downstream (quantization, analog tiles, metrics) reads the discrete system from
`S4D.ssm_parameters()`, so the two modes and every simulator see the same numbers.
Layout is (batch, length, channels) throughout; only the FFT convolution (`FFTCausalConv`) turns
channels-first inside, where the FFT runs along the last axis, and hands back a contiguous result.
Each fast path has a plain reference twin of the same signature (`ssm_kernel_ref`, `causal_conv_ref`).

The transform chain. Between the trainable parameters and the deployed system sit the layer's
`transforms`, at most one of each kind in TRANSFORM_KINDS, composed in a declared order (TRANSFORM_ORDER):
continuous hooks act on (dt, A, B, C) before discretization, discrete hooks on (Ā, B̄, C, D) after it.

    quantization  aimc_ssm.quant.quantize.SSMQuantization (`quantize_`): the grids of every parameter;
                  convolution mode passes kernel and input through its `conv_operands`, and where it
                  `requantizes_state` the recurrence runs its `step` / `scan`
    noise         aimc_ssm.analog.hwa.WeightNoise: relative Gaussian noise on A or Ā, every forward
    pruning       aimc_ssm.quant.pruning.SSMMasks: zeroed modes and entries

Noise on continuous A comes before A's quantizer ([S25]); on Ā after it, as a crossbar holding the
quantized Ā perturbs it; masks come last, so a pruned entry is exactly zero whatever else acts.
Without transforms every result is that of the float layer, bit for bit.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

A_INITS = ("lin", "lin-quarter")
# optimizer hint of the SSM's dynamics (log dt, A): their own learning rate (TrainConfig.ssm_lr), no weight
# decay, as the reference S4 code registers them
SSM_OPTIM = {"lr": "ssm_lr", "weight_decay": 0.0}
TRANSFORM_KINDS = ("quantization", "noise", "pruning")
TRANSFORM_ORDER = {"continuous": ("noise", "quantization"), "discrete": ("quantization", "noise", "pruning")}
DISCRETIZATIONS = ("zoh", "bilinear")


def check_sizes(d_model: int, d_state: int) -> None:
    if not (isinstance(d_model, int) and d_model > 0):
        raise ValueError(f"d_model (H) must be a positive integer, got {d_model!r}")
    if not (isinstance(d_state, int) and d_state > 0):
        raise ValueError(f"d_state (N) must be a positive integer, got {d_state!r}")
    if d_state % 2:
        raise ValueError(
            f"d_state (N) must be even: S4D keeps N/2 complex modes of conjugate pairs; "
            f"got N={d_state}, use N={d_state + 1} or {d_state - 1}"
        )


def check_input(u: torch.Tensor, d_model: int) -> None:
    if u.dim() != 3 or u.shape[-1] != d_model:
        raise ValueError(
            f"expected input of shape (batch, length, {d_model}), got {tuple(u.shape)}; "
            "the layout is (batch, length, channels)"
        )
    # A NaN or Inf anywhere makes the sum non-finite: one reduction, not a mask, on every call; the
    # elementwise test only confirms, as a sum of finite values can overflow. Reading the verdict
    # waits for the device, so on a GPU, where it would stall every launch queued behind it, the
    # values are not tested (a NaN there shows in the loss, which training checks every step).
    if u.device.type == "cpu" and not torch.isfinite(u.sum()) and not torch.isfinite(u).all():
        raise ValueError("input contains NaN or Inf; clean or re-normalise the data first")


def discretize(dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, method: str = "zoh"):
    """Continuous (dt (H,), A (H,n), B (H,n)) -> discrete (Ā (H,n), B̄ (H,n))."""
    dtA = dt[:, None] * A  # (H, n)
    if method == "zoh":
        dA = torch.exp(dtA)
        dB = B * (dA - 1.0) / A
    elif method == "bilinear":
        dA = (1.0 + dtA / 2) / (1.0 - dtA / 2)
        dB = B * dt[:, None] / (1.0 - dtA / 2)
    else:
        raise ValueError(f"unknown discretization {method!r}; choose one of {DISCRETIZATIONS}")
    return dA, dB


def ssm_kernel(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """K_l = 2·Re Σ_n C_n B̄_n Ā_n^l for l < L: (H, n) complex -> (H, L) real.

    The Vandermonde matrix in two factors: with l = I·j + i and I ≈ √L, Ā^l = Ā^(I·j)·Ā^i, so the sum over
    modes is one batched real matmul and only H·n·(I + J) complex exponentials are taken: H·n·L of them,
    with their backward, would be the kernel's whole cost. So few, they are taken in double precision:
    the phase l·∠Ā reaches L·π, where single precision loses about 1e-4 rad. log Ā itself is taken in
    Ā's precision, single: one rounding of ∠Ā turns tap l by l times as much (tests/test_s4d_speed_paths.py
    bounds it)."""
    if L < 1:
        raise ValueError(f"the kernel length L must be at least 1, got {L}")
    H, n = dA.shape
    I = math.isqrt(L - 1) + 1  # ceil(√L)
    J = -(-L // I)  # I·J >= L
    # Ā^l as exp(l·log Ā); a mode quantized to exactly zero contributes only at l = 0.
    log_dA = torch.log(torch.where(dA == 0, torch.full_like(dA, 1e-30), dA)).to(torch.complex128)[..., None]  # (H, n, 1)
    l = torch.arange(max(I, J), device=dA.device, dtype=torch.float64)
    inner = torch.exp(log_dA * l[:I]).to(dA.dtype)  # Ā^i (H, n, I)
    outer = (C * dB)[..., None] * torch.exp(log_dA * (I * l[:J])).to(dA.dtype)  # C·B̄·Ā^(I·j) (H, n, J)
    # 2·Re(a·b) = 2·(Re a·Re b - Im a·Im b): a real matmul over the stacked [Re; Im] of the modes
    left = torch.cat([outer.real, -outer.imag], dim=1).transpose(1, 2)  # (H, J, 2n)
    right = torch.cat([inner.real, inner.imag], dim=1)  # (H, 2n, I)
    return (2 * torch.bmm(left, right)).reshape(H, J * I)[:, :L]  # (H, L)


def ssm_kernel_ref(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """Reference twin of `ssm_kernel`: powers of Ā by repeated multiplication."""
    K = []
    power = torch.ones_like(dA)  # Ā^0
    for _ in range(L):
        K.append(2 * (C * dB * power).sum(-1).real)  # (H,)
        power = power * dA
    return torch.stack(K, dim=-1)  # (H, L)


def fft_length(L: int) -> int:
    """The FFT length of a causal convolution of length L: the smallest n >= 2L - 1 (no wrap-around into
    the first L outputs) whose prime factors are all 2, 3, 5 or 7, the lengths FFT libraries do fastest."""
    n = 2 * L - 1
    while True:
        m = n
        for p in (2, 3, 5, 7):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


class FFTCausalConv(torch.autograd.Function):
    """y = K * u by FFT along the time axis, channels-first inside: u (B, L, H), K (H, L) -> y (B, L, H).

    Why channels-first: an FFT along the middle axis of a (B, L, H) tensor copies it to put time last and
    returns a view with time innermost, so every later elementwise op and Linear (and their backward)
    would meet a transposed layout. Here the one transpose is explicit and the output is contiguous.
    Why its own backward: the gradients are correlations, one rfft and one irfft each way; autograd's
    backward of rfft takes a complex FFT of the full length instead, about twice the work of an irfft."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
        L = u.shape[1]
        n = fft_length(L)
        u_f = torch.fft.rfft(u.transpose(1, 2), n=n)  # (B, H, n//2+1)
        K_f = torch.fft.rfft(K, n=n)  # (H, n//2+1)
        ctx.save_for_backward(u_f, K_f)
        ctx.L, ctx.n = L, n
        y = torch.fft.irfft(u_f * K_f, n=n)[..., :L]  # (B, H, L)
        return y.transpose(1, 2).contiguous()  # (B, L, H)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: torch.Tensor):
        u_f, K_f = ctx.saved_tensors
        L, n = ctx.L, ctx.n
        g_f = torch.fft.rfft(grad_y.transpose(1, 2), n=n)  # (B, H, n//2+1)
        grad_u = grad_K = None
        if ctx.needs_input_grad[0]:  # ∂/∂u_t = Σ_s g_s K_(s-t): correlation with K
            grad_u = torch.fft.irfft(g_f * K_f.conj(), n=n)[..., :L].transpose(1, 2).contiguous()  # (B, L, H)
        if ctx.needs_input_grad[1]:  # ∂/∂K_k = Σ_b Σ_t g_t u_(t-k): correlation with u, summed over the batch
            grad_K = torch.fft.irfft((g_f * u_f.conj()).sum(0), n=n)[..., :L]  # (H, L)
        return grad_u, grad_K


def causal_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_t = Σ_{k≤t} K_k u_{t-k} via FFT (`FFTCausalConv`): u (B,L,H), K (H,L) -> (B,L,H)."""
    return FFTCausalConv.apply(u, K)


def causal_conv_ref(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Reference twin of `causal_conv`: the causal sum, one lag at a time, no FFT."""
    B, L, H = u.shape
    y = torch.zeros_like(u)
    for k in range(L):
        y[:, k:] = y[:, k:] + K[:, k] * u[:, : L - k]
    return y


class SSMTransform(nn.Module):
    """One link of an S4D layer's transform chain (see the module docstring); each hook is an identity
    unless a subclass overrides it. `ssm` is the layer, for what the hooks need besides the tensors."""

    def continuous(self, ssm: "S4D", dt, A, B, C):
        """(dt (H,), A, B, C (H, n)) before discretization -> the same, transformed."""
        return dt, A, B, C

    def discrete(self, ssm: "S4D", dA, dB, C, D):
        """(Ā, B̄, C (H, n), D (H,)) after discretization -> the same, transformed."""
        return dA, dB, C, D


class S4D(nn.Module):
    """H independent diagonal SSMs with N/2 complex modes each; input/output (B, L, H)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        *,
        trainable_B: bool = True,
        a_init: str = "lin",
        discretization: str = "zoh",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
    ):
        super().__init__()
        check_sizes(d_model, d_state)
        if a_init not in A_INITS:
            raise ValueError(f"unknown a_init {a_init!r}; choose one of {A_INITS}")
        if discretization not in DISCRETIZATIONS:
            raise ValueError(f"unknown discretization {discretization!r}; choose one of {DISCRETIZATIONS}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        H, n = d_model, d_state // 2
        self.d_model, self.d_state, self.discretization = H, d_state, discretization

        self.optim_hints: dict[str, dict] = {}  # parameter name -> optimizer group, set where it is registered
        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.register("log_dt", log_dt, optim=SSM_OPTIM)  # (H,)
        # S4D-Lin: A_n = -1/2 + i·π·n ("lin-quarter": π/4·n as later [S25] code)
        scale = math.pi if a_init == "lin" else math.pi / 4
        self.register("log_A_real", torch.log(0.5 * torch.ones(H, n)), optim=SSM_OPTIM)  # (H, n)
        self.register("A_imag", scale * torch.arange(n).float().repeat(H, 1), optim=SSM_OPTIM)  # (H, n)
        self.register("B", torch.view_as_real(torch.ones(H, n, dtype=torch.cfloat)), trainable=trainable_B)  # (H, n, 2)
        # C ~ complex normal with unit variance
        self.register("C", torch.view_as_real(torch.randn(H, n, dtype=torch.cfloat)))  # (H, n, 2)
        self.register("D", torch.randn(H))  # (H,)
        self.transforms = nn.ModuleDict()  # the transform chain, see the module docstring

    def register(self, name: str, tensor: torch.Tensor, trainable: bool = True, optim: dict | None = None) -> None:
        """A parameter (a buffer if not trainable) with an optimizer hint: the settings of its group
        (aimc_ssm.core.model.parameter_groups), kept on the module so that copies keep them too."""
        if not trainable:
            self.register_buffer(name, tensor)
            return
        self.register_parameter(name, nn.Parameter(tensor))
        if optim is not None:
            self.optim_hints[name] = optim

    # -- the transform chain --------------------------------------------------------------------
    def set_transform(self, kind: str, transform: SSMTransform | None) -> None:
        """Put `transform` in the chain as its `kind` (replacing the one there), or remove it (None)."""
        if kind not in TRANSFORM_KINDS:
            raise ValueError(f"unknown transform kind {kind!r}; choose one of {TRANSFORM_KINDS}")
        if transform is None:
            if kind in self.transforms:
                del self.transforms[kind]
        elif not isinstance(transform, SSMTransform):
            raise TypeError(f"a transform must be an SSMTransform, got {type(transform).__name__}")
        else:
            self.transforms[kind] = transform.to(self.D.device)

    def transform(self, kind: str) -> SSMTransform | None:
        return self.transforms[kind] if kind in self.transforms else None

    @property
    def quantization(self):
        """The quantization transform, or None for a float layer."""
        return self.transform("quantization")

    def requantizes_state(self) -> bool:
        """Whether the recurrence re-quantizes the state every step (the quantization says so)."""
        return self.quantization is not None and self.quantization.requantizes_state

    def _chain(self, stage: str):
        return [self.transforms[kind] for kind in TRANSFORM_ORDER[stage] if kind in self.transforms]

    # -- parameters ---------------------------------------------------------------------
    def continuous_parameters(self):
        """(dt (H,), A (H,n), B (H,n), C (H,n)) of the continuous system."""
        dt = torch.exp(self.log_dt)
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag
        return dt, A, torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def ssm_parameters(self):
        """The deployed discrete system: Ā (H,n), B̄ (H,n), C (H,n) complex; D (H,) real.

        Through the transform chain: quantized, perturbed and masked where those transforms are attached."""
        dt, A, B, C = self.continuous_parameters()
        for t in self._chain("continuous"):
            dt, A, B, C = t.continuous(self, dt, A, B, C)
        dA, dB = discretize(dt, A, B, self.discretization)
        D = self.D
        for t in self._chain("discrete"):
            dA, dB, C, D = t.discrete(self, dA, dB, C, D)
        return dA, dB, C, D

    def kernel(self, L: int, params=None) -> torch.Tensor:
        dA, dB, C, _ = self.ssm_parameters() if params is None else params
        return ssm_kernel(dA, dB, C, L)  # (H, L)

    # -- the two modes --------------------------------------------------------------------
    def forward(self, u: torch.Tensor, mode: str = "conv") -> torch.Tensor:
        check_input(u, self.d_model)
        if mode == "conv":
            return self.forward_conv(u)
        if mode == "recurrent":
            return self.scan(u)
        raise ValueError(f"unknown mode {mode!r}; choose 'conv' or 'recurrent'")

    def forward_conv(self, u: torch.Tensor) -> torch.Tensor:
        params = self.ssm_parameters()
        K, u_conv, D = self.kernel(u.shape[1], params), u, params[3]  # (H, L), (B, L, H), (H,)
        if self.quantization is not None:  # the conv-mode stand-in for the state's precision, if any
            K, u_conv = self.quantization.conv_operands(K, u)
            if not self.quantization.y.is_float:  # the SSM output quantized before the skip term, as in recurrent mode
                return self.quantization.y(causal_conv(u_conv, K)) + D * u
        if u_conv is u:  # K * u + D·u = (K + D·δ_0) * u: the skip term as the kernel's first tap, no pass over u
            return causal_conv(u, K + nn.functional.pad(D[:, None], (0, K.shape[1] - 1)))  # (B, L, H)
        return causal_conv(u_conv, K) + D * u  # (B, L, H)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.d_model, self.d_state // 2, dtype=torch.cfloat, device=self.D.device)

    def step(self, u_t: torch.Tensor, x: torch.Tensor, params=None):
        """One recurrent step: u_t (B, H), state x (B, H, n) -> (y_t (B, H), x_t)."""
        params = self.ssm_parameters() if params is None else params
        if self.requantizes_state():
            return self.quantization.step(u_t, x, params)
        dA, dB, C, D = params
        x = dA * x + dB * u_t[..., None]  # (B, H, n)
        y = 2 * (C * x).sum(-1).real + D * u_t  # (B, H)
        return y, x

    def scan(self, u: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Whole sequence in recurrent mode: u (B, L, H) -> y (B, L, H)."""
        params = self.ssm_parameters()  # discretize once, not every step
        if self.requantizes_state():
            return self.quantization.scan(u, params, x)
        x = self.initial_state(u.shape[0]) if x is None else x
        ys = []
        for t in range(u.shape[1]):
            y_t, x = self.step(u[:, t], x, params)
            ys.append(y_t)
        return torch.stack(ys, dim=1)
