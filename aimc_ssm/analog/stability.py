"""Closed-loop analysis of programmed fused kernels: the dynamics their crossbars compute now.

A fused kernel feeds its state back every step (aimc_ssm.analog.kernel), so the crossbar's state block
is the transition matrix of a closed loop: a cell error moves the eigenvalues of a mode, and once a
slow mode's |λ| reaches 1 its state grows without bound. This module reads the tiles back and reports
where every mode's eigenvalue went.

Read-back. The effective matrix of a crossbar is its tile's current (programmed, drifted) normalized
weights times the digital factors `CrossbarStack` applies to every output column (aihwkit's mapping
scale, input range r_h, drift compensation), over the r_h that divided the inputs:
`CrossbarStack.effective_weights`. With k copies per weight a column sums its k row groups, Σ_k W_k x,
so the read-back sums them too (`effective_weights`). Its state block (outputs x_t, inputs x_{t-1}) is
the transition matrix in the kernel's mapped coordinates, plus I under the incremental mapping, whose
periphery adds the previous state; the mapping's similarity transform leaves the eigenvalues as they are. The
eigenvalues (float64) are matched to the targets, Ā and its conjugates, by the assignment that
minimizes the summed |λ - target| (scipy's linear_sum_assignment). Mode n is reported by the eigenvalue
matched to Ā_n, or by the conjugate of the one matched to conj(Ā_n) where that one is larger in
modulus: a mode that does not turn (Im Ā = 0) has two real eigenvalues, which errors split, and the
larger one decides its stability.

Noise. A mode whose two state components receive white noise of variance σ² every step holds, once
stationary, an error of variance σ²/(1 - |λ|²) per component (the covariance P of a block |λ|·R, R a
rotation, solves P = |λ|² R P Rᵀ + σ² I): the noise gain 1/(1 - |λ|²), infinite where |λ| ≥ 1. A state
column c receives per step, in mapped state units,

    output noise   σ_out,c · f_c       σ_out: forward.out_noise, or the column's own draw where
                                       forward.out_noise_std varies it per output
    ADC rounding   step/√12 · f_c      step: one ADC level, res·2·out_bound, in normalized units

with f_c the column's digital factor (`CrossbarStack.output_factors`: r_h × mapping scale × drift
compensation), which turns a normalized read into signal. With k copies the mapping scale is 1/k of one
copy's and the ADC range k times (aimc_ssm.analog.kernel): the ADC step stays in signal units, the
output noise falls to 1/k. Only the state columns enter, so a y_adc_range does not. A mode's predicted
error std is the rms of its two columns' injections times √(noise gain). Rounding counts as uniform white noise, which holds while
the state crosses many ADC levels per step, not in the dead band of a mode that barely moves. Without
noise management a read's noise and step are as above; constant noise management scales both by its
threshold; abs_max and max management scale them by every read's inputs, and the predictions are nan.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from .kernel import FusedS4D, fused_layers
from .layout import fold_copies, state_block
from .mvm import CrossbarStack, converter_step

CHANNEL_KEY = ["layer", "channel"]


def crossbar_stack(kernel: FusedS4D) -> CrossbarStack:
    from aihwkit.simulator.tiles.inference_torch import TorchInferenceTile

    if not isinstance(kernel.tiles[0], TorchInferenceTile):
        raise ValueError(
            "the stability report reads pure-PyTorch tiles (TorchInferenceRPUConfig, e.g. the pcm device); "
            "compiled tiles keep their weights in C++"
        )
    return kernel.crossbar_stack()


def effective_weights(kernel: FusedS4D, stack: CrossbarStack | None = None) -> torch.Tensor:
    """The matrix every crossbar of a kernel now computes, converters and noise aside, in the kernel's
    layout (H, N+1, N+2) float64: `CrossbarStack.effective_weights` with the copies' row groups summed."""
    stack = crossbar_stack(kernel) if stack is None else stack
    return fold_copies(stack.effective_weights(), kernel.copies)


def transition_matrices(kernel: FusedS4D, stack: CrossbarStack) -> torch.Tensor:
    """The state transition matrix every crossbar now computes, mapped coordinates: (H, N, N) float64."""
    transition = state_block(effective_weights(kernel, stack))
    if kernel.incremental:
        transition = transition + torch.eye(kernel.d_state, dtype=transition.dtype, device=transition.device)
    return transition


