"""Hardware metrics: [S25]'s pinned sCIFAR figures, hand-computed small cases, memory footprint, errors.

[S25] sCIFAR, float (L = 4, H = N = 128, d_in = 1, d_out = 10, mixing H×H, every r = 32, B not counted):

    ACE   kernel  N·r_A·r_state + N·r_C·r_state = 2·128·32·32          =     262,144
          layer   H·kernel + H²·r_act·r_lin = 33,554,432 + 16,777,216   =  50,331,648
          L·layer                                                      = 201,326,592
          encoder H·d_in·32·32 = 131,072; decoder H·d_out·32·32 = 1,310,720
          total                                                        = 202,768,384
    size  A, C, mixing: 3 · (128·128·4) · 32                           =   6,291,456 bits
          coders as [S25]: 2·H·d_in · 32 = 256 · 32                    =       8,192 bits
          total 6,299,648 bits                                         =     787,456 bytes
          (the full decoder H·d_out would give 792,064 bytes instead)
    ADC   kernels L·H·(N·32 + 32) = 512 · 4,128                        =   2,113,536
          mixing  L·H·32                                               =      16,384
          coders  (H + d_out)·32 = 138·32                              =       4,416
          total                                                        =   2,134,336
"""
from types import SimpleNamespace

import pytest
import torch

from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.metrics import (
    HardwareReport,
    ace,
    adc_complexity,
    float_bits,
    memory_footprint_bits,
    model_size_bits,
    model_size_bytes,
    report,
)
from aimc_ssm.quant.precision import COMPONENTS

SCIFAR = ModelConfig(d_input=1, d_output=10, d_model=128, d_state=128, n_layers=4, mixing="relu", trainable_B=False)
TINY = ModelConfig(d_input=2, d_output=3, d_model=4, d_state=6, n_layers=2, mixing="relu")


def uniform(b: int) -> dict[str, int]:
    return dict.fromkeys(COMPONENTS, b)


class Spec:
    """Stands in for a precision spec: ``.bits(name)`` and optional per-component layouts."""

    def __init__(self, bits: dict[str, int], **layouts):
        self._bits = bits
        for name, layout in layouts.items():
            setattr(self, name, layout)

    def bits(self, name: str) -> int:
        return self._bits.get(name, 32)


# -- [S25] pinned float values -----------------------------------------------------------------
def test_s25_scifar_float_values():
    assert ace(SCIFAR, float_bits()) == 202_768_384
    assert model_size_bytes(SCIFAR, float_bits()) == 787_456
    assert adc_complexity(SCIFAR, float_bits()) == 2_134_336


def test_s25_values_from_empty_mapping_and_spec():
    assert report(SCIFAR, {}) == report(SCIFAR, Spec({})) == report(SCIFAR, float_bits())


def test_full_coder_matrices_count_the_decoder():
    assert model_size_bytes(SCIFAR, {}, coder_weights="matrices") == 792_064


# -- hand-computed tiny configuration at 8 bits ----------------------------------------------------
def test_uniform_8_bit_tiny_relu():
    # ACE: kernel 6·64 + 6·64 = 768; layer 4·768 + 16·64 = 4,096; ×2 + coders 4·(2 + 3)·64 = 1,280
    assert ace(TINY, uniform(8)) == 9_472
    # count_B adds L·H·N·r_B·r_act = 2·4·6·64 = 3,072; count_D adds L·H·r_D·r_act = 2·4·64 = 512
    assert ace(TINY, uniform(8), count_B=True) == 12_544
    assert ace(TINY, uniform(8), count_D=True) == 9_984
    # size: A 6·4·2·8 = 384, C 384, mixing 16·2·8 = 256, coders 2·4·2·8 = 128
    assert model_size_bits(TINY, uniform(8)) == 1_152
    assert model_size_bits(TINY, uniform(8), coder_weights="matrices") == 1_184  # coders 4·5·8 = 160
    assert model_size_bits(TINY, uniform(8), count_B=True, count_D=True) == 1_152 + 384 + 64
    # ADC: (6·8 + 8)·4·2 = 448, mixing 4·8·2 = 64, coders (4 + 3)·8 = 56
    assert adc_complexity(TINY, uniform(8)) == 568


def test_glu_mixing_counts_the_h_by_2h_matrix():
    glu = ModelConfig(d_input=2, d_output=3, d_model=4, d_state=6, n_layers=2, mixing="glu")
    # mixing per layer: H·2H·r_act·r_lin = 2,048 MAC bits instead of 1,024; 2H² weights; 2H outputs
    assert ace(glu, uniform(8)) == 9_472 + 2 * 1_024
    assert model_size_bits(glu, uniform(8)) == 1_152 + 256  # mixing 2H²·L·8 = 512 instead of 256
    assert adc_complexity(glu, uniform(8)) == 568 + 64  # mixing 2H·8·L = 128 instead of 64


