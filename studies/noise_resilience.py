"""Noise resilience of float and QAT S4D models: [S25]'s relative Gaussian noise, and a device's noise on crossbars.

Experiments (the `experiment` column):

    test    relative Gaussian noise at test only ([S25]): std = sigma x the weight range [-max|w|, max|w|],
            drawn afresh at every forward (every batch), on the state matrix of every SSM layer:
              target A      the continuous A (Re and Im separately), before discretization and the
                            quantizers, as [S25] perturbs it
              target A_bar  the deployed Ā, after its quantizer: what a crossbar holding Ā would see
            aihwkit's ADD_NORMAL weight modifier (aimc_ssm.analog.training_noise), digital model in
            convolution mode (the same system as the recurrence: no state re-quantization here)
    hwa     hardware-aware training: the model fine-tuned for --hwa-epochs with the same noise on
            during training (sigma in --hwa-sigmas, gradients straight through the noise), then tested
            with it; cached in --models-dir as hwa-<hash>
    device  the models on the --device's crossbars (aimc_ssm.analog.to_analog, fused SSM kernels),
            every noise source scaled by noise_scale in --noise-scales: programming, read (1/f) and
            drift noise of the aihwkit noise model and the output noise (0: converters only, 1: the
            device as described); programmed afresh for every repeat, evaluated 1 s after programming
    sources the device's noise one source at a time, at full scale, read at --sources-t-inference (1 h):
            programming, drift (the spread of the devices' drift exponents, compensated), read (1/f)
            noise, output noise, and all of them together; for every draw the read-back eigenvalue of
            every mode (aimc_ssm.analog.stability) goes to modes.csv: which modes leave the unit
            circle, under which source
    drift   as device, at the noise scales in --drift-noise-scales: one programming per repeat, then
            the same devices read at 1 s, 1 h, 1 d and 1 y, once per drift compensation of the fused
            kernels in --compensations (aihwkit's global and per-column, averaged reads, none)

The models (--training): the float model, QAT at --bits (channel-asym-state16 recipe), and in the device and
drift experiments "hwa-float": the float model fine-tuned through a differentiable simulation of its
deployment on the device (aimc_ssm.analog.hwa, for --hwa-mapping, as studies/adc_sweep.py's).

The converters of the device experiments default to 16 bits (--adc-bits, --dac-bits) so that the
curves show the noise, not the converters (studies/adc_sweep.py sweeps those); the fused kernels get
--kernel-adc-range (2) as there. The model and kernels default to studies/adc_sweep.py's co-designed
ones (--a-init lin-quarter --dt-max 0.01, 4 copies, the y column's ADC range 8).

What to expect on smnist: the modes have |Ā| within 1e-3 of 1, so noise of a fraction of a percent on
Ā pushes eigenvalues outside the unit circle over 784 steps (the `unstable_channels` column counts
them). Noise on continuous A is gentler by the factor dt (Ā = exp(dt·A)). On pcm the direct and
balanced mappings hold the recurrence only at a few percent of the device's noise; the incremental
mapping, which holds Ā − I, holds far more (aimc_ssm/analog/kernel.py says why).

Measured on an H200 with batched reads (--compute cuda --bits 8 --analog-samples 500 --repeats 2; device:
--experiments device --mapping direct balanced incremental --noise-scales 0 0.03 0.1 0.3 1; sources and
drift: --experiments sources drift --mapping incremental --drift-noise-scales 1), float / QAT-8:
  - device noise at 1 s: direct 87.0 / 87.0 % at 0.03x, 48.2 / 48.0 % at 0.1x, chance from 0.3x; balanced
    77.4 / 79.1 % at 0.1x, 17.8 / 16.9 % at 0.3x; incremental 87.5 / 88.4 % at 0.3x and 80.4 / 79.9 % at 1x;
  - drift (incremental, full noise) at 1 s, 1 h, 1 d, 1 y: averaged compensation 80.4, 76.4, 71.6, 50.0 %
    (float); aihwkit's global 82.2, 30.5, 17.7, 19.7 %; per-column 79.3, 31.7, 17.8, 20.1 %;
  - sources at 1 h (incremental): all 76.9 / 76.9 %; programming alone 85.5 / 85.6 %, read alone 85.9 /
    86.0 %, drift alone 86.8 / 87.1 %, output noise alone 85.1 / 85.0 %. Alone, only programming noise
    pushes modes out (0.5 per draw); together 3.25 modes in 2.75 channels per draw, rotating a median
    0.13 rad per step against 0.026 for all modes: the fast-turning modes.

    python studies/noise_resilience.py --quick    # about a minute on 2 cores
    python studies/noise_resilience.py            # about 15 minutes on 2 cores on a fresh set-up
    python studies/noise_resilience.py --experiments test hwa --bits 8 6 4 --sigmas 0 0.5 1 2 5

Defaults: float and channel-asym-state16 QAT models at 8 and 6 bits (hwa-float with --training ... hwa); sigmas 0 0.05
0.1 0.2 0.5 1 2 5 %, hwa sigmas
0.2 1 %, 3 repeats on the whole test split (digital); device pcm, noise scales 0 0.01 0.03 0.1 0.3 1,
drift at noise scales 0.03 and 1 with the averaged, global and per-column compensations, 3 repeats on
200 test samples. --quick: 3-epoch models, QAT at 8
bits, sigmas 0 0.5 5 %, hwa 1 % on A only (1 epoch), noise scales 0 0.03 1, sources programming and all, drift at 0.03 (averaged); 2 repeats;
100 test samples.

results/noise_resilience/results.csv, one row per accuracy measured (a killed run resumes):
    setup        hash of the models, test subsets and settings (rows of other runs are kept, not mixed)
    experiment   "test", "hwa", "device" or "drift"
    model        "float" or "qat-<bits>";  method, bits: its method and bit width (32: float)
    target       what the noise acts on: "A", "A_bar" (test, hwa) or "crossbars" (device, drift); sources:
                 the noise source ("programming", "drift", "read", "output", "all")
    noise        sigma as a fraction of the weight range (test, hwa), or the device's noise scale
    train_noise  sigma during training (hwa; 0 elsewhere)
    t_inference  seconds after programming (device, drift; 0 elsewhere)
    repeat       index of the noise draw (seed = 1000 * --seed + repeat)
    mapping      the fused kernels' mapping (device, drift: --mapping, see aimc_ssm/analog/kernel.py); "none" elsewhere
    compensation the fused kernels' drift compensation (device: --kernel-drift-compensation; drift: each
                 of --compensations); "none" in the digital experiments
    accuracy     test accuracy on `samples` test samples (NaN: the hardware-aware training diverged)
    unstable_channels   kernel channels whose programmed recurrence has a mode with |λ| >= 1 (device,
                 drift; aimc_ssm.analog.stability), what puts a draw at chance; empty elsewhere
    samples, seconds
results/noise_resilience/modes.csv (sources), one row per draw, channel and mode: setup, model, mapping,
source, repeat, and the columns of aimc_ssm.analog.stability.stability_report (target and read-back
eigenvalue, modulus_shift, unstable, noise gain, predicted error std).
Plots in results/noise_resilience/: modes.png (each mode's |λ| - 1 after programming vs its rotation
per step, per source and mapping), accuracy_vs_sigma.png (test only and HWA, one panel per target),
accuracy_vs_device_noise.png, accuracy_vs_drift.png (mean and standard deviation band per model, one
panel per mapping).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import seaborn as sns
from tqdm.auto import tqdm

from aimc_ssm import cache
from aimc_ssm.analog.deploy import DRIFT_TIMES
from aimc_ssm.analog.devices import DeviceError, drift_compensations
from aimc_ssm.analog.hwa import NOISE_TARGETS
from aimc_ssm.analog.kernel import MAPPINGS
from aimc_ssm.core.train import DivergenceError
from aimc_ssm.io import atomic_write, config_key, save_figure
from aimc_ssm.study.analog import (
    NOISE_FIELDS,
    Deployer,
    DeviceSettings,
    StudyModel,
    add_device_flags,
    add_kernel_hwa_flags,
    analog_draws,
    calibration_inputs,
    kernel_hwa_entry,
    kernel_hwa_settings,
    study_key,
    study_models,
)
from aimc_ssm.study.harness import Budget, ResultTable, prepare, run_keys, study_parser, study_setup, usage_error
from aimc_ssm.study.summary import write_summary
from aimc_ssm.study.zoo import ModelZoo

NAME = "noise_resilience"
KEY = ["setup", "experiment", "model", "target", "mapping", "compensation", "noise", "t_inference", "repeat"]
DIGITAL = "none"  # the mapping column of the digital experiments (test, hwa)
EXPERIMENTS = ("test", "hwa", "device", "sources", "drift")
SOURCES = {  # the noise model's scale each source keeps (the others are zeroed); "output": the output noise only
    "programming": "prog_noise_scale", "drift": "drift_scale", "read": "read_noise_scale", "output": None, "all": "all",
}
TRAININGS = ("float", "qat", "hwa")
RECIPE = "channel-asym-state16"  # of the QAT models
CONVERTER_BITS = 16  # of the device experiments: the curves show the noise, not the converters
BUDGET = Budget(
    full={
        "bits": [8, 6], "sigmas": [0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5], "hwa_sigmas": [0.2, 1], "targets": list(NOISE_TARGETS),
        "hwa_targets": list(NOISE_TARGETS), "noise_scales": [0, 0.01, 0.03, 0.1, 0.3, 1], "drift_noise_scales": [0.03, 1],
        "repeats": 3, "analog_samples": 200, "compensations": ["averaged", "global", "per-column"], "copies": 4,
        "sources": list(SOURCES),
    },
    quick={
        "bits": [8], "sigmas": [0, 0.5, 5], "hwa_sigmas": [1], "targets": list(NOISE_TARGETS), "hwa_targets": ["A"],
        "noise_scales": [0, 0.03, 1], "drift_noise_scales": [0.03], "repeats": 2, "analog_samples": 100,
        "compensations": ["averaged"], "copies": 1, "sources": ["programming", "all"],
    },
)


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__, BUDGET)
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS), help="default: all five")
    parser.add_argument("--bits", nargs="+", type=int, default=None, help="bit widths of the QAT models (channel-asym-state16 recipe) " + BUDGET.help("bits"))
    gaussian = parser.add_argument_group("relative Gaussian noise (test, hwa)")
    gaussian.add_argument("--sigmas", nargs="+", type=float, default=None, help="test noise, percent of the weight range " + BUDGET.help("sigmas"))
    gaussian.add_argument("--hwa-sigmas", nargs="+", type=float, default=None, help="training and test noise of the hwa experiment, percent " + BUDGET.help("hwa_sigmas"))
    gaussian.add_argument("--targets", nargs="+", choices=NOISE_TARGETS, default=None, help="noise targets of the test experiment " + BUDGET.help("targets"))
    gaussian.add_argument("--hwa-targets", nargs="+", choices=NOISE_TARGETS, default=None, help="noise targets of the hwa experiment " + BUDGET.help("hwa_targets"))
    gaussian.add_argument("--hwa-epochs", type=int, default=None, help="hardware-aware fine-tuning epochs, both kinds (default: as --qat-epochs)")
    parser.add_argument("--training", nargs="+", choices=TRAININGS, default=["float", "qat"], help="the models: float, QAT at --bits, hwa: the float model fine-tuned through its deployment's simulation (device and drift experiments) (default: %(default)s)")
    add_kernel_hwa_flags(parser)
    add_device_flags(parser, converter_bits=CONVERTER_BITS, mappings_default=MAPPINGS)
    device = parser.add_argument_group("device noise (device, drift)")
    device.add_argument("--noise-scales", nargs="+", type=float, default=None, help="device noise scales " + BUDGET.help("noise_scales"))
    device.add_argument("--drift-noise-scales", nargs="+", type=float, default=None, help="noise scales of the drift experiment " + BUDGET.help("drift_noise_scales"))
    device.add_argument("--compensations", nargs="+", choices=sorted(drift_compensations()), default=None, help="drift compensations of the fused kernels in the drift experiment " + BUDGET.help("compensations"))
    device.add_argument("--sources", nargs="+", choices=list(SOURCES), default=None, help="noise sources of the sources experiment " + BUDGET.help("sources"))
    device.add_argument("--sources-t-inference", type=float, default=DRIFT_TIMES["1h"], help="seconds after programming of the sources experiment (default: %(default)s)")
    device.add_argument("--analog-samples", type=int, default=None, help="test samples of the device experiments " + BUDGET.help("analog_samples"))
    parser.add_argument("--repeats", type=int, default=None, help="noise draws per point " + BUDGET.help("repeats"))
    # the co-designed model and kernels of studies/adc_sweep.py; every flag overrides them
    parser.set_defaults(a_init="lin-quarter", dt_max=0.01, copies=None, y_adc_range=8.0)
    args = parser.parse_args(argv)
    for name in ("sigmas", "hwa_sigmas", "noise_scales", "drift_noise_scales"):  # floats, as they read back from the CSV
        setattr(args, name, [float(v) for v in getattr(args, name)])
    if args.hwa_epochs is None:
        args.hwa_epochs = args.qat_epochs
    if min(args.sigmas + args.hwa_sigmas + args.noise_scales + args.drift_noise_scales) < 0:
        parser.error("noise levels must be >= 0")
    if min(args.repeats, args.analog_samples, args.hwa_epochs) < 1:
        parser.error("--repeats, --analog-samples and --hwa-epochs must be positive")
    return args


def row(entry, **values) -> dict:
    defaults = {"train_noise": 0.0, "t_inference": 0.0}
    return {"model": entry.name, "method": entry.method, "bits": entry.bits, **defaults, **values}


def repeats_for(noise: float, args) -> int:
    """Noise draws of a point: one where there is no noise to draw."""
    return 1 if noise == 0 else args.repeats


@dataclass
class Point:
    """One model under one noise setting: the rows of its noise draws (of a drift run: at every read time)."""

    experiment: str
    model: StudyModel
    target: str
    mapping: str  # the kernels' mapping (device, drift), DIGITAL elsewhere
    compensation: str  # the kernels' drift compensation (device, drift), DIGITAL elsewhere
    noise: float  # sigma as a fraction of the weight range, or the device's noise scale
    keys: list[dict]


def noise_point(setup_key, experiment, entry, target, noise, read_times, args, mapping=DIGITAL, compensation=DIGITAL) -> Point:
    key = {
        "setup": setup_key, "experiment": experiment, "model": entry.name, "target": target, "mapping": mapping,
        "compensation": compensation, "noise": noise,
    }
    repeats = range(repeats_for(noise, args))
    keys = [{**key, "t_inference": t, "repeat": r} for r in repeats for t in read_times]
    return Point(experiment, entry, target, mapping, compensation, noise, keys)


def measured_row(point, key, accuracy, samples, seconds, unstable_channels=None, **values) -> dict:
    return {
        "setup": key["setup"], "experiment": point.experiment,
        **row(point.model, target=point.target, noise=point.noise, **values), "mapping": point.mapping,
        "compensation": point.compensation,
        "repeat": key["repeat"], "accuracy": accuracy,
        "unstable_channels": math.nan if unstable_channels is None else unstable_channels,
        "samples": samples, "seconds": seconds,
    }


# -- relative Gaussian noise, digital ------------------------------------------------------------------
def gaussian_points(models, setup_key, args) -> list[Point]:
    """The points of the test and hwa experiments, sigma as a fraction."""
    points = []
    if "test" in args.experiments:
        points += [noise_point(setup_key, "test", e, t, fraction(s), [0.0], args) for e in models for t in args.targets for s in args.sigmas]
    if "hwa" in args.experiments:
        points += [noise_point(setup_key, "hwa", e, t, fraction(s), [0.0], args) for e in models for t in args.hwa_targets for s in args.hwa_sigmas if s > 0]
    return points


def fraction(percent: float) -> float:
    """A percentage as a fraction, rounded so that it reads back from the CSV as the same number."""
    return round(percent / 100, 12)


def hwa_model(zoo, entry, sigma, target, args):
    """`entry`'s model fine-tuned with noise on (cached in --models-dir), as a model that keeps drawing it."""
    return cache.hwa_model(
        entry.model, zoo.setup.model, (zoo.setup.train, zoo.setup.finetune), replace(zoo.setup.finetune, epochs=args.hwa_epochs),
        {"base": entry.name, "recipe": RECIPE}, sigma, target, args.models_dir,
    )


