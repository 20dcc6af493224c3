"""S4D: the diagonal structured state-space layer, in convolution and recurrent mode.

Per channel h (H channels) and complex mode n (N/2 modes; conjugate symmetry keeps half of N):

    continuous   A = -exp(log_A_real) + i·A_imag,  dt = exp(log_dt)
    ZOH          Ā = exp(dt·A),  B̄ = B·(exp(dt·A) - 1)/A
    convolution  K_l = 2·Re Σ_n C_n·B̄_n·Ā_n^l,   y = K * u + D·u     (training)
    recurrence   x_t = Ā ⊙ x_{t-1} + B̄·u_t,     y_t = 2·Re(C·x_t) + D·u_t  (deployment)

Everything downstream (quantization, analog tiles, metrics) reads the discrete system from
`S4D.ssm_parameters()`, so the two modes and every simulator see the same numbers.
Layout is (batch, length, channels) throughout.

Quantization hook: `S4D.quant` is None (float) or the SSMQuantization that
`aimc_ssm.quantize.quantize_` attaches. With it, `ssm_parameters()` returns the quantized system,
convolution mode passes the kernel and input through `quant.conv_operands`, and when
`quant.requantizes_state` the recurrence (`step`, `scan`) runs `quant.step` / `quant.scan`, which
re-quantize the state every step. Without it every result is that of the float layer, bit for bit.
"""
from __future__ import annotations

import math

import torch
from torch import nn

A_INITS = ("lin", "lin-quarter")
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
    if not torch.isfinite(u).all():
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


def vandermonde_kernel(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """K_l = 2·Re Σ_n C_n B̄_n Ā_n^l for l < L: (H, n) complex -> (H, L) real."""
    l = torch.arange(L, device=dA.device, dtype=dA.real.dtype)  # (L,)
    # Ā^l as exp(l·log Ā); a mode quantized to exactly zero contributes only at l = 0.
    log_dA = torch.log(torch.where(dA == 0, torch.full_like(dA, 1e-30), dA))
    powers = torch.exp(log_dA[..., None] * l)  # (H, n, L)
    return 2 * torch.einsum("hn,hnl->hl", C * dB, powers).real


def kernel_ref(dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, L: int) -> torch.Tensor:
    """Reference twin of `vandermonde_kernel`: powers of Ā by repeated multiplication."""
    K = []
    power = torch.ones_like(dA)  # Ā^0
    for _ in range(L):
        K.append(2 * (C * dB * power).sum(-1).real)  # (H,)
        power = power * dA
    return torch.stack(K, dim=-1)  # (H, L)


def fft_conv(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Causal convolution y_t = Σ_{k≤t} K_k u_{t-k} via FFT of length 2L: u (B,L,H), K (H,L)."""
    L = u.shape[1]
    u_f = torch.fft.rfft(u, n=2 * L, dim=1)  # (B, L+1, H)
    K_f = torch.fft.rfft(K, n=2 * L, dim=-1).transpose(0, 1)  # (L+1, H)
    return torch.fft.irfft(u_f * K_f, n=2 * L, dim=1)[:, :L]  # (B, L, H)


def direct_conv_ref(u: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Reference twin of `fft_conv`: the causal sum, one lag at a time, no FFT."""
    B, L, H = u.shape
    y = torch.zeros_like(u)
    for k in range(L):
        y[:, k:] = y[:, k:] + K[:, k] * u[:, : L - k]
    return y


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

        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)  # (H,)
        # S4D-Lin: A_n = -1/2 + i·π·n ("lin-quarter": π/4·n as later [S25] code)
        scale = math.pi if a_init == "lin" else math.pi / 4
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, n)))  # (H, n)
        self.A_imag = nn.Parameter(scale * torch.arange(n).float().repeat(H, 1))  # (H, n)
        B = torch.view_as_real(torch.ones(H, n, dtype=torch.cfloat))  # (H, n, 2)
        if trainable_B:
            self.B = nn.Parameter(B)
        else:
            self.register_buffer("B", B)
        # C ~ complex normal with unit variance
        self.C = nn.Parameter(torch.view_as_real(torch.randn(H, n, dtype=torch.cfloat)))  # (H, n, 2)
        self.D = nn.Parameter(torch.randn(H))  # (H,)
        self.quant = None  # quantization hook, see the module docstring

    # -- parameters ---------------------------------------------------------------------
    def continuous_parameters(self):
        """(dt (H,), A (H,n), B (H,n), C (H,n)) of the continuous system."""
        dt = torch.exp(self.log_dt)
        A = -torch.exp(self.log_A_real) + 1j * self.A_imag
        return dt, A, torch.view_as_complex(self.B), torch.view_as_complex(self.C)

    def ssm_parameters(self):
        """The deployed discrete system: Ā (H,n), B̄ (H,n), C (H,n) complex; D (H,) real.

        Quantized when a quantization is attached (then Ā, B̄, C, D are those on the grid)."""
        if self.quant is not None:
            return self.quant.ssm_parameters(self)
        dt, A, B, C = self.continuous_parameters()
        dA, dB = discretize(dt, A, B, self.discretization)
        return dA, dB, C, self.D

    def kernel(self, L: int, params=None) -> torch.Tensor:
        dA, dB, C, _ = self.ssm_parameters() if params is None else params
        return vandermonde_kernel(dA, dB, C, L)  # (H, L)

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
        if self.quant is not None:  # the conv-mode stand-in for the state's precision, if any
            K, u_conv = self.quant.conv_operands(K, u)
        return fft_conv(u_conv, K) + D * u  # (B, L, H)

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.d_model, self.d_state // 2, dtype=torch.cfloat, device=self.D.device)

    def step(self, u_t: torch.Tensor, x: torch.Tensor, params=None):
        """One recurrent step: u_t (B, H), state x (B, H, n) -> (y_t (B, H), x_t)."""
        params = self.ssm_parameters() if params is None else params
        if self.quant is not None and self.quant.requantizes_state:
            return self.quant.step(u_t, x, params)
        dA, dB, C, D = params
        x = dA * x + dB * u_t[..., None]  # (B, H, n)
        y = 2 * (C * x).sum(-1).real + D * u_t  # (B, H)
        return y, x

    def scan(self, u: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Whole sequence in recurrent mode: u (B, L, H) -> y (B, L, H)."""
        params = self.ssm_parameters()  # discretize once, not every step
        if self.quant is not None and self.quant.requantizes_state:
            return self.quant.scan(u, params, x)
        x = self.initial_state(u.shape[0]) if x is None else x
        ys = []
        for t in range(u.shape[1]):
            y_t, x = self.step(u[:, t], x, params)
            ys.append(y_t)
        return torch.stack(ys, dim=1)
