"""Accuracy vs ADC and DAC resolution of S4D models on analog crossbars, per kernel mapping and training: the main study.

Each model is mapped onto the --device with aimc_ssm.analog.deploy.to_analog: one fused crossbar per
SSM channel ([S24]: [u_t, x_{t-1}, u_{t-1}] in, [x_t, y_{t-1}] out, the state fed back through ADC and
DAC every step) and analog tiles for the encoder, mixing and decoder; DAC ranges are calibrated on two
training batches. The models (--training):

    float   the float model
    ptq     post-training quantization at --bits (--recipe)
    qat     quantization-aware fine-tuning at --bits from the float model
    hwa     the float model fine-tuned through a differentiable simulation of its deployment
            (aimc_ssm.analog.hwa: the kernels' mapped cells drawing the device's programming noise
            and drift, its converters, output noise; Linear weight noise) for --hwa-epochs

each on every kernel mapping in --mapping (direct, balanced, incremental: aimc_ssm/analog/kernel.py,
the one place that explains them). The study sweeps the converters of every crossbar:

    ADC sweep   ADC bits in --adc-bits, the DAC at the largest of --dac-bits
    DAC sweep   DAC bits in --dac-bits, the ADC at the largest of --adc-bits
under three noise conditions (--noise):

    converters  DAC and ADC quantization only: target weights, no output noise (deterministic: 1 repeat)
    stochastic  the same converters rounding stochastically (aihwkit's forward.inp_sto_round and
                out_sto_round), which lets changes smaller than a level add up on average (1 repeat)
    device      the device's noise too: fresh programming noise for every repeat (seeded), drift and
                read noise up to --t-inference, output noise in every MVM (--repeats draws)

Defaults: the co-designed model and kernels that hold on pcm. The model is [Z25]'s size (H=16, N=64,
1 layer) with slower rotations and shorter steps (--a-init lin-quarter --dt-max 0.01: every mode's
margin to the unit circle is then no longer dwarfed by its rotation cell on the crossbar); the kernels
use 4 devices per weight (--copies), the y column its own ADC range 8 (--y-adc-range), and drift
compensation from averaged reads (--kernel-drift-compensation). --a-init lin --dt-max 0.1 --copies 1
--y-adc-range 0 give [Z25]'s model on one device per weight, one ADC range per crossbar.

Measured on an H200 (python studies/adc_sweep.py --compute cuda --adc-bits 8 --dac-bits 8 --repeats 3
--test-samples 500 --t-inference 3600 --training float ptq qat hwa --mapping direct incremental --noise
converters device, with the defaults above; per-sequence reads; three draws):
  - converters only, 8-bit DAC and ADC, incremental mapping: float 86.0 % (digital 87.4), hwa 85.4 %
    (86.2), PTQ-8 85.4 % (87.2), QAT-8 85.8 % (88.0); the direct mapping 9.6-10.6 %;
  - pcm at 1 h, incremental: PTQ-8 72.3 ± 2.6 %, hwa 72.1 ± 3.6 %, float 71.9 ± 3.6 %, QAT-8 71.4 ± 3.1 %,
    with 4.3 of 16 channels holding a mode outside the unit circle (`unstable_channels`); direct: 9.4-10.5 %,
    all 16 channels unstable;
  - the same at 1 day (--t-inference 86400 --hwa-t-inference 3600, incremental): hwa 64.4 ± 4.3 %, float
    64.1 ± 4.3 %, QAT-8 61.9 ± 1.7 %, 6.3 unstable channels;
  - energy: 44.8 µJ and 323 µs per inference at 8 bits, 44.3 µJ of it the crossbar reads (4 copies).
What limits the gap: studies/noise_resilience.py's sources experiment reads every mode back after
programming (modes.csv, modes.png).

ADC complexity ([S25], converted outputs x ADC bits per step) with every conversion at the swept ADC
bits: aimc_ssm.quant.metrics.adc_complexity with r_state = r_act = r_lin = ADC bits, i.e. the N state
columns and the y column of every kernel, the mixing outputs, and the encoder and decoder outputs:
    ADC bits x (L·H·(N + 1) + L·M + H + d_out)     (M = 2H mixing outputs for the GLU)
which is linear in the bits and the same for every model and mapping (copies add cells, not conversions).

    python studies/adc_sweep.py --quick     # a few minutes on 2 cores (3-epoch models)
    python studies/adc_sweep.py             # about 100 s on 2 cores, training included (45 s with cached models)
    python studies/adc_sweep.py --compute cuda   # about 40 s on an H200, training included (26 s with cached models)
    python studies/adc_sweep.py --compute cuda --training float ptq qat hwa --mapping direct balanced incremental
    python studies/adc_sweep.py --device devices/my_device.py --adc-bits 4 6 8 --bits 8 6 --repeats 5

The default run compares what works with what does not on pcm, in about 100 s on 2 cores,
training included: the float and QAT-8 models (--training float qat; add ptq and hwa, whose training
through 784 recurrent steps wants a GPU) on the direct and incremental mappings (--mapping direct
incremental; balanced too with --mapping), converters only and the device at 1 h (--noise converters
device; stochastic too with --noise), ADC 6 and 8 bits at an 8-bit DAC. Budgets: float 20 epochs, QAT
5, hwa 3; PTQ and QAT at 8 bits (channel-asym-state16 recipe); 4 copies; 2 repeats; the first 100 test
samples. --quick: 3, 1 and 1 epochs, ADC 8 14, DAC 14, 1 copy, 2 repeats, 100 test samples. Models
come from --models-dir, trained once and shared with other studies. The summary names the best and
the worst setting under the device's noise.

results/adc_sweep/results.csv, one row per accuracy measured (a killed run resumes):
    setup             hash of the models, test subset and device settings (rows of other runs are kept, not mixed)
    model             "float", "ptq-<bits>", "qat-<bits>" or "hwa-float";  method (= training), bits
    mapping           the kernels' mapping
    noise             "converters", "stochastic" or "device"
    adc_bits          ADC resolution of every crossbar;  dac_bits: DAC resolution of every crossbar
    repeat            index of the noise draw (seed = 1000 * --seed + repeat)
    accuracy          test accuracy of the analog model on `samples` test samples
    unstable_channels kernel channels whose programmed recurrence has a mode with |λ| >= 1
                      (aimc_ssm.analog.stability): why a draw is at chance; 0 on target weights
    digital_accuracy  the same model computed digitally (no converters, no noise), same samples
    adc_complexity    converted output bits per time step (see above);  crossbar_cells: the kernels' cells
    energy_per_inference_nj, latency_per_inference_us   one test sequence priced by aimc_ssm.analog.ledger
                      (the device file's ENERGY_MODEL and --energy over its sourced defaults);
                      energy_per_step_nj, latency_per_step_ns: one step; adc_/dac_/read_/digital_energy_nj:
                      the inference's energy by part; adc_conversions, dac_conversions, analog_reads,
                      cells_read, digital_ops, sequence_length: what the ledger counted
    samples, device, seconds
    t_inference       seconds of drift after programming (device condition; empty: not programmed)
Plots in results/adc_sweep/: accuracy_vs_adc_bits.png and accuracy_vs_dac_bits.png (mean and standard
deviation band per model, one row of panels per mapping, one column per noise condition),
accuracy_vs_adc_complexity.png, accuracy_vs_energy.png (one point per mapping and converter setting,
models as hue). summary.md: the table of means per setting with energy and latency, the best and the
worst setting on the device, the plots; run.json: the command, every setting, the package versions,
the resolved device configs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import seaborn as sns

from aimc_ssm.analog.devices import DeviceError
from aimc_ssm.analog.kernel import MAPPINGS, fused_layers
from aimc_ssm.analog.ledger import ledger, ledger_columns
from aimc_ssm.io import save_figure
from aimc_ssm.quant.metrics import adc_complexity
from aimc_ssm.study.analog import (
    Deployer,
    DeviceSettings,
    StudyModel,
    add_device_flags,
    add_kernel_hwa_flags,
    add_model_flags,
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

NAME = "adc_sweep"
KEY = ["setup", "model", "mapping", "noise", "adc_bits", "dac_bits", "repeat"]
TRAININGS = ("float", "ptq", "qat", "hwa")
NOISES = ("converters", "stochastic", "device")
STOCHASTIC_ROUNDING = {"forward.inp_sto_round": True, "forward.out_sto_round": True}
CHANCE = 0.1  # ten classes
BUDGET = Budget(
    full={"adc_bits": [6, 8], "dac_bits": [8], "repeats": 2, "test_samples": 100, "hwa_epochs": 3, "copies": 4},
    quick={"adc_bits": [8, 14], "dac_bits": [14], "repeats": 2, "test_samples": 100, "hwa_epochs": 1, "copies": 1},
)


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__, BUDGET)
    add_model_flags(parser, default_bits=[8])
    add_device_flags(parser, converter_flags=False, mappings_default=("direct", "incremental"))
    training = parser.add_argument_group("training")
    training.add_argument("--training", nargs="+", choices=TRAININGS, default=["float", "qat"], help="the models compared: float, PTQ and QAT at --bits, hwa: the float model fine-tuned through a simulation of its deployment (default: %(default)s)")
    training.add_argument("--hwa-epochs", type=int, default=None, help="epochs of the hwa fine-tune " + BUDGET.help("hwa_epochs"))
    add_kernel_hwa_flags(parser)
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--adc-bits", nargs="+", type=int, default=None, help="ADC bits of the ADC sweep " + BUDGET.help("adc_bits"))
    sweep.add_argument("--dac-bits", nargs="+", type=int, default=None, help="DAC bits of the DAC sweep " + BUDGET.help("dac_bits"))
    sweep.add_argument("--noise", nargs="+", choices=NOISES, default=["converters", "device"], help="noise conditions (default: %(default)s)")
    sweep.add_argument("--repeats", type=int, default=None, help="noise draws per point of the device condition " + BUDGET.help("repeats"))
    sweep.add_argument("--t-inference", type=float, default=1.0, help="seconds of drift after programming in the device condition (default: %(default)s)")
    # the co-designed model and kernels that hold on pcm (module docstring); every flag overrides them
    parser.set_defaults(a_init="lin-quarter", dt_max=0.01, copies=None, y_adc_range=8.0, t_inference=3600.0)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be positive")
    return args


@dataclass
class Point:
    """One model at one converter setting and noise condition: the rows of its noise draws."""

    model: StudyModel
    mapping: str
    noise: str
    adc_bits: int
    dac_bits: int
    keys: list[dict]


def run_points(models, setup_key, args) -> list[Point]:
    """Every model x mapping x noise condition x converter setting of the sweep; one draw where there is no noise."""
    points = []
    for entry in models:
        for mapping in args.mapping:
            for noise in args.noise:
                repeats = args.repeats if noise == "device" else 1
                for adc, dac in sweep_points(args.adc_bits, args.dac_bits):
                    key = {"setup": setup_key, "model": entry.name, "mapping": mapping, "noise": noise, "adc_bits": adc, "dac_bits": dac}
                    points.append(Point(entry, mapping, noise, adc, dac, [{**key, "repeat": r} for r in range(repeats)]))
    return points


def sweep_points(adc_list: list[int], dac_list: list[int]) -> list[tuple[int, int]]:
    """(adc_bits, dac_bits) of the ADC sweep (DAC at its finest) and the DAC sweep (ADC at its finest)."""
    adc_points = [(adc, max(dac_list)) for adc in adc_list]
    dac_points = [(max(adc_list), dac) for dac in dac_list]
    return list(dict.fromkeys(adc_points + dac_points))


def conversion_bits(adc_bits: int) -> dict:
    """Every converted output at the ADC's bits: the kernels' state and y columns, the mixing and coder outputs."""
    return {"state": adc_bits, "act": adc_bits, "mixing": adc_bits}


def noise_scale(noise: str) -> float:
    """The device's noise sources x this: none in the converter conditions, all of it in the device condition."""
    return 1.0 if noise == "device" else 0.0