def run_gaussian(zoo, table, points, args):
    def measure(point):
        entry, sigma, target, repeats = point.model, point.noise, point.target, len(point.keys)
        start = time.time()
        if point.experiment == "test":
            accuracies = zoo.noisy_accuracies(entry.model, sigma, target, repeats, args.seed)
        else:
            try:
                trained = hwa_model(zoo, entry, sigma, target, args)
                accuracies = zoo.noisy_accuracies(trained, sigma, target, repeats, args.seed)
            except DivergenceError as err:
                tqdm.write(f"hardware-aware training of {entry.name} at sigma {sigma:g} on {target} diverged, scored NaN: {err}")
                accuracies = [math.nan] * repeats
        seconds = round((time.time() - start) / repeats, 2)
        train_noise = sigma if point.experiment == "hwa" else 0.0
        return [measured_row(point, key, a, zoo.samples("test"), seconds, train_noise=train_noise) for key, a in zip(point.keys, accuracies)]

    table.measure_pending(points, measure, f"{NAME}: gaussian")


# -- device noise on crossbars ---------------------------------------------------------------------------
def device_points(models, setup_key, args) -> list[Point]:
    """The points of the device experiment (read at 1 s) and of the drift experiment (read at every drift time)."""
    points = []
    if "device" in args.experiments:
        points += [
            noise_point(setup_key, "device", e, "crossbars", s, [DRIFT_TIMES["1s"]], args, m, args.kernel_drift_compensation)
            for e in models for m in args.mapping for s in args.noise_scales
        ]
    if "sources" in args.experiments:
        points += [
            noise_point(setup_key, "sources", e, source, 1.0, [args.sources_t_inference], args, m, args.kernel_drift_compensation)
            for e in models for m in args.mapping for source in args.sources
        ]
    if "drift" in args.experiments:
        points += [
            noise_point(setup_key, "drift", e, "crossbars", s, list(DRIFT_TIMES.values()), args, m, c)
            for e in models for m in args.mapping for c in args.compensations for s in args.drift_noise_scales
        ]
    return points


