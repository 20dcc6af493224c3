"""What the analog studies share: device flags, crossbar configs, deployment and repeated evaluation.

    add_device_flags(parser)              --device, the converter knobs, --kernel-adc-range, --set, ...
    DeviceSettings.from_args(args)        the device and its overrides, resolved into rpu configs:
        .configs(...)                     (config of the analog Linears, config of the fused kernels)
    add_model_flags(parser)               --bits, --recipe: the PTQ and QAT models a study compares
    study_models(zoo, args)               [StudyModel(name, method, bits, model)]: float, PTQ, QAT
    Deployer(model, calibration, mapping) the model on crossbars (aimc_ssm.analog.to_analog), DAC
        (configs)                         ranges and state mapping calibrated once per model
    analog_accuracies(...)                accuracy over repeated, seeded noise draws

Crossbar configs. The encoder, mixing and decoder Linears get the device file's config with the
common knobs (--dac-bits, --adc-bits, --adc-range, --out-noise, --tile-size) and the dotted --set
overrides. The fused SSM kernels get the same, except for their ADC range (--kernel-adc-range,
default 2) and, if given, their output noise (--kernel-out-noise): a kernel's state columns are
normalized by the calibrated DAC range and read about x_t / (s_n·r_h), within ±1.5, while a Linear's
outputs reach ~10 (pcm's out_bound). With pcm's out_bound 10 an 8-bit ADC would round every state
increment away. --state-mapping chooses how the kernels hold the state (aimc_ssm.analog: "balanced",
every mode scaled to its channel's input range, or "direct").

The fed-back state. On a crossbar the state leaves through the ADC and returns through the DAC every
step: the converters are its quantizers. A PTQ/QAT model's own digital state quantizer ([Z25]: 16
bits, ranges re-taken from the batch at every step) is therefore not applied on the crossbar
(the `Deployer` removes it): it would be a second rounding, finer than the converters, that no crossbar
periphery performs, and it costs ten times the simulation time of the kernel itself.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field

import torch

from .analog import STATE_MAPPINGS, apply_signal_peaks, inject_weight_noise, measure_signals, program, to_analog, training_noise
from .devices import COMMON_KNOBS, DeviceError, load_device, parse_settings
from .model import S4DModel
from .precision import PrecisionSpec
from .quantize import SSMQuantization, install_quantization, precision_of
from .quantizers import FLOAT, ComplexQuantizer
from .train import DivergenceError, config_key, evaluate
from .zoo import ModelZoo, requantizes_state

DEFAULT_KERNEL_ADC_RANGE = 2.0
RECIPES = ("z25", "uniform")
DAC_CALIBRATION_BATCHES = 2  # training batches whose largest |input| and |state| set the DAC ranges
NOISE_FIELDS = ("prog_noise_scale", "read_noise_scale", "drift_scale")  # aihwkit noise models' scales


# -- flags ------------------------------------------------------------------------------------------
def add_device_flags(parser: argparse.ArgumentParser, converter_flags: bool = True) -> None:
    """--device, the common knobs (converter bits only if `converter_flags`), kernel-specific settings, --set."""
    group = parser.add_argument_group("device (crossbars)")
    group.add_argument("--device", default="pcm", help="short name (python -m aimc_ssm.devices --list) or path of a device file (default: %(default)s)")
    if converter_flags:
        group.add_argument("--dac-bits", type=int, default=None, help=COMMON_KNOBS["dac_bits"] + " (default: the device file's)")
        group.add_argument("--adc-bits", type=int, default=None, help=COMMON_KNOBS["adc_bits"] + " (default: the device file's)")
    group.add_argument("--adc-range", type=float, default=None, help="ADC range (forward.out_bound) of the analog Linears (default: the device file's)")
    group.add_argument("--out-noise", type=float, default=None, help="output noise std (forward.out_noise) of every crossbar (default: the device file's)")
    group.add_argument("--tile-size", type=int, default=None, help=COMMON_KNOBS["tile_size"] + " (default: the device file's)")
    group.add_argument("--kernel-adc-range", type=float, default=DEFAULT_KERNEL_ADC_RANGE, help="ADC range of the fused SSM kernels, whose state columns read about x_t / (s_n·r_h), within ±1.5 (default: %(default)s)")
    group.add_argument("--kernel-out-noise", type=float, default=None, help="output noise std of the fused SSM kernels (default: as --out-noise)")
    group.add_argument("--state-mapping", choices=STATE_MAPPINGS, default="balanced", help="how the fused kernels hold the state: balanced (every mode scaled to its channel's input range on the converters) or direct (as it is) (default: %(default)s)")
    group.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help="dotted override of the device config for every crossbar, e.g. noise_model.prog_noise_scale=0.5; repeatable")


def add_model_flags(parser: argparse.ArgumentParser, default_bits: list[int]) -> None:
    parser.add_argument("--bits", nargs="+", type=int, default=default_bits, help="bit widths of the PTQ and QAT models (default: %(default)s)")
    parser.add_argument(
        "--recipe", choices=RECIPES, default="z25",
        help="quantizers: z25 = PrecisionSpec.z25(bits) ([Z25]: percentile-clipped asymmetric, state 16 bits), "
        "uniform = PrecisionSpec.uniform(bits) (every component symmetric abs-max at bits) (default: %(default)s)",
    )


# -- devices ----------------------------------------------------------------------------------------
@dataclass
class DeviceSettings:
    """A device file and the overrides a study applies to it."""

    device: str
    knobs: dict = field(default_factory=dict)  # common knobs given on the command line
    settings: dict = field(default_factory=dict)  # dotted overrides (--set)
    kernel_adc_range: float = DEFAULT_KERNEL_ADC_RANGE
    kernel_out_noise: float | None = None
    state_mapping: str = "balanced"  # of the fused kernels, see aimc_ssm.analog

    @classmethod
    def from_args(cls, args: argparse.Namespace, swept: tuple[str, ...] = ()) -> "DeviceSettings":
        """The settings of the device flags; `swept` names knobs the study sets itself at every point."""
        names = [name for name in COMMON_KNOBS if name not in swept]
        knobs = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
        settings = cls(
            args.device, knobs, parse_settings(args.settings), args.kernel_adc_range, args.kernel_out_noise, args.state_mapping
        )
        settings.configs()  # fail now, with the device's message, not in the middle of a sweep
        return settings

    def as_dict(self) -> dict:
        return {
            "device": self.device, "knobs": self.knobs, "settings": self.settings,
            "kernel_adc_range": self.kernel_adc_range, "kernel_out_noise": self.kernel_out_noise,
            "state_mapping": self.state_mapping,
        }

    def base_config(self):
        """The device with the study's dotted overrides, before any knob."""
        return load_device(self.device, **self.settings)

    def configs(self, noise_scale: float = 1.0, **knobs):
        """(Linear config, kernel config) with `knobs` over the study's own, every noise source × noise_scale.

        noise_scale multiplies the noise model's programming, read and drift scales and the output
        noise of every crossbar: 0 leaves the converters alone, 1 is the device as described.
        """
        merged = {**self.knobs, **knobs}
        overrides = dict(self.settings)
        if noise_scale != 1.0:
            base = self.base_config()
            overrides.update(scaled_noise_model(base, noise_scale))
            if not base.forward.is_perfect:
                merged["out_noise"] = noise_scale * merged.get("out_noise", base.forward.out_noise)
        linear = load_device(self.device, **overrides, **merged)
        if linear.forward.is_perfect:  # no converters and no output noise: nothing kernel-specific
            return linear, copy.deepcopy(linear)
        kernel_knobs = {**merged, "adc_range": self.kernel_adc_range}
        if self.kernel_out_noise is not None:
            kernel_knobs["out_noise"] = noise_scale * self.kernel_out_noise
        return linear, load_device(self.device, **overrides, **kernel_knobs)


