"""The fused crossbar kernel, its twins, and the mapping of S4D models onto aihwkit tiles (aimc_ssm.analog)."""
import copy
import math

import pytest
import torch
from aihwkit.nn import AnalogLinear
from aihwkit.simulator.parameters import WeightModifierType

from aimc_ssm.analog.deploy import DRIFT_TIMES, program, to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.hwa import inject_weight_noise, training_noise
from aimc_ssm.analog.kernel import MAPPINGS, FusedS4D, StaticScan, copies_share_inputs
from aimc_ssm.analog.layout import complex_state, crossbar_matrices, fold_copies, real_state, state_diagonal
from aimc_ssm.analog.mvm import CrossbarStack, column_scales
from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.core.s4d import S4D
from aimc_ssm.core.train import evaluate
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.quantize import quantize_

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


def kernel(ssm, u, device="pcm", mapping="balanced", options=None, **overrides):
    """A calibrated kernel on `device` with `overrides`; options: FusedS4D's copies, y_adc_range and reads,
    by default batched as aihwkit reads, which the twins here compare with aihwkit's own MVM bit for bit
    (per-sequence reads: tests/test_sequence_reads.py)."""
    fused = FusedS4D(ssm, load_device(device, **overrides), **{"reads": "batched", **(options or {})})
    fused.calibrate(u, mapping)
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
    incremental = crossbar_matrices(dA, dB, C, D, incremental=True)  # Ā - I: Re Ā - 1, the rest as it was
    assert torch.equal(state_diagonal(incremental), state_diagonal(W) - 1)
    state_diagonal(incremental).copy_(state_diagonal(W))
    assert torch.equal(incremental, W)


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_ideal_kernel_equals_recurrence_and_convolution(ssm, u, mapping):
    fused = kernel(ssm, u, "ideal", mapping)
    assert fused.mapping == mapping
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
    with pytest.raises(ValueError, match="unknown mapping"):
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


def slow_system(ssm):
    """Modes that decay as slowly as a trained model's: 1 - |Ā| ≈ 8e-4, turning 0, 0.26 and 0.51 rad per step."""
    with torch.no_grad():
        ssm.log_A_real.fill_(math.log(0.01))
    return ssm


