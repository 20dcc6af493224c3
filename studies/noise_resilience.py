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
    drift   as device, at the noise scales in --drift-noise-scales: one programming per repeat, then
            the same devices read at 1 s, 1 h, 1 d and 1 y (global drift compensation on)

The converters of the device experiments default to 16 bits (--adc-bits, --dac-bits) so that the
curves show the noise, not the converters (studies/adc_sweep.py sweeps those); the fused kernels get
--kernel-adc-range (2) as there.

What to expect with the [Z25] model on smnist: its modes have |Ā| within 1e-3 of 1 (dt ~ 1e-3), so
noise of a fraction of a percent on Ā pushes eigenvalues outside the unit circle over 784 steps.
Noise on continuous A is gentler by the factor dt (Ā = exp(dt·A)). pcm's own noise (programming noise
~1-4 % of g_max, 1/f read noise, drift) is far beyond what the recurrence tolerates.

    python studies/noise_resilience.py --quick    # about a minute on 2 cores
    python studies/noise_resilience.py            # about 15 minutes on 2 cores on a fresh set-up
    python studies/noise_resilience.py --experiments test hwa --bits 8 6 4 --sigmas 0 0.5 1 2 5

Defaults: float and z25 QAT models at 8 and 6 bits; sigmas 0 0.05 0.1 0.2 0.5 1 2 5 %, hwa sigmas
0.2 1 %, 3 repeats on the whole test split (digital); device pcm, noise scales 0 0.01 0.03 0.1 0.3 1,
drift at noise scales 0.03 and 1, 3 repeats on 200 test samples. --quick: 3-epoch models, QAT at 8
bits, sigmas 0 0.5 5 %, hwa 1 % on A only (1 epoch), noise scales 0 0.03 1, drift at 0.03; 2 repeats;
100 test samples.

results/noise_resilience/results.csv, one row per accuracy measured (a killed run resumes):
    setup        hash of the models, test subsets and settings (rows of other runs are kept, not mixed)
    experiment   "test", "hwa", "device" or "drift"
    model        "float" or "qat-<bits>";  method, bits: its method and bit width (32: float)
    target       what the noise acts on: "A", "A_bar" (test, hwa) or "crossbars" (device, drift)
    noise        sigma as a fraction of the weight range (test, hwa), or the device's noise scale
    train_noise  sigma during training (hwa; 0 elsewhere)
    t_inference  seconds after programming (device, drift; 0 elsewhere)
    repeat       index of the noise draw (seed = 1000 * --seed + repeat)
    mapping      the fused kernels' mapping (device, drift: --mapping, see aimc_ssm/analog/kernel.py); "none" elsewhere
    accuracy     test accuracy on `samples` test samples (NaN: the hardware-aware training diverged)
    unstable_channels   kernel channels whose programmed recurrence has a mode with |λ| >= 1 (device,
                 drift; aimc_ssm.analog.stability), what puts a draw at chance; empty elsewhere
    samples, seconds
