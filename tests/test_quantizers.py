"""Tests for aimc_ssm.quant.quantizers: every quantizer option, on small generated tensors."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from aimc_ssm.quant.quantizers import (
    FLOAT,
    Z25_PERCENTILE,
    ComplexQuantizer,
    FakeQuantizer,
    QuantizerConfig,
    fake_quantize_,
)


def quantizer(**options) -> FakeQuantizer:
    return FakeQuantizer(QuantizerConfig(**options), channel_dim=-2)


# -- configuration -------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, True])
def test_bits_out_of_range_name_the_allowed_range(bits):
    with pytest.raises(ValueError, match="1 to 16, or None"):
        QuantizerConfig(bits=bits)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"scheme": "log"}, "scheme"),
        ({"granularity": "row"}, "granularity"),
        ({"ranges": "ema"}, "ranges"),
        ({"ste": "tanh"}, "ste"),
        ({"percentile": 40}, "percentile"),
        ({"percentile": 101}, "percentile"),
        ({"ternary": True}, "bits=2"),
        ({"ternary": True, "bits": 2, "scheme": "asymmetric"}, "symmetric"),
        ({"ternary": True, "bits": 2, "percentile": 99.0}, "percentile"),
    ],
)
def test_invalid_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        QuantizerConfig(**options)


def test_percentile_defaults_follow_the_recipes():
    assert QuantizerConfig(scheme="asymmetric").percentile == Z25_PERCENTILE
    assert QuantizerConfig(scheme="symmetric").percentile == 100
    config = QuantizerConfig(bits=5, scheme="asymmetric", granularity="channel", ranges="static", ste="clipped")
    assert QuantizerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown quantizer config keys"):
        QuantizerConfig.from_dict({"bit": 4})


def test_per_channel_needs_a_channel_axis():
    with pytest.raises(ValueError, match="channel_dim"):
        FakeQuantizer(QuantizerConfig(granularity="channel"))


# -- levels ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", range(1, 17))
def test_b_bits_give_at_most_2_to_the_b_levels(scheme, bits):
    x = torch.linspace(-3 if scheme == "symmetric" else -1.3, 3, 70_001).double()
    config = QuantizerConfig(bits=bits, scheme=scheme, percentile=100)
    levels = torch.unique(FakeQuantizer(config)(x)).numel()
    assert levels <= 2**bits
    assert levels == config.levels  # dense enough input hits every level


def test_symmetric_abs_max_grid():
    x = torch.tensor([-0.3, 0.0, 0.26, 1.2])
    xq = quantizer(bits=3)(x)  # steps of 1.2 / 3
    assert torch.allclose(xq, torch.tensor([-0.4, 0.0, 0.4, 1.2]))
    assert xq[1] == 0  # zero stays exact


def test_one_bit_symmetric_is_plus_minus_half_range():
    x = torch.tensor([-2.0, -0.1, 0.0, 0.5, 4.0])
    assert torch.equal(quantizer(bits=1)(x), torch.tensor([-2.0, -2.0, 2.0, 2.0, 2.0]))


def test_asymmetric_grid_spans_min_to_max():
    x = torch.linspace(0.5, 1.0, 1001)  # all positive, like |Ā|
    xq = quantizer(bits=4, scheme="asymmetric", percentile=100)(x)
    step = 0.5 / 15
    assert (xq - x).abs().max() <= step / 2 + 1e-6
    assert torch.unique(xq).numel() == 16


def test_percentile_clips_outliers():
    x = torch.cat([torch.randn(200_000, generator=torch.Generator().manual_seed(0)), torch.tensor([1000.0])])
    clipped = quantizer(bits=8, scheme="asymmetric")(x)  # percentile 99.999
    kept = quantizer(bits=8, scheme="asymmetric", percentile=100)(x)
    assert clipped.max() < 10 and kept.max() > 999
    # clipping buys resolution for the bulk of the values
    bulk = x.abs() < 3
    assert (clipped - x)[bulk].abs().max() < (kept - x)[bulk].abs().max() / 10
    symmetric = quantizer(bits=8, percentile=99.9)(x)
    assert symmetric.max() < 10


def test_per_channel_ranges_follow_each_channel():
    x = torch.stack([torch.linspace(-1, 1, 101), torch.linspace(-1e-3, 1e-3, 101)])  # (channels, values)
    per_tensor = quantizer(bits=4)(x)
    per_channel = quantizer(bits=4, granularity="channel")(x)
    assert torch.all(per_tensor[1] == 0)  # the small channel vanishes under the big one's range
    assert (per_channel[1] - x[1]).abs().max() <= 1e-3 / 7 / 2 + 1e-9
    assert torch.equal(per_channel[0], per_tensor[0])


def test_ternary_values():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    xq = FakeQuantizer(QuantizerConfig(bits=2, ternary=True))(x)
    scale = x.abs().mean()
    assert set(torch.unique(xq / scale).round().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.allclose(torch.unique(xq.abs()), torch.stack([torch.tensor(0.0), scale]))
    assert torch.equal(xq == 0, x.abs() < scale / 2)


def test_float_passes_through():
    x = torch.randn(5)
    assert FakeQuantizer(FLOAT)(x) is x
    z = x.to(torch.cfloat)
    assert ComplexQuantizer(FLOAT)(z) is z


def test_constant_tensors_stay_exact():
    for scheme in ("symmetric", "asymmetric"):
        for value in (0.0, 0.7, -2.0):
            x = torch.full((4, 3), value)
            assert torch.equal(quantizer(bits=3, scheme=scheme)(x), x)


def test_in_place_rounding_matches():
    x = torch.randn(50, 6, generator=torch.Generator().manual_seed(2))
    q = quantizer(bits=5, scheme="asymmetric", granularity="channel")
    assert torch.equal(fake_quantize_(x.clone(), q.grid(x)), q(x))


# -- ranges: dynamic and static -------------------------------------------------------------------
def calibrated(q: FakeQuantizer, *batches) -> FakeQuantizer:
    q.observing, q.observations = True, 0
    for batch in batches:
        assert q(batch) is batch  # observation passes values through
    q.observing = False
    return q


def test_static_ranges_need_calibration():
    with pytest.raises(RuntimeError, match="calibrate"):
        quantizer(bits=4, ranges="static")(torch.randn(3))


def test_static_ranges_are_observed_then_frozen():
    q = calibrated(quantizer(bits=4, scheme="asymmetric", percentile=100, ranges="static"), torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.5]))
    assert q.lo.item() == -1 and q.hi.item() == 1  # min of the lows, max of the highs
    wide = torch.tensor([-3.0, 0.2, 3.0])
    assert q(wide).abs().max() <= 1 + 2 / 15  # frozen: clipped to the calibrated range
    dynamic = quantizer(bits=4, scheme="asymmetric", percentile=100)
    assert (dynamic(wide) - wide).abs().max() <= 6 / 15 / 2 + 1e-6  # dynamic: follows the input


def test_static_per_channel_ranges_and_state_dict():
    q = calibrated(quantizer(bits=6, granularity="channel", ranges="static"), torch.randn(3, 40), 5 * torch.randn(3, 40))
    assert q.hi.shape == (3,)
    fresh = quantizer(bits=6, granularity="channel", ranges="static")
    fresh.load_state_dict(q.state_dict())
    x = torch.randn(3, 10)
    assert torch.equal(fresh(x), q(x))
    # ranges do not depend on the leading (batch) axes of what they are applied to
    assert torch.equal(q(x[None].expand(2, 3, 10))[1], q(x))


# -- straight-through gradients ---------------------------------------------------------------------
@pytest.mark.parametrize("ste, expected", [("identity", [1.0, 1.0, 1.0, 1.0]), ("clipped", [0.0, 1.0, 1.0, 0.0])])
def test_straight_through_gradients(ste, expected):
    q = calibrated(quantizer(bits=4, ste=ste, ranges="static"), torch.tensor([-1.0, 1.0]))
    x = torch.tensor([-2.0, -0.3, 0.6, 2.0], requires_grad=True)
    q(x).sum().backward()
    assert x.grad.tolist() == expected


def test_complex_quantizer_forms():
    z = torch.polar(torch.linspace(0.5, 0.99, 64), torch.linspace(-3, 3, 64))
    cartesian = ComplexQuantizer(QuantizerConfig(bits=3), "cartesian")(z)
    assert torch.unique(cartesian.real).numel() <= 7 and torch.unique(cartesian.imag).numel() <= 7
    polar = ComplexQuantizer(QuantizerConfig(bits=3, scheme="asymmetric", percentile=100), "polar")(z)
    magnitudes = torch.unique(polar.abs().round(decimals=5))
    assert magnitudes.numel() <= 8 and magnitudes.max() <= 0.99 + 1e-5
    angle_error = torch.remainder(polar.angle() - z.angle() + math.pi, 2 * math.pi) - math.pi
    assert angle_error.abs().max() <= 6 / 7 / 2 + 1e-5
    with pytest.raises(ValueError, match="form"):
        ComplexQuantizer(FLOAT, "spherical")


def test_polar_gradient_is_finite_at_zero():
    z = torch.zeros(4, dtype=torch.cfloat, requires_grad=True)
    ComplexQuantizer(QuantizerConfig(bits=4), "polar")(z).abs().sum().backward()
    assert torch.isfinite(torch.view_as_real(z.grad)).all()


def test_level_count_formula():
    assert QuantizerConfig(bits=8).levels == 255
    assert QuantizerConfig(bits=8, scheme="asymmetric").levels == 256
    assert QuantizerConfig(bits=2, ternary=True).levels == 3
    assert QuantizerConfig(bits=1).levels == 2 and FLOAT.levels is None


# -- the options of the seeds' code ----------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"complex_range": "both"}, "complex_range"),
        ({"symmetric_grid": "wide"}, "symmetric_grid"),
        ({"symmetric_grid": "q-levels", "scheme": "asymmetric"}, "q-levels.*symmetric"),
        ({"symmetric_grid": "q-levels", "bits": 2, "ternary": True}, "ternary=False"),
        ({"zero_point_bits": 16}, "asymmetric"),
        ({"zero_point_bits": 0, "scheme": "asymmetric"}, "1 to 32"),
        ({"zero_point_bits": 33, "scheme": "asymmetric"}, "1 to 32"),
        ({"zero_point_bits": True, "scheme": "asymmetric"}, "1 to 32"),
        ({"granularity": "step", "ranges": "static"}, "step.*dynamic"),
        ({"clamp": -1.0}, "clamp"),
        ({"clamp": math.inf}, "clamp"),
        ({"clamp": True}, "clamp"),
    ],
)
def test_seed_options_are_validated(options, message):
    with pytest.raises(ValueError, match=message):
        QuantizerConfig(**options)


def test_configs_without_the_newer_fields_keep_their_meaning():
    old = {"bits": 5, "scheme": "asymmetric", "percentile": 99.0, "granularity": "channel", "ranges": "static", "ste": "clipped", "ternary": False}
    config = QuantizerConfig.from_dict(old)
    assert (config.complex_range, config.zero_point_bits, config.symmetric_grid, config.clamp) == ("planes", None, "narrow", None)
    new = QuantizerConfig(4, "asymmetric", complex_range="joint", zero_point_bits=8, clamp=2.5)
    assert QuantizerConfig.from_dict(new.to_dict()) == new


def s25_max_quant(a: torch.Tensor, q: int) -> torch.Tensor:
    """[S25]'s abs-max quantizer (BitNet b1.58) at q levels, as its paper writes it."""
    scale = (q / 2) / a.abs().max()
    return torch.clamp((a * scale).round(), -q // 2, q // 2) / scale


@pytest.mark.parametrize("bits", [1, 2, 3, 6, 8])
def test_q_levels_grid_is_s25s(bits):
    x = torch.randn(4000, generator=torch.Generator().manual_seed(3)).double()
    config = QuantizerConfig(bits, symmetric_grid="q-levels")
    xq = FakeQuantizer(config)(x)
    torch.testing.assert_close(xq, s25_max_quant(x, 2**bits), rtol=1e-12, atol=1e-12)
    dense = torch.linspace(-3, 3, 70_001).double()
    assert torch.unique(FakeQuantizer(config)(dense)).numel() == config.levels == 2**bits + 1


def z25_tensor_quant(x, lo, hi, bits: int, zero_point_bits: int):
    """[Z25]'s asymmetric fake quantization as its code computes it: signed integers from -2^(b-1), a
    zero point clamped to a signed zero_point_bits integer, then dequantized."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    z_limit = 2 ** (zero_point_bits - 1)
    scale = (hi - lo) / (high - low)
    zero_point = torch.clamp(torch.round(low - lo / scale), -z_limit, z_limit - 1)
    return (torch.clamp(torch.round(x / scale + zero_point), low, high) - zero_point) * scale


@pytest.mark.parametrize("zero_point_bits", [16, 4])
def test_zero_point_held_on_its_bits_as_z25s_code(zero_point_bits):
    # a range far from zero: its zero point needs about 11 bits, so 4 bits clamp it and move the grid
    x = torch.linspace(100.0, 101.0, 301, dtype=torch.float64)
    config = QuantizerConfig(4, "asymmetric", percentile=100, zero_point_bits=zero_point_bits)
    xq = FakeQuantizer(config)(x)
    torch.testing.assert_close(xq, z25_tensor_quant(x, x.min(), x.max(), 4, zero_point_bits), rtol=0, atol=1e-9)
    unlimited = FakeQuantizer(replace(config, zero_point_bits=None))(x)
    if zero_point_bits == 16:
        assert torch.equal(xq, unlimited)  # a 16-bit zero point holds this range's
    else:
        assert (xq - x).abs().min() > 50 and (unlimited - x).abs().max() < 1 / 15  # the grid moved far from x


def test_joint_complex_range_shares_one_step_per_channel():
    z = torch.complex(torch.tensor([[0.01, -0.02, 0.015], [0.5, 0.4, -0.3]]), torch.tensor([[0.9, -0.8, 0.1], [0.2, -0.1, 0.05]]))
    joint = ComplexQuantizer(QuantizerConfig(4, "asymmetric", percentile=100, granularity="channel", complex_range="joint"), channel_dim=-2)
    planes = ComplexQuantizer(QuantizerConfig(4, "asymmetric", percentile=100, granularity="channel"), channel_dim=-2)
    step_joint = joint.parts.grid(torch.stack((z.real, z.imag))).scale
    assert step_joint.shape == (1, 2, 1)  # one range per channel for both planes
    torch.testing.assert_close(step_joint[0, 0, 0], torch.tensor(1.7 / 15))  # [-0.8, 0.9] of channel 0
    # the small real parts of channel 0 fall on the imaginary parts' coarse grid
    assert (joint(z).real[0] - z.real[0]).abs().max() > (planes(z).real[0] - z.real[0]).abs().max() * 5


def test_clamp_comes_before_the_range():
    x = torch.tensor([-0.5, 0.2, 0.9, 100.0])
    xq = FakeQuantizer(QuantizerConfig(8, "asymmetric", percentile=100, clamp=1.0))(x)
    assert xq.max() <= 1 + 1.5 / 255 and (xq[:3] - x[:3]).abs().max() <= 1.5 / 255  # range [-0.5, 1], not 100
    assert torch.equal(FakeQuantizer(QuantizerConfig(None, clamp=1.0))(x), x)  # float clamps nothing
    x = x.clone().requires_grad_()
    FakeQuantizer(QuantizerConfig(8, clamp=1.0))(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]  # no gradient through the clamped value


@pytest.mark.parametrize("options", [{}, {"granularity": "channel"}, {"granularity": "step"}, {"ternary": True, "bits": 2},
                                     {"scheme": "asymmetric", "percentile": 90.0}])
def test_dynamic_ranges_are_per_sequence(options):
    """A sequence quantizes to the same values alone as in a batch of sequences with other ranges."""
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(4)) * torch.tensor([0.01, 1.0, 100.0])[:, None, None]
    q = FakeQuantizer(QuantizerConfig(**{"bits": 4, **options}), channel_dim=-1, batch_dim=-3, step_dim=-2)
    together = q(x)
    for b in range(3):
        assert torch.equal(together[b : b + 1], q(x[b : b + 1]))
        assert torch.equal(q.quantize_(x[b : b + 1].clone()), together[b : b + 1])
    per_step = FakeQuantizer(QuantizerConfig(4, granularity="step"), step_dim=-2, batch_dim=-3)(x)
    for t in range(5):  # one range per (sequence, step) over the channels
        assert torch.equal(per_step[1, t], FakeQuantizer(QuantizerConfig(4))(x[1, t]))


def test_static_ranges_pool_every_sequence_and_ignore_the_batch():
    q = FakeQuantizer(QuantizerConfig(4, percentile=100, ranges="static", granularity="channel"), channel_dim=-1, batch_dim=-3)
    calibrated(q, torch.tensor([[[1.0, -2.0]], [[3.0, 0.5]]]))
    assert q.hi.tolist() == [3.0, 2.0]  # per channel over both sequences
    x = torch.randn(4, 2, 2)
    assert torch.equal(q(x)[2:3], q(x[2:3]))


def test_per_step_ranges_need_a_time_axis():
    with pytest.raises(ValueError, match="time axis"):
        FakeQuantizer(QuantizerConfig(4, granularity="step"))
    with pytest.raises(ValueError, match="negative axis"):
        FakeQuantizer(QuantizerConfig(4), batch_dim=0)