def source_settings(devices: DeviceSettings, source: str) -> DeviceSettings:
    """The device with only `source` left of its noise (SOURCES): the noise model's other scales and, unless
    the source is the output noise, every crossbar's output noise at zero."""
    if SOURCES[source] == "all":
        return devices
    model = devices.base_config().noise_model
    silenced = {f"noise_model.{name}": 0.0 for name in NOISE_FIELDS if name != SOURCES[source] and hasattr(model, name)}
    if source == "output":
        return replace(devices, settings={**devices.settings, **silenced})
    quiet_kernel = None if devices.kernel_out_noise is None else 0.0
    return replace(devices, settings={**devices.settings, **silenced}, knobs={**devices.knobs, "out_noise": 0.0}, kernel_out_noise=quiet_kernel)


def point_settings(devices: DeviceSettings, point) -> DeviceSettings:
    """The device settings of a device, sources or drift point: its noise source and the kernels' drift compensation."""
    settings = source_settings(devices, point.target) if point.experiment == "sources" else devices
    return replace(settings, kernel_drift_compensation=point.compensation)


def modes_path(out, point) -> Path:
    """Where a sources point keeps the mode reports of its draws (gathered into modes.csv)."""
    return out / "modes" / f"{config_key(point.keys[0])}.csv"