def test_adc_complexity_is_linear_in_bits():
    low = {"A": 3, "B": 5, "C": 2, "D": 7, "dt": 4, "state": 6, "act": 5, "mixing": 3, "coder": 2}
    high = {name: 2 * b for name, b in low.items()}
    summed = {name: low[name] + high[name] for name in COMPONENTS}
    assert adc_complexity(TINY, high) == 2 * adc_complexity(TINY, low)
    assert adc_complexity(TINY, summed) == adc_complexity(TINY, low) + adc_complexity(TINY, high)
    assert adc_complexity(TINY, uniform(4)) * 8 == adc_complexity(TINY, uniform(32))


# -- memory footprint of a real model --------------------------------------------------------------
# d_in 1, d_out 2, H 4, N 4, 1 layer, relu. Stored: encoder W 4, Ā 16, B̄ 16, C 16 (complex (4, 2) as
# reals), D 4, mixing W 16, decoder W 8 = 80 quantizable values; biases 4 + 4 + 2 = 10 float.
MEMORY_CFG = ModelConfig(d_input=1, d_output=2, d_model=4, d_state=4, n_layers=1, mixing="relu")


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return S4DModel(MEMORY_CFG)


def test_memory_float_is_32_bits_for_everything(small_model):
    assert memory_footprint_bits(small_model, float_bits()) == (80 + 10) * 32


def test_memory_per_tensor_vs_per_channel(small_model):
    per_tensor = 80 * 8 + 10 * 32 + 10 * 32  # 7 quantized tensors, one scale each, two for complex Ā, B̄, C
    assert memory_footprint_bits(small_model, uniform(8)) == per_tensor
    # one scale per first-axis channel and plane: encoder 4, Ā 8, B̄ 8, C 8, D 4, mixing 4, decoder 2 = 38
    channel = dict.fromkeys(COMPONENTS, "per_channel")
    per_channel = 80 * 8 + 38 * 32 + 10 * 32
    assert memory_footprint_bits(small_model, uniform(8), granularity=channel) == per_channel
    asymmetric = dict.fromkeys(COMPONENTS, "asymmetric")
    assert (
        memory_footprint_bits(small_model, uniform(8), granularity=channel, scheme=asymmetric)
        == per_channel + 38 * 32
    )


def test_memory_reads_layouts_from_a_spec(small_model):
    spec = Spec({"A": 4}, A=SimpleNamespace(granularity="per_channel", scheme="asymmetric"))
    # Ā: 16·4 + 8 scales + 8 zero points (4 channels x 2 planes); everything else float
    assert memory_footprint_bits(small_model, spec) == 16 * 4 + 16 * 32 + (64 + 10) * 32
    # an explicit mapping wins over the spec
    assert memory_footprint_bits(small_model, spec, granularity={"A": "per_tensor"}) == (
        16 * 4 + 4 * 32 + (64 + 10) * 32
    )


def test_report_and_ratios(small_model):
    floats = report(MEMORY_CFG, float_bits(), small_model)
    eights = report(MEMORY_CFG, uniform(8), small_model)
    assert isinstance(eights, HardwareReport)
    ratios = floats.ratio_to(eights)
    assert ratios["ace"] == 16.0  # every ACE term is a product of two bit widths
    assert ratios["model_size_bits"] == ratios["adc_complexity"] == 4.0
    assert ratios["memory_bits"] == floats.memory_bits / eights.memory_bits
    assert eights.as_dict()["model_size_bytes"] == eights.model_size_bits / 8
    assert report(MEMORY_CFG, {}).ratio_to(floats)["memory_bits"] is None


# -- errors ----------------------------------------------------------------------------------------
def test_unknown_component_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed components.*'mixing'"):
        ace(TINY, {"lin": 8})
    with pytest.raises(ValueError, match="unknown precision component"):
        memory_footprint_bits(S4DModel(MEMORY_CFG), {}, granularity={"weights": "per_channel"})


@pytest.mark.parametrize("value", [0, 33, -1, 8.0, True, "8"])
def test_bits_out_of_range(value):
    with pytest.raises(ValueError, match="integer in 1..32"):
        adc_complexity(TINY, {"state": value})


def test_bad_options():
    with pytest.raises(ValueError, match="coder_weights"):
        model_size_bits(TINY, {}, coder_weights="all")
    with pytest.raises(ValueError, match="granularity"):
        memory_footprint_bits(S4DModel(MEMORY_CFG), uniform(8), granularity={"A": "per_row"})
    with pytest.raises(TypeError, match="bits"):
        ace(TINY, [8, 8])
