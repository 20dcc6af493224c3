"""The energy and latency ledger: counts pinned on hand-worked small models, the simulation's own reads
and conversions, and the energy model on its sources' figures."""
import math
from collections import Counter

import pytest
import torch

from aimc_ssm import ModelConfig, S4DModel
from aimc_ssm.analog import mvm
from aimc_ssm.analog.deploy import to_analog
from aimc_ssm.analog.devices import DeviceError, load_device
from aimc_ssm.analog.kernel import MAPPINGS
from aimc_ssm.analog.ledger import (
    EnergyModel,
    converter_bits,
    device_energy_model,
    ledger,
    ledger_columns,
    price,
    survey_adc_energy_j,
)
from aimc_ssm.quant.precision import recipe_spec
from aimc_ssm.quant.quantize import ptq_model

L = 5  # steps of the hand-worked sequence
CONFIG = ModelConfig(d_input=1, d_output=3, d_model=2, d_state=4)  # H = 2, N = 4, one layer, GELU, GLU, residual


def deployed(mapping="balanced", linear_device="pcm", kernel_device=None, model=None, **options):
    torch.manual_seed(0)
    model = model if model is not None else S4DModel(CONFIG)
    linear = load_device(linear_device) if isinstance(linear_device, str) else linear_device
    kernel = None if kernel_device is None else load_device(kernel_device)
    return to_analog(model, linear, ssm_rpu_config=kernel, calibration_inputs=torch.randn(2, L, 1), mapping=mapping, **options)


# -- counts ---------------------------------------------------------------------------------------------
# pcm: 8-bit DAC and ADC, a DAC range on every tile, digital bias, tiles up to 512 × 512.
# A step: encoder 1 -> 2 (one 1×2 read), kernel (two 6×5 crossbars: rows u_t, x (4), u_{t-1}; columns x (4), y),
# GELU on 2, mixing 2 -> 4 (one 2×4 read), GLU to 2, residual, pooling. Once a sequence: the kernel's
# flush step, the pooling's division, decoder 2 -> 3 (one 2×3 read). An inference: 5 steps and that.
DAC = 5 * (1 + 2 * 6 + 2) + (2 * 6 + 2)  # 89
ADC = 5 * (2 + 2 * 5 + 4) + (2 * 5 + 3)  # 93
READS = {(1, 2): 5, (6, 5): 2 * (5 + 1), (2, 4): 5, (2, 3): 1}
CELLS = 5 * 2 + 12 * 30 + 5 * 8 + 6  # 416
DIGITAL = {
    "input_scale": DAC,  # one per converted row here (one copy)
    "output_scale": ADC,  # one per converted column
    "bias": 5 * (2 + 4) + 3,
    "gelu": 5 * 2, "glu": 5 * 2, "residual": 5 * 2, "pooling": 5 * 2, "pooling_scale": 2,
}
INCREMENTAL_ADDS = 2 * 4 * (5 + 1)  # H·N state adds every kernel step, the flush step too
# critical path of a step: encoder (input scale, output scale, bias), kernel (input, output scale[, add]),
# GELU, mixing (3), GLU (look-up, multiply), residual, pooling = 13 operations, 3 reads; once a sequence
# the flush step (2 operations, 1 read), the division (1), the decoder (3 operations, 1 read)
SERIAL_READS = 5 * 3 + 2
SERIAL_OPS = 5 * 13 + 2 + 1 + 3


@pytest.mark.parametrize("mapping", MAPPINGS)
def test_counts_of_a_hand_worked_model(mapping):
    book = ledger(deployed(mapping), L)
    inference = book.per_inference
    incremental = mapping == "incremental"
    assert inference.dac == Counter({8: DAC}) and inference.adc == Counter({8: ADC})
    assert inference.reads == Counter(READS) and inference.cells_read == CELLS
    assert inference.digital == Counter({**DIGITAL, **({"incremental_add": INCREMENTAL_ADDS} if incremental else {})})
    assert inference.serial_reads == SERIAL_READS
    assert inference.serial_ops == SERIAL_OPS + incremental * 5 + incremental  # one add more a step, the flush's too
    assert book.per_step * L + book.per_sequence == inference


@pytest.mark.parametrize("mapping", ["direct", "incremental"])
def test_price_of_the_hand_worked_model(mapping):
    energy = EnergyModel(
        adc_measured_pj={8: 1.0}, dac_pj=0.5, read_pj_per_cell=0.01, add_pj=0.1, multiply_pj=0.2, lookup_pj=0.3,
        read_time_ns=100.0, digital_op_time_ns=1.0,
    )
    incremental = mapping == "incremental"
    adds = DIGITAL["bias"] + DIGITAL["residual"] + DIGITAL["pooling"] + incremental * INCREMENTAL_ADDS
    multiplies = DIGITAL["input_scale"] + DIGITAL["output_scale"] + DIGITAL["glu"] + DIGITAL["pooling_scale"]
    lookups = DIGITAL["gelu"] + DIGITAL["glu"]
    cost = price(ledger(deployed(mapping), L).per_inference, energy)
    assert cost.energy_pj == pytest.approx(
        {"adc": ADC * 1.0, "dac": DAC * 0.5, "read": CELLS * 0.01, "digital": 0.1 * adds + 0.2 * multiplies + 0.3 * lookups}
    )
    assert cost.latency_ns == pytest.approx(SERIAL_READS * 100 + SERIAL_OPS + 6 * incremental)


