"""The recipe registry: every setting of the [Z25] and [S25] recipes, what each recipe assumes of the model
and of QAT, the suite's own recipes under their names, and deployment of every recipe on crossbars."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from test_quantize import set_discrete_A  # a layer given its Ā

from aimc_ssm.analog.deploy import to_analog
from aimc_ssm.analog.devices import load_device
from aimc_ssm.core.model import HardGELU, ModelConfig, S4DModel
from aimc_ssm.quant import precision
from aimc_ssm.quant.precision import (
    COMPONENTS,
    RECIPES,
    PrecisionSpec,
    QATPlan,
    recipe_help,
    recipe_model_config,
    recipe_qat_plan,
    recipe_spec,
)
from aimc_ssm.quant.quantize import ptq_model, quantize_, stability_report
from aimc_ssm.quant.quantizers import FLOAT, QuantizerConfig

TINY = ModelConfig(d_model=3, d_state=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def recipe_model(name: str, seed: int = 0, base: ModelConfig = TINY) -> S4DModel:
    torch.manual_seed(seed)
    return S4DModel(recipe_model_config(name, base))


def inputs(batch=3, length=24, seed=1):
    return torch.randn(batch, length, 1, generator=torch.Generator().manual_seed(seed))


# -- the registry -----------------------------------------------------------------------------------------
def test_registry_is_the_one_source_of_recipe_names():
    assert set(RECIPES) == {"z25", "s25", "channel-asym", "channel-asym-state16", "uniform"}
    text = recipe_help()
    for name, recipe in RECIPES.items():
        assert f"{name}: {recipe.description}" in text
        assert f"\n    {name} " in precision.__doc__  # each recipe's settings and sources are documented
    with pytest.raises(ValueError, match="unknown recipe 'z26'; choose one of"):
        recipe_spec("z26", 8)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_qat_plan("z26")
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe_model_config("z26", TINY)


@pytest.mark.parametrize("name", sorted(RECIPES))
@pytest.mark.parametrize("bits", [2, 5, 8, 16])
def test_every_recipe_builds_round_trips_and_runs(name, bits):
    spec = recipe_spec(name, bits)
    assert PrecisionSpec.from_json(spec.to_json()) == spec
    model = ptq_model(recipe_model(name), spec)
    with torch.no_grad():
        for mode in ("conv", "recurrent"):
            assert torch.isfinite(model(inputs(), mode)).all()


def test_s25_needs_two_bits_for_its_half_level_proxy():
    with pytest.raises(ValueError, match="at least 2 bits"):
        recipe_spec("s25", 1)


# -- [Z25] ------------------------------------------------------------------------------------------------
def test_z25_has_the_public_codes_settings():
    spec = recipe_spec("z25", 8)
    weight = QuantizerConfig(8, "asymmetric", 99.999, "tensor", "dynamic", "clipped", zero_point_bits=16)
    for name in ("A", "B", "C"):
        assert spec.config(name) == replace(weight, granularity="channel", complex_range="joint")
    assert spec.D == spec.mixing == spec.coder == weight
    assert spec.state == replace(weight, bits=16, granularity="channel", complex_range="joint", clamp=50.0)
    assert spec.partial_products and spec.hard_gelu and spec.parameterization == "cartesian"
    assert spec.y == replace(weight, granularity="step", clamp=1000.0)
    assert spec.ssm_input == spec.pre_activation == replace(weight, granularity="step")
    assert spec.act == spec.encoder_input == spec.decoder_input == weight  # per tensor: per sequence
    assert spec.dt.is_float and spec.act_point == "mixing_input" and not spec.conv_state_proxy
    assert recipe_model_config("z25", replace(TINY, activation="none", trainable_B=False)) == TINY
    assert recipe_qat_plan("z25") == QATPlan(from_scratch=False, epochs=10, lr=1e-3, mode="recurrent")


def test_z25s_joint_range_can_push_A_past_the_unit_circle():
    """Slow, rotating modes (|Ā| = 0.999): one range shared by Re and Im is wider than Re's own, so Re Ā
    falls on a coarser, shifted grid and one mode rounds outside the unit circle; per-plane ranges keep it."""
    model = S4DModel(ModelConfig(d_model=1, d_state=8))
    set_discrete_A(model, torch.polar(torch.full((4,), 0.999), torch.tensor([-1.15, -0.8, -0.5, 0.05]))[None])
    [joint] = stability_report(ptq_model(model, recipe_spec("z25", 8)))
    [planes] = stability_report(ptq_model(model, recipe_spec("channel-asym", 8)))
    assert joint["unstable_modes"] == 1 and joint["max_abs_A"] > 1
    assert planes["stable"] and planes["max_abs_A"] < 1


# -- [S25] ------------------------------------------------------------------------------------------------
def test_s25_has_qs4ds_settings():
    spec = recipe_spec("s25", 6)
    config = QuantizerConfig(6, "symmetric", 100, "tensor", "dynamic", "identity", symmetric_grid="q-levels")
    assert spec.A == spec.dt == spec.state == spec.act == spec.mixing == spec.coder == config
    assert spec.C == replace(config, complex_range="joint") and spec.B.is_float and spec.D.is_float
    assert spec.parameterization == "continuous" and spec.conv_state_proxy and spec.act_point == "block_output"
    assert spec.proxy_config() == replace(config, bits=5)  # q/2 levels: the grid ±2^4 where the state has ±2^5
    assert not spec.hard_gelu and all(spec.config(q).is_float for q in precision.ACTIVATION_QUANTIZERS)
    cfg = recipe_model_config("s25", replace(TINY, d_model=32))
    assert (cfg.activation, cfg.trainable_B, cfg.a_init, cfg.d_model) == ("none", False, "lin-quarter", 32)
    assert recipe_qat_plan("s25") == QATPlan(from_scratch=True, epochs=200, lr=1e-2, mode="conv")


def test_s25_quantizes_block_outputs_and_a_half_level_proxy():
    model = quantize_(recipe_model("s25"), recipe_spec("s25", 3))
    block, x = model.blocks[0], inputs()
    seen = {}
    block.output_quant.register_forward_hook(lambda m, args, out: seen.__setitem__("out", out))
    block.ssm.quantization.state_input.register_forward_hook(lambda m, args, out: seen.__setitem__("u", out))
    with torch.no_grad():
        model(x, "conv")
    for sequence in seen["out"]:  # q = 8 levels: the grid ±4 steps of max|a| / 4
        steps = sequence / (sequence.abs().max() / 4)
        assert torch.allclose(steps, steps.round(), atol=1e-5) and steps.round().abs().max() == 4
    for sequence in seen["u"]:  # q/2 = 4 levels: ±2 steps
        assert torch.unique(sequence).numel() <= 5


# -- the suite's recipes ------------------------------------------------------------------------------------
def former_z25_json(bits: int, state_bits: int, proxy: bool) -> dict:
    """The JSON the suite's first "z25" recipes wrote (before [Z25]'s code was reproduced)."""

    def quantizer(b, granularity):
        return {"bits": b, "scheme": "asymmetric", "percentile": 99.999, "granularity": granularity, "ranges": "dynamic",
                "ste": "clipped", "ternary": False}

    channel, tensor = quantizer(bits, "channel"), quantizer(bits, "tensor")
    return {
        "A": channel, "B": channel, "C": channel, "D": tensor, "dt": quantizer(None, "tensor"),
        "state": quantizer(state_bits, "channel"), "act": tensor, "mixing": tensor, "coder": tensor,
        "parameterization": "cartesian", "partial_products": False, "conv_state_proxy": proxy,
    }


@pytest.mark.parametrize("bits", [4, 8])
def test_channel_asym_recipes_are_the_former_z25_ones(bits):
    assert recipe_spec("channel-asym", bits) == PrecisionSpec.from_dict(former_z25_json(bits, bits, True))
    assert recipe_spec("channel-asym-state16", bits) == PrecisionSpec.from_dict(former_z25_json(bits, 16, False))
    assert recipe_model_config("channel-asym", TINY) == TINY
    model = quantize_(recipe_model("channel-asym"), recipe_spec("channel-asym", bits))
    assert isinstance(model.blocks[0].activation, torch.nn.GELU) and not isinstance(model.blocks[0].activation, HardGELU)


def test_only_keeps_a_recipes_other_settings():
    z25 = recipe_spec("z25", 6)
    state = z25.only("state")
    assert state.quantized() == ("state",) and state.state == z25.state and state.partial_products and state.hard_gelu
    assert all(state.config(c) == FLOAT for c in COMPONENTS if c != "state")


# -- deployment on crossbars -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_deploys_on_crossbars(name):
    """to_analog takes every recipe's model; on ideal devices it computes the digital recurrence, up to
    what the fused kernel does not have: [Z25]'s partial products and y quantizer (a step of 8 bits)."""
    model, x = ptq_model(recipe_model(name), recipe_spec(name, 8)), inputs(3, 16)
    analog = to_analog(copy.deepcopy(model), load_device("ideal"), calibration_inputs=x)
    with torch.no_grad():
        torch.testing.assert_close(analog(x), model(x, "recurrent"), atol=1e-3, rtol=0)
