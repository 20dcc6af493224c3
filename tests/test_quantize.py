"""Tests for the precision spec, quantize_, PTQ/QAT and the quantized recurrence, on small models."""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import replace

import pytest
import torch

from aimc_ssm.cache import float_model, qat_model
from aimc_ssm.core.data import load_dataset, make_loaders
from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.core.train import DivergenceError, TrainConfig, evaluate
from aimc_ssm.quant.precision import ACTIVATION_QUANTIZERS, COMPONENTS, QUANTIZERS, PrecisionSpec
from aimc_ssm.quant.qrecurrent import quantized_scan, quantized_scan_ref
from aimc_ssm.quant.quantize import calibrate, precision_of, ptq_model, quantize_, stability_report
from aimc_ssm.quant.quantizers import FLOAT, QuantizerConfig

TINY = ModelConfig(d_model=3, d_state=8)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These small tensors gain nothing from a second thread, and on a busy machine an OpenMP
    thread waiting for a descheduled sibling makes every operation cost milliseconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, cfg: ModelConfig = TINY) -> S4DModel:
    torch.manual_seed(seed)
    return S4DModel(cfg)


def inputs(batch=3, length=24, channels=1, seed=1, dtype=torch.float32):
    return torch.randn(batch, length, channels, generator=torch.Generator().manual_seed(seed)).to(dtype)


# -- the precision spec ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        PrecisionSpec.float(),
        PrecisionSpec.uniform(4),
        PrecisionSpec.uniform(5, "continuous", scheme="asymmetric", ste="clipped"),
        PrecisionSpec.channel_asym(8),
        PrecisionSpec.channel_asym(6, 12, "polar", ranges="static"),
        PrecisionSpec.s25(7).with_bits("state", 5).replace(partial_products=True),
        PrecisionSpec.z25(8),
        PrecisionSpec.z25(6, 12, "polar", ranges="static"),
        PrecisionSpec.z25(4, scheme="symmetric").with_bits("y", None).replace(act_point="block_output"),
    ],
)
def test_spec_round_trips_through_json_and_dict(spec):
    assert PrecisionSpec.from_json(spec.to_json()) == spec
    assert PrecisionSpec.from_dict(spec.to_dict()) == spec


NEW_SPEC_FIELDS = ("encoder_input", "ssm_input", "y", "pre_activation", "decoder_input", "act_point", "state_proxy_levels", "hard_gelu")
NEW_QUANTIZER_FIELDS = ("complex_range", "zero_point_bits", "symmetric_grid", "clamp")


def older_json(spec: PrecisionSpec) -> dict:
    """`spec` as JSON written before the fields that reproduce [Z25]'s and [S25]'s code existed."""
    d = {k: v for k, v in spec.to_dict().items() if k not in NEW_SPEC_FIELDS}
    for name in COMPONENTS:
        d[name] = {k: v for k, v in d[name].items() if k not in NEW_QUANTIZER_FIELDS}
    return d


@pytest.mark.parametrize("spec", [PrecisionSpec.channel_asym(8), PrecisionSpec.uniform(5, "continuous"), PrecisionSpec.float()])
def test_older_json_loads_with_its_old_meaning(spec):
    loaded = PrecisionSpec.from_dict(older_json(spec))
    assert loaded == spec
    assert all(loaded.config(q).is_float for q in ACTIVATION_QUANTIZERS) and not loaded.hard_gelu
    assert loaded.act_point == "mixing_input" and loaded.state_proxy_levels == "state"
    assert all(loaded.config(c).complex_range == "planes" and loaded.config(c).zero_point_bits is None for c in COMPONENTS)


