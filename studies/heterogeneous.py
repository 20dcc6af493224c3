"""Heterogeneous precision: [S25]'s greedy search for the bits of every component.

Starts with every component of the --recipe at 12 bits (the state included) and lowers one component
at a time, the one whose lowering saves most of --metric, keeping each lowering while the validation
accuracy (recurrent mode, the state re-quantized every step) stays at or above the float model's
minus --tolerance (or an absolute --cutoff); see aimc_ssm.quant.search. Candidates are measured by PTQ
(default) or, with --qat, by a QAT fine-tuning each (--qat-epochs, cached per spec). The final spec is
then measured on the test subset. [Z25] reports on sMNIST 95.99 % at an 84 % smaller memory
footprint (6.3x); components that the metric does not count (for memory: state and activations)
stay at 12 bits.

    python studies/heterogeneous.py --quick          # ladder 12, 6, 3; about a minute on 2 cores
    python studies/heterogeneous.py                  # PTQ, memory: about 50 evaluations of 10 s,
                                                     # 8-10 minutes on 2 cores (+3 to train the float model)
    python studies/heterogeneous.py --metric ace --ladder 12 10 8 6 5 4 3 2
    python studies/heterogeneous.py --qat            # one fine-tuning per candidate: hours on 2 cores

Outputs in --out (default results/heterogeneous/):
    results.csv   the trace, one row per evaluated spec (a killed run replays it and goes on):
        setup, search   hashes of the models (aimc_ssm.study.zoo.ModelZoo.key) and of the search options
        metric, method  the metric lowered and "ptq" or "qat"
        step            0 for the start, then 1, 2, ... in order
        component       the component lowered (empty at the start); bits_from, bits_to its bits
        saving          what the lowering saved in the metric; cost: the metric of the evaluated spec
        accuracy        validation accuracy (recurrent mode); cutoff: the accuracy it had to reach
        accepted        whether the lowering was kept (at step 0: whether the start met the cutoff)
        allocation      the evaluated bits as text; bits_A ... bits_coder the same as columns (0: float)
    final_spec.json   the final PrecisionSpec (PrecisionSpec.from_json reads it; studies/complexity.py
                      uses it by default)
    summary.json      final bits, hardware metrics (memory, ACE, model size, ADC complexity) of the
                      final spec and of float, reductions (float / final), validation accuracies and
                      test accuracies of float and of the final spec in recurrent mode
    trace.png         accuracy and metric vs step, kept and undone lowerings marked
"""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import seaborn as sns

from aimc_ssm.io import atomic_write, config_key, save_figure
from aimc_ssm.quant.precision import COMPONENTS, RECIPES
from aimc_ssm.quant.search import DEFAULT_LADDER, METRICS, bits_key, check_ladder, resolve_cutoff
from aimc_ssm.study.harness import Budget, ResultTable, prepare, study_parser, study_setup
from aimc_ssm.study.summary import write_summary
from aimc_ssm.study.zoo import ModelZoo, search_precision

NAME = "heterogeneous"
KEY = ["search", "step"]
BUDGET = Budget(full={"ladder": DEFAULT_LADDER}, quick={"ladder": (12, 6, 3)})


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__, BUDGET)
    parser.add_argument("--metric", choices=tuple(METRICS), default="memory", help="metric the search lowers (default: %(default)s)")
    parser.add_argument("--qat", action="store_true", help="measure every candidate after QAT fine-tuning instead of PTQ")
    limit = parser.add_mutually_exclusive_group()
    limit.add_argument("--tolerance", type=float, default=None, help="accuracy drop allowed below float (default: 0.01, one point)")
    limit.add_argument("--cutoff", type=float, default=None, help="absolute validation accuracy to keep, instead of --tolerance")
    parser.add_argument("--ladder", nargs="+", type=int, default=None, help="bit widths to step through " + BUDGET.help("ladder"))
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="channel-asym", help="quantizer recipe (default: %(default)s)")
    parser.add_argument(
        "--components", nargs="+", choices=COMPONENTS, default=None, help="components to search (default: all the recipe quantizes)"
    )
    args = parser.parse_args(argv)
    try:
        args.ladder = check_ladder(args.ladder)
    except ValueError as err:
        parser.error(str(err))
    args.method = "qat" if args.qat else "ptq"
    return args


def search_options(args) -> dict:
    """The options that decide the search's trace (the setup hash covers the models)."""
    return {
        "metric": args.metric,
        "method": args.method,
        "tolerance": args.tolerance,
        "cutoff": args.cutoff,
        "ladder": list(args.ladder),
        "recipe": args.recipe,
        "components": args.components,
    }