def measure_point(zoo, deployer, devices, point, args) -> tuple[int, dict, list]:
    """The deployed kernels' crossbar cells, the energy and latency of one inference (aimc_ssm.analog.ledger),
    and the accuracy and unstable channels of each repeat (one model at one converter setting and noise condition)."""
    rounding = STOCHASTIC_ROUNDING if point.noise == "stochastic" else {}
    configs = devices.configs(noise_scale=noise_scale(point.noise), adc_bits=point.adc_bits, dac_bits=point.dac_bits, **rounding)
    analog = deployer(configs)
    t_inference = args.t_inference if point.noise == "device" else None  # converters only: the tiles keep their targets
    cells = sum(kernel.crossbar_cells() for kernel in fused_layers(analog))
    costs = ledger_columns(ledger(analog, zoo.batches("test")[0][0].shape[1]), devices.energy_model())
    runs = analog_draws(analog, zoo.batches("test"), len(point.keys), args.seed, [t_inference], zoo.device, devices.zero_cells)
    return cells, costs, [draw for (draw,) in runs]


def run_sweep(zoo, devices, table, points, args):
    calibration = calibration_inputs(zoo).to(zoo.device)
    digital, deployers = {}, {}  # per model, on its first point

    def measure(point):
        entry = point.model
        if entry.name not in digital:
            digital[entry.name] = zoo.accuracy(entry.model, "test", "conv")
        if (entry.name, point.mapping) not in deployers:
            deployers[entry.name, point.mapping] = Deployer(entry.model, calibration, point.mapping, **devices.kernel_options())
        start = time.time()
        cells, costs, draws = measure_point(zoo, deployers[entry.name, point.mapping], devices, point, args)
        seconds = round((time.time() - start) / len(draws), 2)
        return [
            {
                "setup": key["setup"], "model": entry.name, "method": entry.method, "training": entry.method, "bits": entry.bits,
                "mapping": point.mapping, "noise": point.noise, "adc_bits": point.adc_bits, "dac_bits": point.dac_bits,
                "repeat": key["repeat"], "accuracy": draw.accuracy, "digital_accuracy": digital[entry.name],
                "unstable_channels": math.nan if draw.unstable_channels is None else draw.unstable_channels,
                "adc_complexity": adc_complexity(zoo.setup.model, conversion_bits(point.adc_bits)), "crossbar_cells": cells, **costs,
                "samples": zoo.samples("test"), "device": args.device,
                "t_inference": args.t_inference if point.noise == "device" else math.nan,
                "seconds": seconds,
            }
            for key, draw in zip(point.keys, draws)
        ]

    table.measure_pending(points, measure, NAME)