def test_presets_follow_the_recipes():
    channel = PrecisionSpec.channel_asym()
    assert channel.parameterization == "cartesian" and channel.bits("state") == 16
    assert channel.A == QuantizerConfig(8, "asymmetric", 99.999, "channel", "dynamic", "clipped")
    assert channel.mixing.granularity == "tensor" and channel.bits("dt") == 32
    assert channel.quantized() == ("A", "B", "C", "D", "state", "act", "mixing", "coder")
    assert PrecisionSpec.channel_asym(8, ranges="static").static() == channel.quantized()
    z25 = PrecisionSpec.z25()
    assert z25.quantized() == channel.quantized() and z25.bits("state") == 16 and z25.partial_products
    assert z25.A == replace(channel.A, complex_range="joint", zero_point_bits=16)
    assert z25.state == replace(channel.A, bits=16, complex_range="joint", zero_point_bits=16, clamp=50.0)
    assert z25.y.granularity == "step" and z25.y.clamp == 1000 and z25.decoder_input.granularity == "tensor"
    assert set(PrecisionSpec.z25(8, ranges="static").static()) == set(QUANTIZERS) - {"dt"}
    s25 = PrecisionSpec.s25(6)
    assert s25.parameterization == "continuous" and s25.conv_state_proxy and s25.act_point == "block_output"
    assert s25.quantized() == ("A", "C", "dt", "state", "act", "mixing", "coder")
    assert s25.A == QuantizerConfig(6, "symmetric", 100, "tensor", "dynamic", "identity", symmetric_grid="q-levels")
    assert s25.C.complex_range == "joint" and s25.proxy_config().bits == 5
    assert s25.with_bits("B", 3).B == replace(s25.A, bits=3)  # a float component keeps the recipe's options
    assert all(PrecisionSpec.float().bits(q) == 32 for q in QUANTIZERS)
    assert PrecisionSpec.uniform(4).bits("dt") == 32 and PrecisionSpec.uniform(4, "continuous").bits("dt") == 4
    assert z25.only("state").quantized() == ("state",) and z25.only("state").partial_products


def test_spec_errors_name_the_allowed_values():
    spec = PrecisionSpec.uniform(4)
    with pytest.raises(ValueError, match="the components are"):
        spec.with_bits("E", 4)
    with pytest.raises(ValueError, match="the components are"):
        spec.bits("weights")
    with pytest.raises(ValueError, match="1 to 16"):
        spec.with_bits("A", 17)
    with pytest.raises(ValueError, match="1 to 16"):
        spec.with_bits("A", 0)
    with pytest.raises(ValueError, match="choose one of .*continuous"):
        PrecisionSpec(parameterization="spherical")
    with pytest.raises(ValueError, match="dt"):
        spec.with_bits("dt", 4)  # dt is folded into Ā in the cartesian parameterization
    with pytest.raises(ValueError, match="known fields"):
        spec.replace(weights=FLOAT)
    with pytest.raises(ValueError, match="known keys"):
        PrecisionSpec.from_dict({"A": FLOAT.to_dict(), "mode": "fast"})
    with pytest.raises(TypeError, match="with_bits"):
        PrecisionSpec(A=4)
    with pytest.raises(ValueError, match="choose one of .*block_output"):
        PrecisionSpec(act_point="after")
    with pytest.raises(ValueError, match="choose one of .*half"):
        PrecisionSpec(state_proxy_levels="quarter")
    with pytest.raises(ValueError, match="mixing has no time axis"):
        PrecisionSpec(mixing=QuantizerConfig(4, granularity="step"))
    with pytest.raises(ValueError, match="at least 2 bits"):
        PrecisionSpec(state=QuantizerConfig(1), state_proxy_levels="half")


# -- quantize_ ------------------------------------------------------------------------------------------
def test_float_spec_changes_no_output():
    model, x = tiny_model(), inputs()
    quantized = quantize_(copy.deepcopy(model), PrecisionSpec.float())
    for mode in ("conv", "recurrent"):
        assert torch.equal(quantized(x, mode), model(x, mode))
    for float_value, same in zip(model.blocks[0].ssm.ssm_parameters(), quantized.blocks[0].ssm.ssm_parameters()):
        assert torch.equal(float_value, same)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(quantized, PrecisionSpec.float())


def test_quantized_model_exposes_the_quantized_system():
    model = quantize_(tiny_model(), PrecisionSpec.uniform(3))
    assert precision_of(model) == PrecisionSpec.uniform(3)
    dA, dB, C, D = model.blocks[0].ssm.ssm_parameters()
    for tensor in (dA.real, dA.imag, dB.real, C.imag, D):
        assert torch.unique(tensor.detach()).numel() <= 7  # 3-bit symmetric per tensor
    assert torch.unique(model.blocks[0].mixing.weight.detach()).numel() <= 7
    assert not torch.equal(model.blocks[0].mixing.weight, model.blocks[0].mixing.parametrizations.weight.original)
    state = model.blocks[0].ssm.quantization.state(torch.randn(2, 3, 4, dtype=torch.cfloat))
    assert all(torch.unique(sequence.real).numel() <= 7 for sequence in state)  # ranges per sequence


