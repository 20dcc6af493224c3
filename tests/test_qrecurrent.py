"""The quantized recurrence's fast path: its in-place rounding of channel-major planes takes every
decision the state quantizer takes, and its benchmark runs every setting it offers."""
from __future__ import annotations

import runpy
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.qrecurrent import _ChannelMajorRounding, quantized_scan, quantized_scan_ref
from aimc_ssm.quant.quantize import calibrate, quantize_
from aimc_ssm.quant.quantizers import ComplexQuantizer, QuantizerConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

ROOT = Path(__file__).resolve().parents[1]

# one of each grid the state may have: ranges from extremes and from a selection (percentile 90 of 16
# modes is below the maximum), numbers or tensors as bounds, the 1-bit grid's offset, a held zero point,
# a clamp that bites, [S25]'s q-levels; the ternary mean and the polar form take the batch-major copy
STATE_CONFIGS = {
    "asymmetric-channel": QuantizerConfig(6, "asymmetric", granularity="channel"),
    "asymmetric-percentile": QuantizerConfig(6, "asymmetric", percentile=90, granularity="channel", ste="clipped"),
    "symmetric-tensor": QuantizerConfig(5),
    "one-bit": QuantizerConfig(1, granularity="channel"),
    "joint-zero-point": QuantizerConfig(5, "asymmetric", granularity="channel", complex_range="joint", zero_point_bits=2),
    "clamped": QuantizerConfig(5, "asymmetric", granularity="channel", clamp=0.3),
    "q-levels": QuantizerConfig(4, symmetric_grid="q-levels", granularity="channel"),
    "ternary": QuantizerConfig(2, ternary=True, granularity="channel"),
}


def planes(batch=5, channels=3, modes=16, seed=0) -> torch.Tensor:
    """Batch-major state planes (2, B, H, n), each channel on a scale of its own."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.rand(1, 1, channels, 1, generator=g) * 2 + 0.05
    return torch.randn(2, batch, channels, modes, generator=g) * scales


def state_quantizer(config: QuantizerConfig, form: str) -> ComplexQuantizer:
    """The state's quantizer as aimc_ssm.quant.quantize builds it; static ranges observed on other values."""
    quantizer = ComplexQuantizer(config, form, channel_dim=-2, batch_dim=-3)
    if quantizer.parts.is_static:
        quantizer.parts.observing = True
        quantizer.quantize_planes(planes(batch=7, seed=1))
        quantizer.parts.observing = False
    return quantizer


@pytest.mark.parametrize("form", ["cartesian", "polar"])
@pytest.mark.parametrize("ranges", ["dynamic", "static"])
@pytest.mark.parametrize("name", STATE_CONFIGS)
def test_channel_major_rounding_takes_the_quantizers_decisions(name, ranges, form):
    config = replace(STATE_CONFIGS[name], ranges=ranges)
    quantizer = state_quantizer(config, form)
    values = planes()
    expected = quantizer.quantize_planes(values.clone())  # (2, B, H, n)
    channel_major = values.transpose(1, 2).contiguous()  # (2, H, B, n), as the fast scan holds the state
    rounding = _ChannelMajorRounding(quantizer, channel_major)
    got = rounding.round_(channel_major).transpose(1, 2)
    assert torch.equal(got, expected)
    assert (got != values).any()  # the grid is felt
    # the grid is rounded where the values lie, without a copy, wherever the ranges ignore the values' order
    assert rounding.in_place == (form == "cartesian" and not config.ternary)


def test_a_rounding_calibrating_its_ranges_leaves_the_values_and_observes_them():
    config = QuantizerConfig(6, "asymmetric", granularity="channel", ranges="static")
    quantizer = ComplexQuantizer(config, channel_dim=-2, batch_dim=-3)
    quantizer.parts.observing = True
    values = planes()
    channel_major = values.transpose(1, 2).contiguous()
    rounding = _ChannelMajorRounding(quantizer, channel_major)
    assert not rounding.in_place
    assert torch.equal(rounding.round_(channel_major.clone()), channel_major)
    assert quantizer.parts.observations == 1
    torch.testing.assert_close(quantizer.parts.hi, values.amax(dim=(1, 3)), rtol=0, atol=0)  # (planes, channels)


def quantized_layer(spec, d_model: int, d_state: int, seed: int, calibration_length: int, dtype=torch.float64):
    """The S4D layer of a model in `dtype` quantized with `spec` (calibrated in recurrent mode when its ranges
    are static), and the generator that drew the calibration, for the test's own inputs."""
    torch.manual_seed(0)
    model = quantize_(S4DModel(ModelConfig(d_model=d_model, d_state=d_state)).to(dtype), spec).eval()
    g = torch.Generator().manual_seed(seed)
    if spec.static():
        calibrate(model, [torch.randn(4, calibration_length, 1, generator=g, dtype=dtype)], "recurrent")
    return model.blocks[0].ssm, g