# -- plots and summary ------------------------------------------------------------------------------
NOISE_TITLES = {
    "converters": "converters only (no device noise)",
    "stochastic": "converters, stochastic rounding",
    "device": "device noise ({repeats} draws, t = {t:g} s)",
}


def panel_titles(grid, args):
    for (mapping, noise), ax in grid.axes_dict.items():
        ax.set_title(f"{mapping}: " + NOISE_TITLES[noise].format(repeats=args.repeats, t=args.t_inference), fontsize=9)


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
        col="noise", col_order=[n for n in NOISES if n in set(frame.noise)], row="mapping",
        row_order=[m for m in MAPPINGS if m in set(frame.mapping)], kind="line", errorbar="sd", height=3.2, aspect=1.2,
        facet_kws={"margin_titles": False},
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
    device = f"device {args.device}, kernel ADC range {args.kernel_adc_range:g}; float digital dashed, chance dotted"
    accuracy_plot(adc_rows, "adc_bits", args, f"Accuracy vs ADC bits (DAC {max(args.dac_bits)} bits); {device}", args.out / "accuracy_vs_adc_bits.png", "ADC bits (every crossbar)")
    accuracy_plot(dac_rows, "dac_bits", args, f"Accuracy vs DAC bits (ADC {max(args.adc_bits)} bits); {device}", args.out / "accuracy_vs_dac_bits.png", "DAC bits (every crossbar)")
    energy_plot(frame, args)
    complexity = adc_rows.assign(adc_kbit=adc_rows.adc_complexity / 1000)
    accuracy_plot(complexity, "adc_kbit", args, f"Accuracy vs ADC complexity (DAC {max(args.dac_bits)} bits); {device}", args.out / "accuracy_vs_adc_complexity.png", "ADC complexity (kbit converted per step)")


