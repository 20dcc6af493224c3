"""Accuracy vs bits per component, PTQ vs QAT, in recurrent mode ([S25]'s sensitivity figure), and
[Z25]'s headline: uniform 8-bit PTQ vs QAT.

Sweep: for every component (A, B, C, D, dt, state, act, mixing, coder, and "all") and bit width, the
spec with that component alone quantized by the --recipe quantizer (aimc_ssm.search.component_spec;
"all": the whole recipe, the state included). Each is measured after PTQ of the float model and
after QAT (fine-tuned from it, --qat-epochs, cached per spec), on the test subset in recurrent mode:
the deployed recurrence, the state re-quantized every step.
Headline: PrecisionSpec.z25(8) (8 bits, state 16 bits) PTQ vs QAT in conv and in recurrent mode.
[Z25] reports on sMNIST, recurrent mode: PTQ about 40 %, QAT about 96 %, float about 97 %.

    python studies/ptq_vs_qat.py --quick      # A and state at 4 and 8 bits; about a minute on 2 cores
    python studies/ptq_vs_qat.py              # 10 components x 2, 4, 8 bits; about 15 minutes on 2 cores
    python studies/ptq_vs_qat.py --components A state --bits 2 3 4 5 6 8 --recipe s25

Time goes mostly to QAT: one fine-tuning per point (5 epochs of the [Z25] model, about 25 s on 2
quiet cores; each bit width added to the full sweep adds about 5 minutes). The quantized recurrence
of "state" and "all" points comes next; other points run their recurrent mode as the equal
convolution (aimc_ssm.zoo). Models are cached in --models-dir, so the other studies reuse them.

results/ptq_vs_qat/results.csv, one row per accuracy measured (a killed run resumes):
    setup       hash of the models and evaluation subset (aimc_ssm.zoo.ModelZoo.key)
    experiment  "float", "sweep" or "headline"
    recipe      quantizer recipe ("z25", "s25"; "z25(8)" for the headline; "float")
    component   the quantized component (A ... coder, "all"); "none" for the float model
    bits        its bits (32 for float)
    method      "float", "ptq" or "qat"
    mode        "recurrent" or "conv": the mode the accuracy is defined in
    forward     the forward that computed it ("conv" for recurrent mode without state re-quantization)
    accuracy    test accuracy on `samples` test samples (NaN: the QAT run diverged)
    samples     test samples evaluated
    seconds     wall time of the measurement, training included
Plots: accuracy_vs_bits.png (facet per component: PTQ and QAT vs bits, float dashed) and
headline.png (float, PTQ and QAT accuracy at 8 bits in conv and recurrent mode).
"""
from __future__ import annotations

import time

import seaborn as sns
import torch
from tqdm.auto import tqdm

from aimc_ssm.precision import FLOAT_BITS, PrecisionSpec
from aimc_ssm.search import RECIPES, SWEEP_COMPONENTS, check_bits_list, sensitivity_points
from aimc_ssm.study import ResultTable, add_threads_flag, save_figure, study_parser, study_setup
from aimc_ssm.zoo import ModelZoo