def test_hard_gelu_replaces_gelu_and_needs_one():
    model = quantize_(tiny_model(), PrecisionSpec.z25(8))
    x = torch.linspace(-4, 4, 17)
    assert torch.equal(model.blocks[0].activation(x), x * torch.clamp(x + 2, 0, 4) / 4)
    assert isinstance(quantize_(tiny_model(), PrecisionSpec.channel_asym(8)).blocks[0].activation, torch.nn.GELU)
    plain = tiny_model(cfg=replace(TINY, activation="none"))
    with pytest.raises(ValueError, match="hard_gelu.*activation='gelu'"):
        quantize_(plain, PrecisionSpec.z25(8))
    assert precision_of(plain) is None and plain.blocks[0].ssm.quantization is None  # nothing half-attached


def test_activation_quantizers_sit_where_the_spec_says():
    model, x = tiny_model(), inputs()
    spec = PrecisionSpec.z25(3)
    quantized = quantize_(copy.deepcopy(model), spec)
    seen = {}
    names = ("encoder_input_quant", "decoder_input_quant", "blocks.0.input_quant", "blocks.0.pre_activation_quant",
             "blocks.0.act_quant", "blocks.0.output_quant")
    modules = dict(quantized.named_modules())
    for name in names:
        modules[name].register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, out))
    with torch.no_grad():
        quantized(x, "recurrent")
    # 3-bit asymmetric: at most 8 levels per range; per step over the channels, per sequence elsewhere
    assert all(torch.unique(step).numel() <= 8 for step in seen["blocks.0.pre_activation_quant"].flatten(0, 1))
    assert all(torch.unique(sequence).numel() <= 8 for sequence in seen["blocks.0.act_quant"])
    assert all(torch.unique(sequence).numel() <= 8 for sequence in seen["decoder_input_quant"])
    assert isinstance(modules["blocks.0.output_quant"], torch.nn.Identity)
    block_output = quantize_(copy.deepcopy(model), PrecisionSpec.s25(3)).blocks[0]
    assert isinstance(block_output.act_quant, torch.nn.Identity) and block_output.output_quant.config.bits == 3


# -- the quantized recurrence: fast path against its reference twin -----------------------------------------
PARITY_SPECS = {
    "symmetric-tensor": PrecisionSpec.uniform(6),
    "asymmetric-channel-percentile": PrecisionSpec.channel_asym(6, 6),
    "symmetric-clipping-percentile": PrecisionSpec.uniform(6).replace(state=QuantizerConfig(6, "symmetric", 90, "channel")),
    "static": PrecisionSpec.channel_asym(6, 5, ranges="static"),
    "partial-products": PrecisionSpec.channel_asym(6, 6).replace(partial_products=True),
    "continuous": PrecisionSpec.s25(6),
    "ternary-state": PrecisionSpec.uniform(6).replace(state=QuantizerConfig(2, ternary=True)),
    "one-bit-state": PrecisionSpec.uniform(6).with_bits("state", 1),
    "polar": PrecisionSpec.channel_asym(6, 6, "polar"),
    "polar-partial-products": PrecisionSpec.channel_asym(6, 6, "polar").replace(partial_products=True),
    # the options of [Z25]'s and [S25]'s code
    "z25": PrecisionSpec.z25(6, 6),
    "z25-polar": PrecisionSpec.z25(6, 6, "polar"),
    "z25-static": PrecisionSpec.z25(6, 5, ranges="static"),
    "joint-zero-point-limited": PrecisionSpec.channel_asym(6, 5).replace(
        state=QuantizerConfig(5, "asymmetric", granularity="channel", complex_range="joint", zero_point_bits=2)
    ),
    "clamps-that-bite": PrecisionSpec.z25(6, 6).replace(
        state=replace(PrecisionSpec.z25(6, 6).state, clamp=0.3), y=QuantizerConfig(6, "asymmetric", granularity="step", clamp=0.5)
    ),
    "static-clamped-state": PrecisionSpec.channel_asym(6, 5, ranges="static").replace(
        state=QuantizerConfig(5, "asymmetric", granularity="channel", ranges="static", clamp=0.3)
    ),
    "q-levels-state-and-y": PrecisionSpec.s25(4).replace(y=QuantizerConfig(4, symmetric_grid="q-levels", granularity="channel")),
    "y-only": PrecisionSpec().replace(y=QuantizerConfig(3, "asymmetric", ste="clipped")),
}


