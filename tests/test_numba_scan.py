"""The compiled quantized recurrence (aimc_ssm.quant.numba_scan) against its eager twin: bit for bit on
every quantizer it runs, a sequence's output its own whatever its block-mates, and a named refusal
(with the eager scan taking over in `quantized_scan`) for everything else."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant import numba_scan
from aimc_ssm.quant.numba_scan import _row_sums, compiled_scan, torch_addcmul_fuses, torch_sum_width, unsupported
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.qrecurrent import eager_scan, output_planes, quantized_scan
from aimc_ssm.quant.quantize import calibrate, quantize_
from aimc_ssm.quant.quantizers import ComplexQuantizer, QuantizerConfig, to_planes

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py

# every grid the compiled loop runs: extremes per channel, per tensor (one range over the channels),
# joint planes, the 1-bit grid's offset, a clamp that bites, [S25]'s q-levels; static and dynamic
STATE_CONFIGS = {
    "asymmetric-channel": QuantizerConfig(6, "asymmetric", percentile=100, granularity="channel"),
    "symmetric-tensor": QuantizerConfig(5),
    "joint-planes": QuantizerConfig(5, "asymmetric", percentile=100, granularity="channel", complex_range="joint"),
    "one-bit": QuantizerConfig(1, granularity="channel"),
    "clamped": QuantizerConfig(5, "asymmetric", percentile=100, granularity="channel", clamp=0.3),
    "q-levels": QuantizerConfig(4, symmetric_grid="q-levels", granularity="channel"),
}


def layer(spec: PrecisionSpec, d_model: int = 3, d_state: int = 16, seed: int = 0):
    """A float32 S4D layer quantized with `spec` (calibrated in recurrent mode if its ranges are static):
    its quantization and the scan's arguments but u and x."""
    torch.manual_seed(seed)
    model = quantize_(S4DModel(ModelConfig(d_model=d_model, d_state=d_state)), spec).eval()
    if spec.static():
        calibrate(model, [torch.randn(4, 48, 1, generator=torch.Generator().manual_seed(seed + 1))], "recurrent")
    ssm = model.blocks[0].ssm
    dA, dB, C, D = ssm.ssm_parameters()
    return ssm.quantization, (to_planes(dA).detach(), to_planes(dB).detach(), output_planes(C).detach(), D.detach())


def with_state(quant, config: QuantizerConfig, H: int, n: int, form: str = "cartesian", partial: bool = False):
    """quant with its state (and, if asked, partial-product) quantizers built from `config`; static ranges
    observed on a state of the layer's scale."""
    for name in ("state", "partial_Ax", "partial_Bu") if partial else ("state",):
        quantizer = ComplexQuantizer(config, form, channel_dim=-2, batch_dim=-3)
        if quantizer.parts.is_static:
            quantizer.parts.observing = True
            quantizer.quantize_planes(torch.randn(2, 8, H, n, generator=torch.Generator().manual_seed(7)) * 0.5)
            quantizer.parts.observing = False
        setattr(quant, name, quantizer)
    return quant


def inputs(batch: int, length: int, H: int, n: int, seed: int = 0, initial: bool = False):
    """u (B, L, H) and the state planes x (2, B, H, n): random, or zeros."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(batch, length, H, generator=g) * 2
    x = torch.randn(2, batch, H, n, generator=g) * 0.3 if initial else torch.zeros(2, batch, H, n)
    return u, x


def both(quant, params, u, x):
    """The compiled and the eager scan's outputs."""
    A, B, C2, D = params
    with torch.no_grad():
        return compiled_scan(u, A, B, C2, D, quant, x), eager_scan(u, A, B, C2, D, quant, x)


@pytest.mark.parametrize("n", [1, 5, 9, 16, 40, 67, 200, 511])
def test_row_sums_follow_torch_sums_order(n):
    g = torch.Generator().manual_seed(n)
    rows = torch.randn(21, n, generator=g) * torch.randn(21, n, generator=g).mul(4).exp()  # heavy tails
    out = np.empty(21, np.float32)
    _row_sums(np.ascontiguousarray(rows.numpy().T), torch_sum_width(), out, np.empty((4, 21), np.float32))
    assert np.array_equal(out, torch.sum(rows, -1).numpy())


def test_torch_sums_width_and_addcmuls_rounding_are_recognised_on_this_cpu():
    assert torch_sum_width() in (4, 8, 16, 32)
    assert torch_addcmul_fuses() in (True, False)


