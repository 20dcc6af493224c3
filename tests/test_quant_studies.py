"""Smoke tests of the quantization studies: each --quick run writes its CSV and plots, and a rerun
resumes instead of measuring again. On the small `digits` data set so that CI stays fast; the
models directory is shared, so the float model is trained once for all three."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--quick", "--dataset", "digits", "--compute", "cpu"]


def run_study(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "studies" / f"{name}.py"), *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.mark.parametrize("name", ["ptq_vs_qat", "heterogeneous", "complexity"])
def test_help_documents_the_columns(name):
    text = run_study(name, "--help").stdout
    assert "--quick" in text and "results.csv" in text and "accuracy" in text


def test_ptq_vs_qat_quick_writes_rows_and_plots_and_resumes(tmp_path, models):
    out = tmp_path / "ptq_vs_qat"
    run_study("ptq_vs_qat", *QUICK, "--out", out, "--models-dir", models)
    frame = pd.read_csv(out / "results.csv")
    assert {"setup", "experiment", "recipe", "component", "bits", "method", "mode", "forward", "accuracy", "samples"} <= set(frame.columns)
    sweep = frame[frame.experiment == "sweep"]
    assert len(sweep) == 2 * 2 * 2  # components A, state x bits 4, 8 x PTQ, QAT
    headline = frame[frame.experiment == "headline"]
    assert set(zip(headline.method, headline["mode"])) == {(m, mode) for m in ("ptq", "qat") for mode in ("conv", "recurrent")}
    assert set(sweep[sweep.component == "state"].forward) == {"recurrent"} and set(sweep[sweep.component == "A"].forward) == {"conv"}
    assert frame.accuracy.between(0, 1).all()
    assert (out / "accuracy_vs_bits.png").stat().st_size > 0 and (out / "headline.png").stat().st_size > 0

    # a run killed half-way: the rerun measures only the missing rows
    kept = len(frame) // 2
    frame.iloc[:kept].to_csv(out / "results.csv", index=False)
    run_study("ptq_vs_qat", *QUICK, "--out", out, "--models-dir", models)
    resumed = pd.read_csv(out / "results.csv")
    assert len(resumed) == len(frame)
    pd.testing.assert_frame_equal(resumed.iloc[:kept], frame.iloc[:kept])


def test_heterogeneous_quick_writes_trace_spec_summary_and_replays(tmp_path, models):
    out = tmp_path / "heterogeneous"
    run_study("heterogeneous", *QUICK, "--out", out, "--models-dir", models)
    trace = pd.read_csv(out / "results.csv")
    columns = {"search", "step", "component", "bits_from", "bits_to", "saving", "cost", "accuracy", "cutoff", "accepted", "allocation"}
    assert columns | {f"bits_{c}" for c in ("A", "B", "C", "D", "dt", "state", "act", "mixing", "coder")} <= set(trace.columns)
    assert list(trace.step) == list(range(len(trace))) and trace.step.iloc[0] == 0
    summary = json.loads((out / "summary.json").read_text())
    assert {"bits", "report", "float_report", "reductions", "test_accuracy", "memory_saved_percent"} <= set(summary)
    assert summary["reductions"]["memory_bits"] > 1
    spec = json.loads((out / "final_spec.json").read_text())
    assert {c: spec[c]["bits"] for c in summary["bits"]} == summary["bits"]
    assert (out / "trace.png").stat().st_size > 0

    run_study("heterogeneous", *QUICK, "--out", out, "--models-dir", models)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), trace)  # replayed, nothing measured twice


def test_complexity_quick_measures_the_search_result_and_resumes(tmp_path, models):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"A": {"bits": 6}, "C": {"bits": 4}, "mixing": {"bits": 4}}))
    out = tmp_path / "complexity"
    run_study("complexity", *QUICK, "--out", out, "--models-dir", models, "--search-result", spec)
    frame = pd.read_csv(out / "results.csv")
    assert {"setup", "spec", "allocation", "source", "model", "quantity", "value", "reduction", "samples"} <= set(frame.columns)
    assert len(frame) == 3 * 5 and set(frame.source) == {f"search {spec}"}
    hardware = frame[frame.quantity != "accuracy"]
    assert (hardware[hardware.model == "float"].reduction == 1).all() and (hardware[hardware.model != "float"].reduction > 1).all()
    assert (out / "complexity.png").stat().st_size > 0

    run_study("complexity", *QUICK, "--out", out, "--models-dir", models, "--search-result", spec)
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), frame)
    run_study("complexity", *QUICK, "--out", out, "--models-dir", models, "--bits", 8)
    assert len(pd.read_csv(out / "results.csv")) == 2 * 3 * 5  # another allocation adds its own rows
