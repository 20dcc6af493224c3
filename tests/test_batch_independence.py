"""No quantized result depends on the other sequences of its batch, as on a chip that sees one sequence at a
time: a sequence's output is the same, bit for bit, alone or inside batches of other sequences, for every
recipe, PTQ and QAT-prepared models, convolution and recurrent mode, the fast recurrence (with and without
autograd) and its reference twin.

The shapes are chosen so that float arithmetic itself cannot tell the batches apart: float kernels take
transcendental functions (GELU's erf, the GLU's sigmoid) in SIMD blocks and a scalar tail whose results may
differ in the last bit, and a product with a single row goes through BLAS's matrix-vector path, which sums
in another order. With L·H = 64 values per sequence every elementwise stage fills whole SIMD blocks (of up to
32 floats) whether the sequence is alone or in a batch, and one thread keeps them unsplit; so whatever
differs is the quantizers'. The decoder's single-row product is the exception: the decoder's input is
compared against the sequence alone, the logits between batches of two rows or more.
"""
from __future__ import annotations

import pytest
import torch

from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.precision import RECIPES, PrecisionSpec, recipe_model_config, recipe_spec
from aimc_ssm.quant.qrecurrent import quantized_scan, quantized_scan_ref
from aimc_ssm.quant.quantize import prepare_qat, ptq_model
from aimc_ssm.quant.quantizers import ComplexQuantizer, QuantizerConfig

L, H = 16, 4  # L·H = 64 values per sequence and channel stage (module docstring)
BASE = ModelConfig(d_model=H, d_state=32)  # n = 16 modes per channel
BITS = 4  # coarse grids: a range pooled over the batch would move many values
# the sequence under test sits among sequences of other scales, so pooled ranges would differ
SCALES = torch.tensor([1.0, 0.05, 20.0, 3.0, 0.3, 8.0])
COMPOSITIONS = {"one-companion": [0, 1], "in-the-middle": [2, 3, 0, 4], "last-of-six": [5, 1, 2, 3, 4, 0]}
# name: (the recipe whose model settings it needs, the spec)
SPECS = {name: (name, recipe_spec(name, BITS)) for name in RECIPES} | {
    "z25-polar": ("z25", PrecisionSpec.z25(BITS, 6, "polar")),
    "channel-asym-static": ("channel-asym", PrecisionSpec.channel_asym(BITS, BITS, ranges="static")),
    # no quantizer after the GELU: a float difference anywhere in the recurrent path would reach the decoder
    "state-only": ("channel-asym", PrecisionSpec(state=QuantizerConfig(16, "asymmetric", granularity="channel"))),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def sequences(channels: int = 1, dtype=torch.float32) -> torch.Tensor:
    """Six sequences (6, L, channels), sequence 0 the one under test, each at its own scale."""
    x = torch.randn(len(SCALES), L, channels, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    return (x * SCALES.double()[:, None, None]).to(dtype)


def model_for(name: str, method: str) -> S4DModel:
    recipe, spec = SPECS[name]
    torch.manual_seed(0)
    model = S4DModel(recipe_model_config(recipe, BASE))
    calibration = [sequences()[1:]] if spec.static() else None
    if method == "ptq":
        return ptq_model(model, spec, calibration)
    return prepare_qat(model, spec, calibration).train()  # QAT: training mode, through autograd


def run(model: S4DModel, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoder input, logits) of a batch."""
    seen = []
    handle = model.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    try:
        with torch.set_grad_enabled(model.training):
            logits = model(x, mode)
    finally:
        handle.remove()
    return seen[0].detach(), logits.detach()


@pytest.mark.parametrize("mode", ["conv", "recurrent"])
@pytest.mark.parametrize("method", ["ptq", "qat"])
@pytest.mark.parametrize("name", SPECS)
def test_a_sequence_is_quantized_alone_whatever_its_batch(name, method, mode):
    model, x = model_for(name, method), sequences()
    features_alone, _ = run(model, x[:1], mode)
    logits_of_copies = run(model, x[[0, 0]], mode)[1][0]  # no other sequence, two rows
    for composition in COMPOSITIONS.values():
        features, logits = run(model, x[composition], mode)
        row = composition.index(0)
        assert torch.equal(features[row], features_alone[0])
        assert torch.equal(logits[row], logits_of_copies)


@pytest.mark.parametrize("autograd", [False, True], ids=["inference", "autograd"])
@pytest.mark.parametrize("scan", [quantized_scan, quantized_scan_ref], ids=["fast", "reference"])
@pytest.mark.parametrize("name", SPECS)
def test_recurrences_quantize_each_sequence_alone(name, scan, autograd):
    dtype = torch.float64 if SPECS[name][1].parameterization == "polar" else torch.float32
    model = model_for(name, "ptq").to(dtype)
    ssm = model.blocks[0].ssm
    u = sequences(H, dtype)
    with torch.set_grad_enabled(autograd):
        params = ssm.ssm_parameters()
        alone = scan(u[:1], params, ssm.quantization).detach()
        for composition in COMPOSITIONS.values():
            y = scan(u[composition], params, ssm.quantization).detach()
            assert torch.equal(y[composition.index(0)], alone[0])


def test_a_range_pooled_over_the_batch_would_be_caught():
    """The comparisons above see a pooled range: the state quantizer without its batch axis moves
    sequence 0's outputs as soon as it shares a batch."""
    model = model_for("channel-asym", "ptq")
    quantization = model.blocks[0].ssm.quantization
    quantization.state = ComplexQuantizer(quantization.state.parts.config, channel_dim=-2)  # no batch_dim: pooled
    u = sequences(H)
    with torch.no_grad():
        params = model.blocks[0].ssm.ssm_parameters()
        alone = quantized_scan(u[:1], params, quantization)
        assert not torch.equal(quantized_scan(u[[0, 2]], params, quantization)[0], alone[0])
