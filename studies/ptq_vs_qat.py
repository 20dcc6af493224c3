"""Accuracy vs bits per component, PTQ vs QAT, in recurrent mode ([S25]'s sensitivity figure), and
[Z25]'s headline: uniform 8-bit PTQ vs QAT.

Sweep: for every component (A, B, C, D, dt, state, act, mixing, coder, and "all") and bit width, the
spec with that component alone quantized by the --recipe quantizer (aimc_ssm.quant.search.component_spec;
"all": the whole recipe, the state included). Each is measured after PTQ of the float model and
after QAT (fine-tuned from it, --qat-epochs, cached per spec), on the test subset in recurrent mode:
the deployed recurrence, the state re-quantized every step.
Headline: the channel-asym-state16 recipe at 8 bits (state 16 bits) PTQ vs QAT in conv and in recurrent mode.
[Z25] reports on sMNIST, recurrent mode: PTQ about 40 %, QAT about 96 %, float about 97 %.

    python studies/ptq_vs_qat.py --quick      # A and state at 4 and 8 bits; about a minute on 2 cores
    python studies/ptq_vs_qat.py              # 10 components x 2, 4, 8 bits; about 15 minutes on 2 cores
    python studies/ptq_vs_qat.py --components A state --bits 2 3 4 5 6 8 --recipe s25

Time goes mostly to QAT: one fine-tuning per point (5 epochs of the [Z25] model, about 25 s on 2
quiet cores; each bit width added to the full sweep adds about 5 minutes). The quantized recurrence
of "state" and "all" points comes next; other points run their recurrent mode as the equal
convolution (aimc_ssm.study.zoo). Models are cached in --models-dir, so the other studies reuse them.

results/ptq_vs_qat/results.csv, one row per accuracy measured (a killed run resumes):
    setup       hash of the models and evaluation subset (aimc_ssm.study.zoo.ModelZoo.key)
    experiment  "float", "sweep" or "headline"
    recipe      quantizer recipe (aimc_ssm.quant.precision.RECIPES; "channel-asym-state16" for the headline; "float")
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
from dataclasses import dataclass

import seaborn as sns

from aimc_ssm.io import save_figure
from aimc_ssm.quant.precision import FLOAT_BITS, RECIPES, PrecisionSpec, recipe_spec
from aimc_ssm.quant.search import SWEEP_COMPONENTS, check_bits_list, sensitivity_points
from aimc_ssm.study.harness import Budget, ResultTable, prepare, run_keys, study_parser, study_setup
from aimc_ssm.study.summary import markdown_table, write_summary
from aimc_ssm.study.zoo import ModelZoo

NAME = "ptq_vs_qat"
KEY = ["setup", "experiment", "recipe", "component", "bits", "method", "mode"]
BUDGET = Budget(full={"components": SWEEP_COMPONENTS, "bits": (2, 4, 8)}, quick={"components": ("A", "state"), "bits": (4, 8)})
HEADLINE_RECIPE, HEADLINE_BITS = "channel-asym-state16", 8  # [Z25]: 8 bits, the state at 16


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__, BUDGET)
    parser.add_argument("--components", nargs="+", choices=SWEEP_COMPONENTS, default=None, help=BUDGET.help("components"))
    parser.add_argument("--bits", nargs="+", type=int, default=None, help="bit widths " + BUDGET.help("bits"))
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="channel-asym", help="quantizer recipe of the sweep (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=("ptq", "qat"), default=["ptq", "qat"])
    args = parser.parse_args(argv)
    try:
        args.bits = check_bits_list(args.bits)
    except ValueError as err:
        parser.error(str(err))
    return args


@dataclass
class Point:
    """One accuracy: the spec of its model (None: float), and its row's key, which names the method and mode."""

    spec: PrecisionSpec | None
    keys: list[dict]


def run_points(setup_key, args) -> list[Point]:
    """Every row: float in both modes, the sweep, then the headline."""
    float_rows = [
        (dict(experiment="float", recipe="float", component="none", bits=FLOAT_BITS, method="float", mode=m), None)
        for m in ("recurrent", "conv")
    ]
    sweep = [
        (dict(experiment="sweep", recipe=args.recipe, component=c, bits=b, method=method, mode="recurrent"), spec)
        for c, b, spec in sensitivity_points(args.components, args.bits, args.recipe)
        for method in args.methods
    ]
    headline = [
        (dict(experiment="headline", recipe=HEADLINE_RECIPE, component="all", bits=HEADLINE_BITS, method=method, mode=mode), recipe_spec(HEADLINE_RECIPE, HEADLINE_BITS))
        for method in args.methods
        for mode in ("recurrent", "conv")
    ]
    return [Point(spec, [{"setup": setup_key, **key}]) for key, spec in float_rows + sweep + headline]


def measure(zoo: ModelZoo, point: Point) -> list[dict]:
    """The row of `point`: the accuracy of its key's model and mode, and how it was computed."""
    key, spec = point.keys[0], point.spec
    start = time.time()
    accuracy = zoo.spec_accuracy(spec, key["method"], "test", key["mode"])
    return [{
        **key,
        "forward": zoo.spec_forward(spec, key["mode"]),
        "accuracy": accuracy,
        "samples": zoo.samples("test"),
        "seconds": round(time.time() - start, 2),
    }]


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
    grid.ax.set_title(f"[Z25] recipe, {HEADLINE_BITS} bits (state 16 bits)")
    save_figure(grid.figure, out / "headline.png")


def main(argv=None):
    args = parse_args(argv)
    prepare(args)
    zoo = ModelZoo(study_setup(args), args.models_dir)
    table = ResultTable(args.out / "results.csv", KEY)
    points = run_points(zoo.key, args)
    table.measure_pending(points, lambda point: measure(zoo, point), NAME)
    frame = table.rows_of(run_keys(points))
    plot_sweep(frame, args, args.out)
    plot_headline(frame, args.out)
    headline = frame[frame.experiment != "sweep"][["experiment", "method", "mode", "accuracy"]]
    sweep = frame[frame.experiment == "sweep"].pivot_table(index=["method", "mode"], columns="bits", values="accuracy").reset_index()
    write_summary(
        args.out, headline, "PTQ vs QAT", list(headline.columns),
        [p for p in ("headline.png", "accuracy_vs_bits.png") if (args.out / p).exists()], args,
        notes="Accuracy per bit width of the sweep (columns: bits):\n\n" + markdown_table(sweep),
    )
    print(headline.to_string(index=False))
    print(f"wrote {args.out / 'results.csv'} and plots to {args.out}")


if __name__ == "__main__":
    main()
