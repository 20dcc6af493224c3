"""Relative Gaussian weight noise [S25]: std = sigma x the weight range, on an otherwise ideal crossbar.

The noise is aihwkit's StateIndependentNoiseModel used as pure programming noise: a constant
programming-noise std c0 (uS) on each device of the pair, no drift, no read noise. With one device
pair per weight and the largest |weight| of a column mapped to g_max - g_min, a weight w receives
N(0, (sqrt(2) c0 / (g_max - g_min))^2 max|w|^2); c0 = sqrt(2) sigma (g_max - g_min) makes that
std sigma x 2 max|w|, i.e. sigma relative to the column's weight range [-max|w|, max|w|]. In the fused
SSM kernel the state columns hold A-bar (and the small B-bar), so sigma is relative to A-bar's range
as in [S25]. Both devices idle at g_min = 8 c0 so the clip of conductances at 0 never bites and the
noise stays Gaussian. The noise is drawn when the model is programmed (`aimc_ssm.analog.program`);
program again to resample it, as [S25] resamples every forward pass.
"""
import math

from aihwkit.inference import SinglePairConductanceConverter, StateIndependentNoiseModel
from aihwkit.simulator.configs import TorchInferenceRPUConfig
from aihwkit.simulator.parameters import IOParameters, MappingParameter

G_SPAN = 25.0  # uS between the idle and the fully programmed device


def rpu_config(sigma: float = 0.01):
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    c0 = math.sqrt(2) * sigma * G_SPAN
    g_min = 8 * c0
    return TorchInferenceRPUConfig(
        forward=IOParameters(is_perfect=True),
        mapping=MappingParameter(
            weight_scaling_omega=1.0, weight_scaling_columnwise=True, max_input_size=0, max_output_size=0
        ),
        noise_model=StateIndependentNoiseModel(
            g_converter=SinglePairConductanceConverter(g_max=g_min + G_SPAN, g_min=g_min),
            prog_coeff=[c0, 0.0, 0.0],
            drift_nu_mean=0.0,
            drift_nu_std=0.0,
            read_noise_scale=0.0,
        ),
        drift_compensation=None,
    )
