"""The quantization studies: each --quick run writes a row per point of its run and its plots, and a
rerun resumes instead of measuring again; and the harness they share with the analog studies
(aimc_ssm.study.harness). The studies run through the `studies` fixture (conftest.py): the small
`digits` data set, models shared."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from aimc_ssm.study.harness import Budget, ResultTable, study_parser


@pytest.mark.parametrize("name", ["ptq_vs_qat", "heterogeneous", "complexity"])
def test_help_documents_the_columns(studies, name):
    text = studies.help(name)
    assert "results.csv" in text and "accuracy" in text


def test_ptq_vs_qat_quick_writes_rows_and_plots_and_resumes(tmp_path, studies):
    out = tmp_path / "ptq_vs_qat"
    key = ["setup", "experiment", "recipe", "component", "bits", "method", "mode"]
    studies.quick("ptq_vs_qat", out)
    frame = studies.results(out, key)
    assert {"setup", "experiment", "recipe", "component", "bits", "method", "mode", "forward", "accuracy", "samples"} <= set(frame.columns)
    assert len(frame) == 2 + 2 * 2 * 2 + 2 * 2  # float in two modes, the sweep, the headline
    sweep = frame[frame.experiment == "sweep"]
    assert len(sweep) == 2 * 2 * 2  # components A, state x bits 4, 8 x PTQ, QAT
    headline = frame[frame.experiment == "headline"]
    assert set(zip(headline.method, headline["mode"])) == {(m, mode) for m in ("ptq", "qat") for mode in ("conv", "recurrent")}
    assert set(sweep[sweep.component == "state"].forward) == {"recurrent"} and set(sweep[sweep.component == "A"].forward) == {"conv"}
    assert frame.accuracy.between(0, 1).all() and (frame.samples == 100).all()
    assert (out / "accuracy_vs_bits.png").stat().st_size > 0 and (out / "headline.png").stat().st_size > 0
    studies.check_resumes("ptq_vs_qat", out, key)


def test_heterogeneous_quick_writes_trace_spec_summary_and_replays(tmp_path, studies):
    out = tmp_path / "heterogeneous"
    key = ["search", "step"]
    studies.quick("heterogeneous", out)
    trace = studies.results(out, key)
    columns = {"search", "step", "component", "bits_from", "bits_to", "saving", "cost", "accuracy", "cutoff", "accepted", "allocation"}
    assert columns | {f"bits_{c}" for c in ("A", "B", "C", "D", "dt", "state", "act", "mixing", "coder")} <= set(trace.columns)
    assert list(trace.step) == list(range(len(trace))) and trace.step.iloc[0] == 0
    assert trace.accuracy.between(0, 1).all()
    lowered = trace[trace.step > 0]
    assert (lowered.accepted == (lowered.accuracy >= lowered.cutoff)).all()  # a lowering is kept while the accuracy holds
    assert set(lowered.bits_to) <= {6, 3}  # the quick ladder below its start, 12
    summary = json.loads((out / "summary.json").read_text())
    assert {"bits", "report", "float_report", "reductions", "test_accuracy", "memory_saved_percent"} <= set(summary)
    assert summary["reductions"]["memory_bits"] > 1
    assert all(0 <= summary["test_accuracy"][m] <= 1 for m in ("float", "final")) and summary["test_accuracy"]["samples"] == 100
    spec = json.loads((out / "final_spec.json").read_text())
    assert {c: spec[c]["bits"] for c in summary["bits"]} == summary["bits"]
    assert (out / "trace.png").stat().st_size > 0

    studies.quick("heterogeneous", out)
    pd.testing.assert_frame_equal(studies.results(out, key), trace)  # replayed, nothing measured twice


def test_complexity_quick_measures_the_search_result_and_resumes(tmp_path, studies):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"A": {"bits": 6}, "C": {"bits": 4}, "mixing": {"bits": 4}}))
    out = tmp_path / "complexity"
    key = ["setup", "spec", "model", "quantity"]
    studies.quick("complexity", out, "--search-result", spec)
    frame = studies.results(out, key)
    assert {"setup", "spec", "allocation", "source", "model", "quantity", "value", "reduction", "samples"} <= set(frame.columns)
    assert len(frame) == 3 * 5 and set(frame.source) == {f"search {spec}"}
    assert frame[frame.quantity == "accuracy"].value.between(0, 1).all()
    hardware = frame[frame.quantity != "accuracy"]
    assert (hardware[hardware.model == "float"].reduction == 1).all() and (hardware[hardware.model != "float"].reduction > 1).all()
    assert (out / "complexity.png").stat().st_size > 0

    studies.check_resumes("complexity", out, key, "--search-result", spec)
    studies.quick("complexity", out, "--search-result", spec)
    pd.testing.assert_frame_equal(studies.results(out, key), frame)  # a complete run: nothing to measure
    studies.quick("complexity", out, "--bits", 8)
    assert len(studies.results(out, key)) == 2 * 3 * 5  # another allocation adds its own rows


# -- the harness (aimc_ssm.study.harness) ---------------------------------------------------------------
def test_result_table_measures_what_is_pending_and_selects_the_rows_of_a_run(tmp_path):
    path = tmp_path / "results.csv"
    table = ResultTable(path, ["run", "noise", "repeat"])
    keys = [{"run": "a", "noise": noise, "repeat": r} for noise in (0.0, 0.005) for r in range(2)]
    assert table.pending(keys) == keys
    table.add({"run": "b", "noise": 0.0, "repeat": 0, "accuracy": 0.5})  # another run's row
    table.add({**keys[1], "accuracy": 0.6})
    assert table.pending(keys) == [keys[0], keys[2], keys[3]]

    reread = ResultTable(path, ["run", "noise", "repeat"])  # keys compare as they read back from the CSV
    assert reread.pending(keys) == [keys[0], keys[2], keys[3]]
    assert reread.rows_of(keys).accuracy.tolist() == [0.6]

    class Point:  # a setting and its two draws, measured at once
        def __init__(self, noise):
            self.keys = [{"run": "a", "noise": noise, "repeat": r} for r in range(2)]

    measured = []

    def measure(point):
        measured.append(point.keys[0]["noise"])
        return [{**key, "accuracy": 0.7} for key in point.keys]

    reread.measure_pending([Point(0.0), Point(0.005)], measure, "test")
    assert measured == [0.0, 0.005]  # the first point is measured whole, as one of its rows is missing
    frame = reread.rows_of(keys)
    assert len(frame) == 4 and not frame.duplicated(["noise", "repeat"]).any()  # its present row is not added twice
    assert frame.accuracy.tolist() == [0.6, 0.7, 0.7, 0.7]  # in table order
    reread.measure_pending([Point(0.0), Point(0.005)], measure, "test")
    assert measured == [0.0, 0.005] and len(ResultTable(path, ["run", "noise", "repeat"]).rows) == 5


def test_budget_fills_the_flags_left_at_none():
    budget = Budget(full={"repeats": 3, "ladder": (12, 8), "limit": None}, quick={"repeats": 2, "ladder": (12,), "limit": 48})
    assert budget.help("ladder") == "(default: 12 8; 12 with --quick)" and budget.help("limit") == "(default: all; 48 with --quick)"
    parser = study_parser("example", "doc", budget)
    for name in budget.full:
        parser.add_argument("--" + name, type=int, nargs="+" if name == "ladder" else None, default=None)
    full = parser.parse_args([])
    assert (full.repeats, full.ladder, full.limit, full.epochs, full.qat_epochs, full.test_samples) == (3, (12, 8), None, 20, 5, None)
    quick = parser.parse_args(["--quick", "--repeats", "5", "--epochs", "2"])
    assert (quick.repeats, quick.ladder, quick.limit, quick.epochs, quick.qat_epochs, quick.test_samples) == (5, (12,), 48, 2, 1, 100)
    assert "(default: 20; 3 with --quick)" in parser.format_help()  # --epochs, from the common budget
    with pytest.raises(ValueError, match="same flags"):
        Budget(full={"repeats": 3}, quick={})
    with pytest.raises(SystemExit):
        parser.parse_args(["--test-samples", "0"])


def test_reproduce_quick_writes_the_report_and_resumes(tmp_path, studies):
    out = tmp_path / "reproduce"
    key = ["setup", "finding", "quantity", "seed"]
    # a split run: the second call measures the other findings and reports them all
    studies.quick("reproduce", out, "--test-samples", "60", "--findings", "F1", "F3")
    assert "| F4 |" in (out / "report.md").read_text() and "not run yet" in (out / "report.md").read_text()
    studies.quick("reproduce", out, "--test-samples", "60", "--findings", "F2", "F4", "F5", "F6", "F7")
    frame = studies.results(out, key)
    f1 = frame[frame.finding == "F1"]
    assert set(frame.finding) == {f"F{i}" for i in range(1, 8)} and set(frame.seed) == {0}  # --quick: one seed
    accuracies = f1[~f1.quantity.str.startswith("max_abs_A")]
    assert accuracies.value.between(0, 1).all() and {"float", "ptq", "qat", "ptq without joint range"} <= set(f1.quantity)
    radius = f1.set_index("quantity").value
    # the joint Re/Im range is what puts |Ā| above the circle: reverting it brings every mode back inside
    assert radius["max_abs_A without joint range"] < 1 <= radius["max_abs_A ptq"]
    assert radius["max_abs_A channel-asym-state16"] < 1 <= radius["max_abs_A channel-asym-state16 with joint range"]
    f3 = frame[frame.finding == "F3"].set_index("quantity").value
    assert f3["ace"] == 202_768_384 and f3["model_size_bytes"] == 787_456 and f3["adc_complexity"] == 2_134_336
    values = {f: frame[frame.finding == f].set_index("quantity").value for f in ("F2", "F4", "F5", "F6", "F7")}
    assert values["F2"]["memory reduction"] > 1 and values["F2"]["evaluations"] >= 1
    assert set(values["F4"][values["F4"].index.str.endswith(" first")].dropna()) <= {2, 4, 8}  # the quick widths, NaN: never reached
    assert {"float noise 0.006", "qat-7 noise 0.006"} <= set(values["F5"].index)
    assert 0 <= values["F6"]["qat-7 pruned_fraction"] <= 1 and values["F6"]["float candidates"] == 16
    assert {"float H=16 N=16", "qat-6 H=8 N=64"} <= set(values["F7"].index)
    report = (out / "report.md").read_text()
    assert all(f"| F{i} |" in report for i in range(1, 8)) and "F1 ablation" in report and "not run" not in report
    for plot in ("f4_bits.png", "f5_noise.png", "f6_pruning.png", "f7_size.png"):
        assert f"]({plot})" in report and (out / plot).stat().st_size > 0
    assert (out / "summary.md").exists() and (out / "run.json").exists()
    studies.check_resumes("reproduce", out, key, "--test-samples", "60")
