"""The analog studies: each --quick run writes a row per point of its run, its plots, and a rerun
resumes instead of measuring again; and their shared helpers (aimc_ssm.study.analog). The studies
run through the `studies` fixture (conftest.py): the small `digits` data set, models shared."""
from __future__ import annotations

import argparse

import pandas as pd
import pytest
import torch

from aimc_ssm.analog.devices import DeviceError
from aimc_ssm.analog.hwa import with_weight_noise
from aimc_ssm.analog.kernel import MAPPINGS
from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.precision import recipe_spec
from aimc_ssm.quant.quantize import quantize_, without_state_quantizer
from aimc_ssm.study.analog import Deployer, DeviceSettings, add_device_flags

DEVICE_FLAGS = ("--device", "--adc-bits", "--dac-bits", "--adc-range", "--out-noise", "--tile-size", "--kernel-adc-range")


@pytest.mark.parametrize("name", ["adc_sweep", "noise_resilience", "pruning"])
def test_help_documents_flags_and_columns(studies, name):
    text = studies.help(name)
    assert "results.csv" in text and "accuracy" in text
    assert all(flag in text for flag in DEVICE_FLAGS)


def test_adc_sweep_quick_writes_rows_and_plots_and_resumes(tmp_path, studies):
    out = tmp_path / "adc_sweep"
    key = ["setup", "model", "mapping", "noise", "adc_bits", "dac_bits", "repeat"]
    every = ("--training", "float", "ptq", "qat", "hwa", "--mapping", *MAPPINGS, "--noise", "converters", "stochastic", "device")
    result = studies.quick("adc_sweep", out, *every)
    frame = studies.results(out, key)
    assert {
        "setup", "model", "method", "training", "bits", "mapping", "noise", "adc_bits", "dac_bits", "repeat", "accuracy",
        "unstable_channels", "digital_accuracy", "adc_complexity", "crossbar_cells", "samples", "device",
    } <= set(frame.columns)
    assert set(frame.model) == {"float", "ptq-8", "qat-8", "hwa-float"} and set(frame.noise) == {"converters", "stochastic", "device"}
    assert set(frame.mapping) == {"direct", "balanced", "incremental"}
    points = {(8, 14), (14, 14)}  # the ADC sweep at the finest DAC, the DAC sweep at the finest ADC
    assert set(zip(frame.adc_bits, frame.dac_bits)) == points
    assert len(frame) == 4 * 3 * len(points) * (1 + 1 + 2)  # converters, stochastic: one draw each; device: two repeats
    # target weights have the digital model's eigenvalues: no unstable channel without device noise
    assert (frame[frame.noise != "device"].unstable_channels == 0).all()
    assert frame.unstable_channels.between(0, 16).all() and (frame.crossbar_cells == 16 * 66 * 65).all()  # --quick: 1 copy
    assert set(frame[frame.noise != "device"].repeat) == {0} and set(frame[frame.noise == "device"].repeat) == {0, 1}
    assert frame.accuracy.between(0, 1).all() and frame.digital_accuracy.between(0, 1).all() and (frame.samples == 100).all()
    low, high = (frame[(frame.noise == "converters") & (frame.adc_bits == b)].adc_complexity.iloc[0] for b in (8, 14))
    assert high / low == pytest.approx(14 / 8)  # every conversion at the ADC's bits
    for plot in ("accuracy_vs_adc_bits", "accuracy_vs_dac_bits", "accuracy_vs_adc_complexity"):
        assert (out / f"{plot}.png").stat().st_size > 0
    assert "vs ADC bits" in result.stdout and "best under the device's noise" in result.stdout  # the summary
    studies.check_resumes("adc_sweep", out, key, *every)


