"""Tests for the sensitivity sweep and the greedy bit-lowering search (fake accuracies and costs),
and for the search on a tiny trained model through the ModelZoo."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.core.train import TrainConfig
from aimc_ssm.quant.metrics import HardwareReport, memory_footprint_bits, report
from aimc_ssm.quant.precision import COMPONENTS, PrecisionSpec, recipe_spec
from aimc_ssm.quant.search import (
    DEFAULT_LADDER,
    SWEEP_COMPONENTS,
    allocation_key,
    check_ladder,
    component_spec,
    greedy_search,
    resolve_cutoff,
    sensitivity_points,
    sensitivity_sweep,
)
from aimc_ssm.study.harness import StudySetup
from aimc_ssm.study.zoo import ModelZoo, search_precision

TINY = ModelConfig(d_model=3, d_state=8)
START = recipe_spec("channel-asym", 12)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def weighted_cost(weights: dict[str, float]):
    """A measure whose every metric is Σ weight · bits over the weighted components."""

    def measure(spec: PrecisionSpec) -> HardwareReport:
        cost = sum(w * spec.bits(c) for c, w in weights.items())
        return HardwareReport(ace=cost, model_size_bits=cost, adc_complexity=cost, memory_bits=cost)

    return measure


def always(value: float):
    return lambda spec: value


# -- specs of the sweep ------------------------------------------------------------------------
def test_component_spec_quantizes_that_component_alone():
    for component in COMPONENTS:
        spec = component_spec(component, 5)
        assert spec.quantized() == (component,) and spec.bits(component) == 5
    assert component_spec("dt", 5).parameterization == "continuous"  # dt is only deployed there
    assert component_spec("A", 5).config("A") == replace(START.config("A"), bits=5)
    assert component_spec("all", 5) == recipe_spec("channel-asym", 5)
    assert recipe_spec("channel-asym", 5).bits("state") == 5
    assert component_spec("all", 4, "s25") == PrecisionSpec.s25(4)


def test_sensitivity_sweep_has_one_row_per_component_and_width():
    seen = []

    def accuracy(spec):
        seen.append(spec)
        return 0.5

    rows = sensitivity_sweep(accuracy, ["A", "state", "all"], [3, 8])
    assert [(r["component"], r["bits"]) for r in rows] == [("A", 3), ("A", 8), ("state", 3), ("state", 8), ("all", 3), ("all", 8)]
    assert all(r["accuracy"] == 0.5 for r in rows)
    assert seen == [spec for _, _, spec in sensitivity_points(["A", "state", "all"], [3, 8])]
    assert set(SWEEP_COMPONENTS) == {*COMPONENTS, "all"}


def test_sweep_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown component 'E'"):
        component_spec("E", 4)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_spec("z26", 4)
    with pytest.raises(ValueError, match="bit widths"):
        sensitivity_points(["A"], [0])


# -- the greedy search --------------------------------------------------------------------------
def test_greedy_lowers_the_largest_saving_first():
    measure = weighted_cost({"A": 5, "C": 3, "mixing": 1})
    result = greedy_search(START, always(1.0), measure, cutoff=0.9, components=["A", "C", "mixing"], ladder=(12, 8, 4))
    lowered = [(s.component, s.bits_to) for s in result.trace[1:]]
    assert lowered == [("A", 8), ("A", 4), ("C", 8), ("C", 4), ("mixing", 8), ("mixing", 4)]
    assert [s.saving for s in result.trace[1:]] == [20, 20, 12, 12, 4, 4]
    assert result.bits["A"] == result.bits["C"] == result.bits["mixing"] == 4
    assert result.bits["B"] == 12  # not searched


def test_greedy_picks_by_the_real_memory_metric():
    torch.manual_seed(0)
    model = S4DModel(TINY)
    measure = lambda spec: report(TINY, spec, model)  # noqa: E731
    result = greedy_search(START, always(1.0), measure, cutoff=0.0, metric="memory", ladder=(12, 11))
    first = result.trace[1]
    savings = {c: measure(START).memory_bits - measure(START.with_bits(c, 11)).memory_bits for c in START.quantized()}
    assert first.saving == max(savings.values()) and savings[first.component] == first.saving
    assert result.bits["state"] == result.bits["act"] == 12  # memory does not count them: never tried
    assert result.reductions["memory_bits"] > 1
    assert result.report == measure(result.spec)


def test_ties_go_to_the_component_with_more_bits():
    measure = weighted_cost({"A": 1, "C": 1})
    result = greedy_search(START, always(1.0), measure, cutoff=0.0, components=["A", "C"], ladder=(12, 11, 10))
    assert [s.component for s in result.trace[1:]] == ["A", "C", "A", "C"]


def test_greedy_respects_the_cutoff_and_freezes_a_failed_component():
    def accuracy(spec):  # A below 6 bits and C below 8 bits each cost accuracy
        return 0.95 - 0.1 * (spec.bits("A") < 6) - 0.1 * (spec.bits("C") < 8)

    measure = weighted_cost({"A": 2, "C": 1})
    result = greedy_search(START, accuracy, measure, cutoff=0.9, components=["A", "C"], ladder=DEFAULT_LADDER)
    assert result.bits["A"] == 6 and result.bits["C"] == 8
    assert all(s.accuracy >= 0.9 for s in result.trace if s.accepted)
    rejected = [(s.component, s.bits_to) for s in result.trace if not s.accepted]
    assert rejected == [("A", 5), ("C", 7)]
    after_rejection = result.trace[[s.bits_to for s in result.trace].index(5) + 1 :]
    assert all(s.component != "A" for s in after_rejection)  # frozen
    assert result.accuracy == pytest.approx(0.95) and result.within_cutoff


def test_greedy_stops_at_the_bottom_of_the_ladder():
    result = greedy_search(START, always(1.0), weighted_cost({"A": 1, "mixing": 1}), cutoff=0.5, ladder=(12, 6, 2))
    assert result.bits["A"] == result.bits["mixing"] == 2
    assert len(result.trace) == 1 + 2 * 2  # start, then two rungs for each of the two weighted components


def test_start_below_the_cutoff_lowers_nothing():
    result = greedy_search(START, always(0.5), weighted_cost({"A": 1}), cutoff=0.9)
    assert len(result.trace) == 1 and not result.trace[0].accepted
    assert result.spec == START and not result.within_cutoff


def test_nan_accuracy_is_rejected():
    calls = iter([1.0, math.nan])
    result = greedy_search(START, lambda spec: next(calls), weighted_cost({"A": 1}), cutoff=0.9, components=["A"], ladder=(12, 8))
    assert [s.accepted for s in result.trace] == [True, False] and result.spec == START


def test_known_accuracies_are_replayed_and_steps_reported():
    measure = weighted_cost({"A": 2, "C": 1})
    first_steps = []
    first = greedy_search(START, always(1.0), measure, cutoff=0.5, ladder=(12, 8, 4), on_step=first_steps.append)
    assert first_steps == first.trace
    known = {allocation_key(START.with_bits("A", 8)): 1.0, allocation_key(START): 1.0}
    evaluated = []
    accuracy = lambda spec: evaluated.append(allocation_key(spec)) or 1.0  # noqa: E731
    second = greedy_search(START, accuracy, measure, cutoff=0.5, ladder=(12, 8, 4), known=known)
    assert second.trace == first.trace
    assert allocation_key(START) not in evaluated and allocation_key(START.with_bits("A", 8)) not in evaluated


def test_result_to_dict_is_json_ready():
    import json

    result = greedy_search(START, always(1.0), weighted_cost({"A": 1}), cutoff=0.5, components=["A"], ladder=(12, 8))
    d = json.loads(json.dumps(result.to_dict()))
    assert d["bits"]["A"] == 8 and d["evaluations"] == 2 and PrecisionSpec.from_dict(d["spec"]) == result.spec
    assert d["trace"][1]["bits_A"] == 8 and d["trace"][1]["bits_dt"] == 0


def test_search_errors_name_the_problem():
    measure = weighted_cost({"A": 1})
    with pytest.raises(ValueError, match="unknown metric 'energy'"):
        greedy_search(START, always(1.0), measure, cutoff=0.5, metric="energy")
    bad_ladders = [
        ((12,), "at least one lower rung"),
        ((12, 12, 8), "strictly decrease"),
        ((8, 12), "strictly decrease"),
        ((17, 8), "from 1 to 16"),
        ((12, 0), "from 1 to 16"),
        ((12, 7.5), "integers"),
    ]
    for ladder, message in bad_ladders:
        with pytest.raises(ValueError, match=message):
            check_ladder(ladder)
        with pytest.raises(ValueError, match=message):
            greedy_search(START, always(1.0), measure, cutoff=0.5, ladder=ladder)
    with pytest.raises(ValueError, match="'dt' is float in the start spec"):
        greedy_search(START, always(1.0), measure, cutoff=0.5, components=["dt"])
    with pytest.raises(ValueError, match="unknown component 'E'"):
        greedy_search(START, always(1.0), measure, cutoff=0.5, components=["E"])
    with pytest.raises(ValueError, match="not both"):
        resolve_cutoff(0.9, cutoff=0.8, tolerance=0.01)
    with pytest.raises(ValueError, match="negative"):
        resolve_cutoff(0.9, tolerance=-0.01)
    assert resolve_cutoff(0.9) == pytest.approx(0.89) and resolve_cutoff(0.9, cutoff=0.5) == 0.5


# -- on a trained tiny model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    train = TrainConfig(dataset="digits", epochs=2, compute="cpu")
    setup = StudySetup(ModelConfig(d_model=4, d_state=8), train, replace(train, epochs=1, lr=1e-3), test_samples=100)
    return ModelZoo(setup, tmp_path_factory.mktemp("models"), progress=False)


def test_recurrent_accuracy_runs_as_convolution_only_without_state_quantization(zoo):
    exact = replace(zoo, exact_recurrence=True)
    weights_only = component_spec("A", 4)
    assert zoo.spec_forward(weights_only, "recurrent") == "conv" and exact.spec_forward(weights_only, "recurrent") == "recurrent"
    assert zoo.spec_forward(component_spec("state", 4), "recurrent") == "recurrent"
    for spec in (None, weights_only):
        method = "float" if spec is None else "ptq"
        assert zoo.spec_accuracy(spec, method, "val") == exact.spec_accuracy(spec, method, "val")


def test_search_on_a_trained_model_is_deterministic_and_reduces_memory(zoo):
    first = search_precision(zoo, metric="memory", tolerance=0.02, ladder=(12, 6, 3))
    second = search_precision(zoo, metric="memory", tolerance=0.02, ladder=(12, 6, 3))
    assert first.trace == second.trace and first.spec == second.spec
    assert first.cutoff == pytest.approx(first.reference_accuracy - 0.02)
    start_memory = memory_footprint_bits(zoo.ptq(first.start), first.start)
    assert first.within_cutoff and first.report.memory_bits < start_memory  # lowered below the 12-bit start
    with pytest.raises(ValueError, match="unknown search method"):
        search_precision(zoo, method="qta")


def test_qat_search_fine_tunes_each_candidate_once(zoo, monkeypatch):
    result = search_precision(zoo, metric="adc", method="qat", cutoff=0.0, ladder=(12, 4), components=["mixing"])
    assert [s.component for s in result.trace] == [None, "mixing"] and result.bits["mixing"] == 4
    import aimc_ssm.cache as cache_module

    monkeypatch.setattr(cache_module, "fit", lambda *a, **k: pytest.fail("a cached QAT run was trained again"))
    assert search_precision(zoo, metric="adc", method="qat", cutoff=0.0, ladder=(12, 4), components=["mixing"]).trace == result.trace
