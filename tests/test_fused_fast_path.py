"""The fused kernel's fast path against its plain twin (aimc_ssm.analog.kernel, aimc_ssm.analog.mvm): the
fast scan and step give the plain ones' outputs bit for bit, and so does the step written for capture
(a device step counter, fixed bound-management attempts), run eagerly here on the CPU."""
import pytest
import torch
from aihwkit.simulator.parameters import IOParameters
from test_sequence_reads import CLIPPING, H, L, N
from test_sequence_reads import fused_kernel as calibrated_kernel

from aimc_ssm.analog.kernel import StaticScan
from aimc_ssm.analog.mvm import bound_management_attempts, bound_management_gives_up

SETTINGS = {
    "pcm": ("pcm", {}, {}),
    "ideal": ("ideal", {}, {}),
    "clipping": ("pcm", CLIPPING, {}),
    "stochastic converters, input noise": (
        "pcm", {**CLIPPING, "forward.inp_sto_round": True, "forward.out_sto_round": True, "forward.inp_noise": 0.01}, {},
    ),
    "noise management": ("pcm", {**CLIPPING, "forward.noise_management": "abs_max"}, {}),
    "copies and y range": ("pcm", CLIPPING, {"copies": 2, "y_adc_range": 4.0}),
}


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    u = torch.randn(12, L, H)
    u[3] = 0.0  # a silent sequence: the all-zero shortcut, or its mask
    return u


def fused_kernel(inputs, setting, reads, mapping="balanced"):
    device, overrides, options = SETTINGS[setting]
    return calibrated_kernel(inputs, overrides, options, reads, device=device, mapping=mapping)


def seeded(fn, *args):
    torch.manual_seed(7)
    return fn(*args)


@pytest.mark.parametrize("reads", ["per-sequence", "batched"])
@pytest.mark.parametrize("setting", SETTINGS, ids=list(SETTINGS))
def test_fast_scan_equals_its_plain_twin_bit_for_bit(inputs, setting, reads):
    fused = fused_kernel(inputs, setting, reads)
    y = seeded(fused.scan, inputs)
    assert torch.equal(y, seeded(fused.scan_plain, inputs))
    assert not torch.equal(y, seeded(fused.scan_plain, inputs[:, :, [1, 2, 0]]))  # the comparison sees the inputs


@pytest.mark.parametrize("setting", ["pcm", "clipping", "copies and y range"])
def test_fast_scan_equals_its_plain_twin_under_the_incremental_mapping(inputs, setting):
    fused = fused_kernel(inputs, setting, "per-sequence", "incremental")
    assert torch.equal(seeded(fused.scan, inputs), seeded(fused.scan_plain, inputs))


@pytest.mark.parametrize("setting", ["pcm", "clipping", "stochastic converters, input noise", "noise management", "copies and y range"])
def test_step_for_capture_equals_the_eager_step(inputs, setting):
    """The step as a CUDA graph captures it (device step counter, draw tables, all bound-management
    attempts, no host shortcut), run eagerly: the scan's outputs, bit for bit."""
    fused = fused_kernel(inputs, setting, "per-sequence")
    stack = fused.crossbar_stack(inputs)
    scan = StaticScan(fused, stack, inputs)
    stack.capture_steps(L + 1)
    assert stack.captured
    assert torch.equal(scan.run(), fused.scan(inputs))
    assert int(stack.steps) == L + 1


def test_fast_step_equals_plain_step(inputs):
    fused = fused_kernel(inputs, "clipping", "per-sequence")
    fast, plain = fused.crossbar_stack(inputs), fused.crossbar_stack(inputs)
    torch.manual_seed(3)
    inp = torch.randn(H, len(inputs), N + 2) * 2
    for _ in range(3):  # buffers reused from step to step
        assert torch.equal(fast.step(inp.clone()), plain.step_plain(inp.clone()))
    assert fast.steps == plain.steps == 3


def test_a_captured_step_needs_per_sequence_reads(inputs):
    fused = fused_kernel(inputs, "pcm", "batched")
    with pytest.raises(ValueError, match="per-sequence"):
        fused.crossbar_stack(inputs).capture_steps(L + 1)


@pytest.mark.parametrize("factor, resolution, attempts", [(1000.0, 1000.0, 11), (4.0, 0.25, 4), (1000.0, 0.25, 6), (1000.0, 0.0, 1)])
def test_bound_management_attempts_are_those_of_the_loop(factor, resolution, attempts):
    io = IOParameters(max_bm_factor=factor, max_bm_res=resolution, inp_res=1 / 254, inp_bound=1.0)
    assert bound_management_attempts(io) == attempts
    reductions = [2.0**attempt for attempt in range(attempts)]  # the loop's, attempt after attempt
    assert [bound_management_gives_up(io, r) for r in reductions] == [False] * (attempts - 1) + [True]