def test_incremental_mapping_holds_a_minus_identity(ssm, u):
    """The tiles' target weights times their column scales are Ā - I, B̄/s, s·C̄, D; the state columns'
    largest weight, which sets their conductance scale, drops from about |Ā| to max(|Re Ā - 1|, |Im Ā|, |B̄/s|)."""
    slow_system(ssm)
    balanced, incremental = kernel(ssm, u, mapping="balanced"), kernel(ssm, u, mapping="incremental")
    torch.testing.assert_close(incremental.state_scales, balanced.state_scales)
    held = torch.stack([t.tile.weight.detach() for t in incremental.tiles]) * column_scales(incremental.tiles)[:, :, None]
    dA, dB, C, D = incremental.mapped_system()
    expected = crossbar_matrices(dA, dB, C, D, incremental=True)
    torch.testing.assert_close(held, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(state_diagonal(held), state_diagonal(crossbar_matrices(dA, dB, C, D)) - 1, rtol=1e-6, atol=1e-7)
    scales = {name: column_scales(k.tiles)[:, :N] for name, k in (("balanced", balanced), ("incremental", incremental))}
    torch.testing.assert_close(scales["incremental"], expected[:, :N].abs().amax(-1))
    assert (scales["balanced"] > 0.85).all()  # about |Ā|
    assert (scales["incremental"] < scales["balanced"]).all()  # measured ratio ≤ 0.57: mode 2's |Im Ā| = 0.49 stays
    assert (scales["incremental"][:, 1] < 1e-3).all()  # Im of mode 0, which neither turns nor is driven: 1 - Re Ā


def test_incremental_mapping_shrinks_converter_errors_on_slow_modes(ssm):
    """6-bit ADC, converters only: the increment's column scales are below Ā's (far below for the modes
    that turn slowly), and so are their ADC steps in signal units."""
    slow_system(ssm)
    torch.manual_seed(1)
    u = torch.randn(16, 200, H)
    clean = ssm.scan(u).detach()
    errors = {}
    for mapping in ("balanced", "incremental"):
        fused = kernel(ssm, u, "pcm", mapping, adc_bits=6, adc_range=2.0, out_noise=0.0)
        errors[mapping] = ((fused(u) - clean).norm() / clean.norm()).item()
    assert errors["incremental"] < 0.6 * errors["balanced"]  # measured 0.196 vs 0.477: ratio 0.41


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


@pytest.mark.parametrize("mapping", ["balanced", "incremental"])
@pytest.mark.parametrize("overrides", [{"out_noise": 0.0}, {}, {"adc_bits": 4, "adc_range": 1.5, "out_noise": 0.02}])
def test_fused_kernel_matches_its_twins_bit_for_bit(ssm, u, overrides, mapping):
    """fused step == AnalogMVM.matmul on the stack == per-channel AnalogLinear tiles, noise drawn alike."""
    fused = kernel(ssm, u, mapping=mapping, **overrides)
    program(fused, t_inference=3600.0)
    assert_twins_agree(fused, ssm, u)


def assert_twins_agree(fused, ssm, u):
    """fused.scan == its AnalogMVM twin == the per-channel tiles, each from the same seed, and the device acted."""
    runs = []
    for run in (fused.scan, lambda v: fused.scan(v, reference_mvm=True), fused.scan_ref):
        torch.manual_seed(7)
        runs.append(run(u))
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert not torch.equal(runs[0], ssm.scan(u).detach())


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
    assert ((y - ssm.scan(u)).norm() / ssm.scan(u).norm()).item() < 1.0  # managed reads stay near the digital layer


# -- device-modeler options: copies per weight, the y column's own ADC range --------------------------
OPTIONS = [{"copies": 3}, {"y_adc_range": 8.0}, {"copies": 3, "y_adc_range": 8.0}]
OPTION_IDS = ["copies3", "y_range", "copies3+y_range"]


def test_copies_hold_w_over_k_on_k_row_groups(ssm, u):
    """Three copies: the tiles hold W/3 on three row groups that sum back to W; aihwkit's column-wise
    mapping gives each group the full conductance range (one copy's normalized weights, a third of its
    column scales), and the ADC range triples, so on converters alone the outputs are one copy's."""
    one, three = kernel(ssm, u), kernel(ssm, u, options={"copies": 3})
    W, held = one.crossbar_weights(), three.crossbar_weights()
    assert held.shape == (H, N + 1, 3 * (N + 2)) and three.tiles[0].tile.weight.shape == held.shape[1:]
    groups = held.reshape(H, N + 1, 3, N + 2)
    assert all(torch.equal(groups[:, :, g], W / 3) for g in range(3))
    torch.testing.assert_close(fold_copies(held, 3), W)
    normalized = torch.stack([t.tile.weight.detach() for t in three.tiles]).reshape(H, N + 1, 3, N + 2)
    single = torch.stack([t.tile.weight.detach() for t in one.tiles])
    for g in range(3):
        torch.testing.assert_close(normalized[:, :, g], single)
    torch.testing.assert_close(column_scales(three.tiles), column_scales(one.tiles) / 3)
    assert three.rpu_config.forward.out_bound == 3 * one.rpu_config.forward.out_bound == 30.0
    assert three.crossbar_cells() == 3 * (N + 2) * (N + 1) * H == 3 * one.crossbar_cells()
    assert "crossbar=24x7, copies=3" in repr(three)
    converters = {"adc_range": 2.0, "out_noise": 0.0}
    with torch.no_grad():  # measured equal to 5e-7: the same ADC levels per signal
        torch.testing.assert_close(kernel(ssm, u, options={"copies": 3}, **converters)(u), kernel(ssm, u, **converters)(u))


def test_copies_that_read_the_same_inputs_are_summed_before_the_per_sequence_product(ssm, u):
    """Per-sequence reads multiply one row group by the copies' summed float64 weights: the same outputs as
    the product over every copy's rows, here bit for bit; input noise, drawn per row, keeps every row."""
    three = kernel(ssm, u, options={"copies": 3, "reads": "per-sequence", "y_adc_range": 8.0})
    program(three, 3600.0)
    folded = three.crossbar_stack(u)
    assert folded.weight64.shape == (H, N + 1, N + 2)
    torch.testing.assert_close(folded.weight64, fold_copies(folded.weight.double(), 3), rtol=0, atol=0)
    every_row = CrossbarStack(three.tiles, three.y_io, three.crossbar_stack(u).draws, shared_copies=1)
    with torch.no_grad():
        assert torch.equal(StaticScan(three, folded, u).run(), StaticScan(three, every_row, u).run())
    assert copies_share_inputs(three.rpu_config.forward) and copies_share_inputs(load_device("ideal").forward)
    for drawn_per_row in ({"forward.inp_noise": 0.01}, {"forward.inp_sto_round": True}):
        noisy = kernel(ssm, u, options={"copies": 3, "reads": "per-sequence"}, **drawn_per_row)
        assert not copies_share_inputs(noisy.rpu_config.forward)
        assert noisy.crossbar_stack(u).weight64.shape == (H, N + 1, 3 * (N + 2))


def test_options_are_checked(ssm):
    with pytest.raises(ValueError, match="raise tile_size to 24 or use a smaller d_state or fewer copies"):
        FusedS4D(ssm, load_device("pcm", tile_size=20), copies=3)  # 3·(N+2) = 24 input rows
    with pytest.raises(ValueError, match="copies must be a positive integer"):
        FusedS4D(ssm, load_device("pcm"), copies=0)
    with pytest.raises(ValueError, match="y_adc_range must be a positive"):
        FusedS4D(ssm, load_device("pcm"), y_adc_range=0.0)
    with pytest.raises(ValueError, match="y_adc_range needs pure-PyTorch tiles"):
        FusedS4D(ssm, load_device("pcm_compiled"), y_adc_range=8.0)


@pytest.mark.parametrize("mapping", MAPPINGS)
@pytest.mark.parametrize("options", [{"copies": 1}, *OPTIONS], ids=["copies1", *OPTION_IDS])
def test_ideal_kernel_with_options_equals_recurrence_and_convolution(ssm, u, mapping, options):
    """Copies sum back to W and an ideal device has no ADC to set apart: the digital layer's outputs."""
    fused = kernel(ssm, u, "ideal", mapping, options)
    with torch.no_grad():
        y = fused(u)
        torch.testing.assert_close(y, ssm.scan(u), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y, ssm(u, "conv"), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fused.scan_ref(u), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mapping", ["balanced", "incremental"])
@pytest.mark.parametrize("options", OPTIONS, ids=OPTION_IDS)
def test_options_keep_the_twins_bit_for_bit(ssm, u, options, mapping):
    """Programmed pcm with its noise: fused step == AnalogMVM.matmul per column group on the stack ==
    per-channel tiles (`tiles_forward`), noise drawn alike."""
    fused = kernel(ssm, u, mapping=mapping, options=options)
    program(fused, t_inference=3600.0)
    assert len(fused.crossbar_stack().groups) == (2 if "y_adc_range" in options else 1)
    assert_twins_agree(fused, ssm, u)


@pytest.mark.parametrize(
    "overrides",
    [
        {**MANAGED, "adc_range": 0.3},  # both groups clip, each repeats its reads at half scale on its own
        {"forward.noise_management": "max", "forward.nm_thres": 0.5, "forward.inp_noise": 0.01,
         "forward.inp_sto_round": True, "forward.out_sto_round": True},
    ],
    ids=["clipping", "input_noise+stochastic_rounding"],
)
def test_column_groups_step_as_aihwkit_mvm_bit_for_bit(ssm, u, overrides):
    """Two column groups with their own bound management and draws: step == step_ref, bit for bit."""
    fused = kernel(ssm, u, options={"copies": 2, "y_adc_range": 0.6}, **overrides)
    program(fused, t_inference=3600.0)
    stack = fused.crossbar_stack()
    inp = torch.randn(H, 16, 2 * (N + 2)) * 3
    torch.manual_seed(0)
    fast = stack.step(inp.clone()).clone()
    torch.manual_seed(0)
    assert torch.equal(fast, stack.step_ref(inp.clone()))


def test_y_range_with_per_output_noise_matches_the_tiles(ssm, u):
    """aihwkit's per-output noise strengths split with the columns: the fused step == the tiles."""
    fused = kernel(ssm, u, options={"y_adc_range": 8.0}, **{"forward.out_noise_std": 0.3})
    torch.manual_seed(0)
    y = fused(u)
    torch.manual_seed(0)
    assert torch.equal(y, fused.scan_ref(u))


def test_y_range_undoes_the_clipping_of_the_y_column():
    """Converters only (pcm's 8-bit ADC of range 2, no noise): eight slow modes adding in phase drive the
    y column's read to 6.5 ADC units, beyond the range the state columns need; a y range of 8 reads it."""
    torch.manual_seed(0)
    ssm = S4D(H, 16).eval()
    with torch.no_grad():
        ssm.log_dt.fill_(-2.5)
        ssm.A_imag.mul_(0.5 / math.pi)  # 0.04 rad per step and mode index
        ssm.C.zero_()
        ssm.C[..., 0] = 1.0  # C = 1: every mode adds to y in phase
    torch.manual_seed(1)
    u = torch.randn(16, 24, H)
    clean = ssm.scan(u).detach()
    errors = {}
    for y_range in (None, 8.0):
        fused = kernel(ssm, u, options={"y_adc_range": y_range}, adc_range=2.0, out_noise=0.0)
        read = clean / fused.crossbar_stack().output_factors()[:, -1]  # the y column's read, ADC units
        errors[y_range] = ((fused(u) - clean).norm() / clean.norm()).item()
    assert read.abs().max() > 4  # measured 6.53
    assert errors[8.0] < errors[None] / 4  # measured 0.031 vs 0.222: 7.2x


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
    clean = ssm.scan(u).detach()

    def relative_error(y):
        return ((y - clean).norm() / clean.norm()).item()

    torch.manual_seed(0)
    with torch.no_grad():
        assert relative_error(varied_asymmetric(u)) < 0.4  # noisy 8-bit converters, not garbage (measured 0.27)
        compiled = kernel(ssm, u, "pcm_compiled")
        assert compiled.execution() == "tiles"
        assert relative_error(compiled(u)) < 0.35  # the C++ tiles compute the same kernel (measured 0.20)


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


@pytest.mark.parametrize("spec", [PrecisionSpec.uniform(6), PrecisionSpec.channel_asym(8, state_bits=6, parameterization="polar")])
def test_quantized_model_keeps_its_digital_quantizers(spec):
    model, x = tiny_model()
    quantized = quantize_(copy.deepcopy(model), spec).eval()
    # batched reads sum in float32 as the digital recurrence does; a last-bit difference can still flip one
    # rounding of the 6-bit state, which moves an output by about 1e-4
    ideal = {"rpu_config": load_device("ideal"), "reads": "batched"}
    direct = to_analog(quantized, **ideal)
    balanced = to_analog(quantized, **ideal, calibration_inputs=x)
    incremental = to_analog(quantized, **ideal, calibration_inputs=x, mapping="incremental")
    assert not (balanced.blocks[0].ssm.state_scales == 1).all()
    for analog in (direct, balanced, incremental):  # the state quantizer sees the state as the digital model holds it
        assert all(b.ssm.state_quantizer is not None for b in analog.blocks)  # the fed-back state is re-quantized
        with torch.no_grad():
            torch.testing.assert_close(analog(x), quantized(x, "recurrent"), atol=1e-3, rtol=1e-3)
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
    direct = to_analog(model, load_device("pcm"), calibration_inputs=x, mapping="direct").blocks[0].ssm
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
    with torch.no_grad():  # a year of drift, compensated: the outputs still follow the digital model's
        drifted, digital = analog(x), model(x)
    assert torch.corrcoef(torch.stack([drifted.flatten(), digital.flatten()]))[0, 1] > 0.9  # measured 0.98


def test_unprogrammed_zero_cells_stay_zero_through_drift():
    model, x = tiny_model()
    analog = to_analog(model, load_device("pcm"), calibration_inputs=x, mapping="incremental")
    tiles = analog.blocks[0].ssm.tiles
    zero = [t.tile.weight.detach() == 0 for t in tiles]
    assert all(z.float().mean() > 0.5 for z in zero)  # a kernel is mostly structurally-zero cells
    torch.manual_seed(0)
    program(analog, DRIFT_TIMES["1s"])  # aihwkit's default programs them too
    assert all((t.tile.weight.detach()[z] != 0).any() for t, z in zip(tiles, zero))
    torch.manual_seed(0)
    program(analog, DRIFT_TIMES["1s"], zero_cells="unprogrammed")
    noisy = [t.tile.weight.detach().clone() for t in tiles]
    assert all((w[z] == 0).all() and (w[~z] != t.reference_combined_weights[~z]).any() for w, z, t in zip(noisy, zero, tiles))
    program(analog, DRIFT_TIMES["1d"], reprogram=False)  # drift and read noise scale with the conductance
    assert all((t.tile.weight.detach()[z] == 0).all() for t, z in zip(tiles, zero))
    with pytest.raises(ValueError, match="zero_cells must be one of"):
        program(analog, 1.0, zero_cells="skip")


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