def save_modes(out, point, draws) -> None:
    frames = [
        d.modes.assign(setup=key["setup"], model=point.model.name, mapping=point.mapping, source=point.target, repeat=key["repeat"])
        for key, d in zip(point.keys, draws) if d.modes is not None
    ]
    if frames:
        frame = pd.concat(frames, ignore_index=True).astype({"target": str, "eigenvalue": str, "shift": str})
        atomic_write(modes_path(out, point), lambda f: frame.to_csv(f, index=False))


def gather_modes(out, points) -> pd.DataFrame:
    """The mode reports of the run's sources points, written to modes.csv."""
    paths = [modes_path(out, p) for p in points if p.experiment == "sources" and modes_path(out, p).exists()]
    if not paths:
        return pd.DataFrame()
    frame = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
    atomic_write(out / "modes.csv", lambda f: frame.to_csv(f, index=False))
    return frame


def run_device(zoo, devices, table, points, args):
    calibration = calibration_inputs(zoo).to(zoo.device)
    batches = zoo.batches("test")
    deployers = {}  # one calibration per model, not per point

    def measure(point):
        entry, repeats = point.model, repeats_for(point.noise, args)
        start = time.time()
        if (entry.name, point.mapping) not in deployers:
            deployers[entry.name, point.mapping] = Deployer(entry.model, calibration, point.mapping, **devices.kernel_options())
        analog = deployers[entry.name, point.mapping](point_settings(devices, point).configs(noise_scale=point.noise))
        read_times = sorted({key["t_inference"] for key in point.keys})
        sources = point.experiment == "sources"
        runs = analog_draws(analog, batches, repeats, args.seed, read_times, zoo.device, devices.zero_cells, report_modes=sources)
        seconds = round((time.time() - start) / len(point.keys), 2)
        draws = list(itertools.chain.from_iterable(runs))  # repeat by repeat, each at its read times: the order of the keys
        if sources:
            save_modes(args.out, point, draws)
        return [
            measured_row(point, key, d.accuracy, zoo.samples("test"), seconds, d.unstable_channels, t_inference=key["t_inference"])
            for key, d in zip(point.keys, draws)
        ]

    table.measure_pending(points, measure, f"{NAME}: device")


