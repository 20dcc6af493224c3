"""Smoke tests of the analog studies: each --quick run writes its CSV and plots, and a rerun resumes
instead of measuring again. On the small `digits` data set so that CI stays fast; the models
directory is shared, so the float and QAT models are trained once for all three."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--quick", "--dataset", "digits", "--compute", "cpu"]


def run_study(name: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors; a second thread only waits on a shared machine
    return subprocess.run(
        [sys.executable, str(ROOT / "studies" / f"{name}.py"), *map(str, args)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=True,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


def check_resumes(name: str, out: Path, models: Path, *extra) -> pd.DataFrame:
    """Cut the CSV in half as a killed run would leave it; the rerun measures only the missing rows."""
    frame = pd.read_csv(out / "results.csv")
    kept = len(frame) // 2
    frame.iloc[:kept].to_csv(out / "results.csv", index=False)
    run_study(name, *QUICK, "--out", out, "--models-dir", models, *extra)
    resumed = pd.read_csv(out / "results.csv")
    assert len(resumed) == len(frame)
    pd.testing.assert_frame_equal(resumed.iloc[:kept], frame.iloc[:kept])
    return resumed


@pytest.mark.parametrize("name", ["adc_sweep", "noise_resilience", "pruning"])
def test_help_documents_flags_and_columns(name):
    text = run_study(name, "--help").stdout
    assert "--quick" in text and "results.csv" in text and "accuracy" in text
    if name != "pruning":
        assert all(flag in text for flag in ("--device", "--adc-range", "--out-noise", "--tile-size", "--kernel-adc-range"))


def test_adc_sweep_quick_writes_rows_and_plots_and_resumes(tmp_path, models):
    out = tmp_path / "adc_sweep"
    result = run_study("adc_sweep", *QUICK, "--out", out, "--models-dir", models)
    frame = pd.read_csv(out / "results.csv")
    assert {"setup", "model", "method", "bits", "noise", "adc_bits", "dac_bits", "repeat", "accuracy", "digital_accuracy", "adc_complexity", "samples", "device"} <= set(frame.columns)
    assert set(frame.model) == {"float", "ptq-8", "qat-8"} and set(frame.noise) == {"converters", "device"}
    points = {(8, 14), (14, 14)}  # the ADC sweep at the finest DAC, the DAC sweep at the finest ADC
    assert set(zip(frame.adc_bits, frame.dac_bits)) == points
    assert len(frame) == 3 * len(points) * (1 + 2)  # converters: one draw; device: two repeats
    assert frame.accuracy.between(0, 1).all()
    low, high = (frame[(frame.noise == "converters") & (frame.adc_bits == b)].adc_complexity.iloc[0] for b in (8, 14))
    assert high / low == pytest.approx(14 / 8)  # every conversion at the ADC's bits
    for plot in ("accuracy_vs_adc_bits", "accuracy_vs_dac_bits", "accuracy_vs_adc_complexity"):
        assert (out / f"{plot}.png").stat().st_size > 0
    assert "vs ADC bits" in result.stdout  # the summary table
    check_resumes("adc_sweep", out, models)


def test_noise_resilience_quick_writes_rows_and_plots_and_resumes(tmp_path, models):
    out = tmp_path / "noise_resilience"
    run_study("noise_resilience", *QUICK, "--out", out, "--models-dir", models)
    frame = pd.read_csv(out / "results.csv")
    assert {"setup", "experiment", "model", "target", "noise", "train_noise", "t_inference", "repeat", "accuracy", "samples"} <= set(frame.columns)
    assert set(frame.experiment) == {"test", "hwa", "device", "drift"}
    assert set(frame[frame.experiment == "test"].target) == {"A", "A_bar"}
    hwa = frame[frame.experiment == "hwa"]
    assert (hwa.train_noise == hwa.noise).all() and set(hwa.noise) == {0.01}
    drift = frame[frame.experiment == "drift"]
    assert sorted(drift.t_inference.unique()) == [1.0, 3600.0, 86400.0, 365 * 86400.0]
    clean = frame[(frame.experiment == "test") & (frame.noise == 0)]
    assert len(clean) == 2 * 2  # two models x two targets, one draw each: no noise to draw
    for plot in ("accuracy_vs_sigma", "accuracy_vs_device_noise", "accuracy_vs_drift"):
        assert (out / f"{plot}.png").stat().st_size > 0
    check_resumes("noise_resilience", out, models)


def test_pruning_quick_writes_rows_masks_and_plots_and_resumes(tmp_path, models):
    out = tmp_path / "pruning"
    run_study("pruning", *QUICK, "--out", out, "--models-dir", models)
    frame = pd.read_csv(out / "results.csv")
    assert {"setup", "model", "kind", "scope", "candidates", "pruned", "pruned_fraction", "val_accuracy", "test_accuracy", "crossbar_cells", "crossbar_cells_unpruned", "adc_complexity", "adc_complexity_unpruned"} <= set(frame.columns)
    assert set(frame.model) == {"float", "qat-8"} and set(frame.kind) == {"structured", "unstructured", "linear"}
    assert set(frame[frame.kind == "linear"].scope) == {"model", "encoder", "blocks.0.mixing", "decoder"}
    assert (frame.val_accuracy >= frame.val_accuracy_unpruned - 0.01 - 1e-9).all()  # within the 1-point tolerance
    assert (frame.crossbar_cells <= frame.crossbar_cells_unpruned).all() and (frame.candidates <= 48).all()
    structured = frame[frame.kind == "structured"]
    assert (structured.pruned > 0).all() and (structured.crossbar_cells < structured.crossbar_cells_unpruned).all()
    assert len(list((out / "masks").glob("*.pt"))) == len(frame)
    for plot in ("pruned_fraction", "per_layer", "savings"):
        assert (out / f"{plot}.png").stat().st_size > 0
    check_resumes("pruning", out, models)