def test_noise_resilience_quick_writes_rows_and_plots_and_resumes(tmp_path, studies):
    out = tmp_path / "noise_resilience"
    key = ["setup", "experiment", "model", "target", "mapping", "compensation", "noise", "t_inference", "repeat"]
    studies.quick("noise_resilience", out)
    frame = studies.results(out, key)
    assert {"setup", "experiment", "model", "target", "mapping", "noise", "train_noise", "t_inference", "repeat", "accuracy", "unstable_channels", "samples"} <= set(frame.columns)
    assert set(frame.experiment) == {"test", "hwa", "device", "sources", "drift"} and set(frame.model) == {"float", "qat-8"}
    # per model, one draw where there is no noise and two elsewhere: test 2 targets x sigmas (0, 0.5, 5 %),
    # hwa A at 1 %; per mapping (three), device at noise scales 0, 0.03, 1, drift at 0.03 read at 4 times
    # sources: per mapping, programming noise alone and all of it, two draws each
    per_model = {"test": 2 * (1 + 2 + 2), "hwa": 2, "device": 3 * (1 + 2 + 2), "sources": 3 * 2 * 2, "drift": 3 * 2 * 4}
    assert set(frame[frame.experiment.isin(["device", "drift"])].mapping) == {"direct", "balanced", "incremental"}
    assert (frame[frame.experiment.isin(["test", "hwa"])][["mapping", "compensation"]] == "none").all().all()
    assert (frame[frame.experiment.isin(["device", "sources", "drift"])].compensation == "averaged").all()  # --quick: the kernels' default
    sources = frame[frame.experiment == "sources"]
    assert set(sources.target) == {"programming", "all"} and (sources.t_inference == 3600).all()
    modes = pd.read_csv(out / "modes.csv")  # every draw's read-back modes: 16 channels x 32 modes
    assert len(modes) == len(sources) * 16 * 32 and set(modes.source) == {"programming", "all"}
    draw = ["model", "mapping", "source", "repeat"]
    unstable = modes.groupby([*draw, "channel"]).unstable.any().groupby(draw).sum()  # channels with a mode outside
    recorded = sources.rename(columns={"target": "source"}).set_index(draw).unstable_channels
    assert (unstable.sort_index() == recorded.sort_index().astype(int)).all()
    assert frame.groupby("experiment").size().to_dict() == {e: 2 * n for e, n in per_model.items()}
    assert frame.accuracy.between(0, 1).all()
    assert set(frame[frame.experiment == "test"].target) == {"A", "A_bar"}
    hwa = frame[frame.experiment == "hwa"]
    assert (hwa.train_noise == hwa.noise).all() and set(hwa.noise) == {0.01}
    drift = frame[frame.experiment == "drift"]
    assert sorted(drift.t_inference.unique()) == [1.0, 3600.0, 86400.0, 365 * 86400.0]
    clean = frame[(frame.experiment == "test") & (frame.noise == 0)]
    assert len(clean) == 2 * 2  # two models x two targets, one draw each: no noise to draw
    for plot in ("accuracy_vs_sigma", "accuracy_vs_device_noise", "accuracy_vs_drift", "modes"):
        assert (out / f"{plot}.png").stat().st_size > 0
    studies.check_resumes("noise_resilience", out, key)


