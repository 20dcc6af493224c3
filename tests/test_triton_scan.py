"""The Triton scan of the fused kernel (aimc_ssm.analog.triton_scan) against its twin, `StaticScan`'s steps.

On a GPU the compiled kernel runs; without one, Triton's interpreter runs it on CPU tensors (conftest).
"""
import pytest
import torch
from test_sequence_reads import CLIPPING, fused_kernel

from aimc_ssm.analog.triton_scan import fused_scan, fused_scan_ref, unsupported

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
H, N, L = 3, 6, 24
STEPS = 12  # of the L the kernels are calibrated on: Triton's interpreter is slow
SETTINGS = {  # (device, overrides, FusedS4D options, mapping)
    "pcm": ("pcm", {}, {}, "balanced"),
    "ideal": ("ideal", {}, {}, "balanced"),
    "direct, clipping ADC": ("pcm", {k: v for k, v in CLIPPING.items() if k != "forward.bound_management"}, {}, "direct"),
    "copies, y range, incremental": ("pcm", {}, {"copies": 2, "y_adc_range": 4.0}, "incremental"),
    "no DAC, N 10": ("pcm", {"dac_bits": 0}, {}, "balanced"),
    # aihwkit's default management: each vector scaled by its largest |input|, reads that clip repeated
    "abs-max noise and iterative bound management": ("pcm", {**CLIPPING, "forward.noise_management": "abs_max"}, {}, "direct"),
    "the same, copies and y range": (
        "pcm", {**CLIPPING, "forward.noise_management": "abs_max"}, {"copies": 2, "y_adc_range": 0.5}, "incremental",
    ),
    "max noise management with a threshold": (
        "pcm", {**CLIPPING, "forward.noise_management": "max", "forward.nm_thres": 0.5}, {}, "balanced",
    ),
    "constant noise management": ("pcm", {"forward.noise_management": "constant", "forward.nm_thres": 2.0}, {}, "balanced"),
    "output noise per column, 3 copies, y range": ("pcm", {"forward.out_noise_std": 0.3}, {"copies": 3, "y_adc_range": 4.0}, "balanced"),
    "learned output scales, no drift compensation": (
        "pcm", {"mapping.learn_out_scaling": True, "mapping.out_scaling_columnwise": True, "drift_compensation": "none"}, {}, "balanced",
    ),
    # no ADC to round: noiseless, as the interpreter's log and cosine may differ from torch's in the last bit
    "no ADC bound but the y column's, N 18": (
        "pcm", {"adc_bits": 0, "forward.out_bound": 0.0, "out_noise": 0.0}, {"y_adc_range": 0.3}, "balanced",
    ),
    "ideal, copies, y range, incremental": ("ideal", {}, {"copies": 2, "y_adc_range": 2.0}, "incremental"),
    # a perfect read scales neither inputs nor outputs, whatever its out_scale and noise management say
    "ideal, out_scale 2, constant noise management": (
        "ideal", {"forward.out_scale": 2.0, "forward.noise_management": "constant", "forward.nm_thres": 3.0}, {}, "balanced",
    ),
}
D_STATE = {"no DAC, N 10": 10, "no ADC bound but the y column's, N 18": 18}  # tiles of 16 and 32 modes, partly live


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randn(12, L, H)


def kernel_on_device(inputs, setting, d_state=N):
    device, overrides, options, mapping = SETTINGS[setting]
    return fused_kernel(inputs, overrides, options, "per-sequence", device=device, mapping=mapping, d_state=d_state).to(DEVICE)


@pytest.mark.parametrize("setting", SETTINGS, ids=list(SETTINGS))
def test_the_triton_scan_reads_what_its_twin_reads(inputs, setting):
    fused = kernel_on_device(inputs, setting, D_STATE.get(setting, N))
    u = inputs[:, :STEPS].to(DEVICE).clone()
    u[3] = 0  # a silent sequence: under noise management its all-zero input vectors read 0
    assert unsupported(fused, fused.crossbar_stack(u)) is None
    y = fused_scan(fused, fused.crossbar_stack(u), u)
    twin = fused_scan_ref(fused, fused.crossbar_stack(u), u)
    assert y.shape == u.shape and y.is_contiguous()
    assert torch.equal(y, twin)


def test_a_sequence_reads_the_same_alone_or_inside_any_batch_of_the_triton_scan(inputs):
    fused = kernel_on_device(inputs, "copies, y range, incremental")
    u = inputs[:, :STEPS].to(DEVICE)

    def scan(batch):
        return fused_scan(fused, fused.crossbar_stack(batch), batch)

    together = scan(u)
    for b in (0, 11):
        assert torch.equal(scan(u[b : b + 1])[0], together[b])
    order = torch.tensor([9, 3, 0, 7, 2, 1, 4, 6, 5, 8, 10, 11, 0, 3, 9, 9, 7], device=DEVICE)  # past one block of 16
    assert torch.equal(scan(u[order]), together[order])


@pytest.mark.parametrize(
    "overrides, reason",
    [
        ({"forward.inp_noise": 0.01}, "input noise or stochastic rounding"),
        ({"forward.out_sto_round": True}, "input noise or stochastic rounding"),
    ],
)
def test_settings_the_triton_scan_does_not_run_are_refused_by_name(inputs, overrides, reason):
    fused = fused_kernel(inputs, overrides, {}, "per-sequence")
    stack = fused.crossbar_stack(inputs)
    assert unsupported(fused, stack) == reason
    with pytest.raises(ValueError, match=reason):
        fused_scan(fused, stack, inputs)
    batched = fused_kernel(inputs, {}, {}, "batched")
    assert unsupported(batched, batched.crossbar_stack(inputs)) == "batched reads draw from torch's stream"


def test_the_kernel_scans_with_triton_on_a_gpu_and_with_its_steps_elsewhere(inputs):
    fused = kernel_on_device(inputs, "pcm")
    u = inputs.to(DEVICE)
    torch.manual_seed(3)
    y = fused(u)
    expected = fused_scan if DEVICE.type == "cuda" else fused_scan_ref
    torch.manual_seed(3)  # the draws' keys mix in torch's seed
    assert torch.equal(y, expected(fused, fused.crossbar_stack(u), u))


def test_a_state_too_large_for_a_programs_registers_is_refused(inputs):
    fused = fused_kernel(inputs, {}, {}, "per-sequence", d_state=130)
    assert unsupported(fused, fused.crossbar_stack(inputs)) == "a state of more than 128 modes"


def test_an_empty_batch_scans_to_an_empty_output(inputs):
    fused = kernel_on_device(inputs, "pcm")
    empty = inputs[:0].to(DEVICE)
    for scan in (fused_scan, fused_scan_ref):
        assert scan(fused, fused.crossbar_stack(empty), empty).shape == empty.shape
