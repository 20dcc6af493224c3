"""Ideal crossbar: exact matrix-vector products, no converters, no noise; the parity reference.

Pure-PyTorch tile with a perfect forward (no DAC, ADC, output noise or bound management).
aihwkit's StateIndependentNoiseModel with every noise scale at 0 makes programming and drift
identities (up to float rounding), so programming an ideal model leaves its weights as they are.
"""
from aihwkit.inference import StateIndependentNoiseModel
from aihwkit.simulator.configs import TorchInferenceRPUConfig
from aihwkit.simulator.parameters import IOParameters, MappingParameter


def rpu_config():
    return TorchInferenceRPUConfig(
        forward=IOParameters(is_perfect=True),
        mapping=MappingParameter(
            weight_scaling_omega=1.0, weight_scaling_columnwise=True, max_input_size=0, max_output_size=0
        ),
        noise_model=StateIndependentNoiseModel(prog_noise_scale=0.0, drift_scale=0.0, read_noise_scale=0.0),
        drift_compensation=None,
    )