def test_copies_add_rows_and_y_adc_range_adds_nothing():
    one = ledger(deployed(), L).per_step
    two = ledger(deployed(copies=2), L).per_step
    assert two.reads[(12, 5)] == 2 and (6, 5) not in two.reads  # k·(N+2) rows, the same columns
    assert two.dac_conversions - one.dac_conversions == 2 * 6  # every row converts
    assert two.adc == one.adc and two.digital == one.digital  # the copies' rows take the same scaled inputs
    assert ledger(deployed(copies=2, y_adc_range=4.0), L).per_step == two  # one read, a column's own ADC gain


def test_linears_split_over_tiles():
    book = ledger(deployed(linear_device=load_device("pcm", tile_size=1), kernel_device="pcm"), L)
    step = book.per_step
    # encoder 1 -> 2: two 1×1 tiles; mixing 2 -> 4: 2 input splits × 4 output splits of 1×1; kernel unchanged
    assert step.reads == Counter({(1, 1): 2 + 8, (6, 5): 2})
    assert step.dac_conversions == 2 + 12 + 8 and step.adc_conversions == 2 + 10 + 8
    assert step.digital["partial_sum"] == 4  # the mixing's two input halves added, once per output
    assert step.serial_reads == 2 + 1 + 8  # a Linear's tiles one after the other, the kernel's in parallel
    assert book.per_sequence.digital["partial_sum"] == 3  # the decoder's two input halves


def test_two_blocks_with_layer_norm_and_relu():
    config = ModelConfig(d_input=1, d_output=3, d_model=2, d_state=4, n_layers=2, norm="layer", mixing="relu", activation="none")
    book = ledger(deployed(model=S4DModel(config)), L)
    # a step: encoder 1 -> 2, then twice: kernel (two 6×5), mixing 2 -> 2, ReLU, residual, layer norm
    assert book.per_step.reads == Counter({(1, 2): 1, (6, 5): 4, (2, 2): 2})
    assert book.per_step.digital == Counter({
        "input_scale": 1 + 2 * (12 + 2), "output_scale": 2 + 2 * (10 + 2), "bias": 2 + 2 * 2,
        "relu": 4, "residual": 4, "layer_norm": 4, "layer_norm_rsqrt": 2, "pooling": 2,
    })
    assert book.per_sequence.reads == Counter({(6, 5): 4, (2, 3): 1})  # both kernels flush, then the decoder


def test_quantizers_of_a_ptq_model():
    ptq = ptq_model(S4DModel(CONFIG), recipe_spec("channel-asym", 8))
    on = ledger(deployed(model=ptq), L).per_step
    assert on.digital["state_quantization"] == 2 * 4 and on.digital["activation_quantization"] == 2
    off = ledger(deployed(model=ptq, state_quantizer=False), L).per_step
    assert "state_quantization" not in off.digital and off.digital["activation_quantization"] == 2


def test_ideal_device_reads_without_converters():
    step = ledger(deployed(linear_device="ideal", kernel_device="ideal"), L).per_step
    assert step.dac_conversions == 0 and step.adc_conversions == 0
    assert step.reads == Counter({(1, 2): 1, (6, 5): 2, (2, 4): 1})
    assert "input_scale" not in step.digital and step.digital["output_scale"] == 2 + 10 + 4


def test_ledger_counts_what_the_simulation_reads(monkeypatch):
    """One sequence through the simulation: the vectors every tile converts and the kernel's steps are the ledger's."""
    analog = deployed(linear_device=load_device("pcm", tile_size=1), kernel_device="pcm")
    simulated = Counter()
    for linear in (analog.encoder, analog.blocks[0].mixing, analog.decoder):
        for tile in linear.analog_tiles():
            def count(module, args, size=(tile.in_size, tile.out_size)):
                vectors = args[0].numel() // size[0]
                simulated["dac"] += vectors * size[0]
                simulated[size] += vectors
            tile.register_forward_pre_hook(count)
    step = mvm.CrossbarStack.step

    def counting_step(stack, inp):  # (H, B, rows)
        simulated["dac"] += inp.numel()
        simulated[tuple(stack.weight.shape[:0:-1])] += inp.shape[0] * inp.shape[1]
        return step(stack, inp)

    monkeypatch.setattr(mvm.CrossbarStack, "step", counting_step)
    for block in analog.blocks:  # the steps, where a read can be counted; the compiled CPU scan's outputs are theirs (its tests)
        block.ssm.numba = False
    with torch.no_grad():
        analog(torch.randn(1, L, 1), "recurrent")
    inference = ledger(analog, L).per_inference
    assert simulated.pop("dac") == inference.dac_conversions
    assert simulated == inference.reads


