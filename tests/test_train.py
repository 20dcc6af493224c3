"""Training: determinism, atomic checkpoints loadable with weights_only, resume after a kill, cache, CLI."""
import copy
import json
from dataclasses import replace

import pytest
import torch
from aihwkit.inference import HermesNoiseModel

from aimc_ssm import ModelConfig, cache
from aimc_ssm.__main__ import main as cli
from aimc_ssm.analog.deploy import measure_signals, to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.hwa import KernelHWA, WeightNoise, through_kernels
from aimc_ssm.cache import float_model
from aimc_ssm.core import train as train_mod
from aimc_ssm.core.model import S4DModel, parameter_groups
from aimc_ssm.core.train import TrainConfig, TrainingForward, graphable, load_model
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.quantize import quantize_

TINY = ModelConfig(d_model=8, d_state=8)
FAST = TrainConfig(dataset="digits", epochs=2, batch_size=32, lr=3e-2, ssm_lr=1e-2, compute="cpu")


def test_training_is_deterministic_and_learns(tmp_path):
    longer = replace(FAST, epochs=5)
    _, a = float_model(TINY, longer, progress=False, run_dir=tmp_path / "a")
    _, b = float_model(TINY, longer, progress=False, run_dir=tmp_path / "b")
    assert a["history"] == [dict(h, seconds=h2["seconds"]) for h, h2 in zip(b["history"], a["history"])]
    assert a["test_acc_conv"] == b["test_acc_conv"] and a["test_acc_conv"] > 0.4  # 10 classes: chance is 0.1
    assert a["test_acc_conv"] == a["test_acc_recurrent"]


