"""Crossbar export: npz + JSON round trip, conductances, integer levels, heat map (aimc_ssm.export)."""
import copy

import numpy as np
import pytest
import torch

from aimc_ssm.analog import program, to_analog
from aimc_ssm.devices import load_device
from aimc_ssm.export import crossbar_arrays, export, load_export, plot_crossbar
from aimc_ssm.model import ModelConfig, S4DModel
from aimc_ssm.precision import PrecisionSpec
from aimc_ssm.quantize import quantize_

H, N = 3, 6


@pytest.fixture(scope="module")
def model_and_inputs():
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_input=1, d_output=2, d_model=H, d_state=N, n_layers=2)).eval()
    return model, torch.randn(4, 16, 1)


def test_round_trip(tmp_path, model_and_inputs):
    model, x = model_and_inputs
    analog = to_analog(model, load_device("pcm"), calibration_inputs=x)
    program(analog, t_inference=86400.0)
    npz, meta_path = export(analog, tmp_path / "chip")
    assert npz.name == "chip.npz" and meta_path.name == "chip.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chip.json", "chip.npz"]  # no temporary files left
    exported = load_export(tmp_path / "chip")
    meta = exported["meta"]
    assert meta["version"] == 1 and meta["model"]["d_state"] == N and meta["g_max"] == 25.0
    assert meta["dac"] == {"bits": 8, "levels": 255, "bound": 1.0} and meta["adc"]["levels"] == 255
    assert len(exported["layers"]) == 2
    for kernel, arrays in zip((b.ssm for b in analog.blocks), exported["layers"]):
        written = crossbar_arrays(kernel)
        assert sorted(arrays) == sorted(written)
        for name, value in written.items():
            np.testing.assert_array_equal(arrays[name], value)
        assert arrays["weights"].shape == (H, N + 1, N + 2) and arrays["conductances"].shape == (H, 2, N + 1, N + 2)
        np.testing.assert_allclose(arrays["weights"], arrays["normalized"] * arrays["column_scales"][:, :, None], rtol=1e-6)
        assert not np.array_equal(arrays["programmed"], arrays["normalized"])  # programming noise and drift
        g_plus, g_minus = arrays["conductances"][:, 0], arrays["conductances"][:, 1]
        assert g_plus.min() >= 0 and max(g_plus.max(), g_minus.max()) == pytest.approx(25.0)
        np.testing.assert_allclose((g_plus - g_minus) / 25.0, arrays["normalized"], atol=1e-6)  # max|normalized| = 1
        assert arrays["dac_step"].shape == (H,) and arrays["adc_step"].shape == (H, N + 1)
        np.testing.assert_array_equal(arrays["state_scales"], kernel.state_scales.numpy())  # balanced by calibration
        assert not (arrays["state_scales"] == 1).all()


@pytest.mark.parametrize("calibrated", [False, True], ids=["direct", "balanced"])
def test_quantized_model_exports_integer_levels(tmp_path, model_and_inputs, calibrated):
    """Levels stay integers under the balanced mapping: scaling B̄ and C̄ scales their grid steps alike."""
    model, x = model_and_inputs
    quantized = quantize_(copy.deepcopy(model), PrecisionSpec.uniform(5)).eval()
    export(to_analog(quantized, load_device("ideal"), calibration_inputs=x if calibrated else None), tmp_path / "q")
    arrays = load_export(tmp_path / "q.json")["layers"][0]
    assert arrays["levels"].dtype == np.int64 and "input_range" not in arrays  # an ideal crossbar has no DAC
    on = arrays["level_steps"] > 0
    assert on[:, :N, :].any() and on[:, N, 1:].all()  # Ā, B̄ and the C̄, D row are on their grids
    assert np.abs(arrays["levels"]).max() <= 2**4 - 1  # 5-bit symmetric grid; C̄ = 2·Re C on a grid of step 2s
    np.testing.assert_allclose(arrays["levels"] * arrays["level_steps"], np.where(on, arrays["weights"], 0), atol=1e-6)


def test_heat_map(tmp_path, model_and_inputs):
    model, _ = model_and_inputs
    export(to_analog(model, load_device("ideal")), tmp_path / "m")
    fig = plot_crossbar(load_export(tmp_path / "m"), layer=1, channel=2, path=tmp_path / "crossbar.png")
    assert (tmp_path / "crossbar.png").stat().st_size > 1000
    assert fig.axes[0].get_images()[0].get_array().shape == (N + 2, N + 1)  # inputs as rows, outputs as columns
    with pytest.raises(ValueError, match="unknown quantity"):
        plot_crossbar(load_export(tmp_path / "m"), quantity="drift_alpha")


def test_errors(tmp_path, model_and_inputs):
    model, _ = model_and_inputs
    with pytest.raises(ValueError, match="needs a model from aimc_ssm.analog.to_analog"):
        export(model, tmp_path / "float")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_export(tmp_path / "missing")
    (tmp_path / "other.npz").write_bytes(b"")
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="is not an 'aimc-ssm crossbars' export"):
        load_export(tmp_path / "other")


def test_float_quantizers_export_no_levels(tmp_path, model_and_inputs):
    """A model whose quantizers are all float (as a pruned float model's) has no grid to export."""
    model, x = model_and_inputs
    floating = quantize_(copy.deepcopy(model), PrecisionSpec.float()).eval()
    export(to_analog(floating, load_device("ideal")), tmp_path / "f")
    arrays = load_export(tmp_path / "f")["layers"][0]
    assert "levels" not in arrays and "level_steps" not in arrays
