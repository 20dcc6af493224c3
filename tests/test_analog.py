"""The fused crossbar kernel, its twins, and the mapping of S4D models onto aihwkit tiles (aimc_ssm.analog)."""
import copy

import pytest
import torch
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.parameters import WeightModifierType

from aimc_ssm.analog import (
    DRIFT_TIMES,
    CrossbarStack,
    FusedS4D,
    complex_state,
    crossbar_matrices,
    inject_weight_noise,
    program,
    real_state,
    to_analog,
    training_noise,
)
from aimc_ssm.devices import load_device
from aimc_ssm.model import ModelConfig, S4DModel
from aimc_ssm.precision import PrecisionSpec
from aimc_ssm.quantize import quantize_
from aimc_ssm.s4d import S4D
from aimc_ssm.train import evaluate

H, N = 3, 6  # crossbars of (N+2) x (N+1) = 8 x 7; batch 16 makes 16·7 outputs a multiple of 16


@pytest.fixture
def ssm():
    torch.manual_seed(0)
    layer = S4D(H, N).eval()
    with torch.no_grad():
        layer.log_dt.fill_(-2.5)  # mid-range dt: states and outputs of order 1
    return layer


@pytest.fixture
def u():
    torch.manual_seed(1)
    return torch.randn(16, 24, H)


def kernel(ssm, u, device="pcm", state_mapping="balanced", **overrides):
    fused = FusedS4D(ssm, load_device(device, **overrides))
    fused.calibrate(u, state_mapping)
    return fused


