"""The compiled CPU scan of the fused kernel (aimc_ssm.analog.numba_scan) against its twin, `StaticScan`'s steps."""
import copy

import numba
import numpy as np
import pytest
import torch
from test_analog import tiny_model
from test_sequence_reads import fused_kernel
from test_triton_scan import D_STATE, SETTINGS, N

from aimc_ssm.analog import numba_scan
from aimc_ssm.analog.deploy import to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.kernel import StaticScan
from aimc_ssm.analog.numba_scan import _dac, _read, fused_scan, fused_scan_ref, unsupported
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.quantize import quantize_
from aimc_ssm.threads import match_torch_threads

H, L = 3, 24
# without the converters' rounding the last bit of every operation reaches the outputs (the Triton tests
# leave these out: its interpreter's log and cosine are numpy's, while these loops call torch's)
UNROUNDED = {"adc_bits": 0, "out_noise": 0.05}
MANAGED = {"forward.noise_management": "abs_max", "forward.bound_management": "iterative", "adc_range": 0.5}
CPU_SETTINGS = {
    **SETTINGS,
    # which the Triton scan refuses: an out_scale other than 1 on converters
    "out_scale 1.3, max noise management": ("pcm", {"forward.out_scale": 1.3, "forward.noise_management": "max"}, {}, "balanced"),
    "no ADC rounding, abs-max and iterative management, y range": ("pcm", {**UNROUNDED, **MANAGED}, {"y_adc_range": 4.0}, "incremental"),
    "no converters' rounding, per-column noise, copies": (
        "pcm", {**UNROUNDED, "dac_bits": 0, "forward.out_noise_std": 0.3}, {"copies": 2}, "balanced",
    ),
}


@pytest.fixture(scope="module", autouse=True)
def numba_threads_started_beside_torch():
    """Tests that call the loops directly start numba's thread pool as the scans do, leaving torch's threads."""
    match_torch_threads()


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randn(12, L, H)


def kernel(inputs, setting):
    device, overrides, options, mapping = CPU_SETTINGS[setting]
    return fused_kernel(inputs, overrides, options, "per-sequence", device=device, mapping=mapping, d_state=D_STATE.get(setting, N))


# the Triton scan's settings (pcm, ideal, clipping ADCs, copies, y ranges, the three mappings, every noise
# management, iterative bound management, per-column output noise, learned output scales, no DAC, no ADC)
# and two without the converters' rounding
@pytest.mark.parametrize("setting", CPU_SETTINGS, ids=list(CPU_SETTINGS))
def test_the_compiled_scan_reads_what_its_twin_reads(inputs, setting):
    fused = kernel(inputs, setting)
    u = inputs.clone()
    u[3] = 0  # a silent sequence: under noise management its all-zero input vectors read 0
    u[5, 4:9] *= 6  # beyond the calibrated DAC range: the input range clips
    assert unsupported(fused, fused.crossbar_stack(u), u) is None
    y = fused_scan(fused, fused.crossbar_stack(u), u)
    twin = fused_scan_ref(fused, fused.crossbar_stack(u), u)
    assert y.shape == u.shape and y.is_contiguous()
    assert torch.equal(y, twin)


def test_the_converters_round_half_to_even_as_torch_does():
    step = np.float32(0.25)
    ties = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.3, -3.7]) * float(step)  # (B,) ties, and two values off them
    expected = torch.round(ties / float(step)) * float(step)  # `CrossbarStack.quantize_`
    B = ties.shape[0]
    f32, zeros, ones = np.float32, np.zeros((1, B), np.float32), np.ones((1, B), np.float32)
    dac = np.empty((1, 3, B))  # the DAC, on the state row of the inputs
    _dac(1, zeros, zeros, ties.reshape(1, 1, B).numpy(), ones[0, :1], False, ones, False, f32(1), f32(1), True, step, False, f32(1), dac)
    assert torch.equal(torch.from_numpy(dac[0, 1]).float(), expected)
    adc, unused = np.empty((1, 1, B), np.float32), np.empty((1, 1, B), np.float32)  # the ADC, on a noiseless product
    _read(1, ties.double().reshape(1, 1, B).numpy(), unused, unused, unused, ones[:, :1], False, True, step, False, f32(1),
          False, False, ones, f32(1), f32(1), f32(1), True, np.ones((1, B), np.bool_), unused, adc, 0)
    assert torch.equal(torch.from_numpy(adc[0, 0]), expected)


