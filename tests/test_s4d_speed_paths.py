"""The fast paths of S4D's convolution mode against their reference twins: values and gradients, every transform chain."""
import math

import pytest
import torch

from aimc_ssm import S4D, ModelConfig, S4DModel
from aimc_ssm.analog.hwa import with_weight_noise
from aimc_ssm.core.s4d import causal_conv, causal_conv_ref, check_input, fft_length, ssm_kernel, ssm_kernel_ref
from aimc_ssm.quant.precision import PrecisionSpec, recipe_spec
from aimc_ssm.quant.pruning import attach_masks, set_pruned
from aimc_ssm.quant.quantize import quantize_

H, N = 4, 16  # 8 complex modes per channel


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference over the largest magnitude of the reference b."""
    return ((a - b).abs().max() / b.abs().max()).item()


def random_system(seed: int, H: int = 5, n: int = 6, device="cpu"):
    """(Ā, B̄, C) with Ā inside the unit disk, some modes slow (|Ā| near 1) and some turning fast (∠Ā near π)."""
    g = torch.Generator().manual_seed(seed)
    magnitude = 1 - torch.rand(H, n, generator=g) ** 3 * 0.5
    angle = (2 * torch.rand(H, n, generator=g) - 1) * math.pi
    dA = torch.polar(magnitude, angle)
    dB = torch.randn(H, n, dtype=torch.cfloat, generator=g)
    C = torch.randn(H, n, dtype=torch.cfloat, generator=g)
    return tuple(t.to(device).requires_grad_() for t in (dA, dB, C))


def test_fft_length_is_the_shortest_7_smooth_length_without_wrap_around():
    def smooth(n):
        for p in (2, 3, 5, 7):
            while n % p == 0:
                n //= p
        return n == 1

    for L in range(1, 300):
        n = fft_length(L)
        assert n >= 2 * L - 1 and smooth(n)
        assert not any(smooth(m) for m in range(2 * L - 1, n))
    assert fft_length(784) == 1568


@pytest.mark.parametrize("L", [1, 2, 7, 50, 257, 784])
def test_kernel_equals_its_reference_values_and_gradients(L, compute):
    dA, dB, C = random_system(seed=L, device=compute)
    weights = torch.randn(dA.shape[0], L, generator=torch.Generator().manual_seed(0)).to(compute)
    K, K_ref = ssm_kernel(dA, dB, C, L), ssm_kernel_ref(dA, dB, C, L)
    assert K.shape == K_ref.shape == (dA.shape[0], L)
    # the kernel takes log Ā in Ā's single precision: one rounding of the phase ∠Ā (|∠Ā| ≤ π, at most
    # 2^-23 rad) turns tap l by l times as much, so the last taps may move by L·2^-23 (9.3e-5 at L 784)
    assert relative_error(K, K_ref) < max(1e-5, L * 2**-23)
    grads = torch.autograd.grad((K * weights).sum(), (dA, dB, C))
    grads_ref = torch.autograd.grad((K_ref * weights).sum(), (dA, dB, C), allow_unused=True)  # L = 1 never reads Ā
    for g, g_ref in zip(grads, grads_ref):
        if g_ref is None:
            assert (g == 0).all()
        else:
            assert relative_error(g, g_ref) < 1e-4


def test_a_mode_at_zero_contributes_only_at_lag_zero():
    dA, dB, C = (t.detach() for t in random_system(seed=3))
    dA[0, 2] = 0  # a mode quantized to exactly zero
    K, K_ref = ssm_kernel(dA, dB, C, 40), ssm_kernel_ref(dA, dB, C, 40)
    assert relative_error(K, K_ref) < 1e-5
    alone = torch.zeros_like(dA)
    alone[0, 2] = 1  # only that mode
    K_zero = ssm_kernel(dA, dB * alone, C, 40)
    assert K_zero[0, 0] == 2 * (C[0, 2] * dB[0, 2]).real and (K_zero[:, 1:].abs() < 1e-25).all()


def test_kernel_length_must_be_positive():
    dA, dB, C = random_system(seed=0)
    with pytest.raises(ValueError, match="kernel length L must be at least 1, got 0"):
        ssm_kernel(dA, dB, C, 0)


@pytest.mark.parametrize("L", [1, 5, 101, 300])
@pytest.mark.parametrize("trains", ["both", "u", "K"])
def test_fft_convolution_equals_the_direct_sum_values_and_gradients(L, trains, compute):
    g = torch.Generator().manual_seed(L)
    u = torch.randn(3, L, 5, generator=g).to(compute).requires_grad_(trains in ("both", "u"))
    K = torch.randn(5, L, generator=g).to(compute).requires_grad_(trains in ("both", "K"))
    weights = torch.randn(3, L, 5, generator=g).to(compute)
    y, y_ref = causal_conv(u, K), causal_conv_ref(u, K)
    assert y.shape == (3, L, 5) and y.is_contiguous()  # the layout every later op of the block reads
    assert relative_error(y, y_ref) < 1e-5
    leaves = [t for t in (u, K) if t.requires_grad]
    for grad, grad_ref in zip(torch.autograd.grad((y * weights).sum(), leaves), torch.autograd.grad((y_ref * weights).sum(), leaves)):
        assert relative_error(grad, grad_ref) < 1e-5


def test_fft_convolution_backward_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, 9, 3, dtype=torch.double, generator=g, requires_grad=True)
    K = torch.randn(3, 9, dtype=torch.double, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(causal_conv, (u, K), fast_mode=True)


def small_model(spec: PrecisionSpec | None = None) -> S4DModel:
    """A one-layer model with its SSM moved off the structured init, quantized where `spec` says."""
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_model=H, d_state=N))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.blocks[0].ssm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model if spec is None else quantize_(model, spec)


def pruned(model: S4DModel) -> S4DModel:
    model = attach_masks(model)
    keep = model.blocks[0].ssm.transform("pruning").keep_mode
    set_pruned([(keep, 1), (keep, N // 2 + 3)], True)  # channel 0 mode 1, channel 1 mode 3
    return model


CHAINS = {
    "float": lambda: small_model(),
    "z25 6-bit": lambda: small_model(PrecisionSpec.z25(6)),
    "uniform 4-bit polar": lambda: small_model(PrecisionSpec.uniform(4, "polar")),
    "s25 continuous, state proxy": lambda: small_model(PrecisionSpec.s25(8)),
    "z25 with state proxy": lambda: small_model(recipe_spec("z25", 8).replace(conv_state_proxy=True)),
    "noise on A": lambda: with_weight_noise(small_model(), 0.05, "A"),
    "quantized, noise on A bar": lambda: with_weight_noise(small_model(PrecisionSpec.z25(6)), 0.01, "A_bar"),
    "quantized, pruned, noise": lambda: with_weight_noise(pruned(small_model(PrecisionSpec.z25(6))), 0.01, "A_bar"),
}


def reference_conv(layer: S4D, u: torch.Tensor) -> torch.Tensor:
    """Convolution mode from the reference twins, through the layer's transform chain as forward_conv."""
    dA, dB, C, D = layer.ssm_parameters()
    K, u_conv = ssm_kernel_ref(dA, dB, C, u.shape[1]), u
    if layer.quantization is not None:
        K, u_conv = layer.quantization.conv_operands(K, u)
        return layer.quantization.y(causal_conv_ref(u_conv, K)) + D * u  # float unless the recipe quantizes y
    return causal_conv_ref(u_conv, K) + D * u