Plots in results/noise_resilience/: accuracy_vs_sigma.png (test only and HWA, one panel per target),
accuracy_vs_device_noise.png, accuracy_vs_drift.png (mean and standard deviation band per model, one
panel per mapping).
"""
from __future__ import annotations

import itertools
import math
import sys
import time
from dataclasses import dataclass, replace

import seaborn as sns
import torch
from tqdm.auto import tqdm

from aimc_ssm import cache
from aimc_ssm.analog.deploy import DRIFT_TIMES
from aimc_ssm.analog.devices import DeviceError
from aimc_ssm.analog.hwa import NOISE_TARGETS, with_weight_noise
from aimc_ssm.analog.kernel import MAPPINGS
from aimc_ssm.core.train import DivergenceError, evaluate
from aimc_ssm.io import save_figure
from aimc_ssm.quant.quantize import without_state_quantizer
from aimc_ssm.study.analog import (
    Deployer,
    DeviceSettings,
    StudyModel,
    add_device_flags,
    analog_draws,
    calibration_inputs,
    seed_for,
    study_key,
    study_models,
)
from aimc_ssm.study.harness import Budget, ResultTable, prepare, run_keys, study_parser, study_setup
from aimc_ssm.study.zoo import ModelZoo

NAME = "noise_resilience"
KEY = ["setup", "experiment", "model", "target", "mapping", "noise", "t_inference", "repeat"]
DIGITAL = "none"  # the mapping column of the digital experiments (test, hwa)
EXPERIMENTS = ("test", "hwa", "device", "drift")
RECIPE = "z25-state16"  # of the QAT models
CONVERTER_BITS = 16  # of the device experiments: the curves show the noise, not the converters
BUDGET = Budget(
    full={
        "bits": [8, 6], "sigmas": [0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5], "hwa_sigmas": [0.2, 1], "targets": list(NOISE_TARGETS),
        "hwa_targets": list(NOISE_TARGETS), "noise_scales": [0, 0.01, 0.03, 0.1, 0.3, 1], "drift_noise_scales": [0.03, 1],
        "repeats": 3, "analog_samples": 200,
    },
    quick={
        "bits": [8], "sigmas": [0, 0.5, 5], "hwa_sigmas": [1], "targets": list(NOISE_TARGETS), "hwa_targets": ["A"],
        "noise_scales": [0, 0.03, 1], "drift_noise_scales": [0.03], "repeats": 2, "analog_samples": 100,
    },
)


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__, BUDGET)
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS), help="default: all four")
    parser.add_argument("--bits", nargs="+", type=int, default=None, help="bit widths of the QAT models (z25 recipe) " + BUDGET.help("bits"))
    gaussian = parser.add_argument_group("relative Gaussian noise (test, hwa)")
    gaussian.add_argument("--sigmas", nargs="+", type=float, default=None, help="test noise, percent of the weight range " + BUDGET.help("sigmas"))
    gaussian.add_argument("--hwa-sigmas", nargs="+", type=float, default=None, help="training and test noise of the hwa experiment, percent " + BUDGET.help("hwa_sigmas"))
    gaussian.add_argument("--targets", nargs="+", choices=NOISE_TARGETS, default=None, help="noise targets of the test experiment " + BUDGET.help("targets"))
    gaussian.add_argument("--hwa-targets", nargs="+", choices=NOISE_TARGETS, default=None, help="noise targets of the hwa experiment " + BUDGET.help("hwa_targets"))
    gaussian.add_argument("--hwa-epochs", type=int, default=None, help="hardware-aware fine-tuning epochs (default: as --qat-epochs)")
    add_device_flags(parser, converter_bits=CONVERTER_BITS, mappings_default=MAPPINGS)
    device = parser.add_argument_group("device noise (device, drift)")
    device.add_argument("--noise-scales", nargs="+", type=float, default=None, help="device noise scales " + BUDGET.help("noise_scales"))
    device.add_argument("--drift-noise-scales", nargs="+", type=float, default=None, help="noise scales of the drift experiment " + BUDGET.help("drift_noise_scales"))
    device.add_argument("--analog-samples", type=int, default=None, help="test samples of the device experiments " + BUDGET.help("analog_samples"))
    parser.add_argument("--repeats", type=int, default=None, help="noise draws per point " + BUDGET.help("repeats"))
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
    noise: float  # sigma as a fraction of the weight range, or the device's noise scale
    keys: list[dict]


def noise_point(setup_key, experiment, entry, target, noise, read_times, args, mapping=DIGITAL) -> Point:
    key = {"setup": setup_key, "experiment": experiment, "model": entry.name, "target": target, "mapping": mapping, "noise": noise}
    repeats = range(repeats_for(noise, args))
    return Point(experiment, entry, target, mapping, noise, [{**key, "t_inference": t, "repeat": r} for r in repeats for t in read_times])


def measured_row(point, key, accuracy, samples, seconds, unstable_channels=None, **values) -> dict:
    return {
        "setup": key["setup"], "experiment": point.experiment,
        **row(point.model, target=point.target, noise=point.noise, **values), "mapping": point.mapping,
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


def noisy_accuracies(zoo, model, sigma, target, repeats, seed) -> list[float]:
    """Accuracy with noise drawn at every forward (every batch), one value per seeded pass over the test subset."""
    noisy = with_weight_noise(without_state_quantizer(model), sigma, target).to(zoo.device)
    accuracies = []
    for repeat in range(repeats):
        torch.manual_seed(seed_for(seed, repeat))
        accuracies.append(evaluate(noisy, zoo.batches("test"), "conv", zoo.device))
    return accuracies


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
            accuracies = noisy_accuracies(zoo, entry.model, sigma, target, repeats, args.seed)
        else:
            try:
                trained = hwa_model(zoo, entry, sigma, target, args)
                accuracies = noisy_accuracies(zoo, trained, sigma, target, repeats, args.seed)
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
            noise_point(setup_key, "device", e, "crossbars", s, [DRIFT_TIMES["1s"]], args, m)
            for e in models for m in args.mapping for s in args.noise_scales
        ]
    if "drift" in args.experiments:
        points += [
            noise_point(setup_key, "drift", e, "crossbars", s, list(DRIFT_TIMES.values()), args, m)
            for e in models for m in args.mapping for s in args.drift_noise_scales
        ]
    return points


def run_device(zoo, devices, table, points, args):
    calibration = calibration_inputs(zoo).to(zoo.device)
    batches = zoo.batches("test")
    deployers = {}  # one calibration per model, not per point

    def measure(point):
        entry, repeats = point.model, repeats_for(point.noise, args)
        start = time.time()
        if (entry.name, point.mapping) not in deployers:
            deployers[entry.name, point.mapping] = Deployer(entry.model, calibration, point.mapping, **devices.kernel_options())
        analog = deployers[entry.name, point.mapping](devices.configs(noise_scale=point.noise))
        read_times = [DRIFT_TIMES["1s"]] if point.experiment == "device" else list(DRIFT_TIMES.values())
        runs = analog_draws(analog, batches, repeats, args.seed, read_times, zoo.device)
        seconds = round((time.time() - start) / len(point.keys), 2)
        draws = itertools.chain.from_iterable(runs)  # repeat by repeat, each at its read times: the order of the keys
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


def plot_drift(frame, args):
    rows = frame[frame.experiment == "drift"]
    if rows.empty:
        return
    rows = rows.assign(noise_scale=rows.noise.map(lambda s: f"noise x {s:g}"))
    grid = sns.relplot(
        data=rows, x="t_inference", y="accuracy", hue="model", style="noise_scale", markers=True, col="mapping",
        col_order=[m for m in MAPPINGS if m in set(rows.mapping)], kind="line", errorbar="sd", height=3.3, aspect=1.2,
    )
    for mapping, ax in grid.axes_dict.items():
        ax.set_xscale("log")
        ax.set_xticks(list(DRIFT_TIMES.values()), list(DRIFT_TIMES))
        ax.minorticks_off()
        ax.set_ylim(0, 1)
        ax.axhline(0.1, color="lightgray", linestyle=":", linewidth=1)
        ax.set_title(f"{mapping} mapping", fontsize=10)
    grid.set_axis_labels("time after programming", "test accuracy")
    grid.figure.suptitle(f"{args.device}: one programming, read over time (kernels' drift compensation: {args.kernel_drift_compensation})", y=1.04)
    save_figure(grid.figure, args.out / "accuracy_vs_drift.png")


def summary(frame) -> str:
    """Mean accuracy (%) per experiment, model and noise level."""
    if frame.empty:
        return "no rows"
    stats = frame.groupby(["experiment", "target", "mapping", "model", "noise", "t_inference"]).accuracy.mean().mul(100).round(1)
    tables = []
    for (experiment, target), rows in stats.groupby(level=["experiment", "target"]):
        column = "t_inference" if experiment == "drift" else "noise"
        index = ["mapping", "model"] if experiment != "drift" else ["mapping", "model", "noise"]
        pivot = rows.reset_index().pivot_table(index=index, columns=column, values="accuracy")
        unit = {"test": "sigma (fraction of range)", "hwa": "sigma (train = test)", "device": "noise scale", "drift": "seconds after programming"}[experiment]
        tables.append(f"\n{experiment} ({target}), accuracy % vs {unit}:\n{pivot.to_string()}")
    return "\n".join(tables)


def main(argv=None):
    args = parse_args(argv)
    prepare(args)
    scales = (args.noise_scales if "device" in args.experiments else []) + (args.drift_noise_scales if "drift" in args.experiments else [])
    try:
        devices = DeviceSettings.from_args(args, noise_scales=scales)
    except DeviceError as err:
        sys.exit(f"error: {err}")
    setup = study_setup(args)
    zoo = ModelZoo(setup, args.models_dir)
    analog_zoo = ModelZoo(replace(setup, test_samples=min(args.analog_samples, setup.test_samples or args.analog_samples)), args.models_dir)
    models = study_models(zoo, args.bits, RECIPE, methods=("float", "qat"))
    setup_key = study_key(zoo, analog=analog_zoo.key, devices=devices.as_dict(), hwa_epochs=args.hwa_epochs, seed=args.seed)
    table = ResultTable(args.out / "results.csv", KEY)
    gaussian, device = gaussian_points(models, setup_key, args), device_points(models, setup_key, args)
    run_gaussian(zoo, table, gaussian, args)
    run_device(analog_zoo, devices, table, device, args)
    frame = table.rows_of(run_keys(gaussian + device))
    plot_sigma(frame, args.out)
    plot_device(frame, args)
    plot_drift(frame, args)
    print(summary(frame))
    print(f"wrote {args.out / 'results.csv'} and plots to {args.out}")


if __name__ == "__main__":
    main()
