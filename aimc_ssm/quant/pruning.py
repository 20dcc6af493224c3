"""Greedy pruning of S4D models ([S25]), with masks on the deployed parameters, and what it saves.

Kinds of elements (KINDS):

    structured    whole complex modes n of a channel h: Ā_n, B̄_n and C_n zeroed together, which frees
                  the mode's two state rows and two state columns of the channel's fused crossbar
    unstructured  single entries of the deployed system: Ā_n or C_n of a mode (one complex number each)
    linear        single weights of the encoder, mixing and decoder Linears

Order, smallest magnitude first: a mode by the norm of its contribution to the convolution kernel,
|C_n B̄_n| / sqrt(1 - |Ā_n|²) (the l2 norm of C_n B̄_n Ā_n^l over l ≥ 0); an entry Ā_n or C_n, or a
Linear weight, by its magnitude relative to the largest of its tensor in its layer, so that the
order interleaves tensors of different scales.

Greedy pruning (`greedy_prune`, [S25]): walk the candidates in order and keep an element zeroed
while the model's accuracy stays within the tolerance (1 point) of the unpruned model's, else
restore it. Trying one element per evaluation costs as many evaluations as there are candidates, so
the walk tries groups: after an accepted group the next group is twice as large, a rejected group is
bisected (first half, then second half, down to single elements) and the next group has one
element. Where single trials would accept a whole run of elements this accepts it in a few
evaluations; a group is accepted on the accuracy with all its elements zeroed, without checking each
prefix, which is where it can differ from one-at-a-time (accuracy is not monotone in the pruned set).

Masks (`attach_masks`) act on the deployed values, after the model's quantizers: every SSM gets an
`SSMMasks`, the "pruning" link of its transform chain (aimc_ssm.core.s4d), which masks Ā, B̄, C after
the quantization and any weight noise; every Linear a `WeightMask` parametrization after its weight
quantizer. So a pruned PTQ/QAT model deploys exact zeros, whatever the quantizer's ranges; and
`aimc_ssm.analog.deploy.to_analog`, which reads `ssm_parameters()` and `.weight`, puts the zeros on the
crossbars. Weight masks follow the Linear's quantizer, so quantize first, then attach masks.

Savings (`crossbar_report`, `pruned_adc_complexity`): a mode is live while its deployed C_n and B̄_n
are both nonzero (otherwise it cannot reach the output); a channel's fused crossbar keeps
2 + 2·live inputs (u_t, x_{t-1}, u_{t-1}) and 1 + 2·live outputs (x_t, y_{t-1}). ADC complexity
counts the outputs still converted: live state columns at r_state and the y column at r_act per
channel, mixing outputs whose weight row is not all zero at r_lin, encoder and decoder outputs
likewise at r_act (an all-zero row outputs its bias, a constant). Unpruned it equals
aimc_ssm.quant.metrics.adc_complexity.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.model import S4DModel
from ..core.s4d import SSMTransform
from .metrics import resolve_bits
from .quantize import precision_of

KINDS = ("structured", "unstructured", "linear")
LINEAR_NAMES = ("encoder", "mixing", "decoder")


# -- masks --------------------------------------------------------------------------------------------
MASK_BUFFERS = ("keep_mode", "keep_A", "keep_C")  # whole modes, single Ā entries, single C entries


class SSMMasks(SSMTransform):
    """The "pruning" transform of an S4D layer: its deployed system masked, Ā·keep_A·keep_mode, B̄·keep_mode,
    C·keep_C·keep_mode, after its quantizers (the last link of the chain: pruned entries are exact zeros)."""

    def __init__(self, d_model: int, n_modes: int):
        super().__init__()
        for name in MASK_BUFFERS:
            self.register_buffer(name, torch.ones(d_model, n_modes, dtype=torch.bool))

    def discrete(self, ssm, dA, dB, C, D):
        mode = self.keep_mode.to(dA.real.dtype)
        return dA * (mode * self.keep_A), dB * mode, C * (mode * self.keep_C), D


class WeightMask(nn.Module):
    """Parametrization zeroing the weights where `keep` is False (after any weight quantizer before it)."""

    def __init__(self, shape: torch.Size):
        super().__init__()
        self.register_buffer("keep", torch.ones(shape, dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.keep


def linear_layers(model: S4DModel) -> dict[str, nn.Module]:
    """The encoder, every block's mixing and the decoder, by module name."""
    return {name: m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in LINEAR_NAMES}