def parity_dtype(spec: PrecisionSpec) -> torch.dtype:
    """float64 where the twins' float results may differ in their last bit before a rounding: the polar form
    (abs/angle/cos/sin, vectorized vs scalar kernels) and y (its sum over modes runs in another order). In
    float64 such a difference never reaches a rounding decision; in float32 it could, once in a while."""
    polar = spec.parameterization == "polar"
    return torch.float64 if polar or not spec.y.is_float else torch.float32


@pytest.mark.parametrize("name", PARITY_SPECS)
@pytest.mark.parametrize("autograd", [False, True], ids=["inference", "autograd"])
def test_fast_recurrence_equals_reference(name, autograd, compute):
    spec = PARITY_SPECS[name]
    dtype = parity_dtype(spec)
    model = quantize_(tiny_model().to(compute, dtype), spec)
    if spec.static():
        calibrate(model, [inputs(4, 24, seed=5, dtype=dtype).to(compute)], "recurrent")
    ssm = model.blocks[0].ssm
    u = inputs(3, 24, channels=3, seed=2, dtype=dtype).to(compute) * 2
    with torch.set_grad_enabled(autograd):
        params = ssm.ssm_parameters()
        fast = quantized_scan(u, params, ssm.quantization)
    reference = quantized_scan_ref(u, params, ssm.quantization)
    # the same rounding decisions: a different one would move y by about a 6-bit step
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    assert fast.requires_grad == autograd
    if not spec.state.is_float:  # the options are felt: the state is not the float one
        float_state = quantize_(tiny_model().to(compute, dtype), spec.with_bits("state", None))
        if spec.static():
            calibrate(float_state, [inputs(4, 24, seed=5, dtype=dtype).to(compute)], "recurrent")
        float_ssm = float_state.blocks[0].ssm
        with torch.no_grad():
            assert (quantized_scan(u, float_ssm.ssm_parameters(), float_ssm.quantization) - fast).abs().max() > 1e-4


def test_clamps_and_zero_point_limits_are_felt_in_the_recurrence():
    model = quantize_(tiny_model().double(), PARITY_SPECS["clamps-that-bite"])
    ssm = model.blocks[0].ssm
    u = inputs(3, 24, channels=3, seed=2, dtype=torch.float64) * 2
    with torch.no_grad():
        params = ssm.ssm_parameters()
        clamped = quantized_scan(u, params, ssm.quantization)
        dA, dB, C, D = params
        # y clamped at ±0.5 before the skip term (its top level may sit half a 6-bit step above)
        assert (clamped - D * u).abs().amax() <= 0.5 * (1 + 1 / 63) + 1e-9
        states, x = [], None
        for t in range(u.shape[1]):
            _, x = ssm.step(u[:, t], ssm.initial_state(3) if x is None else x, params)
            states.append(x)
        planes = torch.view_as_real(torch.stack(states))
        assert planes.abs().max() <= 0.3 * (1 + 1 / 63) + 1e-9 and (planes.abs() > 0.29).any()  # clamped at ±0.3, reached


@pytest.mark.parametrize("name", PARITY_SPECS)
def test_fast_recurrence_gradients_equal_reference(name, compute):
    """Training in recurrent mode: the fast path's gradients (through every straight-through estimator)
    are the reference twin's, for the input and every trainable SSM parameter."""
    spec = PARITY_SPECS[name]
    model = quantize_(tiny_model().to(compute, torch.float64), spec)
    if spec.static():
        calibrate(model, [inputs(4, 24, seed=5, dtype=torch.float64).to(compute)], "recurrent")
    ssm = model.blocks[0].ssm
    leaves = [p for p in ssm.parameters() if p.requires_grad]
    weights = inputs(3, 24, channels=3, seed=7, dtype=torch.float64).to(compute)  # a loss that weighs every output

    def gradients(scan):
        u = (inputs(3, 24, channels=3, seed=2, dtype=torch.float64).to(compute) * 2).requires_grad_()
        y = scan(u, ssm.ssm_parameters(), ssm.quantization)
        return torch.autograd.grad((y * weights).sum(), [u, *leaves], allow_unused=True)

    for fast, reference in zip(gradients(quantized_scan), gradients(quantized_scan_ref)):
        assert (fast is None) == (reference is None)
        if fast is not None:
            assert reference.abs().max() > 0
            torch.testing.assert_close(fast, reference, atol=1e-9, rtol=1e-7)