def test_crossbar_computes_one_step(ssm):
    """W @ [u_t, x_{t-1}, u_{t-1}] = [x_t, y_{t-1}] with the digital step's x_t and y_{t-1} = C̄ x_{t-1} + D u_{t-1}."""
    params = ssm.ssm_parameters()
    dA, dB, C, D = (p.detach() for p in params)
    W = crossbar_matrices(dA, dB, C, D)  # (H, N+1, N+2)
    assert W.shape == (H, N + 1, N + 2)
    x_prev = torch.randn(5, H, N // 2, dtype=torch.cfloat)
    u_t, u_prev = torch.randn(5, H), torch.randn(5, H)
    inp = torch.cat([u_t.T[..., None], real_state(x_prev), u_prev.T[..., None]], dim=-1)  # (H, B, N+2)
    out = torch.bmm(inp, W.transpose(1, 2))
    with torch.no_grad():
        _, x_t = ssm.step(u_t, x_prev, params)
    torch.testing.assert_close(complex_state(out[..., :N]), x_t)
    torch.testing.assert_close(out[..., N].T, 2 * (C * x_prev).sum(-1).real + D * u_prev)
    torch.testing.assert_close(complex_state(real_state(x_prev)), x_prev)


@pytest.mark.parametrize("state_mapping", ["balanced", "direct"])
def test_ideal_kernel_equals_recurrence_and_convolution(ssm, u, state_mapping):
    fused = kernel(ssm, u, "ideal", state_mapping)
    assert fused.execution() == "fused"
    with torch.no_grad():
        y = fused(u, "conv")
        torch.testing.assert_close(y, ssm.scan(u), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y, ssm(u, "conv"), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fused.scan_ref(u), y, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown mode"):
        fused(u, "fft")


def test_balanced_mapping_is_a_similarity_transform_that_fills_the_input_range(ssm, u):
    """Ā stays; every mode's mapped state peaks at its channel's input peak; the DAC range is that peak."""
    direct, balanced = kernel(ssm, u, "pcm", "direct"), kernel(ssm, u, "pcm", "balanced")
    assert (direct.state_scales == 1).all()
    u_peak, x_peak = direct.signal_peaks(u)
    s = balanced.state_scales
    torch.testing.assert_close(s, x_peak / u_peak[:, None])
    torch.testing.assert_close((x_peak / s).amax(-1), u_peak)
    torch.testing.assert_close(balanced.input_ranges(), u_peak)
    torch.testing.assert_close(direct.input_ranges(), torch.maximum(u_peak, x_peak.amax(-1)))
    dA, dB, C, D = balanced.mapped_system()
    assert torch.equal(dA, direct.A_bar) and torch.equal(D, direct.D)
    torch.testing.assert_close(dB * C, direct.B_bar * direct.C)  # the kernel C·Ā^l·B̄ is unchanged
    with pytest.raises(ValueError, match="unknown state mapping"):
        direct.calibrate(u, "diagonal")
    with pytest.raises(ValueError, match="positive"):
        direct.set_state_scales(torch.zeros_like(s))


def test_balanced_mapping_keeps_small_modes_above_the_adc_step(ssm, u):
    """With a coarse ADC, the direct mapping rounds the small modes away; the balanced one keeps them."""
    with torch.no_grad():
        ssm.B.mul_(torch.logspace(0, -3, N // 2)[None, :, None])  # modes three decades apart
    clean = ssm.scan(u).detach()
    errors = {}
    for mapping in ("direct", "balanced"):
        fused = kernel(ssm, u, "pcm", mapping, adc_bits=6, dac_bits=12, adc_range=2.0, out_noise=0.0)
        errors[mapping] = (fused(u) - clean).abs().mean().item()
    assert errors["balanced"] < 0.5 * errors["direct"]


def test_skip_term_is_aligned_with_its_step(ssm, u):
    """With C = 0 the output is D·u_t at the same t, including the last step (flushed by u_L = 0)."""
    with torch.no_grad():
        ssm.C.zero_()
    y = kernel(ssm, u, "ideal")(u)
    torch.testing.assert_close(y, ssm.D * u)


@pytest.mark.parametrize("bits", [3, 5])
def test_adc_bits_bound_the_distinct_outputs(ssm, u, bits):
    fused = kernel(ssm, u, adc_bits=bits, adc_range=2.0, out_noise=0.0)
    stack = CrossbarStack(fused.tiles)
    inp = torch.randn(H, 64, N + 2) * 3
    out = stack.step(inp.clone())  # digital outputs of every column
    y = fused(u)
    for h in range(H):
        assert all(out[h, :, c].unique().numel() <= 2**bits for c in range(N + 1))
        assert y[:, :, h].unique().numel() <= 2**bits


@pytest.mark.parametrize("overrides", [{"out_noise": 0.0}, {}, {"adc_bits": 4, "adc_range": 1.5, "out_noise": 0.02}])
def test_fused_kernel_matches_its_twins_bit_for_bit(ssm, u, overrides):
    """fused step == AnalogMVM.matmul on the stack == per-channel AnalogLinear tiles, noise drawn alike."""
    fused = kernel(ssm, u, **overrides)
    program(fused, t_inference=3600.0)
    runs = []
    for run in (fused.scan, lambda v: fused.scan(v, reference_mvm=True), fused.scan_ref):
        torch.manual_seed(7)
        runs.append(run(u))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], ssm.scan(u).detach())  # the device did act


MANAGED = {"forward.noise_management": "abs_max", "forward.bound_management": "iterative"}


@pytest.mark.parametrize(
    "overrides",
    [
        MANAGED,  # no output clips: one read per step
        {**MANAGED, "adc_range": 0.3},  # outputs clip: reads repeat at half the input scale
        {"forward.noise_management": "max", "forward.nm_thres": 0.5, "forward.inp_noise": 0.01},
        {"forward.noise_management": "constant", "forward.nm_thres": 2.0, "forward.bound_management": "iterative", "adc_range": 0.3},
    ],
    ids=["abs_max+iterative", "clipping", "max+thres+input_noise", "constant+iterative"],
)
def test_managed_fused_step_matches_aihwkit_mvm_bit_for_bit(ssm, u, overrides):
    """Noise and bound management in the fused step == AnalogMVM.matmul on the stack, noise drawn alike."""
    fused = kernel(ssm, u, **overrides)
    assert fused.execution() == "fused"
    program(fused, t_inference=3600.0)
    torch.manual_seed(7)
    y = fused.scan(u)
    torch.manual_seed(7)
    assert torch.equal(y, fused.scan(u, reference_mvm=True))
    assert torch.isfinite(y).all()


def test_all_zero_inputs_read_zero_without_draws(ssm, u):
    """aihwkit's shortcut: under noise management an all-zero input reads 0 and draws no output noise."""
    fused = kernel(ssm, u, **MANAGED)
    stack = CrossbarStack(fused.tiles)
    torch.manual_seed(0)
    assert not stack.step(torch.zeros(H, 4, N + 2)).any()
    after = torch.randn(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.randn(1))


def test_noise_statistics_agree_across_batch_layouts(ssm, u):
    """Where batch·outputs is no multiple of 16 the draws differ; the error statistics do not."""
    fused = kernel(ssm, u, adc_bits=None, **{"forward.out_noise": 0.05})
    u = u[:15]
    clean = ssm.scan(u).detach()
    torch.manual_seed(3)
    fused_error = (fused(u) - clean).std()
    torch.manual_seed(3)
    tile_error = (fused.scan_ref(u) - clean).std()
    assert fused_error.item() == pytest.approx(tile_error.item(), rel=0.2)


def test_execution_follows_the_device(ssm, u):
    assert kernel(ssm, u, "pcm").execution() == "fused"
    managed = kernel(ssm, u, "pcm", **MANAGED)
    assert managed.execution() == "fused"
    torch.manual_seed(0)
    y = managed(u)
    torch.manual_seed(0)
    assert torch.equal(y, managed.scan_ref(u))  # no clipping here, so the joint bound check changes nothing
    asymmetric = kernel(ssm, u, "pcm", **{"forward.out_asymmetry": 0.1})
    assert asymmetric.execution() == "fused_ref"
    torch.manual_seed(0)
    y = asymmetric(u)
    torch.manual_seed(0)
    assert torch.equal(y, asymmetric.scan_ref(u))
    varied = kernel(ssm, u, "pcm", **{"forward.out_noise_std": 0.3})  # per-output noise strengths
    assert varied.execution() == "fused"
    torch.manual_seed(0)
    y = varied(u)
    torch.manual_seed(0)
    assert torch.equal(y, varied.scan_ref(u))
    varied_managed = kernel(ssm, u, "pcm", **{"forward.out_noise_std": 0.3, **MANAGED})
    assert varied_managed.execution() == "fused"
    varied_asymmetric = kernel(ssm, u, "pcm", **{"forward.out_noise_std": 0.3, "forward.out_asymmetry": 0.1})
    assert varied_asymmetric.execution() == "tiles"  # AnalogMVM.matmul broadcasts per-output noise for 2-D weights only
    torch.manual_seed(0)
    assert torch.isfinite(varied_asymmetric(u)).all()
    compiled = kernel(ssm, u, "pcm_compiled")
    assert compiled.execution() == "tiles"
    assert torch.isfinite(compiled(u)).all()


def test_kernel_needs_a_large_enough_tile(ssm):
    with pytest.raises(ValueError, match="raise tile_size to 8"):
        FusedS4D(ssm, load_device("pcm", tile_size=6))


def test_kernel_is_for_inference(ssm, u):
    fused = kernel(ssm, u).train()
    with pytest.raises(RuntimeError, match="model.eval"):
        fused(u)


def tiny_model():
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_input=2, d_output=3, d_model=H, d_state=N, n_layers=2)).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ssm.log_dt.fill_(-2.5)
    return model, torch.randn(8, 20, 2)