def test_checkpoint_has_config_metrics_versions_and_loads_weights_only(tmp_path):
    float_model(TINY, FAST, progress=False, run_dir=tmp_path)
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert ckpt["meta"]["model"] == TINY.to_dict() and ckpt["meta"]["train"]["dataset"] == "digits"
    assert "torch" in ckpt["meta"]["versions"] and 0 <= ckpt["val_acc"] <= 1
    model, metrics = load_model(tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_resume_after_kill_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    _, full = float_model(TINY, FAST, progress=False, run_dir=tmp_path / "full")

    calls = {"n": 0}
    real_evaluate = train_mod.evaluate

    def killed_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_mod, "evaluate", killed_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        float_model(TINY, FAST, progress=False, run_dir=tmp_path / "killed")
    assert not (tmp_path / "killed" / "metrics.json").exists()
    monkeypatch.setattr(train_mod, "evaluate", real_evaluate)
    _, resumed = float_model(TINY, FAST, progress=False, run_dir=tmp_path / "killed")
    assert [h["val_acc"] for h in resumed["history"]] == [h["val_acc"] for h in full["history"]]
    assert resumed["test_acc_conv"] == full["test_acc_conv"]


def test_cache_trains_once(tmp_path, monkeypatch):
    first, m1 = float_model(TINY, FAST, tmp_path, progress=False)
    monkeypatch.setattr(cache, "fit", lambda *a, **k: pytest.fail("cached model was retrained"))
    second, m2 = float_model(TINY, FAST, tmp_path, progress=False)
    assert m1 == m2
    for p, q in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(p, q)


def test_cli_train_prints_both_modes(tmp_path, capsys):
    args = ["train", "--dataset", "digits", "--d-model", "4", "--d-state", "4", "--epochs", "1", "--compute", "cpu", "--no-progress"]
    assert cli(args + ["--run-dir", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["test_acc_conv"] == out["test_acc_recurrent"] and out["epochs"] == 1


def test_cli_reports_bad_input_clearly(capsys):
    assert cli(["train", "--dataset", "imagenet", "--epochs", "1"]) == 2
    assert "imagenet" in capsys.readouterr().err
    assert cli(["train", "--dataset", "mnist", "--data-dir", "/nonexistent/dir"]) == 2
    assert "/nonexistent/dir" in capsys.readouterr().err


def test_bad_train_config(tmp_path):
    with pytest.raises(ValueError, match="compute"):
        TrainConfig(compute="tpu")
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="parallel")
    with pytest.raises(ValueError, match="unknown train config keys"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="input channels"):
        float_model(ModelConfig(d_input=3, d_model=4, d_state=4), FAST, progress=False, run_dir=tmp_path / "unused")


def test_infinite_gradients_stop_before_the_weights_turn_nan(tmp_path):
    from aimc_ssm.core.data import load_dataset
    from aimc_ssm.core.model import S4DModel
    from aimc_ssm.core.train import DivergenceError, fit

    torch.manual_seed(0)
    model = S4DModel(replace(TINY, d_input=1, d_output=10))
    model.decoder.weight.register_hook(lambda grad: grad * float("inf"))  # finite loss, infinite gradient
    before = model.decoder.weight.detach().clone()
    with pytest.raises(DivergenceError, match="largest gradient became .* lower --lr"):
        fit(model, load_dataset("digits"), FAST, tmp_path, progress=False)
    assert torch.equal(model.decoder.weight, before)  # no step was taken


def hwa_model(model: S4DModel, length: int) -> S4DModel:
    """`model` training through its pcm kernels with the converters but no noise: a deterministic step."""
    x = torch.randn(8, length, 1, generator=torch.Generator().manual_seed(1)).to(next(model.parameters()).device)
    peaks = measure_signals(model, x)
    return through_kernels(model, load_device("pcm"), peaks, KernelHWA(noise_scale=0.0, copies=2, y_adc_range=8.0))


@pytest.mark.parametrize("mode, norm, hwa", [("conv", "layer", False), ("conv", "batch", False), ("recurrent", "none", False), ("recurrent", "none", True)])
def test_graphed_training_steps_equal_the_eager_twin(compute, mode, norm, hwa):
    """fit's TrainingForward against its eager twin: AdamW steps from one init, a full and a ragged last
    batch, an evaluation in between, give the same losses, weights and norm statistics, for plain models
    and one training through its crossbars (aimc_ssm.analog.hwa, noise off). On a GPU the graphed path is
    taken; on a CPU it is the twin."""
    device = compute
    torch.manual_seed(0)
    batches = [(torch.randn(b, 40, 1, device=device), torch.randint(0, 10, (b,), device=device)) for b in (16, 16, 16, 5, 16)]
    init = S4DModel(ModelConfig(d_model=8, d_state=8, n_layers=2, norm=norm)).to(device)
    if hwa:
        init = hwa_model(init, 40)
    runs = {}
    for graphs in (False, True):
        model = copy.deepcopy(init).train()
        forward = TrainingForward(model, mode, graphs=graphs)
        assert forward.graphs == (graphs and device.type == "cuda")
        opt = torch.optim.AdamW(parameter_groups(model, 1e-2, 0.01))
        losses = []
        for step, (x, y) in enumerate(batches):
            loss = torch.nn.functional.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step == 1:  # as fit's evaluate between epochs: eval mode, no gradients, the model called directly
                model.eval()
                with torch.no_grad():
                    losses.append(torch.nn.functional.cross_entropy(forward(x), y).item())
                model.train()
        assert len(forward.captured) == (2 if forward.graphs else 0)  # one graph per batch shape
        runs[graphs] = losses, {k: v.detach().clone() for k, v in model.state_dict().items()}
    (eager_losses, eager_state), (losses, state) = runs[False], runs[True]
    assert losses == pytest.approx(eager_losses, rel=1e-5)
    assert state.keys() == eager_state.keys()
    for name, value in state.items():  # weights and buffers (BatchNorm's running statistics)
        torch.testing.assert_close(value, eager_state[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_graphed_hardware_aware_step_draws_fresh_noise(compute):
    """Replayed, the crossbars' device noise and the Linear weights' noise are drawn anew at every step,
    as eagerly (the studies' hardware-aware training, parametrized Linears included)."""
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_model=4, d_state=8)).to(compute)
    x = torch.randn(8, 24, 1, device=compute)
    peaks = measure_signals(model, x)
    noisy = through_kernels(model, load_device("pcm"), peaks, KernelHWA(t_inference=3600.0), linear_noise=0.03).train()
    forward = TrainingForward(noisy, "recurrent")
    assert forward.graphs == (compute.type == "cuda")
    first = forward(x).clone()  # a replay writes its outputs where the last one left them
    second = forward(x)
    assert not torch.equal(first, second)
    assert torch.isfinite(first).all() and torch.isfinite(second).all()


def test_only_graph_safe_models_on_a_gpu_are_graphed():
    cuda = torch.device("cuda")
    model = S4DModel(TINY)
    assert graphable(model, cuda)
    assert not graphable(model, torch.device("cpu"))
    noisy = S4DModel(TINY)  # weight noise and the hardware-aware kernel draw on the device
    noisy.blocks[0].ssm.set_transform("noise", WeightNoise(0.01, "A"))
    assert graphable(noisy, cuda)
    assert graphable(hwa_model(S4DModel(TINY), 16), cuda)
    hermes = load_device("pcm")  # a noise model that indexes with masks, waiting for the device
    hermes.noise_model = HermesNoiseModel()
    model = S4DModel(TINY)
    peaks = measure_signals(model, torch.randn(4, 16, 1))
    assert not graphable(through_kernels(model, hermes, peaks, KernelHWA()), cuda)
    assert graphable(through_kernels(model, hermes, peaks, KernelHWA(noise_scale=0.0)), cuda)  # never draws it
    # quantizers (their ranges), hooks and aihwkit's tiles keep a model eager
    assert not graphable(quantize_(S4DModel(TINY), PrecisionSpec.channel_asym(8)), cuda)
    hooked = S4DModel(TINY)
    hooked.blocks[0].mixing.register_forward_hook(lambda module, args, out: None)
    assert not graphable(hooked, cuda)
    analog = to_analog(S4DModel(TINY), load_device("pcm"))
    assert not graphable(analog, cuda)
