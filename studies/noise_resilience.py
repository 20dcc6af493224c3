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
    accuracy     test accuracy on `samples` test samples (NaN: the hardware-aware training diverged)
    samples, seconds
Plots in results/noise_resilience/: accuracy_vs_sigma.png (test only and HWA, one panel per target),
accuracy_vs_device_noise.png, accuracy_vs_drift.png (mean and standard deviation band per model).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import replace

import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from aimc_ssm.analog import DRIFT_TIMES, program
from aimc_ssm.analog_study import (
    NOISE_TARGETS,
    Deployer,
    DeviceSettings,
    add_device_flags,
    analog_accuracies,
    calibration_inputs,
    seed_for,
    study_key,
    study_models,
    with_weight_noise,
    without_state_requantization,
)
from aimc_ssm.devices import DeviceError
from aimc_ssm.study import ResultTable, add_threads_flag, save_figure, study_parser, study_setup
from aimc_ssm.train import DivergenceError, config_key, evaluate, fit, load_checkpoint
from aimc_ssm.zoo import ModelZoo

NAME = "noise_resilience"
KEY = ["setup", "experiment", "model", "target", "noise", "t_inference", "repeat"]
EXPERIMENTS = ("test", "hwa", "device", "drift")
CONVERTER_BITS = 16
FULL = {
    "bits": [8, 6], "sigmas": [0, 0.05, 0.1, 0.2, 0.5, 1, 2, 5], "hwa_sigmas": [0.2, 1], "targets": list(NOISE_TARGETS),
    "hwa_targets": list(NOISE_TARGETS), "noise_scales": [0, 0.01, 0.03, 0.1, 0.3, 1], "drift_noise_scales": [0.03, 1],
    "repeats": 3, "analog_samples": 200,
}
QUICK = {
    "bits": [8], "sigmas": [0, 0.5, 5], "hwa_sigmas": [1], "targets": list(NOISE_TARGETS), "hwa_targets": ["A"],
    "noise_scales": [0, 0.03, 1], "drift_noise_scales": [0.03], "repeats": 2, "analog_samples": 100,
}
HELP_DEFAULTS = {name: f"(default: {FULL[name]}; {QUICK[name]} with --quick)" for name in FULL}


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__)
    add_threads_flag(parser)
    parser.add_argument("--experiments", nargs="+", choices=EXPERIMENTS, default=list(EXPERIMENTS), help="default: all four")
    parser.add_argument("--bits", nargs="+", type=int, default=None, help="bit widths of the QAT models (z25 recipe) " + HELP_DEFAULTS["bits"])
    gaussian = parser.add_argument_group("relative Gaussian noise (test, hwa)")
    gaussian.add_argument("--sigmas", nargs="+", type=float, default=None, help="test noise, percent of the weight range " + HELP_DEFAULTS["sigmas"])
    gaussian.add_argument("--hwa-sigmas", nargs="+", type=float, default=None, help="training and test noise of the hwa experiment, percent " + HELP_DEFAULTS["hwa_sigmas"])
    gaussian.add_argument("--targets", nargs="+", choices=NOISE_TARGETS, default=None, help="noise targets of the test experiment " + HELP_DEFAULTS["targets"])
    gaussian.add_argument("--hwa-targets", nargs="+", choices=NOISE_TARGETS, default=None, help="noise targets of the hwa experiment " + HELP_DEFAULTS["hwa_targets"])
    gaussian.add_argument("--hwa-epochs", type=int, default=None, help="hardware-aware fine-tuning epochs (default: as --qat-epochs: 5; 1 with --quick)")
    add_device_flags(parser)
    device = parser.add_argument_group("device noise (device, drift)")
    device.add_argument("--noise-scales", nargs="+", type=float, default=None, help="device noise scales " + HELP_DEFAULTS["noise_scales"])
    device.add_argument("--drift-noise-scales", nargs="+", type=float, default=None, help="noise scales of the drift experiment " + HELP_DEFAULTS["drift_noise_scales"])
    device.add_argument("--analog-samples", type=int, default=None, help="test samples of the device experiments " + HELP_DEFAULTS["analog_samples"])
    parser.add_argument("--repeats", type=int, default=None, help="noise draws per point " + HELP_DEFAULTS["repeats"])
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("sigmas", "hwa_sigmas", "noise_scales", "drift_noise_scales"):  # floats, as they read back from the CSV
        setattr(args, name, [float(v) for v in getattr(args, name)])
    args.adc_bits = CONVERTER_BITS if args.adc_bits is None else args.adc_bits
    args.dac_bits = CONVERTER_BITS if args.dac_bits is None else args.dac_bits
    if min(args.sigmas + args.hwa_sigmas + args.noise_scales + args.drift_noise_scales) < 0:
        parser.error("noise levels must be >= 0")
    if args.repeats < 1 or args.analog_samples < 1:
        parser.error("--repeats and --analog-samples must be positive")
    return args