def mode_eigenvalues(transition: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The eigenvalue of every mode (H, n) complex128 of transition matrices (H, N, N) with target
    eigenvalues Ā (H, n): see the module docstring for the matching."""
    from scipy.optimize import linear_sum_assignment

    eigenvalues = torch.linalg.eigvals(transition).cpu().numpy()  # (H, N)
    targets = targets.detach().cpu().numpy().astype(np.complex128)
    n = targets.shape[1]
    modes = np.empty_like(targets)
    for h, (found, target) in enumerate(zip(eigenvalues, targets)):
        both = np.concatenate([target, target.conj()])  # (N,): Ā_n, then conj(Ā_n)
        rows, cols = linear_sum_assignment(np.abs(found[:, None] - both[None, :]))
        matched = np.empty_like(both)
        matched[cols] = found[rows]
        own, partner = matched[:n], matched[n:].conj()
        modes[h] = np.where(np.abs(partner) > np.abs(own), partner, own)
    return torch.from_numpy(modes)


def noise_management_factor(io) -> float:
    """What noise management multiplies a read's output noise and ADC step by (nan: it varies per read)."""
    from aihwkit.simulator.parameters.enums import NoiseManagementType

    if io.noise_management == NoiseManagementType.NONE:
        return 1.0
    if io.noise_management == NoiseManagementType.CONSTANT:
        return io.nm_thres if io.nm_thres > 0 else 1.0
    return math.nan


def injected_noise_std(kernel: FusedS4D, stack: CrossbarStack) -> tuple[torch.Tensor, torch.Tensor]:
    """Std of the noise every state column receives per step, mapped state units, (H, N) each: from
    output noise and from ADC rounding (module docstring)."""
    io = kernel.rpu_config.forward
    N = kernel.d_state
    factors = stack.output_factors().double()[:, :N]  # (H, N)
    if io.is_perfect:
        return torch.zeros_like(factors), torch.zeros_like(factors)
    factors = factors * noise_management_factor(io)
    sigma = io.out_noise if stack.out_noise_values is None else stack.out_noise_values[:, 0, :N].double()
    adc_step = converter_step(io.out_res, io.out_bound) if io.out_res > 0 else 0.0
    return sigma * factors, adc_step / math.sqrt(12) * factors


def mode_rms(columns: torch.Tensor) -> torch.Tensor:
    """(H, N) per state column -> (H, n): the rms over each mode's (Re, Im) pair."""
    H, N = columns.shape
    return columns.reshape(H, N // 2, 2).square().mean(-1).sqrt()


def stationary_std(injected: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
    """Stationary error std (H, n) of modes with noise gain `gain` that receive `injected` std every step;
    0 where none is injected, even into an unstable mode."""
    return torch.where(injected == 0, 0.0, injected * gain.sqrt())


def kernel_report(kernel: FusedS4D, layer: int = 0) -> pd.DataFrame:
    """One row per channel and mode of one kernel; columns as `stability_report`'s."""
    stack = crossbar_stack(kernel)
    eigenvalues = mode_eigenvalues(transition_matrices(kernel, stack), kernel.A_bar)  # (H, n)
    targets = kernel.A_bar.detach().cpu().to(torch.complex128)
    modulus = eigenvalues.abs()
    stable = modulus < 1
    gain = (1 / (1 - modulus.square())).masked_fill(~stable, math.inf)
    out_noise, adc_noise = (stationary_std(mode_rms(std.cpu()), gain) for std in injected_noise_std(kernel, stack))
    H, n = targets.shape
    channel, mode = torch.meshgrid(torch.arange(H), torch.arange(n), indexing="ij")
    columns = {
        "layer": np.full(H * n, layer),
        "channel": channel,
        "mode": mode,
        "state_scale": kernel.state_scales.detach().cpu().double(),
        "target": targets,
        "eigenvalue": eigenvalues,
        "target_modulus": targets.abs(),
        "modulus": modulus,
        "modulus_shift": modulus - targets.abs(),
        "shift": eigenvalues - targets,
        "angle": eigenvalues.angle(),
        "unstable": ~stable,
        "noise_gain": gain,
        "out_noise_std": out_noise,
        "adc_noise_std": adc_noise,
    }
    return pd.DataFrame({name: np.asarray(value).reshape(-1) for name, value in columns.items()})


def stability_report(analog_model) -> pd.DataFrame:
    """Where the programmed, drifted crossbars of `analog_model` (aimc_ssm.analog.to_analog) put every
    mode's eigenvalue: one row per layer, channel and mode.

    columns: layer, channel, mode; state_scale s (the crossbar holds x/s); target Ā_n and the read-back
    eigenvalue (complex), their moduli target_modulus and modulus, modulus_shift = |λ| - |Ā_n|, shift =
    λ - Ā_n (complex), angle (radians per step, of λ); unstable (|λ| ≥ 1); noise_gain 1/(1 - |λ|²);
    out_noise_std and adc_noise_std, the predicted stationary std of the mode's state error (mapped
    state units, per component) from output noise and from ADC rounding. See the module docstring.
    """
    return pd.concat([kernel_report(kernel, l) for l, kernel in enumerate(fused_layers(analog_model))], ignore_index=True)


def channel_summary(report: pd.DataFrame) -> pd.DataFrame:
    """One row per layer and channel of a `stability_report`: spectral_radius (largest |λ|),
    unstable_modes, and largest_shift (the modulus shift of largest magnitude, signed)."""
    groups = report.groupby(CHANNEL_KEY)
    summary = groups.agg(spectral_radius=("modulus", "max"), unstable_modes=("unstable", "sum"))
    largest = report.loc[report["modulus_shift"].abs().groupby([report[k] for k in CHANNEL_KEY]).idxmax()]
    summary["largest_shift"] = largest.set_index(CHANNEL_KEY)["modulus_shift"]
    return summary.reset_index()


def unstable_channels(analog_model) -> int:
    """How many channels of `analog_model` have a spectral radius of 1 or more: their state grows."""
    return int((channel_summary(stability_report(analog_model))["spectral_radius"] >= 1).sum())


@torch.no_grad()
def drift_factor_error(analog_model) -> pd.DataFrame:
    """How well each fused crossbar's drift compensation undoes its drift: one row per layer and channel.

    applied: the factor the tile applies now (its mean over columns where it is per column); exact: the
    factor that restores the programmed weights' mean |weight| (mean |programmed| / mean |current|);
    ratio = applied / exact (1: the weights come back at their programmed scale, < 1: they stay too
    small). A tile without drift compensation applies 1."""
    rows = []
    for layer, kernel in enumerate(fused_layers(analog_model)):
        for channel, tile in enumerate(kernel.tiles):
            programmed = getattr(tile, "programmed_weights", None)
            current = tile.tile.weight.detach()
            exact = (programmed.abs().mean() / current.abs().mean()).item() if programmed is not None else 1.0
            applied = tile.alpha.detach().mean().item() if tile.rpu_config.drift_compensation is not None else 1.0
            rows.append({"layer": layer, "channel": channel, "applied": applied, "exact": exact, "ratio": applied / exact})
    return pd.DataFrame(rows)
