"""PCM on the pure-PyTorch tile: programming noise, drift, 8-bit DAC/ADC, output noise.

aihwkit's PCMLikeNoiseModel (Nandakumar et al. 2019: conductance-dependent programming noise,
power-law drift, 1/f read noise; g_max = 25 uS, one device pair per weight) with global drift
compensation. Static converter ranges as in aihwkit's StandardHWATrainingPreset: no noise or bound
management; every tile gets a static input (DAC) range, set from calibration data by
`aimc_ssm.analog.to_analog(..., calibration_inputs=x)`. Weights are mapped per output column so that
the largest reaches g_max (weight_scaling_omega = 1, columnwise) and rescaled in digital.
"""
from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
from aihwkit.simulator.configs import TorchInferenceRPUConfig
from aihwkit.simulator.parameters import (
    BoundManagementType,
    InputRangeParameter,
    IOParameters,
    MappingParameter,
    NoiseManagementType,
    PrePostProcessingParameter,
)

BITS = 8  # DAC and ADC; aihwkit's n-bit resolution is 1 / (2^n - 2) of the full range


def rpu_config():
    return TorchInferenceRPUConfig(
        forward=IOParameters(
            inp_res=1 / (2**BITS - 2),
            out_res=1 / (2**BITS - 2),
            inp_bound=1.0,
            out_bound=10.0,
            out_noise=0.04,
            noise_management=NoiseManagementType.NONE,
            bound_management=BoundManagementType.NONE,
        ),
        pre_post=PrePostProcessingParameter(
            input_range=InputRangeParameter(enable=True, learn_input_range=False, init_value=3.0, init_from_data=0)
        ),
        mapping=MappingParameter(
            weight_scaling_omega=1.0, weight_scaling_columnwise=True, max_input_size=512, max_output_size=512
        ),
        noise_model=PCMLikeNoiseModel(g_max=25.0),
        drift_compensation=GlobalDriftCompensation(),
    )