def test_model_recurrent_mode_runs_the_quantized_recurrence():
    model, x = quantize_(tiny_model(), PrecisionSpec.uniform(8).with_bits("state", 3)), inputs()
    ssm = model.blocks[0].ssm
    u = model.encoder(x).detach()
    with torch.no_grad():
        params = ssm.ssm_parameters()
        y = ssm(u, "recurrent")
        torch.testing.assert_close(y, quantized_scan_ref(u, params, ssm.quantization), atol=1e-5, rtol=0)
        float_state = copy.deepcopy(ssm)
        float_state.set_transform("quantization", None)
        assert (y - float_state.scan(u)).abs().max() > 1e-3  # a 3-bit state is felt
        # stepping by hand gives the same sequence
        x_t, ys = ssm.initial_state(u.shape[0]), []
        for t in range(u.shape[1]):
            y_t, x_t = ssm.step(u[:, t], x_t, params)
            ys.append(y_t)
        torch.testing.assert_close(torch.stack(ys, 1), y, atol=1e-5, rtol=0)


def test_conv_matches_recurrent_when_the_state_is_float():
    float_model, x = tiny_model(), inputs()
    spec = PrecisionSpec.uniform(4).with_bits("state", None).with_bits("act", None)  # everything else 4 bit
    with torch.no_grad():
        model = ptq_model(float_model, spec)
        torch.testing.assert_close(model(x, "conv"), model(x, "recurrent"), atol=1e-4, rtol=0)
        assert (model(x) - float_model(x)).abs().max() > 1e-3
        # a 16-bit state stays close; the [S25] proxy quantizes kernel and input in conv mode instead
        z25 = ptq_model(float_model, PrecisionSpec.channel_asym(8, 16).with_bits("act", None))
        torch.testing.assert_close(z25(x, "conv"), z25(x, "recurrent"), atol=1e-3, rtol=0)
        s25 = ptq_model(float_model, PrecisionSpec.s25(4))
        assert s25.blocks[0].ssm.quantization.state_kernel is not None
        assert (s25(x, "conv") - s25(x, "recurrent")).abs().max() > 1e-4


# -- static ranges ------------------------------------------------------------------------------------------
def test_static_ranges_calibrate_in_the_modes_that_use_them():
    float_model, x = tiny_model(), inputs()
    spec = PrecisionSpec.channel_asym(4, 6, ranges="static")
    with pytest.raises(ValueError, match="calibration_batches"):
        ptq_model(float_model, spec)
    model = quantize_(copy.deepcopy(float_model), spec)
    calibrate(model, [inputs(8, seed=3)], "conv")
    model(x, "conv")
    with pytest.raises(RuntimeError, match="recurrent"):
        model(x, "recurrent")  # the state exists only in recurrent mode
    calibrate(model, [inputs(8, seed=3)], "recurrent")
    lo = model.blocks[0].ssm.quantization.A.parts.lo.clone()
    with torch.no_grad():
        y = model(x, "recurrent")
        # fixed ranges: each sample's output no longer depends on the rest of its batch
        torch.testing.assert_close(model(x[:1], "recurrent"), y[:1], atol=1e-6, rtol=0)
    assert torch.equal(model.blocks[0].ssm.quantization.A.parts.lo, lo)  # recurrent calibration kept conv's ranges
    ptq = ptq_model(float_model, spec, [(inputs(8, seed=3), None)])
    with torch.no_grad():
        torch.testing.assert_close(ptq(x, "recurrent"), y, atol=1e-6, rtol=0)
    restored = quantize_(tiny_model(seed=9), spec)
    restored.load_state_dict(ptq.state_dict())
    with torch.no_grad():
        assert torch.equal(restored(x, "recurrent"), ptq(x, "recurrent"))