@pytest.mark.parametrize("chain", CHAINS)
def test_conv_mode_equals_the_reference_twins_through_every_transform_chain(chain):
    layer = CHAINS[chain]().blocks[0].ssm
    u = torch.randn(2, 200, H, generator=torch.Generator().manual_seed(2), requires_grad=True)
    weights = torch.randn(2, 200, H, generator=torch.Generator().manual_seed(3))
    leaves = [u, *(p for p in layer.parameters() if p.requires_grad)]
    results = []
    for forward in (lambda: layer(u, "conv"), lambda: reference_conv(layer, u)):
        torch.manual_seed(4)  # the same noise draw for both
        y = forward()
        results.append((y, torch.autograd.grad((y * weights).sum(), leaves, allow_unused=True)))
    (y, grads), (y_ref, grads_ref) = results
    # a quantizer on y rounds the twins' last-bit differences apart by up to one of its 8-bit steps
    quantized_y = layer.quantization is not None and not layer.quantization.y.is_float
    assert relative_error(y, y_ref) < (2e-3 if quantized_y else 1e-5)
    for grad, grad_ref in zip(grads, grads_ref):
        assert (grad is None) == (grad_ref is None)
        if grad is not None:
            assert relative_error(grad, grad_ref) < 1e-4


def test_input_check_finds_every_non_finite_value_and_accepts_large_finite_ones():
    for bad in (float("nan"), float("inf"), -float("inf")):
        u = torch.randn(2, 10, 3)
        u[1, 7, 2] = bad
        with pytest.raises(ValueError, match="NaN or Inf"):
            check_input(u, 3)
    u = torch.randn(2, 10, 3)
    u[0, 0, 0], u[1, 1, 1] = float("inf"), -float("inf")  # opposite infinities: their sum is NaN, still refused
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_input(u, 3)
    check_input(torch.full((2, 10, 3), 3e38), 3)  # finite, though their sum overflows