@pytest.mark.parametrize("ranges, partial_products", [("static", False), ("dynamic", False), ("static", True), ("dynamic", True)])
@pytest.mark.parametrize("d_state, batch", [(16, 5), (10, 70), (80, 3)])
def test_the_benchmarks_spec_scans_as_its_twin(ranges, partial_products, d_state, batch):
    """The [Z25] spec the benchmark runs (8-bit weights, a 16-bit state, dynamic y): n = 8, 5 (shorter than
    torch's vector) and 40 modes (a scalar tail), batches inside one block, across two and of 3."""
    spec = PrecisionSpec.channel_asym(8, 16, ranges=ranges).replace(partial_products=partial_products)
    quant, params = layer(spec, d_state=d_state)
    n = params[0].shape[-1]
    u, x = inputs(batch, 24, 3, n, initial=True)
    assert unsupported(u, quant, n) is None
    fast, eager = both(quant, params, u, x)
    assert torch.equal(fast, eager)


@pytest.mark.parametrize("ranges", ["static", "dynamic"])
@pytest.mark.parametrize("name", STATE_CONFIGS)
def test_every_grid_scans_as_its_twin(name, ranges):
    spec = PrecisionSpec.channel_asym(8, 16, ranges=ranges)
    quant, params = layer(spec, d_state=12)
    n = params[0].shape[-1]
    config = replace(STATE_CONFIGS[name], ranges=ranges)
    for partial in (False, True):
        quant = with_state(quant, config, 3, n, partial=partial)
        u, x = inputs(9, 20, 3, n, seed=1, initial=True)
        assert unsupported(u, quant, n) is None
        fast, eager = both(quant, params, u, x)
        assert torch.equal(fast, eager), partial
        assert fast.abs().max() > 0


def test_a_sequence_reads_the_same_alone_or_in_any_block():
    quant, params = layer(PrecisionSpec.channel_asym(8, 12, ranges="dynamic"), d_state=16)
    n = params[0].shape[-1]
    u, x = inputs(70, 16, 3, n, seed=2, initial=True)  # 64 lanes and a second block of 6
    batch, _ = both(quant, params, u, x)
    for i in (0, 5, 63, 64, 69):
        alone, _ = both(quant, params, u[i:i + 1], x[:, i:i + 1])
        assert torch.equal(alone[0], batch[i]), i


def test_quantized_scan_runs_the_compiled_loop_where_it_can(monkeypatch):
    spec = PrecisionSpec.channel_asym(8, 16, ranges="static")
    torch.manual_seed(0)
    model = quantize_(S4DModel(ModelConfig(d_model=3, d_state=16)), spec).eval()
    calibrate(model, [torch.randn(4, 48, 1)], "recurrent")
    ssm = model.blocks[0].ssm
    u, _ = inputs(4, 12, 3, 8)
    calls = []
    monkeypatch.setattr(numba_scan, "compiled_scan", lambda *args: calls.append(args[0].dtype) or eager_scan(*args))
    with torch.no_grad():
        quantized_scan(u, ssm.ssm_parameters(), ssm.quantization)
        model.double()
        quantized_scan(u.double(), ssm.ssm_parameters(), ssm.quantization)  # float64: the eager scan
    assert calls == [torch.float32]


REFUSED = {
    "polar form": (QuantizerConfig(6, "asymmetric", percentile=100, granularity="channel"), "polar"),
    "ternary levels": (QuantizerConfig(2, ternary=True, granularity="channel"), "cartesian"),
    "held zero point": (QuantizerConfig(6, "asymmetric", percentile=100, granularity="channel", zero_point_bits=2), "cartesian"),
    "is not their extreme": (QuantizerConfig(6, "asymmetric", percentile=80, granularity="channel"), "cartesian"),
}


@pytest.mark.parametrize("reason", REFUSED)
def test_what_it_does_not_run_is_named_and_refused(reason):
    config, form = REFUSED[reason]
    quant, params = layer(PrecisionSpec.channel_asym(8, 16), d_state=16)
    quant = with_state(quant, config, 3, 8, form)
    u, x = inputs(4, 10, 3, 8)
    why = unsupported(u, quant, 8)
    assert why is not None and reason in why and why.startswith("state quantizer")
    A, B, C2, D = params
    with pytest.raises(ValueError, match="eager_scan"):
        compiled_scan(u, A, B, C2, D, quant, x)


def test_autograd_other_dtypes_and_uncalibrated_ranges_are_named():
    quant, params = layer(PrecisionSpec.channel_asym(8, 16), d_state=16)
    u, _ = inputs(2, 5, 3, 8)
    assert "autograd" in unsupported(u.clone().requires_grad_(), quant, 8)
    assert "float64" in unsupported(u.double(), quant, 8)
    quant.state = ComplexQuantizer(QuantizerConfig(8, "asymmetric", ranges="static"), channel_dim=-2, batch_dim=-3)
    assert "not calibrated" in unsupported(u, quant, 8)
    quant.state = ComplexQuantizer(QuantizerConfig(8, "asymmetric", percentile=100), channel_dim=-2)  # no batch axis
    assert "pooled over the batch" in unsupported(u, quant, 8)