def row(entry, **values) -> dict:
    defaults = {"train_noise": 0.0, "t_inference": 0.0}
    return {"model": entry.name, "method": entry.method, "bits": entry.bits, **defaults, **values}


def repeats_for(noise: float, args) -> int:
    """Noise draws of a point: one where there is no noise to draw."""
    return 1 if noise == 0 else args.repeats


# -- relative Gaussian noise, digital ------------------------------------------------------------------
def noisy_accuracies(zoo, model, sigma, target, repeats, seed) -> list[float]:
    """Accuracy with noise drawn at every forward (every batch), one value per seeded pass over the test subset."""
    noisy = with_weight_noise(without_state_requantization(model), sigma, target).to(zoo.device)
    accuracies = []
    for repeat in range(repeats):
        torch.manual_seed(seed_for(seed, repeat))
        accuracies.append(evaluate(noisy, zoo.batches("test"), "conv", zoo.device))
    return accuracies


def hwa_model(zoo, entry, sigma, target, epochs, args):
    """`entry`'s model fine-tuned with noise on (cached in --models-dir), as a model that keeps drawing it."""
    train_cfg = replace(zoo.setup.finetune, epochs=epochs)
    source = {"base": entry.name, "recipe": "z25", "sigma": sigma, "target": target}
    base_training = (zoo.setup.train, zoo.setup.finetune)  # what made the base model, not the test subset
    run_dir = args.models_dir / f"hwa-{config_key(zoo.setup.model, *base_training, train_cfg, source)}"
    # the state quantizer plays no part in conv-mode training; without it fit's recurrent test runs fast
    model = with_weight_noise(without_state_requantization(entry.model), sigma, target)
    if (run_dir / "metrics.json").exists():
        model.load_state_dict(load_checkpoint(run_dir / "best.pt")["model"])
        return model
    torch.manual_seed(train_cfg.seed)
    fit(model, zoo.data, train_cfg, run_dir, {"model": zoo.setup.model.to_dict(), "hwa": source}, progress=True)
    return model


def gaussian_points(models, args):
    """(experiment, entry, target, sigma) of the test and hwa experiments, sigma as a fraction."""
    points = []
    if "test" in args.experiments:
        points += [("test", e, t, fraction(s)) for e in models for t in args.targets for s in args.sigmas]
    if "hwa" in args.experiments:
        points += [("hwa", e, t, fraction(s)) for e in models for t in args.hwa_targets for s in args.hwa_sigmas if s > 0]
    return points


def fraction(percent: float) -> float:
    """A percentage as a fraction, rounded so that it reads back from the CSV as the same number."""
    return round(percent / 100, 12)


def run_gaussian(zoo, models, table, setup_key, args):
    todo = [p for p in gaussian_points(models, args) if not all_done(table, setup_key, p[0], p[1], p[2], p[3], 0.0, repeats_for(p[3], args))]
    epochs = args.hwa_epochs or zoo.setup.finetune.epochs
    for experiment, entry, target, sigma in tqdm(todo, desc=f"{NAME}: gaussian", unit="point"):
        start = time.time()
        repeats = repeats_for(sigma, args)
        if experiment == "test":
            accuracies = noisy_accuracies(zoo, entry.model, sigma, target, repeats, args.seed)
        else:
            try:
                trained = hwa_model(zoo, entry, sigma, target, epochs, args)
                accuracies = noisy_accuracies(zoo, trained, sigma, target, repeats, args.seed)
            except DivergenceError as err:
                tqdm.write(f"hardware-aware training of {entry.name} at sigma {sigma:g} on {target} diverged, scored NaN: {err}")
                accuracies = [math.nan] * repeats
        seconds = round((time.time() - start) / repeats, 2)
        for repeat, accuracy in enumerate(accuracies):
            if not table.done(setup=setup_key, experiment=experiment, model=entry.name, target=target, noise=sigma, t_inference=0.0, repeat=repeat):
                table.add({"setup": setup_key, "experiment": experiment, **row(entry, target=target, noise=sigma, train_noise=sigma if experiment == "hwa" else 0.0),
                           "repeat": repeat, "accuracy": accuracy, "samples": zoo.samples("test"), "seconds": seconds})