# -- stability -------------------------------------------------------------------------------------------
def set_discrete_A(model: S4DModel, dA: torch.Tensor) -> None:
    """Make the layer's Ā equal dA (H, n) by choosing dt = 1 and A = log Ā."""
    ssm = model.blocks[0].ssm
    with torch.no_grad():
        ssm.log_dt.zero_()
        ssm.log_A_real.copy_(torch.log(-torch.log(dA.abs())))
        ssm.A_imag.copy_(dA.angle())


def test_stability_report_flags_modes_pushed_outside_the_unit_circle():
    model = tiny_model(cfg=ModelConfig(d_model=1, d_state=4))
    # |Ā| < 1 in float; 2-bit per-tensor cartesian rounding moves the second mode to 1 + 1j
    set_discrete_A(model, torch.tensor([[0.99 + 0.1j, 0.6 + 0.75j]]))
    [row] = stability_report(model)
    assert row["stable"] and row["max_abs_A"] < 1
    quantized = ptq_model(model, PrecisionSpec().with_bits("A", 2))
    [row] = stability_report(quantized)
    assert not row["stable"] and row["unstable_modes"] == 1
    assert math.isclose(row["max_abs_A"], math.hypot(0.99, 0.75), rel_tol=1e-5)


# -- QAT --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["conv", "recurrent"])
def test_gradients_flow_through_the_quantizers(mode):
    model = quantize_(tiny_model(), PrecisionSpec.z25(4, 4, "polar"))
    loss = model(inputs(), mode).logsumexp(-1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


DIGITS = ModelConfig(d_model=8, d_state=8)
FLOAT_RUN = TrainConfig(dataset="digits", epochs=6, batch_size=25, lr=3e-2, compute="cpu")


@pytest.fixture(scope="module")
def digits_float_model(tmp_path_factory):
    cache = tmp_path_factory.mktemp("models")
    model, metrics = float_model(DIGITS, FLOAT_RUN, cache, progress=False)
    assert metrics["test_acc_conv"] > 0.5
    return model, cache


def test_qat_fine_tuning_beats_ptq_on_digits(digits_float_model):
    float_model, cache = digits_float_model
    # static ranges, calibrated on training batches; a float state lets conv-mode QAT see every quantizer
    spec = PrecisionSpec.uniform(4, ranges="static").with_bits("state", None)
    train_loader, _, test_loader = make_loaders(load_dataset("digits"), 25, 0)
    ptq_acc = evaluate(ptq_model(float_model, spec, list(itertools.islice(train_loader, 8))), test_loader)
    finetune = replace(FLOAT_RUN, epochs=2, lr=1e-2)
    qat, metrics = qat_model(DIGITS, finetune, spec, finetune_from=FLOAT_RUN, cache_dir=cache, progress=False)
    assert metrics["test_acc_conv"] > ptq_acc + 0.05
    assert qat.blocks[0].act_quant.hi is not None
    assert metrics["precision"] == spec.to_dict() and metrics["finetune_from"]["epochs"] == FLOAT_RUN.epochs
    again, cached = qat_model(DIGITS, finetune, spec, finetune_from=FLOAT_RUN, cache_dir=cache, progress=False)
    assert cached["test_acc_conv"] == metrics["test_acc_conv"]
    x = inputs(2, 64)
    with torch.no_grad():
        assert torch.equal(again(x), qat(x))


def test_qat_from_scratch_in_recurrent_mode_trains(tmp_path):
    run = replace(FLOAT_RUN, epochs=2, mode="recurrent")  # through the deployed, re-quantized state
    _, metrics = qat_model(DIGITS, run, PrecisionSpec.s25(6), cache_dir=tmp_path, progress=False)
    first, second = (epoch["train_loss"] for epoch in metrics["history"])
    assert second < first and metrics["test_acc_recurrent"] > 0.15


def test_qat_divergence_stops_with_a_clear_error(tmp_path):
    with pytest.raises(DivergenceError, match="lr"):
        qat_model(DIGITS, replace(FLOAT_RUN, epochs=1, lr=1e8), PrecisionSpec.uniform(4), cache_dir=tmp_path, progress=False)