def test_to_analog_maps_layers_and_keeps_the_float_model():
    model, x = tiny_model()
    before = copy.deepcopy(model.state_dict())
    analog = to_analog(model, load_device("ideal"))
    assert all(isinstance(m, AnalogLinear) for m in (analog.encoder, analog.decoder, *(b.mixing for b in analog.blocks)))
    assert all(isinstance(b.ssm, FusedS4D) for b in analog.blocks)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(analog(x, "conv"), model(x, "recurrent"), atol=1e-5, rtol=1e-5)
    labels = torch.randint(0, 3, (8,))
    assert evaluate(analog, [(x, labels)], "conv") == evaluate(model, [(x, labels)], "recurrent")


@pytest.mark.parametrize("spec", [PrecisionSpec.uniform(6), PrecisionSpec.z25(8, state_bits=6, parameterization="polar")])
def test_quantized_model_keeps_its_digital_quantizers(spec):
    model, x = tiny_model()
    quantized = quantize_(copy.deepcopy(model), spec).eval()
    direct = to_analog(quantized, load_device("ideal"))
    balanced = to_analog(quantized, load_device("ideal"), calibration_inputs=x)
    assert not (balanced.blocks[0].ssm.state_scales == 1).all()
    for analog in (direct, balanced):  # the state quantizer sees the state as the digital model holds it
        assert all(b.ssm.state_quantizer is not None for b in analog.blocks)  # the fed-back state is re-quantized
        with torch.no_grad():
            torch.testing.assert_close(analog(x), quantized(x, "recurrent"), atol=1e-4, rtol=1e-4)
            assert not torch.allclose(analog(x), model(x, "recurrent"), atol=1e-4)