def scaled_noise_model(config, scale: float) -> dict:
    """Dotted overrides multiplying the noise model's programming, read and drift scales by `scale`."""
    model = config.noise_model
    missing = [name for name in NOISE_FIELDS if not hasattr(model, name)]
    if missing:
        raise DeviceError(
            f"the device's noise model {type(model).__name__} has no {missing}, so its noise cannot be scaled; "
            "use a device with an aihwkit PCMLikeNoiseModel or StateIndependentNoiseModel"
        )
    return {f"noise_model.{name}": scale * getattr(model, name) for name in NOISE_FIELDS}


# -- models -----------------------------------------------------------------------------------------
@dataclass
class StudyModel:
    """One model a study deploys: "float", or PTQ / QAT at `bits` with the study's recipe."""

    name: str  # "float", "ptq-8", "qat-8"
    method: str  # "float", "ptq" or "qat"
    bits: int  # 32 for float
    model: S4DModel


def precision_spec(recipe: str, bits: int) -> PrecisionSpec:
    if recipe == "z25":
        return PrecisionSpec.z25(bits)
    if recipe == "uniform":
        return PrecisionSpec.uniform(bits)
    raise ValueError(f"unknown recipe {recipe!r}; choose one of {RECIPES}")


def study_models(zoo: ModelZoo, bits: list[int], recipe: str, methods=("float", "ptq", "qat")) -> list[StudyModel]:
    """The float model and its PTQ and QAT versions at every bit width (trained once, from the caches).

    A QAT run that diverges is left out with a message, rather than stopping the study."""
    models = []
    if "float" in methods:
        models.append(StudyModel("float", "float", 32, zoo.float_model))
    for b in bits:
        spec = precision_spec(recipe, b)
        if "ptq" in methods:
            models.append(StudyModel(f"ptq-{b}", "ptq", b, zoo.ptq(spec)))
        if "qat" in methods:
            try:
                models.append(StudyModel(f"qat-{b}", "qat", b, zoo.qat(spec)[0]))
            except DivergenceError as err:
                print(f"left out qat-{b}: its fine-tuning diverged ({err})")
    return models


