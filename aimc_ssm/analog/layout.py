"""The fused kernel's crossbar layout [S24]: the discrete system as one crossbar's weights per channel.

In aihwkit's orientation a tile holds W (outputs, inputs) and computes W @ input:

                  u_t     x_{t-1} (N reals)          u_{t-1}
    x_t (N)    [  B̄        Ā  (2×2 blocks)            0   ]
    y_{t-1}    [  0        C̄  (2·Re C, -2·Im C)       D   ]

Complex modes are real pairs (Re, Im), interleaved, so Ā is block diagonal with [[Re, -Im], [Im, Re]]
blocks, B̄ enters as (Re B̄, Im B̄) and y = 2·Re(C·x) = C̄·x. Under the incremental mapping the state block
holds Ā - I (Re Ā - 1 on the diagonal) and the x_t outputs read x_t - x_{t-1}. Why D has its own row
driven by u_{t-1}, and why a kernel holds Ā - I: aimc_ssm.analog.kernel.

With k copies (devices per weight) a tile holds k such input row groups one after the other,
(N+1, k·(N+2)), each W/k and driven by the same inputs [u_t, x_{t-1}, u_{t-1}]: a column sums its k
devices to W·input.
`replicate_copies` lays W out so, `fold_copies` sums the groups back.
"""
from __future__ import annotations

import torch


def crossbar_matrices(
    dA: torch.Tensor, dB: torch.Tensor, C: torch.Tensor, D: torch.Tensor, *, incremental: bool = False
) -> torch.Tensor:
    """Discrete system (Ā, B̄, C (H, n) complex; D (H,)) -> crossbar weights W (H, N+1, N+2), N = 2n.

    incremental: the state block holds Ā - I, so the x_t outputs read the step's increment."""
    H, n = dA.shape
    N = 2 * n
    W = dA.real.new_zeros(H, N + 1, N + 2)
    re, im = torch.arange(0, N, 2, device=W.device), torch.arange(1, N, 2, device=W.device)  # state rows; state inputs are columns 1 + row
    W[:, re, 0], W[:, im, 0] = dB.real, dB.imag  # B̄ u_t
    W[:, re, 1 + re], W[:, re, 1 + im] = dA.real, -dA.imag  # Ā x_{t-1}, one 2×2 block per mode
    W[:, im, 1 + re], W[:, im, 1 + im] = dA.imag, dA.real
    W[:, N, 1 + re], W[:, N, 1 + im] = 2 * C.real, -2 * C.imag  # C̄ x_{t-1}
    W[:, N, N + 1] = D  # D u_{t-1}
    if incremental:
        state_diagonal(W).sub_(1.0)
    return W


def replicate_copies(W: torch.Tensor, copies: int) -> torch.Tensor:
    """Crossbar weights W (H, out, in) -> what k = `copies` devices per weight hold, (H, out, k·in): W/k in
    each of k input row groups."""
    return torch.cat([W / copies] * copies, dim=-1)


def fold_copies(W: torch.Tensor, copies: int) -> torch.Tensor:
    """(H, out, k·in) -> (H, out, in): the sum over the k row groups, the map a column computes from the
    same inputs on every group."""
    H, n_out, n_in = W.shape
    return W.reshape(H, n_out, copies, n_in // copies).sum(dim=2)


def state_block(W: torch.Tensor) -> torch.Tensor:
    """The state part of crossbars W (H, N+1, N+2), a view (H, N, N): outputs x_t, inputs x_{t-1}."""
    N = W.shape[-2] - 1
    return W[:, :N, 1 : N + 1]


def state_diagonal(W: torch.Tensor) -> torch.Tensor:
    """The cells of crossbars W (H, N+1, N+2) that hold Re Ā, a view (H, N): output x_t[i], input x_{t-1}[i]."""
    return state_block(W).diagonal(dim1=-2, dim2=-1)


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
