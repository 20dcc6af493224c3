"""Greedy pruning with masks on the deployed parameters (aimc_ssm.quant.pruning): the walk, the masks, the recount."""
import copy
import random

import pytest
import torch

from aimc_ssm.analog.deploy import to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.hwa import with_weight_noise
from aimc_ssm.analog.kernel import FusedS4D
from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.core.train import evaluate
from aimc_ssm.quant.metrics import adc_complexity
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.pruning import (
    accuracy_at_least,
    attach_masks,
    candidates,
    crossbar_report,
    greedy_prune,
    load_masks,
    mask_tensors,
    prune,
    pruned_adc_complexity,
    set_pruned,
)
from aimc_ssm.quant.quantize import quantize_

H, N = 3, 8  # 4 complex modes per channel


def tiny_model(spec: PrecisionSpec | None = None) -> S4DModel:
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_input=1, d_output=4, d_model=H, d_state=N))
    with torch.no_grad():
        for block in model.blocks:
            block.ssm.log_dt.fill_(-2.5)
    if spec is not None:
        quantize_(model, spec)
    return model.eval()


def sequential_greedy(costs, budget):
    """The reference: one element at a time, kept while the summed cost stays within the budget."""
    kept, total = [], 0.0
    for i, cost in enumerate(costs):
        if total + cost <= budget:
            kept.append(i)
            total += cost
    return kept


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ordered", [False, True])
def test_batched_greedy_equals_one_at_a_time_for_additive_losses(seed, ordered):
    rng = random.Random(seed)
    costs = [rng.choice([0.0, 0.0, 0.0001, 0.001, 0.004, 0.02]) for _ in range(200)]
    if ordered:  # smallest magnitude first: the cheap elements lead
        costs.sort()
    budget = 0.05
    kept: set[int] = set()
    calls = []

    def accepts(group):
        calls.append(len(group))
        if sum(costs[i] for i in kept | set(group)) <= budget:
            kept.update(group)
            return True
        return False

    result = greedy_prune(len(costs), accepts)
    assert result == sequential_greedy(costs, budget)
    assert sum(costs[i] for i in result) <= budget  # only zeros within tolerance are kept
    assert len(calls) < (len(costs) if ordered else 2 * len(costs))  # evaluations: fewer than candidates where cheap ones lead


def test_greedy_rejects_everything_beyond_tolerance():
    assert greedy_prune(10, lambda group: False) == []
    assert greedy_prune(10, lambda group: True) == list(range(10))


def test_structured_masks_remove_whole_modes_after_quantization():
    for spec in (None, PrecisionSpec.channel_asym(6), PrecisionSpec.uniform(4)):
        model = attach_masks(tiny_model(spec))
        ssm = model.blocks[0].ssm
        before = [p.detach().clone() for p in ssm.ssm_parameters()]
        keep = ssm.transform("pruning").keep_mode
        set_pruned([(keep, 1), (keep, 4 + 2)], True)  # channel 0 mode 1, channel 1 mode 2
        dA, dB, C, D = (p.detach() for p in ssm.ssm_parameters())
        for h, n in ((0, 1), (1, 2)):
            assert dA[h, n] == 0 and dB[h, n] == 0 and C[h, n] == 0
        untouched = torch.ones_like(keep)
        untouched[0, 1] = untouched[1, 2] = False
        for new, old in zip((dA, dB, C), before[:3]):
            assert torch.equal(new[untouched], old[untouched])  # masks act after the quantizers: no re-ranging
        assert torch.equal(D, before[3])


def test_a_pruned_qat_model_with_noise_on_A_bar_composes_in_the_declared_order():
    model = attach_masks(tiny_model(PrecisionSpec.channel_asym(6)))  # a QAT model's quantizers, then masks
    keep = model.blocks[0].ssm.transform("pruning").keep_mode
    set_pruned([(keep, 1)], True)  # channel 0 mode 1
    quantized = model.blocks[0].ssm.ssm_parameters()[0].detach()
    noisy = with_weight_noise(model, 0.05, "A_bar").blocks[0].ssm
    assert list(noisy.transforms) == ["quantization", "pruning", "noise"]  # attached in any order...
    torch.manual_seed(0)
    dA = noisy.ssm_parameters()[0].detach()  # ...applied in TRANSFORM_ORDER: quantize, perturb, mask
    assert dA[0, 1] == 0  # the pruned entry stays exactly zero under noise
    live = keep.clone()
    assert ((dA - quantized)[live].abs() > 0).all()  # every other entry is perturbed...
    assert ((dA - quantized)[live].abs() < 0.5 * quantized.abs().max()).all()  # ...around the quantized Ā
    assert noisy.requantizes_state() and noisy.quantization is not None  # the quantization is still there


def test_masks_reach_the_crossbars():
    model = attach_masks(tiny_model(PrecisionSpec.channel_asym(6)))
    ssm = model.blocks[0].ssm
    set_pruned([(ssm.transform("pruning").keep_mode, 0), (ssm.transform("pruning").keep_C, 5)], True)  # channel 0 mode 0; C of channel 1 mode 1
    mixing = dict(model.named_modules())["blocks.0.mixing"]
    set_pruned([(mask_tensors(model)["blocks.0.mixing"], 3)], True)
    analog = to_analog(model, load_device("ideal"))
    kernel = analog.blocks[0].ssm
    assert isinstance(kernel, FusedS4D)
    W = torch.stack([t.tile.weight.detach() for t in kernel.tiles])  # (H, N+1, N+2), normalized
    assert (W[0, 0:2, :] == 0).all() and (W[0, :, 1:3] == 0).all()  # mode 0's state rows and inputs
    assert (W[1, N, 3:5] == 0).all()  # C of mode 1 in the y row
    assert mixing.weight.view(-1)[3] == 0 and analog.blocks[0].mixing.get_weights()[0].view(-1)[3] == 0
    x = torch.randn(5, 12, 1)
    with torch.no_grad():
        torch.testing.assert_close(analog(x), model(x, "recurrent"), atol=1e-4, rtol=1e-4)