def study_key(zoo: ModelZoo, **settings) -> str:
    """Hash of the models, the evaluation subset and every setting of a measurement, for the `setup` column."""
    return config_key({"zoo": zoo.key, **settings})


# -- deployment and evaluation ------------------------------------------------------------------------
def calibration_inputs(zoo: ModelZoo) -> torch.Tensor:
    """The first training batches (the seeded training order), whose signals set the DAC ranges."""
    return torch.cat([x for x, _ in zoo.calibration_batches(DAC_CALIBRATION_BATCHES)])


def without_state_requantization(model: S4DModel) -> S4DModel:
    """A copy of `model` whose recurrence does not re-quantize the state (the model itself if it does not)."""
    if not requantizes_state(model):
        return model
    model = copy.deepcopy(model)
    for block in model.blocks:
        if block.ssm.quant is not None:
            block.ssm.quant.state = ComplexQuantizer(FLOAT)
    return model


class Deployer:
    """Puts one model on crossbars at any number of device settings, measuring its signals once.

    deployer(configs): the model with analog Linears on configs[0] and fused kernels on configs[1]
    (aimc_ssm.analog.to_analog), its DAC ranges and the kernels' state mapping set from the source
    model's signals on `calibration` inputs, measured on the first call: they depend on the model's
    signals only, not on the device. The model's digital state quantizer is not applied on the crossbar
    (see the module docstring).
    """

    def __init__(self, model: S4DModel, calibration: torch.Tensor, state_mapping: str = "balanced"):
        self.source = without_state_requantization(model).to(calibration.device)
        self.calibration = calibration
        self.state_mapping = state_mapping
        self.peaks: dict | None = None

    def __call__(self, configs) -> S4DModel:
        linear_config, kernel_config = configs
        if self.peaks is None:
            self.peaks = measure_signals(self.source, self.calibration)
        analog = to_analog(self.source, linear_config, ssm_rpu_config=kernel_config, state_mapping=self.state_mapping)
        apply_signal_peaks(analog, self.peaks, self.state_mapping)
        return analog