def test_unquantized_converters_need_bits_to_be_priced():
    book = ledger(deployed(linear_device=load_device("pcm", adc_bits=0)), L)
    assert None in book.per_step.adc
    with pytest.raises(ValueError, match="unquantized_bits"):
        price(book.per_inference, EnergyModel())
    priced = price(book.per_inference, EnergyModel(unquantized_bits=16)).energy_pj["adc"]
    at_16 = 1e12 * survey_adc_energy_j(16, 100e6)
    assert priced == pytest.approx(sum(n * (at_16 if bits is None else EnergyModel().adc_pj(bits)) for bits, n in book.per_inference.adc.items()))


def test_ledger_columns_are_the_priced_inference():
    book, energy = ledger(deployed("incremental"), L), EnergyModel()
    columns = ledger_columns(book, energy)
    cost = price(book.per_inference, energy)
    assert columns["energy_per_inference_nj"] == pytest.approx(cost.total_pj / 1e3)
    assert columns["latency_per_inference_us"] == pytest.approx(cost.latency_ns / 1e3)
    assert columns["energy_per_step_nj"] == pytest.approx(price(book.per_step, energy).total_pj / 1e3)
    assert (columns["adc_conversions"], columns["dac_conversions"], columns["cells_read"]) == (ADC, DAC, CELLS)
    assert sum(columns[f"{part}_energy_nj"] for part in ("adc", "dac", "read", "digital")) == pytest.approx(columns["energy_per_inference_nj"])


def test_ledger_refuses_what_it_cannot_count():
    with pytest.raises(ValueError, match="to_analog"):
        ledger(S4DModel(CONFIG), L)
    with pytest.raises(ValueError, match="length"):
        ledger(deployed(), 0)


# -- the energy model -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bits, joules", [(6, 3e-15), (8, 48e-15), (10, 0.76e-12)])
def test_survey_bound_gives_the_quoted_figures(bits, joules):
    for rate in (1e6, 100e6):  # flat below the envelope's corner
        assert survey_adc_energy_j(bits, rate) == pytest.approx(joules, rel=0.02)


def test_survey_bound_follows_its_formula():
    # a bit more: SNDR + 6.02 dB, energy × 10^0.602; above the corner (~175 MS/s) FoM_S falls 6.46 dB per e-fold of f_s
    assert survey_adc_energy_j(9, 1e6) / survey_adc_energy_j(8, 1e6) == pytest.approx(10**0.602)
    assert survey_adc_energy_j(8, 2e9) / survey_adc_energy_j(8, 1e9) == pytest.approx(10 ** (0.646 * math.log(2)))
    corner = math.exp((302.7 - 180.1) / 6.46)
    assert survey_adc_energy_j(8, corner) == pytest.approx(survey_adc_energy_j(8, 1e6))


def test_read_price_and_time_from_the_ibm_chip():
    energy = EnergyModel()
    assert energy.read_pj_per_cell * 256 * 256 / 1e3 == pytest.approx(13.4, rel=0.01)  # nJ per full 256×256 MVM
    assert energy.read_time_ns == pytest.approx(133, rel=0.01)


def test_measured_adc_figure_replaces_the_bound():
    energy = EnergyModel(adc_measured_pj={8: 1.5})
    assert energy.adc_pj(8) == 1.5
    assert energy.adc_pj(6) == pytest.approx(1e12 * survey_adc_energy_j(6, energy.adc_sample_rate_hz))


def test_energy_model_rejects_bad_settings():
    with pytest.raises(ValueError, match="dac_pj"):
        EnergyModel(dac_pj=-1.0)
    with pytest.raises(ValueError, match="adc_measured_pj"):
        EnergyModel(adc_measured_pj={8: 0.0})
    with pytest.raises(ValueError, match="adc_sample_rate_hz"):
        EnergyModel(adc_sample_rate_hz=0.0)


def test_converter_bits():
    assert converter_bits(1 / 254) == 8 and converter_bits(254.0) == 8 and converter_bits(-1) is None
    assert converter_bits(1 / 255) == pytest.approx(math.log2(257), abs=1e-3)


def test_device_file_sets_the_energy_model(tmp_path):
    device = tmp_path / "my_pcm.py"
    device.write_text(
        "from aihwkit.simulator.configs import TorchInferenceRPUConfig\n"
        "ENERGY_MODEL = {'read_pj_per_cell': 0.05, 'adc_measured_pj': {8: 1.2}}\n"
        "def rpu_config():\n    return TorchInferenceRPUConfig()\n"
    )
    energy = device_energy_model(device, dac_pj="0.1")
    assert (energy.read_pj_per_cell, energy.adc_measured_pj, energy.dac_pj) == (0.05, {8: 1.2}, 0.1)
    assert energy.add_pj == EnergyModel().add_pj
    assert device_energy_model("pcm") == EnergyModel()  # no ENERGY_MODEL: the defaults
    with pytest.raises(DeviceError, match="unknown fields.*adc_pj"):
        device_energy_model(device, adc_pj=1.0)
    device.write_text(device.read_text().replace("'read_pj_per_cell'", "'read_energy'"))
    with pytest.raises(DeviceError, match="ENERGY_MODEL has unknown fields"):
        device_energy_model(device)