def test_candidates_are_ordered_and_cover_each_kind():
    model = attach_masks(tiny_model())
    assert len(candidates(model, "structured")) == H * N // 2
    assert len(candidates(model, "unstructured")) == 2 * H * N // 2
    linears = 1 * H + H * 2 * H + H * 4
    assert len(candidates(model, "linear")) == linears
    assert len(candidates(model, "linear", ["decoder"])) == H * 4
    ssm = model.blocks[0].ssm
    dA, dB, C, _ = (p.detach() for p in ssm.ssm_parameters())
    norms = ((C * dB).abs() / (1 - dA.abs() ** 2).sqrt()).reshape(-1)
    order = [index for _, index in candidates(model, "structured")]
    assert order == norms.argsort(stable=True).tolist()
    with pytest.raises(ValueError, match="no linear layers"):
        candidates(model, "linear", ["blocks.0.ssm"])


def test_prune_keeps_the_smallest_modes_the_test_accepts():
    model = attach_masks(tiny_model())
    keep = model.blocks[0].ssm.transform("pruning").keep_mode
    order = [index for _, index in candidates(model, "structured")]
    result = prune(model, "structured", lambda: int((~keep).sum()) <= 5)
    assert len(result.pruned) == 5 and result.candidates == H * N // 2
    assert sorted(index for _, index in result.pruned) == sorted(order[:5])
    assert int((~keep).sum()) == 5  # rejected trials were undone


def test_crossbar_and_adc_recount():
    spec = PrecisionSpec.channel_asym(6)  # bits to count with; the float model has no weight quantized to zero
    model = attach_masks(tiny_model())
    unpruned = crossbar_report(model)
    assert unpruned == {"live_modes": H * N // 2, "crossbar_rows": N + 2, "crossbar_cols": N + 1, "crossbar_cells": H * (N + 2) * (N + 1)}
    assert pruned_adc_complexity(model, spec) == adc_complexity(model.cfg, spec)
    assert pruned_adc_complexity(model) == adc_complexity(model.cfg, {})  # float: 32 bits

    ssm = model.blocks[0].ssm
    set_pruned([(ssm.transform("pruning").keep_mode, 0), (ssm.transform("pruning").keep_mode, 1)], True)  # two modes of channel 0
    set_pruned([(ssm.transform("pruning").keep_C, 4)], True)  # C of channel 1 mode 0: a dead mode too
    report = crossbar_report(model)
    live = [2, 3, 4]
    assert report["live_modes"] == sum(live)
    assert report["crossbar_rows"] == N + 2 and report["crossbar_cols"] == N + 1  # channel 2 keeps all
    assert report["crossbar_cells"] == sum((2 + 2 * n) * (1 + 2 * n) for n in live)
    assert pruned_adc_complexity(model, spec) == adc_complexity(model.cfg, spec) - 3 * 2 * spec.bits("state")

    decoder = mask_tensors(model)["decoder"]
    set_pruned([(decoder, i) for i in range(H)], True)  # the decoder's first output row
    assert pruned_adc_complexity(model, spec) == adc_complexity(model.cfg, spec) - 3 * 2 * spec.bits("state") - spec.bits("act")


def test_masks_round_trip():
    model = attach_masks(tiny_model())
    set_pruned(candidates(model, "unstructured")[:3] + candidates(model, "linear")[:4], True)
    saved = {k: v.clone() for k, v in mask_tensors(model).items()}
    other = load_masks(tiny_model(), saved)
    assert all(torch.equal(mask_tensors(other)[k], v) for k, v in saved.items())
    x = torch.randn(4, 10, 1)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x))
    with pytest.raises(ValueError, match="do not fit"):
        load_masks(tiny_model(), {"decoder": saved["decoder"]})


def test_accuracy_at_least_matches_evaluate_and_greedy_stays_within_tolerance():
    torch.manual_seed(1)
    model = attach_masks(tiny_model())
    with torch.no_grad():
        model.decoder.bias.zero_()  # so that the predictions depend on the input
    x = torch.randn(64, 16, 1) * 3
    with torch.no_grad():
        labels = model(x).argmax(-1)  # the unpruned model scores 1.0
    assert labels.unique().numel() > 1
    batches = [(x[:32], labels[:32]), (x[32:], labels[32:])]
    assert accuracy_at_least(model, batches, 1.0)
    reference = copy.deepcopy(model)
    set_pruned(candidates(reference, "linear")[-20:], True)  # the largest weights: it errs
    accuracy = evaluate(reference, batches)
    assert accuracy < 1.0
    assert accuracy_at_least(reference, batches, accuracy) and not accuracy_at_least(reference, batches, accuracy + 1e-3)

    result = prune(model, "linear", lambda: accuracy_at_least(model, batches, 0.9))
    assert evaluate(model, batches) >= 0.9 and 0 < len(result.pruned) < result.candidates
