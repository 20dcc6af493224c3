"""S4D core: kernel against its direct sum, convolution mode against recurrent mode, bad inputs."""
import pytest
import torch

from aimc_ssm import S4D, ModelConfig, S4DModel
from aimc_ssm.core.model import parameter_groups
from aimc_ssm.core.s4d import TRANSFORM_ORDER, SSMTransform, causal_conv, causal_conv_ref, ssm_kernel, ssm_kernel_ref


def randomize(layer: S4D, seed: int) -> S4D:
    """Move every parameter off its structured init, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return layer


@pytest.mark.parametrize("H,N,L", [(1, 2, 16), (4, 8, 100), (16, 64, 784), (8, 32, 1024)])
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_conv_equals_recurrent_random_models(H, N, L, discretization, compute):
    torch.manual_seed(H * N + L)
    layer = randomize(S4D(H, N, discretization=discretization), seed=L).to(compute)
    u = torch.randn(3, L, H).to(compute)
    with torch.no_grad():
        y_conv, y_rec = layer(u, "conv"), layer(u, "recurrent")
    scale = y_conv.abs().max()
    assert torch.allclose(y_conv, y_rec, atol=2e-5 * scale, rtol=1e-4), (y_conv - y_rec).abs().max() / scale


def test_conv_equals_recurrent_after_training():
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_model=8, d_state=16))
    opt = torch.optim.AdamW(parameter_groups(model, lr=1e-2, weight_decay=0.01))
    x, y = torch.randn(16, 784, 1), torch.randint(0, 10, (16,))
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        conv, rec = model(x, "conv"), model(x, "recurrent")
    assert torch.allclose(conv, rec, atol=1e-4), (conv - rec).abs().max()


def test_kernel_matches_direct_power_sum(compute):
    layer = randomize(S4D(6, 16), seed=1).to(compute)
    dA, dB, C, _ = layer.ssm_parameters()
    with torch.no_grad():
        K, K_ref = ssm_kernel(dA, dB, C, 1024), ssm_kernel_ref(dA, dB, C, 1024)
    assert torch.allclose(K, K_ref, atol=1e-5 * K_ref.abs().max())


def test_fft_convolution_matches_direct_sum(compute):
    u, K = torch.randn(2, 300, 5).to(compute), torch.randn(5, 300).to(compute)
    assert torch.allclose(causal_conv(u, K), causal_conv_ref(u, K), atol=1e-3)


def test_step_by_step_equals_scan_and_state_continues():
    layer = randomize(S4D(4, 8), seed=2)
    u = torch.randn(2, 50, 4)
    with torch.no_grad():
        full = layer.scan(u)
        x = layer.initial_state(2)
        steps = []
        for t in range(50):
            y_t, x = layer.step(u[:, t], x)
            steps.append(y_t)
    assert torch.allclose(full, torch.stack(steps, 1), atol=1e-6)


def test_zoh_discretization_formula():
    layer = S4D(2, 4)
    dt, A, B, _ = layer.continuous_parameters()
    dA, dB, _, _ = layer.ssm_parameters()
    assert torch.allclose(dA, torch.exp(dt[:, None] * A))
    assert torch.allclose(dB, B * (torch.exp(dt[:, None] * A) - 1) / A)


def test_s4d_lin_init_and_quarter_option():
    layer = S4D(2, 8)
    dt, A, _, _ = layer.continuous_parameters()
    assert torch.allclose(A.real, torch.full((2, 4), -0.5))
    assert torch.allclose(A.imag[0], torch.pi * torch.arange(4.0))
    assert torch.allclose(S4D(2, 8, a_init="lin-quarter").A_imag[0], torch.pi / 4 * torch.arange(4.0))
    assert ((dt >= 1e-3 - 1e-9) & (dt <= 1e-1 + 1e-9)).all()


def test_z25_model_has_3850_parameters():
    model = S4DModel(ModelConfig())  # H=16, N=64, 1 layer, B trainable, GELU + GLU
    assert sum(p.numel() for p in model.parameters()) == 3850


def test_fixed_B_is_not_trained():
    layer = S4D(2, 4, trainable_B=False)
    assert "B" not in dict(layer.named_parameters()) and "B" in dict(layer.named_buffers())


@pytest.mark.parametrize("norm,prenorm", [("layer", False), ("batch", True), ("none", True)])
@pytest.mark.parametrize("mixing,activation", [("glu", "gelu"), ("relu", "none")])
def test_block_variants_run_in_both_modes(norm, prenorm, mixing, activation):
    cfg = ModelConfig(d_model=4, d_state=4, n_layers=2, norm=norm, prenorm=prenorm, mixing=mixing, activation=activation, dropout=0.1)
    model = S4DModel(cfg).eval()
    x = torch.randn(3, 20, 1)
    with torch.no_grad():
        assert torch.allclose(model(x, "conv"), model(x, "recurrent"), atol=1e-5)


def test_parameter_groups_give_ssm_its_own_lr_and_no_decay():
    model = S4DModel(ModelConfig(d_model=4, d_state=4))
    rest, ssm = parameter_groups(model, lr=1e-2, weight_decay=0.05, ssm_lr=1e-3)
    ssm_ids = {id(p) for p in ssm["params"]}
    named = dict(model.named_parameters())
    assert {id(named[k]) for k in named if k.endswith(("log_dt", "log_A_real", "A_imag"))} == ssm_ids
    assert ssm["lr"] == 1e-3 and ssm["weight_decay"] == 0 and rest["weight_decay"] == 0.05


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"d_model": 4, "d_state": 7}, "must be even"),
        ({"d_model": 0, "d_state": 4}, "positive"),
        ({"d_model": 4, "d_state": -2}, "positive"),
        ({"d_model": 4, "d_state": 4, "a_init": "hippo"}, "a_init"),
        ({"d_model": 4, "d_state": 4, "discretization": "euler"}, "discretization"),
    ],
)
def test_bad_sizes_and_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        S4D(**kwargs)


@pytest.mark.parametrize("field,value", [("n_layers", 0), ("d_output", -1), ("norm", "group"), ("dropout", 1.5), ("d_state", 9)])
def test_bad_model_config(field, value):
    with pytest.raises(ValueError, match=field if field != "d_state" else "even"):
        ModelConfig(**{field: value})


def test_wrong_input_shape_and_nan_are_refused():
    model = S4DModel(ModelConfig(d_model=4, d_state=4))
    with pytest.raises(ValueError, match=r"\(batch, length, 1\)"):
        model(torch.randn(2, 10))
    with pytest.raises(ValueError, match=r"\(batch, length, 1\)"):
        model(torch.randn(2, 10, 3))
    x = torch.randn(2, 10, 1)
    x[0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(x)
    with pytest.raises(ValueError, match="mode"):
        model(torch.randn(2, 10, 1), "fft")


def test_transform_chain_runs_in_the_declared_order():
    calls = []

    class Recorder(SSMTransform):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def continuous(self, ssm, dt, A, B, C):
            calls.append(("continuous", self.kind))
            return dt, A, B, C

        def discrete(self, ssm, dA, dB, C, D):
            calls.append(("discrete", self.kind))
            return dA, dB, C, D

    layer = S4D(3, 4)
    float_system = [p.detach().clone() for p in layer.ssm_parameters()]
    for kind in ("pruning", "noise", "quantization"):  # attached in another order
        layer.set_transform(kind, Recorder(kind))
    system = layer.ssm_parameters()
    expected = [(stage, kind) for stage in ("continuous", "discrete") for kind in TRANSFORM_ORDER[stage]]
    assert calls == expected
    assert all(torch.equal(a, b) for a, b in zip(system, float_system))  # identity links change nothing
    layer.set_transform("noise", None)
    assert list(layer.transforms) == ["pruning", "quantization"]
    with pytest.raises(ValueError, match="unknown transform kind"):
        layer.set_transform("dropout", Recorder("dropout"))