@pytest.mark.parametrize("ranges, partial_products", [("static", False), ("dynamic", False), ("static", True)])
def test_the_benchmarks_settings_round_as_the_reference(ranges, partial_products):
    """The benchmark's spec (8-bit weights, a 16-bit state) on a small layer: in float64 the twins' outputs
    differ only by the order of y's sum over modes (1e-16), a different rounding of the state by a 16-bit step."""
    spec = PrecisionSpec.channel_asym(8, 16, ranges=ranges).replace(partial_products=partial_products)
    ssm, g = quantized_layer(spec, d_model=4, d_state=16, seed=3, calibration_length=40)
    u = torch.randn(6, 40, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        params = ssm.ssm_parameters()
        fast = quantized_scan(u, params, ssm.quantization)
        reference = quantized_scan_ref(u, params, ssm.quantization)
    torch.testing.assert_close(fast, reference, atol=1e-12, rtol=0)


@pytest.mark.parametrize("ranges", ["static", "dynamic"])
def test_an_initial_state_is_taken_as_the_reference_takes_it(ranges):
    ssm, g = quantized_layer(PrecisionSpec.channel_asym(8, 12, ranges=ranges), d_model=3, d_state=8, seed=5, calibration_length=32)
    u = torch.randn(5, 20, 3, generator=g, dtype=torch.float64)
    x0 = torch.randn(5, 3, 4, generator=g, dtype=torch.complex128) * 0.3
    with torch.no_grad():
        params = ssm.ssm_parameters()
        fast = quantized_scan(u, params, ssm.quantization, x0)
        torch.testing.assert_close(fast, quantized_scan_ref(u, params, ssm.quantization, x0), atol=1e-12, rtol=0)
        assert (fast - quantized_scan(u, params, ssm.quantization)).abs().max() > 1e-3  # x0 is felt


def mode_probe(C: torch.Tensor, mode: int, imaginary: bool) -> torch.Tensor:
    """An output matrix that reads one mode of the state exactly: y = 2·Re(C·x) = 2·Re x_k (C = e_k) or
    2·Im x_k (C = -i·e_k). Every other product is a zero, so both twins' sums over modes are exact."""
    probe = torch.zeros_like(C)
    probe[:, mode] = -1j if imaginary else 1
    return probe


@pytest.mark.parametrize("ranges, partial_products", [("static", False), ("dynamic", False), ("static", True)])
def test_the_fast_state_is_the_references_bit_for_bit(ranges, partial_products):
    """float32, where a product summed in another order or a fused multiply-add would move some rounding
    decision: every mode of the state, read out exactly, equals the reference's at every step."""
    spec = PrecisionSpec.channel_asym(8, 12, ranges=ranges).replace(partial_products=partial_products)
    ssm, g = quantized_layer(spec, d_model=3, d_state=8, seed=4, calibration_length=32, dtype=torch.float32)
    u = torch.randn(64, 32, 3, generator=g) * 2
    with torch.no_grad():
        dA, dB, C, D = ssm.ssm_parameters()
        for mode in range(C.shape[-1]):
            for imaginary in (False, True):
                params = (dA, dB, mode_probe(C, mode, imaginary), torch.zeros_like(D))
                fast, reference = quantized_scan(u, params, ssm.quantization), quantized_scan_ref(u, params, ssm.quantization)
                assert torch.equal(fast, reference), (mode, imaginary)
                assert imaginary or fast.abs().max() > 0  # (the first mode of S4D-Lin is real: its Im x stays 0)


def run_benchmark(monkeypatch, capsys, *args) -> list[str]:
    """bench_quantized_recurrent.py on a tiny layer; the rows of its table."""
    small = ["--batch", "2", "--length", "6", "--d-model", "2", "--d-state", "4", "--ref-steps", "4", "--repeats", "1"]
    monkeypatch.setattr(sys, "argv", ["bench_quantized_recurrent.py", *small, *args])
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # as `python benchmarks/x.py` puts the script's folder first
    runpy.run_path(str(ROOT / "benchmarks" / "bench_quantized_recurrent.py"), run_name="__main__")
    return [line for line in capsys.readouterr().out.splitlines() if "partial products" in line]


def test_the_benchmark_measures_three_settings_in_one_run(monkeypatch, capsys):
    rows = run_benchmark(monkeypatch, capsys)
    assert [row.split("   ")[0].strip() for row in rows] == [
        "static ranges, partial products off",
        "dynamic ranges, partial products off",
        "static ranges, partial products on",
    ]
    for row in rows:  # fast s, ms/step, reference s, ms/step, speed-up, max |y_fast - y_ref|
        *times, speed_up, err = row.split()[5:]
        assert len(times) == 4 and all(float(t) >= 0 for t in times)
        assert speed_up.endswith("x") and float(speed_up[:-1]) > 0 and float(err) < 1e-5


@pytest.mark.parametrize(
    "flags, setting",
    [
        (["--ranges", "dynamic"], "dynamic ranges, partial products off"),
        (["--partial-products"], "static ranges, partial products on"),
        (["--ranges", "dynamic", "--partial-products"], "dynamic ranges, partial products on"),
    ],
)
def test_the_benchmarks_flags_measure_one_setting(monkeypatch, capsys, flags, setting):
    rows = run_benchmark(monkeypatch, capsys, *flags)
    assert len(rows) == 1 and rows[0].startswith(setting)
