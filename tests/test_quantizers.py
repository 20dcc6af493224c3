"""Tests for aimc_ssm.quant.quantizers: every quantizer option, on small generated tensors."""
from __future__ import annotations

import math

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
