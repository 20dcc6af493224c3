"""PCM on the compiled (C++) tile: pcm.py plus PCM read noise on every MVM (forward.w_noise).

Same programming noise, drift, compensation, converters and mapping as pcm.py; in addition the
output-referred PCM read noise `forward.w_noise` (type PCM_READ, 0.0175 as aihwkit's
StandardHWATrainingPreset), which only the compiled tile simulates. The fused SSM kernel runs
compiled tiles one channel at a time (their own forward), so this device is slower than pcm.py.
"""
from aihwkit.inference import GlobalDriftCompensation, PCMLikeNoiseModel
from aihwkit.simulator.configs import InferenceRPUConfig
from aihwkit.simulator.parameters import (
    BoundManagementType,
    InputRangeParameter,
    IOParameters,
    MappingParameter,
    NoiseManagementType,
    PrePostProcessingParameter,
    WeightNoiseType,
)

BITS = 8  # DAC and ADC; aihwkit's n-bit resolution is 1 / (2^n - 2) of the full range


def rpu_config():
    return InferenceRPUConfig(
        forward=IOParameters(
            inp_res=1 / (2**BITS - 2),
            out_res=1 / (2**BITS - 2),
            inp_bound=1.0,
            out_bound=10.0,
            out_noise=0.04,
            w_noise=0.0175,
            w_noise_type=WeightNoiseType.PCM_READ,
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