# -- device noise on crossbars ---------------------------------------------------------------------------
def drift_accuracies(analog, batches, repeats, seed, device) -> list[list[float]]:
    """Per repeat, one chip: programmed once, then read at every time of DRIFT_TIMES (in order)."""
    runs = []
    for repeat in range(repeats):
        torch.manual_seed(seed_for(seed, repeat))
        accuracies = []
        for i, t in enumerate(DRIFT_TIMES.values()):
            program(analog, t, reprogram=i == 0)
            accuracies.append(evaluate(analog, batches, "recurrent", device))
        runs.append(accuracies)
    return runs


def run_device(zoo, models, devices, table, setup_key, args):
    calibration = calibration_inputs(zoo).to(zoo.device)
    batches = zoo.batches("test")
    first_time = DRIFT_TIMES["1s"]
    points = []
    if "device" in args.experiments:
        points += [("device", e, s) for e in models for s in args.noise_scales]
    if "drift" in args.experiments:
        points += [("drift", e, s) for e in models for s in args.drift_noise_scales]
    times = list(DRIFT_TIMES.values())
    deployers = {}
    todo = [
        (experiment, entry, scale) for experiment, entry, scale in points
        if not all(all_done(table, setup_key, experiment, entry, "crossbars", scale, t, repeats_for(scale, args)) for t in (times if experiment == "drift" else [first_time]))
    ]
    for experiment, entry, scale in tqdm(todo, desc=f"{NAME}: device", unit="point"):
        start = time.time()
        repeats = repeats_for(scale, args)
        if entry.name not in deployers:  # one calibration per model, not per point
            deployers[entry.name] = Deployer(entry.model, calibration, devices.state_mapping)
        analog = deployers[entry.name](devices.configs(noise_scale=scale))
        if experiment == "device":
            runs = [[a] for a in analog_accuracies(analog, batches, repeats, args.seed, first_time, zoo.device)]
            read_times = [first_time]
        else:
            runs, read_times = drift_accuracies(analog, batches, repeats, args.seed, zoo.device), times
        seconds = round((time.time() - start) / (repeats * len(read_times)), 2)
        for repeat, accuracies in enumerate(runs):
            for t, accuracy in zip(read_times, accuracies):
                if not table.done(setup=setup_key, experiment=experiment, model=entry.name, target="crossbars", noise=scale, t_inference=t, repeat=repeat):
                    table.add({"setup": setup_key, "experiment": experiment, **row(entry, target="crossbars", noise=scale, t_inference=t),
                               "repeat": repeat, "accuracy": accuracy, "samples": zoo.samples("test"), "seconds": seconds})


def all_done(table, setup_key, experiment, entry, target, noise, t_inference, repeats) -> bool:
    return all(
        table.done(setup=setup_key, experiment=experiment, model=entry.name, target=target, noise=noise, t_inference=t_inference, repeat=r)
        for r in range(repeats)
    )


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
    grid = sns.relplot(data=rows, x="noise", y="accuracy", hue="model", style="model", markers=True, dashes=False, kind="line", errorbar="sd", height=3.3, aspect=1.4)
    level_axis(grid.ax, rows.noise)
    grid.set_axis_labels(f"noise scale of {args.device} (0: converters only, 1: as described; symlog)", "test accuracy")
    grid.ax.set_title(f"{args.device}: programming, read, drift and output noise x scale; 1 s", fontsize=10)
    save_figure(grid.figure, args.out / "accuracy_vs_device_noise.png")


