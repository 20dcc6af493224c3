"""Hardware-aware training through the fused kernel (aimc_ssm.analog.hwa): forward = deployed kernel, gradients, noise."""
import pytest
import torch

from aimc_ssm.analog.deploy import measure_signals, to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.hwa import HardwareAwareKernel, KernelHWA, deployable, through_kernels
from aimc_ssm.core.model import ModelConfig, S4DModel


def tiny_model() -> tuple[S4DModel, torch.Tensor]:
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_input=1, d_output=4, d_model=3, d_state=8)).eval()
    with torch.no_grad():
        for block in model.blocks:
            block.ssm.log_dt.fill_(-2.5)
    return model, torch.randn(6, 20, 1)


@pytest.mark.parametrize("mapping", ["direct", "balanced", "incremental"])
@pytest.mark.parametrize("device", ["ideal", "pcm"])
@pytest.mark.parametrize("options", [{}, {"copies": 3, "y_adc_range": 8.0}], ids=["plain", "copies+y-range"])
def test_without_noise_the_training_forward_is_the_deployed_kernel(mapping, device, options, compute):
    """No device noise: the differentiable forward computes what the programmed crossbars compute
    (on pcm: the same DAC and ADC rounding, output noise off on both)."""
    model, x = tiny_model()
    model, x = model.to(compute), x.to(compute)
    config = load_device(device) if device == "ideal" else load_device(device, adc_range=2, out_noise=0.0)
    peaks = measure_signals(model, x)
    if device == "ideal":
        options = {k: v for k, v in options.items() if k == "copies"}  # no ADC on the ideal device
    analog = to_analog(model, config, calibration_inputs=x, mapping=mapping, **options)  # target weights: no programming
    trainable = through_kernels(model, config, peaks, KernelHWA(mapping=mapping, noise_scale=0.0, **options)).eval()
    u = model.encoder(x)
    with torch.no_grad():
        deployed = analog.blocks[0].ssm(u)
        simulated = trainable.blocks[0].ssm(u)
    tolerance = 1e-4 if device == "ideal" else 1e-3  # a rounding decision at a level's edge moves y by one step
    torch.testing.assert_close(simulated, deployed, atol=tolerance * deployed.abs().max().item(), rtol=0)


def test_training_forward_draws_device_noise_and_trains_the_layer():
    model, x = tiny_model()
    config = load_device("pcm", adc_range=2)
    trainable = through_kernels(model, config, measure_signals(model, x), KernelHWA(t_inference=3600.0), linear_noise=0.03).train()
    torch.manual_seed(1)
    first = trainable(x, "recurrent")
    torch.manual_seed(2)
    second = trainable(x, "recurrent")
    assert not torch.equal(first, second)  # a fresh draw of programming noise, drift and output noise
    first.square().mean().backward()
    layer = trainable.blocks[0].ssm
    assert isinstance(layer, HardwareAwareKernel)
    for name in ("log_dt", "log_A_real", "A_imag", "C", "D"):
        grad = getattr(layer.ssm, name).grad
        assert grad is not None and grad.abs().max() > 0, name
    assert trainable.encoder.parametrizations.weight.original.grad.abs().max() > 0
    plain = deployable(trainable)
    assert type(plain.blocks[0].ssm).__name__ == "S4D" and not hasattr(plain.encoder, "parametrizations")
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x))  # untrained: the same weights as the source


def test_stability_margin_holds_the_modes_inside():
    model, x = tiny_model()
    with torch.no_grad():
        model.blocks[0].ssm.log_A_real.fill_(-12.0)  # |Ā| within 1e-6 of 1
    layer = through_kernels(model, load_device("ideal"), measure_signals(model, x), KernelHWA(stability_margin=0.01)).blocks[0].ssm
    W = layer.crossbar_weights()  # incremental: Ā − I in the 2x2 blocks
    block = W[:, :2, 1:3] + torch.eye(2)
    assert torch.linalg.eigvals(block.double()).abs().max() <= 0.99 + 1e-6


def test_kernel_hwa_rejects_bad_settings():
    with pytest.raises(ValueError, match="noise_scale"):
        KernelHWA(noise_scale=-1)
    with pytest.raises(ValueError, match="stability_margin"):
        KernelHWA(stability_margin=1.5)
