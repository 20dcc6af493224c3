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
from aimc_ssm.quant.precision import COMPONENTS, PrecisionSpec
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
        PrecisionSpec.z25(8),
        PrecisionSpec.z25(6, 12, "polar", ranges="static"),
        PrecisionSpec.s25(7).with_bits("state", 5).replace(partial_products=True),
    ],
)
def test_spec_round_trips_through_json_and_dict(spec):
    assert PrecisionSpec.from_json(spec.to_json()) == spec
    assert PrecisionSpec.from_dict(spec.to_dict()) == spec


def test_presets_follow_the_recipes():
    z25 = PrecisionSpec.z25()
    assert z25.parameterization == "cartesian" and z25.bits("state") == 16
    assert z25.A == QuantizerConfig(8, "asymmetric", 99.999, "channel", "dynamic", "clipped")
    assert z25.mixing.granularity == "tensor" and z25.bits("dt") == 32
    assert z25.quantized() == ("A", "B", "C", "D", "state", "act", "mixing", "coder")
    s25 = PrecisionSpec.s25(6)
    assert s25.parameterization == "continuous" and s25.conv_state_proxy
    assert s25.quantized() == ("A", "C", "dt", "state", "act", "mixing", "coder")
    assert s25.A == QuantizerConfig(6, "symmetric", 100, "tensor", "dynamic", "identity")
    assert s25.with_bits("B", 3).B == replace(s25.A, bits=3)  # a float component keeps the recipe's options
    assert all(PrecisionSpec.float().bits(c) == 32 for c in COMPONENTS)
    assert PrecisionSpec.uniform(4).bits("dt") == 32 and PrecisionSpec.uniform(4, "continuous").bits("dt") == 4
    assert PrecisionSpec.z25(8, ranges="static").static() == z25.quantized()


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
    assert torch.unique(state.real).numel() <= 7


# -- the quantized recurrence: fast path against its reference twin -----------------------------------------
PARITY_SPECS = {
    "symmetric-tensor": PrecisionSpec.uniform(6),
    "asymmetric-channel-percentile": PrecisionSpec.z25(6, 6),
    "symmetric-clipping-percentile": PrecisionSpec.uniform(6).replace(state=QuantizerConfig(6, "symmetric", 90, "channel")),
    "static": PrecisionSpec.z25(6, 5, ranges="static"),
    "partial-products": PrecisionSpec.z25(6, 6).replace(partial_products=True),
    "continuous": PrecisionSpec.s25(6),
    "ternary-state": PrecisionSpec.uniform(6).replace(state=QuantizerConfig(2, ternary=True)),
    "one-bit-state": PrecisionSpec.uniform(6).with_bits("state", 1),
    "polar": PrecisionSpec.z25(6, 6, "polar"),
    "polar-partial-products": PrecisionSpec.z25(6, 6, "polar").replace(partial_products=True),
}


@pytest.mark.parametrize("name", PARITY_SPECS)
@pytest.mark.parametrize("autograd", [False, True], ids=["inference", "autograd"])
def test_fast_recurrence_equals_reference(name, autograd, compute):
    spec = PARITY_SPECS[name]
    # polar form goes through abs/angle/cos/sin, whose vectorized and scalar kernels may differ in the
    # last float32 bit; in float64 such a difference never reaches a rounding decision
    dtype = torch.float64 if spec.parameterization == "polar" else torch.float32
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
        z25 = ptq_model(float_model, PrecisionSpec.z25(8, 16).with_bits("act", None))
        torch.testing.assert_close(z25(x, "conv"), z25(x, "recurrent"), atol=1e-3, rtol=0)
        s25 = ptq_model(float_model, PrecisionSpec.s25(4))
        assert s25.blocks[0].ssm.quantization.state_kernel is not None
        assert (s25(x, "conv") - s25(x, "recurrent")).abs().max() > 1e-4


# -- static ranges ------------------------------------------------------------------------------------------
def test_static_ranges_calibrate_in_the_modes_that_use_them():
    float_model, x = tiny_model(), inputs()
    spec = PrecisionSpec.z25(4, 6, ranges="static")
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