def test_calibration_sets_every_dac_range():
    model, x = tiny_model()
    analog = to_analog(model, load_device("pcm"), calibration_inputs=x)
    assert analog.encoder.analog_module.input_range.item() == pytest.approx(x.abs().max().item())
    u = model.encoder(x).detach()
    fused = analog.blocks[0].ssm
    u_peak, x_peak = fused.signal_peaks(u)
    torch.testing.assert_close(fused.input_ranges(), u_peak)  # balanced: every mode spans the input's range
    torch.testing.assert_close(fused.state_scales, x_peak / u_peak[:, None])
    direct = to_analog(model, load_device("pcm"), calibration_inputs=x, state_mapping="direct").blocks[0].ssm
    torch.testing.assert_close(direct.input_ranges(), torch.maximum(u_peak, x_peak.amax(-1)))
    uncalibrated = to_analog(model, load_device("pcm"))
    assert (uncalibrated.blocks[0].ssm.input_ranges() == 3.0).all()  # the device's init value
    assert to_analog(model, load_device("ideal"), calibration_inputs=x).blocks[0].ssm.input_ranges() is None


def test_program_and_drift():
    model, x = tiny_model()
    analog = to_analog(model, load_device("pcm"), ssm_rpu_config=load_device("pcm", adc_range=2), calibration_inputs=x)
    tile = analog.blocks[0].ssm.tiles[0]
    target = tile.tile.weight.detach().clone()
    assert tile.rpu_config.forward.out_bound == 2.0 and analog.encoder.analog_module.rpu_config.forward.out_bound == 10.0
    program(analog, DRIFT_TIMES["1s"])
    programmed = tile.programmed_weights.clone()
    assert not torch.equal(tile.tile.weight, target)
    program(analog, DRIFT_TIMES["1y"], reprogram=False)  # the same devices, a year on
    assert torch.equal(tile.programmed_weights, programmed)
    assert tile.alpha.item() > 1.2  # global drift compensation scales the decayed conductances back up
    with torch.no_grad():
        assert torch.isfinite(analog(x)).all()


def test_training_noise_settings():
    modifier = training_noise("add", 0.1)
    assert modifier.type == WeightModifierType.ADD_NORMAL and modifier.std_dev == 0.1
    assert training_noise("mult", 0.02).type == WeightModifierType.MULT_NORMAL
    with pytest.raises(ValueError, match="unknown noise kind"):
        training_noise("pcm")
    torch.manual_seed(0)
    w = (torch.rand(200, 200) * 4 - 2).requires_grad_()
    noisy = inject_weight_noise(w, modifier)
    assert (noisy - w).std().item() == pytest.approx(0.1 * w.abs().max().item(), rel=0.05)
    noisy.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))