def run_search(zoo: ModelZoo, args, table: ResultTable):
    """The search, replaying the steps already in `table` and adding new ones as they are taken.

    Returns (SearchResult, the search's hash)."""
    search = config_key({"setup": zoo.key, **search_options(args)})
    known = {r["allocation"]: r["accuracy"] for r in table.rows if r["search"] == search}
    cutoff = resolve_cutoff(zoo.spec_accuracy(None, "float", "val", "recurrent"), args.cutoff, args.tolerance)

    def save_step(step):  # replayed steps are in the table already
        if table.pending([{"search": search, "step": step.step}]):
            row = {"setup": zoo.key, "search": search, "metric": args.metric, "method": args.method, **step.as_row()}
            table.add({**row, "cutoff": cutoff, "allocation": bits_key(step.bits)})

    result = search_precision(
        zoo,
        metric=args.metric,
        method=args.method,
        cutoff=cutoff,
        recipe=args.recipe,
        ladder=args.ladder,
        components=args.components,
        known=known,
        on_step=save_step,
    )
    return result, search


def summarize(zoo: ModelZoo, result, args, search: str) -> dict:
    """The search's result without its trace, with test accuracies (recurrent mode) and the memory saved."""
    summary = {k: v for k, v in result.to_dict().items() if k != "trace"}
    saved = 1 - result.report.memory_bits / result.float_report.memory_bits
    return {
        "setup": zoo.key,
        "search": search,
        "method": args.method,
        "accuracies_on": f"validation subset ({zoo.samples('val')} samples), recurrent mode",
        **summary,
        "memory_saved_percent": 100 * saved,
        "test_accuracy": {
            "samples": zoo.samples("test"),
            "float": zoo.spec_accuracy(None, "float", "test", "recurrent"),
            "final": zoo.spec_accuracy(result.spec, args.method, "test", "recurrent"),
        },
    }


def plot_trace(trace, result, path):
    """Accuracy of every evaluated spec, and the metric of the kept spec, against the step."""
    trace = trace.assign(outcome=trace.accepted.map({True: "kept", False: "undone"}))
    kept_cost = trace.cost.where(trace.accepted).ffill()  # the metric of the spec kept after each step
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    outcomes = ["kept", "undone"]
    sns.scatterplot(data=trace, x="step", y="accuracy", hue="outcome", style="outcome", hue_order=outcomes, style_order=outcomes, ax=top)
    for row in trace[trace.step > 0].itertuples():
        label = f"{row.component}{int(row.bits_to)}"
        top.annotate(label, (row.step, row.accuracy), fontsize=6, rotation=60, xytext=(2, 3), textcoords="offset points")
    top.axhline(result.cutoff, color="tab:red", linestyle="--", linewidth=1, label="cutoff")
    if result.reference_accuracy is not None:
        top.axhline(result.reference_accuracy, color="gray", linestyle=":", linewidth=1, label="float")
    top.legend(fontsize=7)
    top.set_ylabel("validation accuracy (recurrent)")
    field = METRICS[result.metric]
    sns.lineplot(x=trace.step, y=kept_cost, drawstyle="steps-post", ax=bottom, label="kept spec")
    bottom.axhline(getattr(result.float_report, field), color="gray", linestyle=":", linewidth=1, label="float")
    bottom.set_yscale("log")
    bottom.set_ylabel(field)
    bottom.legend(fontsize=7)
    reduction = result.reductions[field]
    fig.suptitle(f"greedy search on {result.metric}: {reduction:.1f}x below float at accuracy {result.accuracy:.3f}")
    save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    prepare(args)
    zoo = ModelZoo(study_setup(args), args.models_dir)
    table = ResultTable(args.out / "results.csv", KEY)
    result, search = run_search(zoo, args, table)
    summary = summarize(zoo, result, args, search)
    atomic_write(args.out / "final_spec.json", lambda f: f.write(result.spec.to_json()))
    atomic_write(args.out / "summary.json", lambda f: json.dump(summary, f, indent=2))
    trace = table.rows_of({"search": search, "step": step.step} for step in result.trace)  # in step order, as the search added them
    plot_trace(trace, result, args.out / "trace.png")
    headline = ("bits", "reductions", "memory_saved_percent", "accuracy", "cutoff", "test_accuracy")
    steps = trace.drop(columns=[c for c in ("search", "seconds") if c in trace.columns])
    write_summary(
        args.out, steps, "Heterogeneous precision search", list(steps.columns), ["trace.png"], args,
        notes="".join(f"- {k}: {summary[k]}\n" for k in headline) + "\nThe specification found: final_spec.json. The search, step by step:",
    )
    print(json.dumps({k: summary[k] for k in headline}, indent=2))
    print(f"wrote {args.out}/results.csv, final_spec.json, summary.json and trace.png")


if __name__ == "__main__":
    main()