def test_a_sequence_reads_the_same_alone_or_inside_any_batch_of_the_compiled_scan(inputs):
    fused = kernel(inputs, "the same, copies and y range")  # noise and bound management per vector, two groups

    def scan(batch):
        return fused_scan(fused, fused.crossbar_stack(batch), batch)

    together = scan(inputs)
    for b in (0, 11):
        assert torch.equal(scan(inputs[b : b + 1])[0], together[b])
    order = torch.tensor([9, 3, 0, 7, 2, 1, 4, 6, 5, 8, 10, 11, 0, 3, 9, 9, 7])
    assert torch.equal(scan(inputs[order]), together[order])


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_the_outputs_do_not_depend_on_how_the_loops_split_the_crossbars(inputs, parts, monkeypatch):
    fused = kernel(inputs, "no ADC rounding, abs-max and iterative management, y range")  # every loop, two groups
    twin = fused_scan_ref(fused, fused.crossbar_stack(inputs), inputs)

    def split():  # every thread numba has, H = 3 crossbars in `parts` parts (2: one of one, one of two)
        match_torch_threads()
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        return parts

    monkeypatch.setattr(numba_scan, "match_torch_threads", split)
    assert torch.equal(fused_scan(fused, fused.crossbar_stack(inputs), inputs), twin)


def test_the_kernel_scans_with_the_compiled_loops_on_the_cpu_where_they_run(inputs, monkeypatch):
    fused = kernel(inputs, "pcm")
    scans = []
    monkeypatch.setattr(numba_scan, "fused_scan", lambda *args: scans.append(args) or fused_scan(*args))
    torch.manual_seed(3)  # the draws' keys mix in torch's seed
    y = fused(inputs)
    assert len(scans) == 1
    fused.numba = False  # the switch that the benchmark turns: StaticScan's steps, the same outputs
    torch.manual_seed(3)
    assert torch.equal(fused(inputs), y) and len(scans) == 1
    fused.numba = True
    u64 = inputs.double()  # a dtype the loops do not run: StaticScan's steps
    assert unsupported(fused, fused.crossbar_stack(u64), u64) == "inputs other than float32"
    fused(u64)
    assert len(scans) == 1


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"forward.inp_noise": 0.01}, "input noise or stochastic rounding"),
        ({"forward.inp_sto_round": True}, "input noise or stochastic rounding"),
        ({"forward.out_sto_round": True}, "input noise or stochastic rounding"),
    ],
)
def test_settings_the_compiled_scan_does_not_run_are_refused_by_name(inputs, overrides, reason):
    fused = fused_kernel(inputs, overrides, {}, "per-sequence")
    stack = fused.crossbar_stack(inputs)
    assert unsupported(fused, stack, inputs) == reason
    with pytest.raises(ValueError, match=reason):
        fused_scan(fused, stack, inputs)
    batched = fused_kernel(inputs, {}, {}, "batched")
    assert unsupported(batched, batched.crossbar_stack(inputs), inputs) == "batched reads draw from torch's stream"
    elsewhere = inputs.to("meta")
    assert unsupported(batched, batched.crossbar_stack(inputs), elsewhere) == "tensors off the CPU"


def test_a_state_quantizer_is_refused_and_scanned_by_the_steps():
    model, x = tiny_model()
    quantized = quantize_(copy.deepcopy(model), PrecisionSpec.uniform(6)).eval()
    fused = to_analog(quantized, load_device("pcm"), calibration_inputs=x).blocks[0].ssm
    u = torch.randn(4, 20, fused.d_model)
    assert unsupported(fused, fused.crossbar_stack(u), u) == "a PTQ/QAT state quantizer"
    torch.manual_seed(2)
    y = fused(u)
    torch.manual_seed(2)
    assert torch.equal(y, StaticScan(fused, fused.crossbar_stack(u), u).run())


def test_an_empty_batch_scans_to_an_empty_output(inputs):
    fused = kernel(inputs, "pcm")
    empty = inputs[:0]
    y = fused_scan(fused, fused.crossbar_stack(empty), empty)
    assert y.shape == empty.shape and torch.equal(y, fused_scan_ref(fused, fused.crossbar_stack(empty), empty))
