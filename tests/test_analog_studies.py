"""The analog studies: each --quick run writes its CSV and plots, and a rerun resumes instead of
measuring again; and their shared helpers (aimc_ssm.analog_study). The studies run on the small
`digits` data set so that CI stays fast; the models directory is shared, so the float and QAT
models are trained once for all three."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from aimc_ssm.analog_study import Deployer, DeviceSettings, with_weight_noise, without_state_requantization
from aimc_ssm.model import ModelConfig, S4DModel
from aimc_ssm.precision import PrecisionSpec
from aimc_ssm.quantize import quantize_

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
    assert all(flag in text for flag in ("--device", "--adc-bits", "--dac-bits", "--adc-range", "--out-noise", "--tile-size", "--kernel-adc-range"))


def test_adc_sweep_quick_writes_rows_and_plots_and_resumes(tmp_path, models):
    out = tmp_path / "adc_sweep"
    result = run_study("adc_sweep", *QUICK, "--out", out, "--models-dir", models)
    frame = pd.read_csv(out / "results.csv")
    assert {"setup", "model", "method", "bits", "noise", "adc_bits", "dac_bits", "repeat", "accuracy", "digital_accuracy", "adc_complexity", "samples", "device"} <= set(frame.columns)
    assert set(frame.model) == {"float", "ptq-8", "qat-8"} and set(frame.noise) == {"converters", "stochastic", "device"}
    points = {(8, 14), (14, 14)}  # the ADC sweep at the finest DAC, the DAC sweep at the finest ADC
    assert set(zip(frame.adc_bits, frame.dac_bits)) == points
    assert len(frame) == 3 * len(points) * (1 + 1 + 2)  # converters, stochastic: one draw each; device: two repeats
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
    assert {
        "setup", "model", "kind", "scope", "candidates", "pruned", "pruned_fraction", "val_accuracy", "test_accuracy",
        "crossbar_cells", "crossbar_cells_unpruned", "adc_complexity", "adc_complexity_unpruned", "analog_accuracy", "analog_accuracy_unpruned",
    } <= set(frame.columns)
    assert set(frame.model) == {"float", "qat-8"} and set(frame.kind) == {"structured", "unstructured", "linear"}
    assert set(frame[frame.kind == "linear"].scope) == {"model", "encoder", "blocks.0.mixing", "decoder"}
    assert (frame.val_accuracy >= frame.val_accuracy_unpruned - 0.01 - 1e-9).all()  # within the 1-point tolerance
    assert (frame.crossbar_cells <= frame.crossbar_cells_unpruned).all() and (frame.candidates <= 48).all()
    structured = frame[frame.kind == "structured"]
    assert (structured.pruned > 0).all() and (structured.crossbar_cells < structured.crossbar_cells_unpruned).all()
    # on 16-bit converters without noise the crossbars compute what the pruned digital model does
    assert (frame.analog_accuracy - frame.test_accuracy).abs().max() <= 0.05
    assert len(list((out / "masks").glob("*/*.pt"))) == len(frame)
    for plot in ("pruned_fraction", "per_layer", "savings"):
        assert (out / f"{plot}.png").stat().st_size > 0
    check_resumes("pruning", out, models)

    # other device settings: the saved masks are reused, only the analog check runs again
    run_study("pruning", *QUICK, "--out", out, "--models-dir", models, "--adc-bits", "8")
    rerun = pd.read_csv(out / "results.csv")
    other = rerun[rerun.setup != frame.setup.iloc[0]].set_index(["model", "kind", "scope"]).sort_index()
    first = frame.set_index(["model", "kind", "scope"]).sort_index()
    assert len(other) == len(frame) and (other.pruned == first.pruned).all() and (other.evaluations == first.evaluations).all()


# -- the shared helpers (aimc_ssm.analog_study) --------------------------------------------------------
def tiny_model() -> S4DModel:
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_input=1, d_output=3, d_model=3, d_state=6)).eval()
    with torch.no_grad():
        model.blocks[0].ssm.log_dt.fill_(-2.5)
    return model


def test_device_settings_give_the_kernels_their_own_adc_range_and_scale_the_noise():
    settings = DeviceSettings("pcm", {"adc_bits": 10}, kernel_adc_range=1.5)
    linear, kernel = settings.configs()
    assert linear.forward.out_bound == 10.0 and kernel.forward.out_bound == 1.5  # pcm's out_bound for the Linears
    assert linear.forward.out_res == kernel.forward.out_res == 1 / (2**10 - 2)
    assert kernel.forward.out_noise == linear.forward.out_noise == 0.04
    quiet_linear, quiet_kernel = settings.configs(noise_scale=0.1, dac_bits=12)
    assert quiet_kernel.forward.out_noise == pytest.approx(0.004) and quiet_linear.forward.inp_res == 1 / (2**12 - 2)
    assert quiet_kernel.noise_model.prog_noise_scale == pytest.approx(0.1 * linear.noise_model.prog_noise_scale)
    assert quiet_kernel.noise_model.drift_scale == pytest.approx(0.1 * linear.noise_model.drift_scale)
    own_noise = DeviceSettings("pcm", kernel_out_noise=0.01).configs(noise_scale=0.5)[1]
    assert own_noise.forward.out_noise == pytest.approx(0.005)
    ideal_linear, ideal_kernel = DeviceSettings("ideal").configs(noise_scale=0.0)  # no converters: nothing to set
    assert ideal_linear.forward.is_perfect and ideal_kernel.forward.is_perfect
    rounding = {"forward.inp_sto_round": True, "forward.out_sto_round": True}  # adc_sweep's stochastic condition
    for config in settings.configs(noise_scale=0.0, **rounding):
        assert config.forward.inp_sto_round and config.forward.out_sto_round and config.forward.out_noise == 0


def dac_ranges(analog) -> dict[str, torch.Tensor]:
    """DAC range of every analog module: (H,) per fused kernel, (1,) per Linear."""
    ranges = {name: analog.get_submodule(name).analog_module.input_range.detach().reshape(1) for name in ("encoder", "decoder", "blocks.0.mixing")}
    ranges["blocks.0.ssm"] = analog.blocks[0].ssm.input_ranges()
    return ranges


def test_deployer_calibrates_once_and_reuses_the_ranges():
    model = quantize_(tiny_model(), PrecisionSpec.z25(8))
    calibration = torch.randn(8, 20, 1)
    deployer = Deployer(model, calibration)
    assert not any(block.ssm.quant.requantizes_state for block in deployer.source.blocks)  # the converters do it
    assert model.blocks[0].ssm.quant.requantizes_state  # the model itself is left alone
    first = deployer(DeviceSettings("pcm").configs(noise_scale=0.0, adc_bits=12))
    again = deployer(DeviceSettings("pcm").configs(noise_scale=0.0, adc_bits=10))
    ranges = dac_ranges(first)
    assert ranges["blocks.0.ssm"].shape == (3,) and all(torch.equal(ranges[k], v) for k, v in dac_ranges(again).items())
    assert not (ranges["encoder"] == 3.0).all()  # calibrated, not the device's init value
    scales = [run.blocks[0].ssm.state_scales for run in (first, again)]
    assert torch.equal(*scales) and not (scales[0] == 1).all()  # the balanced state mapping is reused too
    x = torch.randn(4, 20, 1)
    with torch.no_grad():
        assert not torch.equal(first(x), again(x))  # other ADC bits, same ranges


def test_weight_noise_on_A_and_A_bar():
    model = quantize_(tiny_model(), PrecisionSpec.z25(8))
    clean = without_state_requantization(model)
    dA = clean.blocks[0].ssm.ssm_parameters()[0].detach()
    silent = with_weight_noise(clean, 0.0, "A_bar")
    assert torch.equal(silent.blocks[0].ssm.ssm_parameters()[0], dA)
    assert not silent.blocks[0].ssm.quant.requantizes_state  # the state quantizer the model had is kept
    torch.manual_seed(0)
    noisy = with_weight_noise(clean, 0.05, "A_bar").blocks[0].ssm
    draws = torch.stack([noisy.ssm_parameters()[0].detach() - dA for _ in range(200)])
    assert draws.real.std().item() == pytest.approx(2 * 0.05 * dA.real.abs().max().item(), rel=0.1)  # 5 % of the range
    continuous = with_weight_noise(clean, 0.05, "A").blocks[0].ssm
    perturbed = continuous.ssm_parameters()[0].detach()
    assert not torch.equal(perturbed, dA) and (perturbed - dA).abs().max() < draws.abs().max()  # dt shrinks it
    with pytest.raises(ValueError, match="unknown noise target"):
        with_weight_noise(clean, 0.01, "B")
