"""Accuracy vs ADC and DAC resolution of float, PTQ and QAT S4D models on analog crossbars: the main study.

Each model (float; PTQ and QAT at --bits with the --recipe quantizers, QAT fine-tuned from the float
model) is mapped onto the --device with aimc_ssm.analog.to_analog: one fused crossbar per SSM channel
([S24]: [u_t, x_{t-1}, u_{t-1}] in, [x_t, y_{t-1}] out, the state fed back through ADC and DAC every
step) and analog tiles for the encoder, mixing and decoder. DAC ranges are calibrated on two training
batches. The study then sweeps the converters of every crossbar:

    ADC sweep   ADC bits in --adc-bits, the DAC at the largest of --dac-bits
    DAC sweep   DAC bits in --dac-bits, the ADC at the largest of --adc-bits
so each curve shows what one converter costs while the other is at its finest setting. Each point is
measured under three noise conditions (--noise):

    converters  DAC and ADC quantization only: target weights, no output noise (deterministic: 1 repeat)
    stochastic  the same converters rounding stochastically (aihwkit's forward.inp_sto_round and
                out_sto_round), which lets changes smaller than a level add up on average (1 repeat)
    device      the device's noise too: fresh programming noise for every repeat (seeded), drift and
                read noise up to --t-inference, output noise in every MVM (--repeats draws)

ADC complexity ([S25], converted outputs x ADC bits per step) with every conversion at the swept ADC
bits: aimc_ssm.metrics.adc_complexity with r_state = r_act = r_lin = ADC bits, i.e. the N state
columns and the y column of every kernel, the mixing outputs, and the encoder and decoder outputs:
    ADC bits x (L·H·(N + 1) + L·M + H + d_out)     (M = 2H mixing outputs for the GLU)
which is linear in the bits and the same for every model.

The fused kernels hold the state balanced (--state-mapping, see aimc_ssm.analog): every mode scaled
to its channel's input range, so that one converter grid serves modes of very different sizes.

What to expect on pcm (8-bit converters, out_noise 0.04, PCM programming noise, drift, 1/f read noise):
  - converters: about 12 bits in both to stay within a point of the digital model. A 10-bit ADC gives
    about 80 % and 8 bits below 30 %: slow modes whose change per step is below half a level stop
    moving. With --state-mapping direct, 10 bits fall below 40 %.
  - stochastic: 8-bit converters within a few points of the digital model (8-bit ADC about 85 %,
    8-bit DAC about 90 %).
  - device noise: every model at chance. The state matrix Ā of this model has |Ā| within 1e-3 of 1,
    and noise of 0.1-0.2 % of Ā's range already moves eigenvalues outside the unit circle over 784
    steps (studies/noise_resilience.py: pcm's noise would have to be about 30 times smaller).

    python studies/adc_sweep.py --quick     # about a minute on 2 cores (3-epoch models)
    python studies/adc_sweep.py             # about 4 minutes on 2 cores on a fresh set-up, training included
    python studies/adc_sweep.py --device devices/my_device.py --adc-bits 4 6 8 --bits 8 6 --repeats 5

Defaults: the [Z25] model (H=16, N=64, 1 layer) on the embedded smnist, float 20 epochs, QAT 5
epochs of fine-tuning; PTQ and QAT at 8 bits (z25 recipe); device pcm; ADC bits 8 10 12 14 16, DAC
bits 8 12 16; 2 repeats; the first 200 test samples. --quick: 3 and 1 epochs, ADC 8 14, DAC 14,
2 repeats, 100 test samples. Models come from --models-dir, trained once and shared with other studies.

results/adc_sweep/results.csv, one row per accuracy measured (a killed run resumes):
    setup             hash of the models, test subset and device settings (rows of other runs are kept, not mixed)
    model             "float", "ptq-<bits>" or "qat-<bits>";  method, bits: its method and bit width (32: float)
    noise             "converters", "stochastic" or "device"
    adc_bits          ADC resolution of every crossbar;  dac_bits: DAC resolution of every crossbar
    repeat            index of the noise draw (seed = 1000 * --seed + repeat)
    accuracy          test accuracy of the analog model on `samples` test samples
    digital_accuracy  the same model computed digitally (no converters, no noise), same samples
    adc_complexity    converted output bits per time step (see above)
    samples, device, seconds
    t_inference       seconds of drift after programming (device condition; empty: not programmed)
Plots in results/adc_sweep/: accuracy_vs_adc_bits.png and accuracy_vs_dac_bits.png (mean and standard
deviation band per model, one panel per noise condition), accuracy_vs_adc_complexity.png.
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

from aimc_ssm.analog_study import (
    Deployer,
    DeviceSettings,
    add_device_flags,
    add_model_flags,
    analog_accuracies,
    calibration_inputs,
    study_key,
    study_models,
)
from aimc_ssm.devices import DeviceError
from aimc_ssm.metrics import adc_complexity
from aimc_ssm.study import ResultTable, add_threads_flag, save_figure, study_parser, study_setup
from aimc_ssm.zoo import ModelZoo

NAME = "adc_sweep"
KEY = ["setup", "model", "noise", "adc_bits", "dac_bits", "repeat"]
NOISES = ("converters", "stochastic", "device")
STOCHASTIC_ROUNDING = {"forward.inp_sto_round": True, "forward.out_sto_round": True}
CHANCE = 0.1  # ten classes
FULL = {"adc_bits": [8, 10, 12, 14, 16], "dac_bits": [8, 12, 16], "repeats": 2, "test_samples": 200}
QUICK = {"adc_bits": [8, 14], "dac_bits": [14], "repeats": 2, "test_samples": 100}


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__)
    add_threads_flag(parser)
    add_model_flags(parser, default_bits=[8])
    add_device_flags(parser, converter_flags=False)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--adc-bits", nargs="+", type=int, default=None, help=f"ADC bits of the ADC sweep (default: {FULL['adc_bits']}; {QUICK['adc_bits']} with --quick)")
    sweep.add_argument("--dac-bits", nargs="+", type=int, default=None, help=f"DAC bits of the DAC sweep (default: {FULL['dac_bits']}; {QUICK['dac_bits']} with --quick)")
    sweep.add_argument("--noise", nargs="+", choices=NOISES, default=list(NOISES), help="noise conditions (default: all three)")
    sweep.add_argument("--repeats", type=int, default=None, help=f"noise draws per point of the device condition (default: {FULL['repeats']}; {QUICK['repeats']} with --quick)")
    sweep.add_argument("--test-samples", type=int, default=None, help=f"test samples evaluated (default: {FULL['test_samples']}; {QUICK['test_samples']} with --quick)")
    sweep.add_argument("--t-inference", type=float, default=1.0, help="seconds of drift after programming in the device condition (default: %(default)s)")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.repeats < 1 or args.test_samples < 1:
        parser.error("--repeats and --test-samples must be positive")
    return args


def sweep_points(adc_list: list[int], dac_list: list[int]) -> list[tuple[int, int]]:
    """(adc_bits, dac_bits) of the ADC sweep (DAC at its finest) and the DAC sweep (ADC at its finest)."""
    adc_points = [(adc, max(dac_list)) for adc in adc_list]
    dac_points = [(max(adc_list), dac) for dac in dac_list]
    return list(dict.fromkeys(adc_points + dac_points))


def conversion_bits(adc_bits: int) -> dict:
    """Every converted output at the ADC's bits: the kernels' state and y columns, the mixing and coder outputs."""
    return {"state": adc_bits, "act": adc_bits, "mixing": adc_bits}


def measure_point(zoo, deployer, devices, noise, adc, dac, repeats, args):
    """Accuracies of one model at one converter setting and noise condition, one per repeat."""
    converters_only = noise != "device"
    rounding = STOCHASTIC_ROUNDING if noise == "stochastic" else {}
    configs = devices.configs(noise_scale=0.0 if converters_only else 1.0, adc_bits=adc, dac_bits=dac, **rounding)
    analog = deployer(configs)
    t_inference = None if converters_only else args.t_inference  # converters only: the tiles keep their targets
    return analog_accuracies(analog, zoo.batches("test"), repeats, args.seed, t_inference, zoo.device)


def run_sweep(zoo, models, devices, table, setup_key, args):
    calibration = calibration_inputs(zoo).to(zoo.device)
    points = sweep_points(args.adc_bits, args.dac_bits)
    todo = []
    for entry in models:
        for noise in args.noise:
            repeats = args.repeats if noise == "device" else 1
            for adc, dac in points:
                if not all(table.done(setup=setup_key, model=entry.name, noise=noise, adc_bits=adc, dac_bits=dac, repeat=r) for r in range(repeats)):
                    todo.append((entry, noise, adc, dac, repeats))
    digital, deployers = {}, {}
    for entry, noise, adc, dac, repeats in tqdm(todo, desc=NAME, unit="point"):
        if entry.name not in digital:
            digital[entry.name] = zoo.accuracy(entry.model, "test", "conv")
            deployers[entry.name] = Deployer(entry.model, calibration, devices.state_mapping)
        start = time.time()
        accuracies = measure_point(zoo, deployers[entry.name], devices, noise, adc, dac, repeats, args)
        seconds = round((time.time() - start) / repeats, 2)
        for repeat, accuracy in enumerate(accuracies):
            if table.done(setup=setup_key, model=entry.name, noise=noise, adc_bits=adc, dac_bits=dac, repeat=repeat):
                continue
            table.add({
                "setup": setup_key, "model": entry.name, "method": entry.method, "bits": entry.bits,
                "noise": noise, "adc_bits": adc, "dac_bits": dac, "repeat": repeat,
                "accuracy": accuracy, "digital_accuracy": digital[entry.name],
                "adc_complexity": adc_complexity(zoo.setup.model, conversion_bits(adc)),
                "samples": zoo.samples("test"), "device": args.device,
                "t_inference": args.t_inference if noise == "device" else math.nan,
                "seconds": seconds,
            })


# -- plots and summary ------------------------------------------------------------------------------
NOISE_TITLES = {
    "converters": "converters only (no device noise)",
    "stochastic": "converters, stochastic rounding",
    "device": "device noise ({repeats} draws, t = {t:g} s)",
}


def panel_titles(grid, args):
    for noise, ax in grid.axes_dict.items():
        ax.set_title(NOISE_TITLES[noise].format(repeats=args.repeats, t=args.t_inference), fontsize=10)


def reference_lines(grid, frame):
    """Digital accuracy of the float model (dashed) and chance (dotted) in every panel."""
    float_digital = frame.loc[frame.model == "float", "digital_accuracy"]
    for ax in grid.axes.flat:
        if len(float_digital):
            ax.axhline(float_digital.iloc[0], color="gray", linestyle="--", linewidth=1)
        ax.axhline(CHANCE, color="lightgray", linestyle=":", linewidth=1)
        ax.set_ylim(0, 1)


def accuracy_plot(frame, x, args, title, path, xlabel):
    grid = sns.relplot(
        data=frame, x=x, y="accuracy", hue="model", style="model", markers=True, dashes=False,
        col="noise", col_order=[n for n in NOISES if n in set(frame.noise)], kind="line",
        errorbar="sd", height=3.2, aspect=1.2,
    )
    reference_lines(grid, frame)
    panel_titles(grid, args)
    if x.endswith("_bits"):
        for ax in grid.axes.flat:
            ax.set_xticks(sorted(frame[x].unique()))
    grid.set_axis_labels(xlabel, "test accuracy")
    grid.figure.suptitle(title, y=1.04)
    save_figure(grid.figure, path)


def plot(frame, args):
    adc_rows = frame[frame.dac_bits == max(args.dac_bits)]
    dac_rows = frame[frame.adc_bits == max(args.adc_bits)]
    device = f"device {args.device}, kernel ADC range {args.kernel_adc_range:g}, {args.state_mapping} state; float digital dashed, chance dotted"
    accuracy_plot(adc_rows, "adc_bits", args, f"Accuracy vs ADC bits (DAC {max(args.dac_bits)} bits); {device}", args.out / "accuracy_vs_adc_bits.png", "ADC bits (every crossbar)")
    accuracy_plot(dac_rows, "dac_bits", args, f"Accuracy vs DAC bits (ADC {max(args.adc_bits)} bits); {device}", args.out / "accuracy_vs_dac_bits.png", "DAC bits (every crossbar)")
    complexity = adc_rows.assign(adc_kbit=adc_rows.adc_complexity / 1000)
    accuracy_plot(complexity, "adc_kbit", args, f"Accuracy vs ADC complexity (DAC {max(args.dac_bits)} bits); {device}", args.out / "accuracy_vs_adc_complexity.png", "ADC complexity (kbit converted per step)")


def summary(frame, args) -> str:
    """Mean ± std accuracy (%) per model and noise condition: the ADC sweep, then the DAC sweep."""
    def table(rows, column):
        stats = rows.groupby(["noise", "model", column]).accuracy.agg(["mean", "std"]).fillna(0) * 100
        cells = stats.apply(lambda r: f"{r['mean']:.1f}±{r['std']:.1f}", axis=1).unstack(column)
        digital = rows.groupby(["noise", "model"]).digital_accuracy.first() * 100
        cells.insert(0, "digital", digital.map(lambda v: f"{v:.1f}"))
        return cells.to_string()

    adc_rows = frame[frame.dac_bits == max(args.dac_bits)]
    dac_rows = frame[frame.adc_bits == max(args.adc_bits)]
    text = (
        f"\ntest accuracy (%) on {args.device} vs ADC bits (DAC {max(args.dac_bits)} bits):\n{table(adc_rows, 'adc_bits')}\n"
        f"\ntest accuracy (%) vs DAC bits (ADC {max(args.adc_bits)} bits):\n{table(dac_rows, 'dac_bits')}\n"
    )
    finest = frame[(frame.noise == "device") & (frame.adc_bits == max(args.adc_bits)) & (frame.dac_bits == max(args.dac_bits))]
    if len(finest) and finest.accuracy.max() < CHANCE + 0.05:
        text += (
            f"\nUnder {args.device}'s noise every model is at chance even with the finest converters: the fused\n"
            "kernel's recurrence tolerates far less weight and output noise than the device has. How much less:\n"
            "studies/noise_resilience.py (accuracy_vs_device_noise.png scales the device's noise down).\n"
        )
    return text


def current_rows(frame, setup_key, models, args):
    """The rows of this run's settings and sweep lists (the table may hold other runs' rows too)."""
    points = set(sweep_points(args.adc_bits, args.dac_bits))
    repeats = frame.noise.map(lambda n: args.repeats if n == "device" else 1)
    return frame[
        (frame.setup == setup_key)
        & frame.model.isin([m.name for m in models])
        & frame.noise.isin(args.noise)
        & pd.Series([(a, d) in points for a, d in zip(frame.adc_bits, frame.dac_bits)], index=frame.index)
        & (frame.repeat < repeats)
    ]


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        devices = DeviceSettings.from_args(args, swept=("adc_bits", "dac_bits"))
    except DeviceError as err:
        sys.exit(f"error: {err}")
    setup = study_setup(args)
    zoo = ModelZoo(replace(setup, test_samples=args.test_samples), args.models_dir)
    models = study_models(zoo, args.bits, args.recipe)
    setup_key = study_key(zoo, devices=devices.as_dict(), recipe=args.recipe, t_inference=args.t_inference, seed=args.seed)
    table = ResultTable(args.out / "results.csv", KEY)
    run_sweep(zoo, models, devices, table, setup_key, args)
    frame = current_rows(table.frame(), setup_key, models, args)
    plot(frame, args)
    print(summary(frame, args))
    print(f"wrote {args.out / 'results.csv'} and plots to {args.out}")


if __name__ == "__main__":
    main()