def test_pruning_quick_writes_rows_masks_and_plots_and_resumes(tmp_path, studies):
    out = tmp_path / "pruning"
    key = ["setup", "model", "kind", "scope"]
    studies.quick("pruning", out)
    frame = studies.results(out, key)
    assert {
        "setup", "model", "kind", "scope", "candidates", "pruned", "pruned_fraction", "val_accuracy", "test_accuracy",
        "crossbar_cells", "crossbar_cells_unpruned", "adc_complexity", "adc_complexity_unpruned", "analog_accuracy", "analog_accuracy_unpruned",
    } <= set(frame.columns)
    assert set(frame.model) == {"float", "qat-8"} and set(frame.kind) == {"structured", "unstructured", "linear"}
    assert set(frame[frame.kind == "linear"].scope) == {"model", "encoder", "blocks.0.mixing", "decoder"}
    assert len(frame) == 2 * (1 + 1 + 4)  # per model: one SSM layer (structured, unstructured), three Linears and all of them
    accuracies = ["val_accuracy", "test_accuracy", "val_accuracy_unpruned", "test_accuracy_unpruned", "analog_accuracy", "analog_accuracy_unpruned"]
    assert frame[accuracies].apply(lambda column: column.between(0, 1)).all().all()
    assert (frame.val_accuracy >= frame.val_accuracy_unpruned - 0.01 - 1e-9).all()  # within the 1-point tolerance
    assert (frame.crossbar_cells <= frame.crossbar_cells_unpruned).all() and (frame.candidates <= 48).all()
    structured = frame[frame.kind == "structured"]
    assert (structured.pruned > 0).all() and (structured.crossbar_cells < structured.crossbar_cells_unpruned).all()
    # on 16-bit converters without noise the crossbars compute what the pruned digital model does
    assert (frame.analog_accuracy - frame.test_accuracy).abs().max() <= 0.05
    assert len(list((out / "masks").glob("*/*.pt"))) == len(frame)
    for plot in ("pruned_fraction", "per_layer", "savings"):
        assert (out / f"{plot}.png").stat().st_size > 0
    studies.check_resumes("pruning", out, key)

    # other device settings: the saved masks are reused, only the analog check runs again
    studies.quick("pruning", out, "--adc-bits", "8")
    rerun = studies.results(out, key)
    other = rerun[rerun.setup != frame.setup.iloc[0]].set_index(["model", "kind", "scope"]).sort_index()
    first = frame.set_index(["model", "kind", "scope"]).sort_index()
    assert len(rerun) == 2 * len(frame) and len(other) == len(frame)
    assert (other.pruned == first.pruned).all() and (other.evaluations == first.evaluations).all()


# -- the shared helpers (aimc_ssm.study.analog) --------------------------------------------------------
def test_converter_bits_are_lists_and_a_study_of_one_setting_takes_the_only_value():
    parser = argparse.ArgumentParser()
    add_device_flags(parser, converter_bits=16)
    defaults = parser.parse_args([])
    assert defaults.adc_bits == defaults.dac_bits == [16]
    assert DeviceSettings.from_args(defaults).knobs == {"dac_bits": 16, "adc_bits": 16}  # as a setting of every crossbar
    assert DeviceSettings.from_args(parser.parse_args(["--adc-bits", "12"])).knobs["adc_bits"] == 12
    with pytest.raises(DeviceError, match="--adc-bits takes one value in this study, not 8 12"):
        DeviceSettings.from_args(parser.parse_args(["--adc-bits", "8", "12"]))
    swept = DeviceSettings.from_args(parser.parse_args(["--adc-bits", "8", "12"]), swept=("adc_bits", "dac_bits"))
    assert swept.knobs == {}  # a sweep sets them at every point


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
    model = quantize_(tiny_model(), recipe_spec("channel-asym-state16", 8))
    calibration = torch.randn(8, 20, 1)
    deployer = Deployer(model, calibration)
    first = deployer(DeviceSettings("pcm").configs(noise_scale=0.0, adc_bits=12))
    assert first.blocks[0].ssm.state_quantizer is None  # the converters quantize the state
    assert model.blocks[0].ssm.requantizes_state() and deployer.source is model  # the model itself is left alone, not copied
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
    model = quantize_(tiny_model(), recipe_spec("channel-asym-state16", 8))
    clean = without_state_quantizer(model)
    dA = clean.blocks[0].ssm.ssm_parameters()[0].detach()
    silent = with_weight_noise(clean, 0.0, "A_bar")
    assert torch.equal(silent.blocks[0].ssm.ssm_parameters()[0], dA)
    assert not silent.blocks[0].ssm.requantizes_state()  # the state quantizer the model had is kept
    torch.manual_seed(0)
    noisy = with_weight_noise(clean, 0.05, "A_bar").blocks[0].ssm
    draws = torch.stack([noisy.ssm_parameters()[0].detach() - dA for _ in range(200)])
    assert draws.real.std().item() == pytest.approx(2 * 0.05 * dA.real.abs().max().item(), rel=0.1)  # 5 % of the range
    continuous = with_weight_noise(clean, 0.05, "A").blocks[0].ssm
    perturbed = continuous.ssm_parameters()[0].detach()
    assert not torch.equal(perturbed, dA) and (perturbed - dA).abs().max() < draws.abs().max()  # dt shrinks it
    with pytest.raises(ValueError, match="unknown noise target"):
        with_weight_noise(clean, 0.01, "B")
