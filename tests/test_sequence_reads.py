"""Per-sequence reads of the fused kernel (aimc_ssm.analog.mvm, reads="per-sequence"): a sequence's outputs
are the same, bit for bit, alone or inside any batch, noise, bound management and stochastic rounding
included; batched reads (aihwkit's) are not; both draw the same noise in distribution."""
import pytest
import torch

from aimc_ssm.analog.deploy import program, to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.kernel import FusedS4D
from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.core.s4d import S4D

H, N, L = 3, 6, 24
# a 6-bit ADC on half the state's range: outputs clip, so iterative bound management repeats reads
CLIPPING = {"adc_bits": 6, "adc_range": 0.5, "out_noise": 0.05, "forward.bound_management": "iterative"}
SETTINGS = {
    "pcm": ({}, {}),
    "clipping": (CLIPPING, {}),
    "stochastic rounding": ({**CLIPPING, "forward.inp_sto_round": True, "forward.out_sto_round": True}, {}),
    "copies and y range": (CLIPPING, {"copies": 2, "y_adc_range": 4.0}),
}


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randn(12, L, H)


def fused_kernel(inputs, overrides, options, reads, device="pcm", mapping="balanced", d_state=N):
    """A seeded kernel on `device` with `overrides` and FusedS4D `options`, calibrated on inputs and programmed (1 h)."""
    torch.manual_seed(0)
    ssm = S4D(H, d_state).eval()
    with torch.no_grad():
        ssm.log_dt.fill_(-2.5)
    fused = FusedS4D(ssm, load_device(device, **overrides), reads=reads, **options)
    fused.calibrate(inputs, mapping)
    program(fused, 3600.0)
    return fused


def run(fused, u, seed=7):
    torch.manual_seed(seed)
    return fused(u)


@pytest.mark.parametrize("setting", SETTINGS, ids=list(SETTINGS))
def test_a_sequence_reads_the_same_alone_or_inside_any_batch(inputs, setting):
    overrides, options = SETTINGS[setting]
    fused = fused_kernel(inputs, overrides, options, "per-sequence")
    together = run(fused, inputs)
    for b in (0, 5, 11):
        assert torch.equal(run(fused, inputs[b : b + 1])[0], together[b])
    order = torch.tensor([9, 3, 0, 7])
    assert torch.equal(run(fused, inputs[order]), together[order])
    assert not torch.equal(run(fused, inputs, seed=8), together)  # another seed draws other noise


def test_batched_reads_depend_on_the_batch_where_bound_management_acts(inputs):
    fused = fused_kernel(inputs, CLIPPING, {}, "batched")
    together = run(fused, inputs)
    alone = torch.stack([run(fused, inputs[b : b + 1])[0] for b in range(len(inputs))])
    assert (alone - together).abs().max() > 0.1  # aihwkit's tile decides for its batch: the reason for per-sequence reads


def test_per_sequence_and_batched_reads_agree_without_noise(inputs):
    converters = {"adc_bits": 0, "dac_bits": 0, "out_noise": 0.0}
    per_sequence, batched = (fused_kernel(inputs, converters, {}, reads) for reads in ("per-sequence", "batched"))
    torch.testing.assert_close(run(per_sequence, inputs), run(batched, inputs), atol=1e-5, rtol=1e-5)


def test_per_sequence_noise_has_the_statistics_of_batched_noise():
    torch.manual_seed(2)
    u = torch.randn(400, 8, H)  # 400 sequences: 400 streams
    noisy = {"adc_bits": 0, "dac_bits": 0, "out_noise": 0.1}
    outputs = {}
    for reads in ("per-sequence", "batched"):
        fused = fused_kernel(u, noisy, {}, reads)
        clean = fused_kernel(u, {**noisy, "out_noise": 0.0}, {}, reads)
        outputs[reads] = run(fused, u) - run(clean, u)  # the output noise as it propagates through the recurrence
    per_sequence, batched = outputs["per-sequence"], outputs["batched"]
    assert abs(per_sequence.mean().item()) < 0.02 and abs(batched.mean().item()) < 0.02
    ratio = per_sequence.std(dim=0) / batched.std(dim=0)  # (L, H): per step and channel, over sequences
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.03) and ratio.min() > 0.8 and ratio.max() < 1.25


def test_a_deployed_model_reads_a_sequence_alone_as_in_its_batch():
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_input=1, d_output=3, d_model=H, d_state=N)).eval()
    x = torch.randn(6, L, 1)
    for reads in ("per-sequence", "batched"):
        analog = to_analog(model, load_device("pcm"), ssm_rpu_config=load_device("pcm", adc_range=2), calibration_inputs=x, reads=reads)
        program(analog, 3600.0)
        with torch.no_grad():
            together, alone = run(analog, x), run(analog, x[2:3])
        assert torch.equal(alone[0], together[2]) == (reads == "per-sequence")  # the Linears' output noise too
