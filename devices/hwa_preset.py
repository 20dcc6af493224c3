"""aihwkit's standard hardware-aware-training preset (Rasch et al. 2023, Nature Communications 14:5282).

`StandardHWATrainingPreset` as aihwkit ships it: PCM programming noise and drift (PCMLikeNoiseModel)
with global drift compensation, 8-bit DAC and ADC (254 steps) over static input ranges, output noise
0.04 at ADC range 10, PCM read noise on the weights (forward.w_noise, PCM_READ), IR drop, per-column
weight scaling with learned output scales. Beside `pcm` so that results compare with that paper's
benchmark setting. It is a compiled-tile config (only the C++ tile simulates forward.w_noise and IR
drop), so the fused kernel runs its per-channel reference path on it (slower than `pcm`).
"""
from aihwkit.simulator.presets import StandardHWATrainingPreset


def rpu_config():
    return StandardHWATrainingPreset()