# -- plots and summary ---------------------------------------------------------------------------------
def level_axis(ax, levels):
    """Symmetric-log x axis from 0, ticks at the measured levels; y from 0 to 1 with chance dotted."""
    levels = sorted(set(levels))
    ax.set_xscale("symlog", linthresh=min([v for v in levels if v > 0], default=1.0))
    ax.set_xlim(0, max(levels) * 1.3 or 1.0)
    ax.set_xticks(levels, [f"{v:g}" for v in levels], fontsize=8)
    ax.minorticks_off()
    ax.set_ylim(0, 1)
    ax.axhline(0.1, color="lightgray", linestyle=":", linewidth=1)


def plot_sigma(frame, out):
    rows = frame[frame.experiment.isin(["test", "hwa"])].assign(sigma_percent=lambda f: f.noise * 100)
    if rows.empty:
        return
    rows = rows.assign(training=rows.experiment.map({"test": "noise at test only", "hwa": "noise in training and test"}))
    grid = sns.relplot(
        data=rows, x="sigma_percent", y="accuracy", hue="model", style="training", markers=True,
        col="target", col_order=[t for t in NOISE_TARGETS if t in set(rows.target)], kind="line", errorbar="sd", height=3.3, aspect=1.2,
    )
    for target, ax in grid.axes_dict.items():
        level_axis(ax, rows.sigma_percent)
        ax.set_title({"A": "noise on continuous A ([S25])", "A_bar": "noise on the deployed Ā (crossbar)"}[target], fontsize=10)
    grid.set_axis_labels("noise std, % of the weight range (symlog)", "test accuracy")
    grid.figure.suptitle("Relative Gaussian noise on the state matrix, drawn every forward; chance dotted", y=1.04)
    save_figure(grid.figure, out / "accuracy_vs_sigma.png")