def energy_plot(frame, args):
    """Accuracy vs energy per inference: one point per setting (mapping, converters; mean over draws), models as hue."""
    points = frame.groupby(["noise", "mapping", "model", "adc_bits", "dac_bits"], as_index=False).agg(
        accuracy=("accuracy", "mean"), energy_per_inference_nj=("energy_per_inference_nj", "first"),
    )
    grid = sns.relplot(
        data=points, x="energy_per_inference_nj", y="accuracy", hue="model", style="mapping", col="noise",
        col_order=[n for n in NOISES if n in set(points.noise)], kind="scatter", s=60, height=3.3, aspect=1.2,
    )
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.axhline(CHANCE, color="lightgray", linestyle=":", linewidth=1)
    grid.set_axis_labels("energy per inference (nJ, log; aimc_ssm.analog.ledger)", "test accuracy")
    grid.figure.suptitle(f"Accuracy vs energy on {args.device}: one point per mapping and converter setting", y=1.04)
    save_figure(grid.figure, args.out / "accuracy_vs_energy.png")


def main_table(frame):
    """The summary's table: mean and spread of the accuracy per setting, with its energy, latency and unstable channels."""
    return frame.groupby(["noise", "mapping", "model", "adc_bits", "dac_bits"], as_index=False).agg(
        accuracy=("accuracy", "mean"), spread=("accuracy", "std"), digital=("digital_accuracy", "first"),
        unstable_channels=("unstable_channels", "mean"), energy_nj=("energy_per_inference_nj", "first"),
        latency_us=("latency_per_inference_us", "first"), draws=("repeat", "count"),
    )