NAME = "ptq_vs_qat"
KEY = ["setup", "experiment", "recipe", "component", "bits", "method", "mode"]
FULL_COMPONENTS, FULL_BITS = SWEEP_COMPONENTS, (2, 4, 8)
QUICK_COMPONENTS, QUICK_BITS = ("A", "state"), (4, 8)
HEADLINE_BITS, HEADLINE_STATE_BITS = 8, 16


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__)
    add_threads_flag(parser)
    parser.add_argument("--components", nargs="+", choices=SWEEP_COMPONENTS, default=None, help="default: all ten (A state with --quick)")
    parser.add_argument("--bits", nargs="+", type=int, default=None, help=f"bit widths (default: {FULL_BITS}; {QUICK_BITS} with --quick)")
    parser.add_argument("--recipe", choices=RECIPES, default="z25", help="quantizer recipe of the sweep (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=("ptq", "qat"), default=["ptq", "qat"])
    args = parser.parse_args(argv)
    args.components = args.components or (QUICK_COMPONENTS if args.quick else FULL_COMPONENTS)
    try:
        args.bits = check_bits_list(args.bits or (QUICK_BITS if args.quick else FULL_BITS))
    except ValueError as err:
        parser.error(str(err))
    return args


def measurements(args):
    """(key, spec) of every row: float in both modes, the sweep, then the headline."""
    float_rows = [
        (dict(experiment="float", recipe="float", component="none", bits=FLOAT_BITS, method="float", mode=m), None)
        for m in ("recurrent", "conv")
    ]
    sweep = [
        (dict(experiment="sweep", recipe=args.recipe, component=c, bits=b, method=method, mode="recurrent"), spec)
        for c, b, spec in sensitivity_points(args.components, args.bits, args.recipe)
        for method in args.methods
    ]
    z25 = PrecisionSpec.z25(HEADLINE_BITS, HEADLINE_STATE_BITS)
    headline = [
        (dict(experiment="headline", recipe=f"z25({HEADLINE_BITS})", component="all", bits=HEADLINE_BITS, method=method, mode=mode), z25)
        for method in args.methods
        for mode in ("recurrent", "conv")
    ]
    return float_rows + sweep + headline


def measure(zoo: ModelZoo, key: dict, spec) -> dict:
    """One row: the accuracy of `key`'s model and mode, and how it was computed."""
    start = time.time()
    accuracy = zoo.spec_accuracy(spec, key["method"], "test", key["mode"])
    return {
        **key,
        "forward": zoo.spec_forward(spec, key["mode"]),
        "accuracy": accuracy,
        "samples": zoo.samples("test"),
        "seconds": round(time.time() - start, 2),
    }


def plot_sweep(frame, args, out):
    sweep = frame[frame.experiment == "sweep"]
    float_accuracy = frame[(frame.experiment == "float") & (frame["mode"] == "recurrent")].accuracy.mean()
    grid = sns.relplot(
        data=sweep, x="bits", y="accuracy", hue="method", style="method", markers=True, dashes=False,
        col="component", col_order=list(args.components), col_wrap=min(5, len(args.components)),
        kind="line", height=2.4, aspect=1.1,
    )
    for ax in grid.axes.flat:
        ax.axhline(float_accuracy, color="gray", linestyle="--", linewidth=1, label="float")
        ax.set_xticks(sorted(sweep.bits.unique()))
    grid.set_titles("{col_name}")
    grid.set_axis_labels("bits", "test accuracy (recurrent)")
    grid.figure.suptitle(f"PTQ vs QAT per component ({args.recipe} quantizers; float dashed)", y=1.02)
    save_figure(grid.figure, out / "accuracy_vs_bits.png")


def plot_headline(frame, out):
    rows = frame[frame.experiment.isin(["float", "headline"])]
    grid = sns.catplot(
        data=rows, x="mode", y="accuracy", hue="method", hue_order=["float", "ptq", "qat"], kind="bar", height=3.2, aspect=1.3
    )
    for container in grid.ax.containers:
        grid.ax.bar_label(container, fmt="%.2f", fontsize=8)
    grid.ax.set_ylabel("test accuracy")
    grid.ax.set_title(f"[Z25] recipe, {HEADLINE_BITS} bits (state {HEADLINE_STATE_BITS})")
    save_figure(grid.figure, out / "headline.png")


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    zoo = ModelZoo(study_setup(args), args.models_dir)
    table = ResultTable(args.out / "results.csv", KEY)
    todo = [(key, spec) for key, spec in measurements(args) if not table.done(setup=zoo.key, **key)]
    for key, spec in tqdm(todo, desc=NAME, unit="point"):
        table.add({"setup": zoo.key, **measure(zoo, key, spec)})
    frame = table.frame()
    frame = frame[frame.setup == zoo.key]
    plot_sweep(frame, args, args.out)
    plot_headline(frame, args.out)
    print(frame[frame.experiment != "sweep"][["experiment", "method", "mode", "accuracy"]].to_string(index=False))
    print(f"wrote {args.out / 'results.csv'} and plots to {args.out}")


if __name__ == "__main__":
    main()