def ssm_layers(model: S4DModel) -> dict[str, nn.Module]:
    return {f"blocks.{i}.ssm": block.ssm for i, block in enumerate(model.blocks)}


def weight_mask(linear: nn.Module) -> WeightMask | None:
    if not parametrize.is_parametrized(linear, "weight"):
        return None
    return next((p for p in linear.parametrizations.weight if isinstance(p, WeightMask)), None)


def attach_masks(model: S4DModel) -> S4DModel:
    """Give every SSM and Linear of `model` all-ones masks on its deployed values, in place; idempotent."""
    for ssm in ssm_layers(model).values():
        if ssm.transform("pruning") is None:
            ssm.set_transform("pruning", SSMMasks(ssm.d_model, ssm.d_state // 2))
    for linear in linear_layers(model).values():
        if weight_mask(linear) is None:
            # unsafe: the registration's trial call would fail on a static quantizer not yet calibrated
            parametrize.register_parametrization(linear, "weight", WeightMask(linear.weight.shape).to(linear.weight.device), unsafe=True)
    return model


def mask_tensors(model: S4DModel) -> dict[str, torch.Tensor]:
    """Every mask of a model with masks attached, by name (e.g. "blocks.0.ssm.keep_mode", "decoder")."""
    masks = {}
    for name, ssm in ssm_layers(model).items():
        masks_of = ssm.transform("pruning")
        if masks_of is None:
            raise ValueError(f"{name} has no masks: call attach_masks(model) first")
        masks.update({f"{name}.{k}": getattr(masks_of, k) for k in MASK_BUFFERS})
    for name, linear in linear_layers(model).items():
        mask = weight_mask(linear)
        if mask is None:
            raise ValueError(f"{name} has no mask: call attach_masks(model) first")
        masks[name] = mask.keep
    return masks


@torch.no_grad()
def load_masks(model: S4DModel, masks: dict[str, torch.Tensor]) -> S4DModel:
    """Attach masks to `model` and copy `masks` (from `mask_tensors` of a model of the same shape) into them."""
    own = mask_tensors(attach_masks(model))
    if set(own) != set(masks):
        raise ValueError(f"masks for {sorted(masks)} do not fit this model's {sorted(own)}")
    for name, keep in masks.items():
        own[name].copy_(keep)
    return model


# -- candidates ---------------------------------------------------------------------------------------
Element = tuple[torch.Tensor, int]  # (a mask tensor, flat index into it)


def layer_names(model: S4DModel, kind: str) -> list[str]:
    """The layers whose elements of `kind` can be pruned: the SSMs, or the Linears."""
    check_kind(kind)
    return list(linear_layers(model) if kind == "linear" else ssm_layers(model))


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown pruning kind {kind!r}; choose one of {KINDS}")


@torch.no_grad()
def candidates(model: S4DModel, kind: str, layers: Sequence[str] | None = None) -> list[Element]:
    """The unpruned elements of `kind` in `layers` (default: every layer), smallest magnitude first."""
    attach_masks(model)
    names = layer_names(model, kind) if layers is None else list(layers)
    unknown = set(names) - set(layer_names(model, kind))
    if unknown:
        raise ValueError(f"no {kind} layers {sorted(unknown)}; this model has {layer_names(model, kind)}")
    modules = dict(model.named_modules())
    scored = []  # (score, mask, flat index)
    for name in names:
        for mask, scores in scored_masks(modules[name], kind):
            keep = mask.reshape(-1)
            scored += [(s, mask, i) for i, s in enumerate(scores.reshape(-1).tolist()) if keep[i]]
    scored.sort(key=lambda item: item[0])  # stable: ties keep layer and index order
    return [(mask, i) for _, mask, i in scored]


def scored_masks(module: nn.Module, kind: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(mask, score of each of its elements) of one layer, scores as in the module docstring."""
    if kind == "linear":
        weight = module.weight.abs()
        return [(weight_mask(module).keep, weight / weight.max().clamp_min(1e-30))]
    dA, dB, C, _ = module.ssm_parameters()
    masks = module.transform("pruning")
    if kind == "structured":
        decay = (1 - dA.abs() ** 2).clamp_min(1e-6)
        return [(masks.keep_mode, (C * dB).abs() / decay.sqrt())]
    return [
        (masks.keep_A, dA.abs() / dA.abs().max().clamp_min(1e-30)),
        (masks.keep_C, C.abs() / C.abs().max().clamp_min(1e-30)),
    ]


@torch.no_grad()
def set_pruned(elements: Sequence[Element], pruned: bool) -> None:
    for mask, index in elements:
        mask.view(-1)[index] = not pruned


# -- the greedy walk ----------------------------------------------------------------------------------
def greedy_prune(count: int, accepts: Callable[[list[int]], bool]) -> list[int]:
    """Indices 0..count-1, in order, that greedy pruning keeps pruned (see the module docstring).

    accepts(group) must zero `group` on top of everything kept so far, and return whether the
    accuracy stays within tolerance, undoing the zeroing when it does not.
    """
    kept: list[int] = []

    def attempt(group: list[int]) -> bool:
        if accepts(group):
            kept.extend(group)
            return True
        if len(group) > 1:
            half = len(group) // 2
            attempt(group[:half])
            attempt(group[half:])
        return False

    start, size = 0, 1
    while start < count:
        group = list(range(start, min(start + size, count)))
        size = 2 * size if attempt(group) else 1
        start += len(group)
    return kept


@dataclass
class PruningResult:
    pruned: list[Element]  # the elements kept pruned
    candidates: int  # elements tried
    evaluations: int  # calls of the acceptance test


def prune(model: S4DModel, kind: str, within_tolerance: Callable[[], bool], layers: Sequence[str] | None = None, max_candidates: int | None = None) -> PruningResult:
    """Greedy pruning of `kind` elements of `layers` (default: all) of `model`, in place.

    within_tolerance() evaluates the model as it is now (masks included) and says whether its accuracy
    is still within tolerance of the unpruned model's. max_candidates: try only the smallest ones.
    """
    elements = candidates(model, kind, layers)[:max_candidates]
    evaluations = 0

    def accepts(group: list[int]) -> bool:
        nonlocal evaluations
        evaluations += 1
        trial = [elements[i] for i in group]
        set_pruned(trial, True)
        if within_tolerance():
            return True
        set_pruned(trial, False)
        return False

    kept = greedy_prune(len(elements), accepts)
    return PruningResult([elements[i] for i in kept], len(elements), evaluations)


@torch.no_grad()
def accuracy_at_least(model: nn.Module, batches, threshold: float, mode: str = "conv") -> bool:
    """Whether `model`'s accuracy on `batches` reaches `threshold`; stops as soon as the answer is certain."""
    model.eval()
    total = sum(len(y) for _, y in batches)
    needed = math.ceil(threshold * total - 1e-9)  # correct answers
    correct = seen = 0
    device = next(model.parameters()).device
    for x, y in batches:
        correct += (model(x.to(device), mode).argmax(-1) == y.to(device)).sum().item()
        seen += len(y)
        if correct >= needed or correct + (total - seen) < needed:
            break
    return correct >= needed


# -- what pruning saves -------------------------------------------------------------------------------
@torch.no_grad()
def live_modes(ssm) -> torch.Tensor:
    """(H,) modes per channel whose deployed C_n and B̄_n are both nonzero."""
    _, dB, C, _ = ssm.ssm_parameters()
    return ((C != 0) & (dB != 0)).sum(-1)


@torch.no_grad()
def crossbar_report(model: S4DModel) -> dict:
    """Fused-crossbar sizes after removing dead modes: inputs (rows) 2 + 2·live, outputs (columns) 1 + 2·live."""
    live = torch.stack([live_modes(ssm) for ssm in ssm_layers(model).values()])  # (layers, H)
    rows, cols = 2 + 2 * live, 1 + 2 * live
    return {
        "live_modes": int(live.sum()),
        "crossbar_rows": int(rows.max()),  # the largest crossbar of the model
        "crossbar_cols": int(cols.max()),
        "crossbar_cells": int((rows * cols).sum()),  # over every channel's crossbar
    }


@torch.no_grad()
def pruned_adc_complexity(model: S4DModel, bits=None) -> int:
    """Converted output bits per step of the pruned model at `bits` (mapping or spec; default: the model's)."""
    r = resolve_bits(bits if bits is not None else (precision_of(model) or {}))
    total = 0
    for ssm in ssm_layers(model).values():
        live = live_modes(ssm)
        D = ssm.ssm_parameters()[3]
        has_output = (live > 0) | (D != 0)
        total += int(2 * live.sum()) * r["state"] + int(has_output.sum()) * r["act"]
    for name, linear in linear_layers(model).items():
        outputs = int((linear.weight != 0).any(dim=1).sum())
        total += outputs * (r["mixing"] if name.endswith("mixing") else r["act"])
    return total