def summary(frame, args) -> str:
    """Mean ± std accuracy (%) per model and noise condition: the ADC sweep, then the DAC sweep."""
    def table(rows, column):
        stats = rows.groupby(["noise", "mapping", "model", column]).accuracy.agg(["mean", "std"]).fillna(0) * 100
        cells = stats.apply(lambda r: f"{r['mean']:.1f}±{r['std']:.1f}", axis=1).unstack(column)
        digital = rows.groupby(["noise", "mapping", "model"]).digital_accuracy.first() * 100
        cells.insert(0, "digital", digital.map(lambda v: f"{v:.1f}"))
        unstable = rows.groupby(["noise", "mapping", "model"]).unstable_channels.mean()
        cells["unstable channels"] = unstable.map(lambda v: "" if v != v else f"{v:.1f}")
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
    return text + best_on_device(frame)


def best_on_device(frame) -> str:
    """The best and the worst setting under the device's noise, with their unstable channels: what works next to what does not."""
    device = frame[frame.noise == "device"]
    if device.empty:
        return ""
    stats = device.groupby(["mapping", "model", "adc_bits", "dac_bits"]).agg(
        accuracy=("accuracy", "mean"), spread=("accuracy", "std"), digital=("digital_accuracy", "first"), unstable=("unstable_channels", "mean"),
    )
    lines = []
    for label, (key, row) in (("best", next(stats.sort_values("accuracy", ascending=False).iterrows())), ("worst", next(stats.sort_values("accuracy").iterrows()))):
        mapping, model, adc, dac = key
        lines.append(
            f"{label} under the device's noise: {model} on the {mapping} mapping, ADC {adc} / DAC {dac} bits: "
            f"{100 * row.accuracy:.1f} ± {100 * (row.spread if row.spread == row.spread else 0):.1f} % (digital {100 * row.digital:.1f} %), "
            f"{row.unstable:.1f} unstable channels"
        )
    return "\n" + "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    try:
        devices = DeviceSettings.from_args(args, swept=("adc_bits", "dac_bits"), noise_scales=[noise_scale(n) for n in args.noise])
    except DeviceError as err:
        usage_error(err)
    prepare(args)  # after the device checks: a usage error leaves no output folder behind
    zoo = ModelZoo(study_setup(args), args.models_dir)
    models = study_models(zoo, args.bits, args.recipe, methods=[t for t in args.training if t != "hwa"])
    if "hwa" in args.training:
        models.append(kernel_hwa_entry(zoo, devices, calibration_inputs(zoo).to(zoo.device), args))
    setup_key = study_key(
        zoo, devices=devices.as_dict(), recipe=args.recipe, t_inference=args.t_inference, seed=args.seed, hwa=kernel_hwa_settings(args)
    )
    table = ResultTable(args.out / "results.csv", KEY)
    points = run_points(models, setup_key, args)
    run_sweep(zoo, devices, table, points, args)
    frame = table.rows_of(run_keys(points))
    plot(frame, args)
    text = summary(frame, args)
    linear, kernel = devices.configs()
    write_summary(
        args.out, main_table(frame), f"ADC sweep on {args.device}", list(main_table(frame).columns),
        ["accuracy_vs_adc_bits.png", "accuracy_vs_dac_bits.png", "accuracy_vs_adc_complexity.png", "accuracy_vs_energy.png"],
        args, {"linear": linear, "kernel": kernel, "settings": devices.as_dict()}, notes=best_on_device(frame),
    )
    print(text)
    print(f"wrote {args.out / 'results.csv'} and plots to {args.out}")


if __name__ == "__main__":
    main()
