"""Device files, their overrides and errors (aimc_ssm.analog.devices)."""
import pytest
import torch
from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel, StateIndependentNoiseModel
from aihwkit.simulator.configs import InferenceRPUConfig, TorchInferenceRPUConfig
from aihwkit.simulator.parameters import BoundManagementType

from aimc_ssm.analog.devices import DEVICES_DIR, DeviceError, bits_to_res, list_devices, load_device, main, res_to_bits


def test_shipped_devices_load():
    assert {"ideal", "pcm", "pcm_compiled", "gaussian"} <= set(list_devices())
    ideal, pcm, compiled, gaussian = (load_device(n) for n in ("ideal", "pcm", "pcm_compiled", "gaussian"))
    assert isinstance(ideal, TorchInferenceRPUConfig) and ideal.forward.is_perfect
    assert isinstance(pcm, TorchInferenceRPUConfig) and not pcm.forward.is_perfect
    assert isinstance(pcm.noise_model, PCMLikeNoiseModel) and isinstance(pcm.drift_compensation, GlobalDriftCompensation)
    assert pcm.forward.inp_res == pcm.forward.out_res == 1 / 254 and pcm.forward.out_noise > 0
    assert type(compiled) is InferenceRPUConfig and compiled.forward.w_noise > 0
    assert isinstance(gaussian.noise_model, StateIndependentNoiseModel) and gaussian.drift_compensation is None


def test_bits_follow_aihwkit_convention():
    assert bits_to_res(8) == 1 / 254 and bits_to_res(2) == 1 / 2
    assert bits_to_res(None) == bits_to_res(0) == -1.0
    assert [res_to_bits(bits_to_res(b)) for b in (2, 4, 8, 12)] == [2, 4, 8, 12]
    assert res_to_bits(-1) is None
    with pytest.raises(DeviceError, match="bits must be an integer >= 2"):
        bits_to_res(1)


def test_common_knobs_and_dotted_fields():
    config = load_device("pcm", dac_bits=6, adc_bits=None, adc_range=2, out_noise=0.01, tile_size=128, **{"forward.inp_noise": 0.02})
    io = config.forward
    assert (io.inp_res, io.out_res, io.out_bound, io.out_noise, io.inp_noise) == (1 / 62, -1.0, 2.0, 0.01, 0.02)
    assert config.mapping.max_input_size == config.mapping.max_output_size == 128
    # strings, as from the command line: numbers, booleans, enums by name, fields of the noise model
    config = load_device(
        "pcm",
        adc_bits="4",
        **{"forward.bound_management": "iterative", "mapping.weight_scaling_columnwise": "false", "noise_model.drift_scale": "0.5"},
    )
    assert config.forward.out_res == 1 / 14 and config.forward.bound_management == BoundManagementType.ITERATIVE
    assert config.mapping.weight_scaling_columnwise is False and config.noise_model.drift_scale == 0.5


def test_gaussian_noise_is_sigma_of_the_weight_range():
    sigma = 0.05
    noise_model = load_device("gaussian", sigma=str(sigma)).noise_model
    torch.manual_seed(0)
    w = torch.rand(300, 300) * 2 - 1
    w[0, 0] = 1.0  # the column max that maps to g_max
    noisy, _ = noise_model.apply_programming_noise(w)
    error = noisy - w
    assert error.mean().abs() < 0.005
    assert error.std().item() == pytest.approx(sigma * 2 * w.abs().max().item(), rel=0.03)


def test_unknown_device_lists_known_names():
    with pytest.raises(DeviceError, match="unknown device 'nope'.*ideal.*pcm"):
        load_device("nope")


@pytest.mark.parametrize(
    "source, message",
    [
        ("raise RuntimeError('boom')\n", "failed to import: RuntimeError: boom"),
        ("x = 1\n", "defines no function rpu_config"),
        ("def rpu_config():\n    return 3\n", "returned int, not an aihwkit inference RPU config"),
    ],
)
def test_bad_device_files_are_named(tmp_path, source, message):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(DeviceError, match=message) as err:
        load_device(str(path))
    assert "broken.py" in str(err.value)


def test_custom_device_file_and_its_parameters(tmp_path):
    path = tmp_path / "my_device.py"
    source = (DEVICES_DIR / "pcm.py").read_text()
    path.write_text(source.replace("def rpu_config():", "def rpu_config(noise=0.04):").replace("out_noise=0.04", "out_noise=noise"))
    assert load_device(str(path), noise="0.1", adc_bits=6).forward.out_noise == 0.1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"forward.out_nois": 0.1}, "config.forward has no field 'out_nois'.*valid fields of config.forward: .*out_noise"),
        ({"dac_bit": 4}, "unknown override 'dac_bit'.*dac_bits"),
        ({"forward": 1}, "unknown override"),
        ({"mapping.nope.x": 1}, "config.mapping has no field 'nope'"),
        ({"forward.bound_management": "sometimes"}, "not a BoundManagementType"),
        ({"adc_range": -1}, "adc_range cannot be -1"),
        ({"tile_size": -3}, "tile_size cannot be -3"),
        ({"forward.w_noise": 0.02}, "pure-PyTorch tile.*pcm_compiled"),
    ],
)
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(DeviceError, match=message):
        load_device("pcm", **overrides)


def test_converter_knobs_need_a_non_perfect_forward():
    with pytest.raises(DeviceError, match="forward.is_perfect=false"):
        load_device("ideal", adc_bits=4)
    config = load_device("ideal", adc_bits=4, **{"forward.is_perfect": "false"})
    assert config.forward.out_res == 1 / 14


def test_cli(capsys):
    assert main(["--list"]) == 0
    assert "pcm_compiled" in capsys.readouterr().out
    assert main(["--device", "pcm", "--set", "adc_bits=6", "--set", "forward.out_noise=0.02"]) == 0
    out = capsys.readouterr().out
    assert "TorchInferenceRPUConfig" in out and "out_noise=0.02" in out and "out_res=0.0161" in out
    assert main(["--device", "pcm", "--set", "forward.nope=1"]) == 2
    assert "has no field 'nope'" in capsys.readouterr().err


def test_drift_compensation_knob_and_the_hwa_preset():
    from aihwkit.inference.compensation.drift import PerColumnDriftCompensation
    from aihwkit.simulator.presets import StandardHWATrainingPreset

    assert isinstance(load_device("pcm", drift_compensation="per-column").drift_compensation, PerColumnDriftCompensation)
    assert load_device("pcm", drift_compensation="none").drift_compensation is None
    with pytest.raises(DeviceError, match="drift_compensation cannot be 'local'"):
        load_device("pcm", drift_compensation="local")
    preset = load_device("hwa_preset")
    assert type(preset) is StandardHWATrainingPreset and preset.forward.w_noise == pytest.approx(0.0175)
    assert load_device("hwa_preset", adc_bits=6).forward.out_res == bits_to_res(6)
