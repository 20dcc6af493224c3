"""Hardware cost of a bit allocation: float -> PTQ -> QAT, with [S25]'s metrics and the memory footprint.

For one bit allocation, the float model and its PTQ and QAT versions (QAT fine-tuned from the float
model, --qat-epochs, cached): test accuracy in recurrent mode (the state re-quantized every step) and
the hardware metrics of aimc_ssm.quant.metrics: compute (ACE, bit operations per step), model size, ADC
complexity and the memory footprint of the deployed tensors. [S25] reports float -> QAT reductions of
ACE x130, model size x12, ADC complexity x10.8 on Heidelberg Digits (H = 128, N = 64).

The allocation, first that applies:
    --spec PATH       a PrecisionSpec JSON (e.g. studies/heterogeneous.py's final_spec.json)
    --bits B          the --recipe (aimc_ssm.quant.precision.recipe_spec) at B bits, the state included
    the heterogeneous study's result (--search-result, default results/heterogeneous/final_spec.json)
    uniform 8 bits of the --recipe

    python studies/complexity.py --quick     # about 30 seconds on 2 cores
    python studies/complexity.py             # about 2 minutes on 2 cores (float model cached: 1)

results/complexity/results.csv, one row per model and quantity (a killed run resumes):
    setup       hash of the models and evaluation subset (aimc_ssm.study.zoo.ModelZoo.key)
    spec        hash of the allocation's PrecisionSpec; allocation: its bits as text; source: where
                it came from ("spec <path>", "uniform <B> <recipe>", "search <path>")
    model       "float", "ptq" or "qat"
    quantity    "accuracy" (test, recurrent mode), "memory_bits", "ace", "model_size_bits" or "adc_complexity"
    value       its value (accuracy as a fraction; NaN if QAT diverged)
    reduction   float value / value (hardware quantities; empty for accuracy)
    samples     test samples of the accuracy
Plot: complexity.png, one panel per hardware quantity, float / PTQ / QAT bars on a log scale with
the reduction over float on each bar and each model's accuracy under it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import seaborn as sns

from aimc_ssm.io import config_key, save_figure
from aimc_ssm.quant.metrics import report
from aimc_ssm.quant.precision import RECIPES, PrecisionSpec, recipe_spec
from aimc_ssm.quant.search import METRICS, allocation_key, check_bits_list
from aimc_ssm.study.harness import RESULTS, ResultTable, prepare, run_keys, study_parser, study_setup
from aimc_ssm.study.summary import write_summary
from aimc_ssm.study.zoo import ModelZoo

NAME = "complexity"
KEY = ["setup", "spec", "model", "quantity"]
MODELS = ("float", "ptq", "qat")
HARDWARE = tuple(METRICS.values())  # memory_bits, ace, model_size_bits, adc_complexity
QUANTITIES = ("accuracy", *HARDWARE)  # the rows of a model, in this order
DEFAULT_BITS = 8


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__)
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--spec", type=Path, default=None, help="PrecisionSpec JSON of the allocation")
    choice.add_argument("--bits", type=int, default=None, help="uniform allocation: the --recipe at this many bits")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="channel-asym", help="recipe of a uniform allocation (default: %(default)s)")
    parser.add_argument(
        "--search-result", type=Path, default=RESULTS / "heterogeneous" / "final_spec.json",
        help="the heterogeneous study's spec, used when neither --spec nor --bits is given and it exists (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.bits is not None:
        try:
            check_bits_list([args.bits])
        except ValueError as err:
            parser.error(str(err))
    return args


def allocation(args) -> tuple[PrecisionSpec, str]:
    """The spec to measure and where it came from (module docstring: the order of precedence)."""
    if args.spec is not None:
        return read_spec(args.spec), f"spec {args.spec}"
    if args.bits is None and args.search_result.exists():
        return read_spec(args.search_result), f"search {args.search_result}"
    bits = DEFAULT_BITS if args.bits is None else args.bits
    return recipe_spec(args.recipe, bits), f"uniform {bits} {args.recipe}"


def read_spec(path: Path) -> PrecisionSpec:
    if not path.exists():
        raise SystemExit(f"error: no spec file {path}; run studies/heterogeneous.py first, or pass --bits B")
    return PrecisionSpec.from_json(path.read_text())


@dataclass
class Point:
    """One model ("float", "ptq" or "qat") of the allocation: the keys of its accuracy and hardware rows."""

    model: str
    keys: list[dict]


def run_points(setup_key: str, spec_hash: str) -> list[Point]:
    return [
        Point(model, [{"setup": setup_key, "spec": spec_hash, "model": model, "quantity": q} for q in QUANTITIES])
        for model in MODELS
    ]


def measure(zoo: ModelZoo, spec: PrecisionSpec, source: str, point: Point) -> list[dict]:
    """The rows of one model: its accuracy and its four hardware metrics, with reductions over float."""
    model = point.model
    float_report = report(zoo.setup.model, PrecisionSpec.float(), zoo.float_model)
    hardware = float_report if model == "float" else report(zoo.setup.model, spec, zoo.float_model)
    values, reductions = hardware.as_dict(), float_report.ratio_to(hardware)
    accuracy = zoo.spec_accuracy(spec, model, "test", "recurrent")
    measured = [(accuracy, math.nan)] + [(values[q], reductions[q]) for q in HARDWARE]  # QUANTITIES, as the keys
    return [
        {
            "setup": key["setup"], "spec": key["spec"], "allocation": allocation_key(spec), "source": source,
            "model": model, "quantity": key["quantity"], "value": value, "reduction": reduction, "samples": zoo.samples("test"),
        }
        for key, (value, reduction) in zip(point.keys, measured)
    ]


def plot(frame, source: str, path: Path):
    accuracy = frame[frame.quantity == "accuracy"].set_index("model").value
    labels = {m: f"{m}\n{accuracy[m]:.1%}" for m in MODELS}
    bars = frame[frame.quantity.isin(HARDWARE)].assign(label=lambda f: f.model.map(labels))
    grid = sns.catplot(
        data=bars, x="label", y="value", col="quantity", col_order=list(HARDWARE), order=[labels[m] for m in MODELS],
        hue="model", hue_order=list(MODELS), kind="bar", sharey=False, height=3, aspect=0.9, legend=False,
    )
    for ax, quantity in zip(grid.axes.flat, HARDWARE):
        ax.set_yscale("log")
        values = bars[bars.quantity == quantity].value
        ax.set_ylim(10 ** math.floor(math.log10(values.min())), values.max() * 1.5)  # bars start a decade below the lowest
        reductions = bars[bars.quantity == quantity].set_index("model").reduction
        for container, model in zip(ax.containers, MODELS):
            ax.bar_label(container, labels=[f"x{reductions[model]:.1f}"], fontsize=8)
        ax.set_title(quantity)
        ax.set_xlabel("")
    grid.set_axis_labels("", "value (log scale)")
    grid.figure.suptitle(f"float -> PTQ -> QAT, {source}; test accuracy (recurrent) under each bar", y=1.04)
    save_figure(grid.figure, path)


def main(argv=None):
    args = parse_args(argv)
    prepare(args)
    spec, source = allocation(args)
    zoo = ModelZoo(study_setup(args), args.models_dir)
    table = ResultTable(args.out / "results.csv", KEY)
    spec_hash = config_key(spec.to_dict())
    points = run_points(zoo.key, spec_hash)
    table.measure_pending(points, lambda point: measure(zoo, spec, source, point), NAME)
    frame = table.rows_of(run_keys(points))
    plot(frame, source, args.out / "complexity.png")
    pivot = frame.pivot(index="quantity", columns="model", values="value")[list(MODELS)]
    write_summary(args.out, pivot.reset_index(), "Hardware metrics", ["quantity", *MODELS], ["complexity.png"], args)
    print(pivot.to_string())
    print(f"wrote {args.out / 'results.csv'} and {args.out / 'complexity.png'}")


if __name__ == "__main__":
    main()