def plot_device(frame, args):
    rows = frame[frame.experiment == "device"]
    if rows.empty:
        return
    grid = sns.relplot(
        data=rows, x="noise", y="accuracy", hue="model", style="model", markers=True, dashes=False, col="mapping",
        col_order=[m for m in MAPPINGS if m in set(rows.mapping)], kind="line", errorbar="sd", height=3.3, aspect=1.2,
    )
    for mapping, ax in grid.axes_dict.items():
        level_axis(ax, rows.noise)
        ax.set_title(f"{mapping} mapping", fontsize=10)
    grid.set_axis_labels(f"noise scale of {args.device} (0: converters only, 1: as described; symlog)", "test accuracy")
    grid.figure.suptitle(f"{args.device}: programming, read, drift and output noise x scale; 1 s", y=1.04)
    save_figure(grid.figure, args.out / "accuracy_vs_device_noise.png")


def plot_modes(modes, args):
    """Each mode's distance to the unit circle after programming (|λ| - 1, symlog) vs its rotation per step, per source and mapping."""
    if modes.empty:
        return
    modes = modes.assign(rotation=modes.angle.abs(), distance=modes.modulus - 1)
    grid = sns.relplot(
        data=modes, x="rotation", y="distance", hue="source", hue_order=[s for s in SOURCES if s in set(modes.source)], col="mapping",
        col_order=[m for m in MAPPINGS if m in set(modes.mapping)], row="model", kind="scatter", s=8, alpha=0.5, height=3.3, aspect=1.2,
    )
    for ax in grid.axes.flat:
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.axhline(0, color="black", linewidth=0.8)
    grid.set_axis_labels("rotation per step |∠λ| (rad)", "|λ| - 1 after programming (symlog; > 0: unstable)")
    grid.figure.suptitle(f"{args.device} at {args.sources_t_inference:g} s: where each noise source puts the modes", y=1.02)
    save_figure(grid.figure, args.out / "modes.png")


