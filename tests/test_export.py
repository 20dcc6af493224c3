"""Crossbar export: npz + JSON round trip, conductances, integer levels, heat map (aimc_ssm.analog.export)."""
import copy

import numpy as np
import pytest
import torch

from aimc_ssm.analog.deploy import program, to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.export import crossbar_arrays, export, load_export, plot_crossbar
from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.quantize import quantize_

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
    assert meta["version"] == 3 and meta["model"]["d_state"] == N and meta["g_max"] == 25.0
    assert [layer["mapping"] for layer in meta["layers"]] == ["balanced", "balanced"]
    assert all(layer["copies"] == 1 and layer["y_adc_range"] is None for layer in meta["layers"])
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


@pytest.mark.parametrize("mapping", ["direct", "balanced", "incremental"])
def test_quantized_model_exports_integer_levels(tmp_path, model_and_inputs, mapping):
    """Levels stay integers under the balanced mapping: scaling B̄ and C̄ scales their grid steps alike.
    Under the incremental one the diagonal cells hold Re Ā - 1, off Ā's grid."""
    model, x = model_and_inputs
    quantized = quantize_(copy.deepcopy(model), PrecisionSpec.uniform(5)).eval()
    analog = to_analog(quantized, load_device("ideal"), calibration_inputs=x, mapping=mapping)
    export(analog, tmp_path / "q")
    exported = load_export(tmp_path / "q.json")
    assert exported["meta"]["layers"][0]["mapping"] == mapping
    arrays = exported["layers"][0]
    assert arrays["levels"].dtype == np.int64 and "input_range" not in arrays  # an ideal crossbar has no DAC
    on = arrays["level_steps"] > 0
    assert on[:, :N, :].any() and on[:, N, 1:].all()  # Ā, B̄ and the C̄, D row are on their grids
    diagonal = np.arange(N)
    assert (on[:, diagonal, 1 + diagonal] == (mapping != "incremental")).all()  # Re Ā, or Re Ā - 1 off its grid
    held = analog.blocks[0].ssm.crossbar_weights().numpy()  # Ā - I under the incremental mapping
    np.testing.assert_allclose(arrays["weights"], held, rtol=1e-6, atol=1e-7)
    assert np.abs(arrays["levels"]).max() <= 2**4 - 1  # 5-bit symmetric grid; C̄ = 2·Re C on a grid of step 2s
    np.testing.assert_allclose(arrays["levels"] * arrays["level_steps"], np.where(on, arrays["weights"], 0), atol=1e-6)


def test_copies_and_y_range_export(tmp_path, model_and_inputs):
    """Three copies: every matrix has 3·(N+2) inputs, W/3 on each row group, each group the full
    conductance range; ADC steps in signal units as one copy's, the y column's from its own range."""
    model, x = model_and_inputs
    kernel_config = load_device("pcm", adc_range=2)
    plain = to_analog(model, load_device("pcm"), ssm_rpu_config=kernel_config, calibration_inputs=x)
    analog = to_analog(
        model, load_device("pcm"), ssm_rpu_config=kernel_config, calibration_inputs=x, copies=3, y_adc_range=8.0
    )
    export(analog, tmp_path / "k")
    exported = load_export(tmp_path / "k")
    meta = exported["meta"]
    assert [(layer["copies"], layer["y_adc_range"]) for layer in meta["layers"]] == [(3, 8.0), (3, 8.0)]
    assert meta["adc"]["bound"] == 6.0  # the crossbar's normalized units: 3 copies × 2
    arrays, reference = exported["layers"][0], crossbar_arrays(plain.blocks[0].ssm)
    for name in ("weights", "normalized", "programmed"):
        assert arrays[name].shape == (H, N + 1, 3 * (N + 2))
    assert arrays["conductances"].shape == (H, 2, N + 1, 3 * (N + 2))
    groups = arrays["weights"].reshape(H, N + 1, 3, N + 2)
    np.testing.assert_allclose(groups.sum(axis=2), reference["weights"], rtol=1e-5, atol=1e-7)
    for g in range(3):
        np.testing.assert_allclose(arrays["normalized"][..., g * (N + 2) : (g + 1) * (N + 2)], reference["normalized"], atol=1e-6)
    np.testing.assert_allclose(arrays["adc_step"][:, :N], reference["adc_step"][:, :N], rtol=1e-5)
    np.testing.assert_allclose(arrays["adc_step"][:, N], 4 * reference["adc_step"][:, N], rtol=1e-5)  # range 8, not 2
    fig = plot_crossbar(exported, path=tmp_path / "copies.png")
    assert fig.axes[0].get_images()[0].get_array().shape == (3 * (N + 2), N + 1)


def test_quantized_copies_keep_their_levels(tmp_path, model_and_inputs):
    """Each copy holds W/3 on a grid a third as fine: the same integer levels as one copy's."""
    model, x = model_and_inputs
    quantized = quantize_(copy.deepcopy(model), PrecisionSpec.uniform(5)).eval()
    one = crossbar_arrays(to_analog(quantized, load_device("ideal"), calibration_inputs=x).blocks[0].ssm)
    three = crossbar_arrays(to_analog(quantized, load_device("ideal"), calibration_inputs=x, copies=3).blocks[0].ssm)
    np.testing.assert_array_equal(three["levels"], np.tile(one["levels"], 3))
    np.testing.assert_allclose(three["level_steps"], np.tile(one["level_steps"], 3) / 3, rtol=1e-6)
    np.testing.assert_allclose(three["levels"] * three["level_steps"], three["weights"], atol=1e-6)


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