def seed_for(seed: int, repeat: int) -> int:
    """The random seed of one repeat: the same draw index gets the same seed at every point of a sweep."""
    return 1000 * seed + repeat


def analog_accuracies(
    analog: S4DModel,
    batches,
    repeats: int,
    seed: int,
    t_inference: float | None,
    device: torch.device,
) -> list[float]:
    """Accuracy of `analog` on `batches` for `repeats` seeded noise draws.

    Each repeat draws fresh programming noise and lets the devices drift to t_inference seconds
    (aimc_ssm.analog.program); t_inference None leaves the tiles at their target weights (no
    programming, drift or read noise). Output noise is drawn in the forward, from the same seed.
    """
    accuracies = []
    for repeat in range(repeats):
        torch.manual_seed(seed_for(seed, repeat))
        if t_inference is not None:
            program(analog, t_inference)
        accuracies.append(evaluate(analog, batches, "recurrent", device))
    return accuracies


# -- relative Gaussian weight noise on the state matrix ([S25]) ------------------------------------------
NOISE_TARGETS = ("A", "A_bar")


class NoisySSMQuantization(SSMQuantization):
    """An S4D layer's quantization plus relative Gaussian noise on its state matrix, drawn at every forward.

    target "A": the continuous A, Re and Im each with std 2·sigma·max|·| (sigma of the range
    [-max|·|, max|·|]), before discretization and any quantizer, as [S25]; "A_bar": the deployed Ā,
    after its quantizer, as a crossbar holding Ā would perturb it. The noise is aihwkit's ADD_NORMAL
    weight modifier (aimc_ssm.analog.training_noise), so gradients pass straight through it and the
    same layer trains hardware-aware with aimc_ssm.train.fit.
    """

    def __init__(self, spec: PrecisionSpec, sigma: float, target: str):
        super().__init__(spec)
        if target not in NOISE_TARGETS:
            raise ValueError(f"unknown noise target {target!r}; choose one of {NOISE_TARGETS}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.sigma, self.target = sigma, target
        self.modifier = training_noise("add", 2 * sigma)

    def perturb(self, z: torch.Tensor) -> torch.Tensor:
        return torch.complex(inject_weight_noise(z.real, self.modifier), inject_weight_noise(z.imag, self.modifier))

    def ssm_parameters(self, ssm):
        if self.sigma == 0:
            return super().ssm_parameters(ssm)
        if self.target == "A":
            return super().ssm_parameters(NoisyContinuousA(ssm, self.perturb))
        dA, dB, C, D = super().ssm_parameters(ssm)
        return self.perturb(dA), dB, C, D

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma}, target={self.target}"


class NoisyContinuousA:
    """An S4D layer seen through `perturb` on its continuous A; everything else is the layer's."""

    def __init__(self, ssm, perturb):
        self.ssm, self.perturb = ssm, perturb

    def __getattr__(self, name):
        return getattr(self.ssm, name)

    def continuous_parameters(self):
        dt, A, B, C = self.ssm.continuous_parameters()
        return dt, self.perturb(A), B, C


def with_weight_noise(model: S4DModel, sigma: float, target: str) -> S4DModel:
    """A copy of `model` (float or quantized) whose SSMs draw relative Gaussian noise on A or Ā every forward."""
    model = copy.deepcopy(model)
    spec = precision_of(model) or PrecisionSpec.float()
    for block in model.blocks:
        install_quantization(block.ssm, NoisySSMQuantization(spec, sigma, target))
    return model