def plot_drift(frame, args):
    rows = frame[frame.experiment == "drift"]
    if rows.empty:
        return
    rows = rows.assign(noise_scale=rows.noise.map(lambda s: f"noise x {s:g}"))
    grid = sns.relplot(data=rows, x="t_inference", y="accuracy", hue="model", style="noise_scale", markers=True, kind="line", errorbar="sd", height=3.3, aspect=1.4)
    grid.ax.set_xscale("log")
    grid.ax.set_xticks(list(DRIFT_TIMES.values()), list(DRIFT_TIMES))
    grid.ax.minorticks_off()
    grid.ax.set_ylim(0, 1)
    grid.ax.axhline(0.1, color="lightgray", linestyle=":", linewidth=1)
    grid.set_axis_labels("time after programming", "test accuracy")
    grid.ax.set_title(f"{args.device}: one programming, read over time (drift compensated)", fontsize=10)
    save_figure(grid.figure, args.out / "accuracy_vs_drift.png")


def summary(frame) -> str:
    """Mean accuracy (%) per experiment, model and noise level."""
    if frame.empty:
        return "no rows"
    stats = frame.groupby(["experiment", "target", "model", "noise", "t_inference"]).accuracy.mean().mul(100).round(1)
    tables = []
    for (experiment, target), rows in stats.groupby(level=["experiment", "target"]):
        column = "t_inference" if experiment == "drift" else "noise"
        index = "model" if experiment != "drift" else ["model", "noise"]
        pivot = rows.reset_index().pivot_table(index=index, columns=column, values="accuracy")
        unit = {"test": "sigma (fraction of range)", "hwa": "sigma (train = test)", "device": "noise scale", "drift": "seconds after programming"}[experiment]
        tables.append(f"\n{experiment} ({target}), accuracy % vs {unit}:\n{pivot.to_string()}")
    return "\n".join(tables)


def current_rows(frame, setup_key, models, args):
    """The rows of this run's settings and lists (the table may hold other runs' rows too)."""
    levels = {
        "test": {fraction(s) for s in args.sigmas}, "hwa": {fraction(s) for s in args.hwa_sigmas},
        "device": set(args.noise_scales), "drift": set(args.drift_noise_scales),
    }
    targets = {"test": set(args.targets), "hwa": set(args.hwa_targets), "device": {"crossbars"}, "drift": {"crossbars"}}
    wanted = [
        experiment in args.experiments and noise in levels[experiment] and target in targets[experiment] and repeat < repeats_for(noise, args)
        for experiment, noise, target, repeat in zip(frame.experiment, frame.noise, frame.target, frame.repeat)
    ]
    return frame[(frame.setup == setup_key) & frame.model.isin([m.name for m in models]) & pd.Series(wanted, index=frame.index, dtype=bool)]


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        devices = DeviceSettings.from_args(args)
        if any(e in args.experiments for e in ("device", "drift")):
            devices.configs(noise_scale=0.5)  # a device whose noise cannot be scaled fails here, before training
    except DeviceError as err:
        sys.exit(f"error: {err}")
    setup = study_setup(args)
    zoo = ModelZoo(setup, args.models_dir)
    analog_zoo = ModelZoo(replace(setup, test_samples=min(args.analog_samples, setup.test_samples or args.analog_samples)), args.models_dir)
    models = study_models(zoo, args.bits, "z25", methods=("float", "qat"))
    hwa_epochs = args.hwa_epochs or setup.finetune.epochs
    setup_key = study_key(zoo, analog=analog_zoo.key, devices=devices.as_dict(), hwa_epochs=hwa_epochs, seed=args.seed)
    table = ResultTable(args.out / "results.csv", KEY)
    run_gaussian(zoo, models, table, setup_key, args)
    run_device(analog_zoo, models, devices, table, setup_key, args)
    frame = current_rows(table.frame(), setup_key, models, args)
    plot_sigma(frame, args.out)
    plot_device(frame, args)
    plot_drift(frame, args)
    print(summary(frame))
    print(f"wrote {args.out / 'results.csv'} and plots to {args.out}")


if __name__ == "__main__":
    main()