def plot_drift(frame, args):
    rows = frame[frame.experiment == "drift"]
    if rows.empty:
        return
    rows = rows.assign(noise_scale=rows.noise.map(lambda s: f"noise x {s:g}"))
    grid = sns.relplot(
        data=rows, x="t_inference", y="accuracy", hue="model", style="noise_scale", markers=True, col="mapping",
        col_order=[m for m in MAPPINGS if m in set(rows.mapping)], row="compensation", kind="line", errorbar="sd", height=3.3, aspect=1.2,
    )
    for (compensation, mapping), ax in grid.axes_dict.items():
        ax.set_xscale("log")
        ax.set_xticks(list(DRIFT_TIMES.values()), list(DRIFT_TIMES))
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.axhline(0.1, color="lightgray", linestyle=":", linewidth=1)
        ax.set_title(f"{mapping} mapping, {compensation} compensation", fontsize=10)
    grid.set_axis_labels("time after programming", "test accuracy")
    grid.figure.suptitle(f"{args.device}: one programming, read over time, per drift compensation of the kernels", y=1.02)
    save_figure(grid.figure, args.out / "accuracy_vs_drift.png")


def summary(frame) -> str:
    """Mean accuracy (%) per experiment, model and noise level."""
    if frame.empty:
        return "no rows"
    stats = frame.groupby(["experiment", "target", "mapping", "compensation", "model", "noise", "t_inference"]).accuracy.mean().mul(100).round(1)
    tables = []
    for (experiment, target), rows in stats.groupby(level=["experiment", "target"]):
        column = "t_inference" if experiment == "drift" else "noise"
        index = ["mapping", "model"] if experiment != "drift" else ["mapping", "compensation", "model", "noise"]
        pivot = rows.reset_index().pivot_table(index=index, columns=column, values="accuracy")
        unit = {
            "test": "sigma (fraction of range)", "hwa": "sigma (train = test)", "device": "noise scale", "sources": "noise scale",
            "drift": "seconds after programming",
        }[experiment]
        tables.append(f"\n{experiment} ({target}), accuracy % vs {unit}:\n{pivot.to_string()}")
    return "\n".join(tables)


def main(argv=None):
    args = parse_args(argv)
    scales = (args.noise_scales if "device" in args.experiments else []) + (args.drift_noise_scales if "drift" in args.experiments else [])
    try:
        devices = DeviceSettings.from_args(args, noise_scales=scales)
    except DeviceError as err:
        usage_error(err)
    prepare(args)  # after the device checks: a usage error leaves no output folder behind
    setup = study_setup(args)
    zoo = ModelZoo(setup, args.models_dir)
    analog_zoo = ModelZoo(replace(setup, test_samples=min(args.analog_samples, setup.test_samples or args.analog_samples)), args.models_dir)
    models = study_models(zoo, args.bits, RECIPE, methods=[t for t in args.training if t != "hwa"])
    analog_models = list(models)
    if "hwa" in args.training and {"device", "drift"} & set(args.experiments):
        analog_models.append(kernel_hwa_entry(zoo, devices, calibration_inputs(zoo).to(zoo.device), args))
    setup_key = study_key(
        zoo, analog=analog_zoo.key, devices=devices.as_dict(), hwa_epochs=args.hwa_epochs, seed=args.seed,
        **({"hwa": kernel_hwa_settings(args)} if "hwa" in args.training else {}),  # older setups keep their hash
    )
    table = ResultTable(args.out / "results.csv", KEY)
    gaussian, device = gaussian_points(models, setup_key, args), device_points(analog_models, setup_key, args)
    run_gaussian(zoo, table, gaussian, args)
    run_device(analog_zoo, devices, table, device, args)
    frame = table.rows_of(run_keys(gaussian + device))
    plot_modes(gather_modes(args.out, device), args)
    plot_sigma(frame, args.out)
    plot_device(frame, args)
    plot_drift(frame, args)
    text = summary(frame)
    linear, kernel = devices.configs()
    table = frame.groupby(["experiment", "target", "mapping", "compensation", "model", "noise", "t_inference"], as_index=False).agg(
        accuracy=("accuracy", "mean"), spread=("accuracy", "std"), unstable_channels=("unstable_channels", "mean"), draws=("repeat", "count"),
    )
    plots = ["accuracy_vs_sigma.png", "accuracy_vs_device_noise.png", "accuracy_vs_drift.png", "modes.png"]
    write_summary(
        args.out, table, f"Noise resilience on {args.device}", list(table.columns), [p for p in plots if (args.out / p).exists()], args,
        {"linear": linear, "kernel": kernel, "settings": devices.as_dict()},
    )
    print(text)
    print(f"wrote {args.out / 'results.csv'} and plots to {args.out}")


if __name__ == "__main__":
    main()
