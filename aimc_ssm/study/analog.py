"""What the analog studies share: device flags, crossbar configs, deployment and repeated evaluation.

    add_device_flags(parser)              --device, the converter knobs, --kernel-adc-range, --set, ...
    DeviceSettings.from_args(args)        the device and its overrides, resolved into rpu configs:
        .configs(...)                     (config of the analog Linears, config of the fused kernels)
    add_model_flags(parser)               --bits, --recipe: the PTQ and QAT models a study compares
    study_models(zoo, args)               [StudyModel(name, method, bits, model)]: float, PTQ, QAT
    add_kernel_hwa_flags, kernel_hwa_entry   the float model trained through its deployment's simulation
    Deployer(model, calibration, mapping) the model on crossbars (aimc_ssm.analog.to_analog), DAC
        (configs)                         ranges and state mapping calibrated once per model
    analog_draws(...)                     accuracy and unstable channels over repeated, seeded noise draws

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
(the `Deployer` deploys without it): it would be a second rounding, finer than the converters, that no crossbar
periphery performs, and it costs ten times the simulation time of the kernel itself.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, field, replace

import pandas as pd
import torch

from .. import cache
from ..analog.deploy import ZERO_CELLS, apply_signal_peaks, measure_signals, program, to_analog
from ..analog.devices import COMMON_KNOBS, DeviceError, drift_compensations, load_device, parse_settings
from ..analog.hwa import KernelHWA
from ..analog.kernel import MAPPINGS, check_crossbar_fits, crossbar_config
from ..analog.ledger import EnergyModel, device_energy_model
from ..analog.stability import stability_report, unstable_channels
from ..core.model import S4DModel
from ..core.train import DivergenceError, evaluate
from ..io import config_key
from ..quant.precision import RECIPES, recipe_help, recipe_spec
from .zoo import ModelZoo, seed_for

DEFAULT_KERNEL_ADC_RANGE = 2.0
DEFAULT_KERNEL_DRIFT_COMPENSATION = "averaged"
HWA_T_INFERENCE = 3600.0  # seconds of drift the hwa model trains for, in a study without --t-inference
DAC_CALIBRATION_BATCHES = 2  # training batches whose largest |input| and |state| set the DAC ranges
NOISE_FIELDS = ("prog_noise_scale", "read_noise_scale", "drift_scale")  # aihwkit noise models' scales


# -- flags ------------------------------------------------------------------------------------------
def add_device_flags(
    parser: argparse.ArgumentParser, converter_flags: bool = True, converter_bits: int | None = None, mappings_default=("balanced",)
) -> None:
    """--device, the common knobs, kernel-specific settings, --set.

    --dac-bits and --adc-bits take lists in every study, as studies/adc_sweep.py sweeps them (it adds
    its own: converter_flags=False). Here they are one setting of every crossbar, `converter_bits`
    unless given (None: the device file's); DeviceSettings.from_args takes the only value. --mapping
    is a list too: studies that deploy one mapping take its only value (`one_setting`).
    """
    group = parser.add_argument_group("device (crossbars)")
    group.add_argument("--device", default="pcm", help="short name (python -m aimc_ssm.analog.devices --list) or path of a device file (default: %(default)s)")
    if converter_flags:
        default = "the device file's" if converter_bits is None else converter_bits
        for name in ("dac_bits", "adc_bits"):
            flag = "--" + name.replace("_", "-")
            group.add_argument(flag, nargs="+", type=int, default=None if converter_bits is None else [converter_bits], help=f"{COMMON_KNOBS[name]}; one value (default: {default})")
    group.add_argument("--adc-range", type=float, default=None, help="ADC range (forward.out_bound) of the analog Linears (default: the device file's)")
    group.add_argument("--out-noise", type=float, default=None, help="output noise std (forward.out_noise) of every crossbar (default: the device file's)")
    group.add_argument("--tile-size", type=int, default=None, help=COMMON_KNOBS["tile_size"] + " (default: the device file's)")
    group.add_argument("--kernel-adc-range", type=float, default=DEFAULT_KERNEL_ADC_RANGE, help="ADC range of the fused SSM kernels, whose state columns read about x_t / (s_n·r_h), within ±1.5 (default: %(default)s)")
    group.add_argument("--copies", type=int, default=1, help="devices per weight of the fused kernels, their currents summed on each column: k times the cells, programming and drift errors averaged (default: %(default)s)")
    group.add_argument("--y-adc-range", type=float, default=None, help="the fused kernels' y column's own ADC range: the y read sums every mode and can exceed the state columns' range; 0: the kernel's (default: %(default)s)")
    group.add_argument("--kernel-out-noise", type=float, default=None, help="output noise std of the fused SSM kernels (default: as --out-noise)")
    group.add_argument("--mapping", nargs="+", choices=MAPPINGS, default=list(mappings_default), help="how the fused kernels hold the system: direct (as [S24] draws it), balanced (every mode scaled to its channel's input range), incremental (balanced, the crossbar holding Ā − I and the periphery adding the state); why: aimc_ssm/analog/kernel.py (default: %(default)s)")
    group.add_argument("--drift-compensation", choices=sorted(drift_compensations()), default=None, help="drift compensation of the analog Linears: " + COMMON_KNOBS["drift_compensation"] + " (default: the device file's)")
    group.add_argument("--kernel-drift-compensation", choices=sorted(drift_compensations()), default=DEFAULT_KERNEL_DRIFT_COMPENSATION, help="drift compensation of the fused kernels: aihwkit's one-read global compensation misjudges their mostly-zero crossbars (aimc_ssm/analog/compensation.py), so they average their reads (default: %(default)s)")
    group.add_argument("--zero-cells", choices=ZERO_CELLS, default="programmed", help="cells whose target weight is zero: programmed as aihwkit does (drawing programming noise) or left unprogrammed at zero, as a chip may (aimc_ssm/analog/deploy.py) (default: %(default)s)")
    group.add_argument("--energy", dest="energy_settings", action="append", default=[], metavar="KEY=VALUE", help="override of the energy model (aimc_ssm.analog.ledger.EnergyModel) over the device file's ENERGY_MODEL, e.g. read_pj_per_cell=0.05; repeatable")
    group.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help="dotted override of the device config for every crossbar, e.g. noise_model.prog_noise_scale=0.5; repeatable")


def one_setting(name: str, value):
    """The only value of a knob given as a list (the converter bits), for a study that uses one setting."""
    if not isinstance(value, list):
        return value
    if len(value) != 1:
        flag = "--" + name.replace("_", "-")
        raise DeviceError(
            f"{flag} takes one value in this study, not {' '.join(map(str, value))}: it uses one converter setting "
            "(studies/adc_sweep.py sweeps them)"
        )
    return value[0]


def add_model_flags(parser: argparse.ArgumentParser, default_bits: list[int]) -> None:
    parser.add_argument("--bits", nargs="+", type=int, default=default_bits, help="bit widths of the PTQ and QAT models (default: %(default)s)")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="channel-asym-state16", help=f"quantizer recipe ({recipe_help()}) (default: %(default)s)")


# -- devices ----------------------------------------------------------------------------------------
@dataclass
class DeviceSettings:
    """A device file and the overrides a study applies to it."""

    device: str
    knobs: dict = field(default_factory=dict)  # common knobs given on the command line
    settings: dict = field(default_factory=dict)  # dotted overrides (--set)
    kernel_adc_range: float = DEFAULT_KERNEL_ADC_RANGE
    kernel_out_noise: float | None = None
    kernel_drift_compensation: str | None = DEFAULT_KERNEL_DRIFT_COMPENSATION  # None: the device file's
    copies: int = 1  # devices per weight of the fused kernels
    y_adc_range: float | None = None  # the kernels' y column's own ADC range
    zero_cells: str = "programmed"  # whether cells whose target is zero are programmed (aimc_ssm.analog.deploy.program)
    energy: dict = field(default_factory=dict)  # overrides of the energy model (--energy)

    @classmethod
    def from_args(cls, args: argparse.Namespace, swept: tuple[str, ...] = (), noise_scales=()) -> "DeviceSettings":
        """The settings of the device flags; `swept` names knobs the study sets itself at every point.

        The configs of the device as described and at every scale in `noise_scales` (those the study
        will ask for) are built now, so that a device that cannot give them (noise that cannot be
        scaled, say) fails with the device's message before training, not in the middle of a sweep.
        """
        names = [name for name in COMMON_KNOBS if name not in swept]
        knobs = {name: one_setting(name, getattr(args, name)) for name in names if getattr(args, name, None) is not None}
        settings = cls(
            args.device, knobs, parse_settings(args.settings), args.kernel_adc_range, args.kernel_out_noise,
            args.kernel_drift_compensation, args.copies, args.y_adc_range or None, args.zero_cells,
            parse_settings(args.energy_settings),
        )
        settings.energy_model()  # a bad energy setting fails now, with the device's message
        for scale in dict.fromkeys([1.0, *noise_scales]):
            settings.configs(noise_scale=scale)
        if getattr(args, "d_state", None):  # a study's model flags; a bare device namespace has none
            settings.check_kernel_fits(args.d_state)
        return settings

    def check_kernel_fits(self, d_state: int) -> None:
        """Whether the fused kernel of a d_state model fits the device's tiles at these copies; a DeviceError
        that names the flags otherwise, so that the study stops before it trains, not at its first point."""
        mapping = crossbar_config(self.configs()[1], self.copies).mapping
        n_in, n_out = self.copies * (d_state + 2), d_state + 1
        try:
            check_crossbar_fits(mapping, n_in, n_out)
        except ValueError:
            fitting = mapping.max_input_size // (d_state + 2)
            fewer = f" or --copies {fitting}" if 0 < fitting < self.copies else ""
            raise DeviceError(
                f"the fused kernel of a --d-state {d_state} model at --copies {self.copies} needs one {n_in}×{n_out} crossbar "
                f"(inputs × outputs) per channel, but the device's tiles are {mapping.max_input_size}×{mapping.max_output_size}: "
                f"pass --tile-size {max(n_in, n_out)}{fewer}"
            ) from None

    def as_dict(self) -> dict:
        return {
            "device": self.device, "knobs": self.knobs, "settings": self.settings,
            "kernel_adc_range": self.kernel_adc_range, "kernel_out_noise": self.kernel_out_noise,
            "kernel_drift_compensation": self.kernel_drift_compensation,
            "copies": self.copies, "y_adc_range": self.y_adc_range,
            # settings at their defaults stay out, so that older setups keep their hash
            **({"zero_cells": self.zero_cells} if self.zero_cells != "programmed" else {}),
            **({"energy": self.energy} if self.energy else {}),
        }

    def energy_model(self) -> EnergyModel:
        """The device file's energy model (aimc_ssm.analog.ledger) with the study's --energy overrides."""
        return device_energy_model(self.device, **self.energy)

    def kernel_options(self) -> dict:
        """The fused kernels' own options (aimc_ssm.analog.deploy.to_analog)."""
        return {"copies": self.copies, "y_adc_range": self.y_adc_range}

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
        if self.kernel_drift_compensation is not None:
            kernel_knobs["drift_compensation"] = self.kernel_drift_compensation
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


def study_models(zoo: ModelZoo, bits: list[int], recipe: str, methods=("float", "ptq", "qat")) -> list[StudyModel]:
    """The float model and its PTQ and QAT versions at every bit width (trained once, from the caches).

    A QAT run that diverges is left out with a message, rather than stopping the study."""
    models = []
    if "float" in methods:
        models.append(StudyModel("float", "float", 32, zoo.float_model))
    for b in bits:
        spec = recipe_spec(recipe, b)
        if "ptq" in methods:
            models.append(StudyModel(f"ptq-{b}", "ptq", b, zoo.ptq(spec)))
        if "qat" in methods:
            try:
                models.append(StudyModel(f"qat-{b}", "qat", b, zoo.qat(spec)[0]))
            except DivergenceError as err:
                print(f"left out qat-{b}: its fine-tuning diverged ({err})")
    return models


def add_kernel_hwa_flags(parser: argparse.ArgumentParser) -> None:
    """The settings of the hwa model (`kernel_hwa_entry`) but its epochs, which studies budget themselves (--hwa-epochs)."""
    group = parser.add_argument_group("hardware-aware training through the kernels (the hwa model)")
    group.add_argument("--hwa-lr", type=float, default=1e-4, help="learning rate of the hwa fine-tune, every parameter (default: %(default)s)")
    group.add_argument("--hwa-mapping", choices=MAPPINGS, default="incremental", help="the mapping the hwa model trains for (default: %(default)s)")
    group.add_argument("--hwa-linear-noise", type=float, default=0.03, help="ADD_NORMAL noise on the Linear weights while it trains, relative to their largest (default: %(default)s)")
    group.add_argument("--hwa-t-inference", type=float, default=None, help=f"seconds of drift the training draws (default: the study's --t-inference, else {HWA_T_INFERENCE:g})")


def hwa_t_inference(args: argparse.Namespace) -> float:
    return args.hwa_t_inference if args.hwa_t_inference is not None else getattr(args, "t_inference", HWA_T_INFERENCE)


def kernel_hwa_settings(args: argparse.Namespace) -> dict:
    """The hwa flags, for a study's setup key."""
    settings = {"epochs": args.hwa_epochs, "lr": args.hwa_lr, "mapping": args.hwa_mapping, "linear_noise": args.hwa_linear_noise}
    return settings if args.hwa_t_inference is None else {**settings, "t_inference": args.hwa_t_inference}


def kernel_hwa_entry(zoo: ModelZoo, devices: DeviceSettings, calibration: torch.Tensor, args: argparse.Namespace) -> StudyModel:
    """The float model fine-tuned for --hwa-epochs at --hwa-lr through a differentiable simulation of its deployment on
    the study's device (aimc_ssm.analog.hwa: the kernels' cells, mapped as --hwa-mapping, drawing the device's programming
    noise and drift to --hwa-t-inference, its converters, output noise; Linear weight noise --hwa-linear-noise), trained once
    (aimc_ssm.cache)."""
    base = StudyModel("float", "float", 32, zoo.float_model)
    hwa = KernelHWA(mapping=args.hwa_mapping, t_inference=hwa_t_inference(args), zero_cells=devices.zero_cells, **devices.kernel_options())
    _, kernel_config = devices.configs()
    peaks = measure_signals(base.model.to(calibration.device), calibration, state_quantizer=False)
    train_cfg = replace(zoo.setup.finetune, epochs=args.hwa_epochs, lr=args.hwa_lr, ssm_lr=args.hwa_lr, mode="recurrent")
    model = cache.kernel_hwa_model(
        base.model, zoo.setup.model, (zoo.setup.train, zoo.setup.finetune), train_cfg, {"base": base.name},
        kernel_config, devices.as_dict(), peaks, hwa, args.hwa_linear_noise, zoo.models_dir, zoo.progress,
    )
    return StudyModel(f"hwa-{base.name}", "hwa", base.bits, model)


def study_key(zoo: ModelZoo, **settings) -> str:
    """Hash of the models, the evaluation subset and every setting of a measurement, for the `setup` column."""
    return config_key({"zoo": zoo.key, **settings})


# -- deployment and evaluation ------------------------------------------------------------------------
def calibration_inputs(zoo: ModelZoo) -> torch.Tensor:
    """The first training batches (the seeded training order), whose signals set the DAC ranges."""
    return torch.cat([x for x, _ in zoo.calibration_batches(DAC_CALIBRATION_BATCHES)])


class Deployer:
    """Puts one model on crossbars at any number of device settings, measuring its signals once.

    deployer(configs): the model with analog Linears on configs[0] and fused kernels on configs[1]
    (aimc_ssm.analog.to_analog), its DAC ranges and the kernels' state mapping set from the source
    model's signals on `calibration` inputs, measured on the first call: they depend on the model's
    signals only, not on the device. The model's digital state quantizer is not applied on the crossbar
    (see the module docstring).
    """

    def __init__(self, model: S4DModel, calibration: torch.Tensor, mapping: str = "balanced", **kernel_options):
        self.source = model.to(calibration.device)
        self.calibration = calibration
        self.mapping, self.kernel_options = mapping, kernel_options
        self.peaks: dict | None = None

    def __call__(self, configs) -> S4DModel:
        linear_config, kernel_config = configs
        if self.peaks is None:
            self.peaks = measure_signals(self.source, self.calibration, state_quantizer=False)
        analog = to_analog(
            self.source, linear_config, ssm_rpu_config=kernel_config, mapping=self.mapping, state_quantizer=False,
            **self.kernel_options,
        )
        apply_signal_peaks(analog, self.peaks, self.mapping)
        return analog


def analog_draws(
    analog: S4DModel,
    batches,
    repeats: int,
    seed: int,
    read_times: list[float | None],
    device: torch.device,
    zero_cells: str = "programmed",
    report_modes: bool = False,
) -> list[list[Draw]]:
    """Accuracy of `analog` on `batches` and its unstable channels: per seeded repeat, one chip read at
    every time of `read_times` (in order), a list of Draws.

    Each repeat draws fresh programming noise once and lets the same devices drift to each read time
    in seconds (aimc_ssm.analog.deploy.program); a read time None leaves the tiles at their target
    weights (no programming, drift or read noise); zero_cells as `program`'s. Output noise is drawn in the forward, from the same
    seed. The unstable channels (spectral radius >= 1 of the programmed kernels,
    aimc_ssm.analog.stability) say why a draw is at chance; None where the tiles cannot be read back
    (compiled tiles). report_modes: each Draw also keeps the per-mode `stability_report` of its chip.
    """
    runs = []
    for repeat in range(repeats):
        torch.manual_seed(seed_for(seed, repeat))
        draws = []
        for i, t in enumerate(read_times):
            if t is not None:
                program(analog, t, reprogram=i == 0, zero_cells=zero_cells)
            modes = stability_report(analog) if report_modes else None
            draws.append(Draw(evaluate(analog, batches, "recurrent", device), unstable_channels_of(analog), modes))
        runs.append(draws)
    return runs


@dataclass
class Draw:
    """One noise draw of a deployed model: its accuracy, and how many of its kernels' channels are unstable."""

    accuracy: float
    unstable_channels: int | None
    modes: pd.DataFrame | None = None  # aimc_ssm.analog.stability.stability_report, where asked for


def unstable_channels_of(analog: S4DModel) -> int | None:
    try:
        return unstable_channels(analog)
    except ValueError:  # compiled tiles keep their weights in C++: nothing to read back
        return None
