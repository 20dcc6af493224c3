"""Greedy pruning ([S25]) of float and QAT S4D models, and what it saves on the fused crossbars.

For every model (float; channel-asym-state16 QAT at --bits), kind and scope, greedy pruning (aimc_ssm.quant.pruning) walks
the candidates smallest magnitude first and keeps an element zeroed while the validation accuracy
stays within --tolerance (1 point) of the unpruned model's:

    structured    whole complex modes of a channel (Ā_n, B̄_n, C_n), ranked by |C_n B̄_n| / sqrt(1 - |Ā_n|²)
    unstructured  single Ā_n or C_n entries, ranked by magnitude relative to their tensor's largest
    linear        single weights of the encoder, mixing and decoder Linears, likewise

    scope "model": every layer of the kind together, one ranking; where the kind has more than one
    layer (the Linears: encoder, blocks.<i>.mixing, decoder; the SSMs of a deeper model) also each
    layer alone, the others left whole.

Masks act on the deployed parameters, after the QAT model's quantizers, so they persist through
quantization and onto the crossbars. Accepting groups of candidates (doubling after an accepted group,
bisecting a rejected one) is the batched variant of one-at-a-time greedy described in
aimc_ssm.quant.pruning; an evaluation stops as soon as its verdict is certain.
After pruning: the fused crossbars without dead modes (a mode is dead when its deployed C_n or B̄_n is
zero): inputs 2 + 2·live, outputs 1 + 2·live per channel; and the ADC complexity of the outputs still
converted, at the model's bits (float: 32), as aimc_ssm.quant.pruning.pruned_adc_complexity counts them.
[S25] (sCIFAR, whole model): structured about 21 % at 7-bit QAT vs 10 % float, unstructured 27 % vs
22 %, linear 47 % vs 55 %.

Accuracies are in convolution mode, which computes the deployed recurrence exactly when the state is
not re-quantized (the crossbar's converters quantize it instead, see aimc_ssm.study.analog). The
analog check then deploys the unpruned and every pruned model on the --device's crossbars
(aimc_ssm.analog.to_analog: the zeros are on the fused kernels and the analog Linears) with the
converters at 16 bits unless --adc-bits / --dac-bits say otherwise, and every noise source of the
device x --noise-scale (default 0: converters only; else programmed once, read at 1 s).

    python studies/pruning.py --quick      # about half a minute on 2 cores: 48 candidates per run
    python studies/pruning.py              # about 25 minutes on 2 cores on a fresh set-up
    python studies/pruning.py --kinds structured --bits 8 6 --tolerance 0.5
    python studies/pruning.py --adc-bits 12 --noise-scale 0.01   # reuses the masks: only the check runs

Defaults: the [Z25] model on smnist, float and QAT at 8 bits; all three kinds; the whole validation
split decides, the whole test split reports. --quick: 3-epoch models, 100 samples, the 48 smallest
candidates of each run. The masks are saved as results/pruning/masks/<hash>/<model>-<kind>-<scope>.pt
({"masks", "candidates", "pruned", "evaluations"}; aimc_ssm.quant.pruning.load_masks puts them on a model),
the hash naming the models, subsets, tolerance and candidate limit: a run with other device settings
reuses them instead of pruning again.

results/pruning/results.csv, one row per pruning run (a killed run resumes):
    setup                  hash of the models, evaluation subsets, pruning and device settings
    model                  "float" or "qat-<bits>";  method, bits: its method and bit width (32: float)
    kind, scope            what was pruned, and where ("model" or a layer name)
    candidates             elements tried;  pruned: elements kept zero;  pruned_fraction: pruned / candidates
    evaluations            accuracy evaluations the greedy walk needed
    val_accuracy_unpruned, val_accuracy     on the validation subset (the decision set)
    test_accuracy_unpruned, test_accuracy   on the test subset
    live_modes, crossbar_rows, crossbar_cols, crossbar_cells, adc_complexity   after pruning,
        and the same with suffix _unpruned before (rows, cols: of the largest channel crossbar;
        cells: over all channels' crossbars)
    analog_accuracy_unpruned, analog_accuracy   test accuracy on the device's crossbars (the analog check)
    tolerance, samples, seconds
Plots in results/pruning/: pruned_fraction.png (whole model, per kind and model), per_layer.png
(each layer alone), savings.png (crossbar cells and ADC complexity after pruning, relative to unpruned).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import seaborn as sns
import torch
from tqdm.auto import tqdm

from aimc_ssm.analog.deploy import DRIFT_TIMES
from aimc_ssm.analog.devices import DeviceError
from aimc_ssm.core.train import evaluate
from aimc_ssm.io import atomic_write, save_figure
from aimc_ssm.quant.pruning import (
    KINDS,
    accuracy_at_least,
    attach_masks,
    crossbar_report,
    layer_names,
    load_masks,
    mask_tensors,
    prune,
    pruned_adc_complexity,
)
from aimc_ssm.quant.quantize import without_state_quantizer
from aimc_ssm.study.analog import (
    Deployer,
    DeviceSettings,
    StudyModel,
    add_device_flags,
    analog_draws,
    calibration_inputs,
    one_setting,
    study_key,
    study_models,
)
from aimc_ssm.study.harness import Budget, ResultTable, prepare, run_keys, study_parser, study_setup, usage_error
from aimc_ssm.study.summary import write_summary
from aimc_ssm.study.zoo import ModelZoo

NAME = "pruning"
KEY = ["setup", "model", "kind", "scope"]
BUDGET = Budget(full={"max_candidates": None}, quick={"max_candidates": 48})
CONVERTER_BITS = 16  # of the analog check, unless --adc-bits / --dac-bits say otherwise


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__, BUDGET)
    add_device_flags(parser, converter_bits=CONVERTER_BITS)
    parser.add_argument("--noise-scale", type=float, default=0.0, help="the device's noise sources x this in the analog check (default: %(default)s, converters only)")
    parser.add_argument("--bits", nargs="+", type=int, default=[8], help="bit widths of the QAT models (channel-asym-state16 recipe; default: %(default)s)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="default: all three")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accuracy points the pruned model may lose on the validation subset (default: %(default)s)")
    parser.add_argument("--max-candidates", type=int, default=None, help="try only the smallest candidates of each run " + BUDGET.help("max_candidates"))
    args = parser.parse_args(argv)
    if args.tolerance < 0 or args.noise_scale < 0:
        parser.error("--tolerance and --noise-scale must be >= 0")
    return args


@dataclass
class Point:
    """One greedy pruning run: a model, what it prunes and where (layers None: the whole model), and its row's key."""

    model: StudyModel
    kind: str
    scope: str
    layers: list[str] | None
    keys: list[dict]


def run_points(models, kinds, setup_key) -> list[Point]:
    """Every pruning run: per model and kind the whole model, then each layer alone if there are several."""
    points = []
    for entry in models:
        for kind in kinds:
            names = layer_names(entry.model, kind)
            scopes = [("model", None)] + ([(name, [name]) for name in names] if len(names) > 1 else [])
            for scope, layers in scopes:
                points.append(Point(entry, kind, scope, layers, [{"setup": setup_key, "model": entry.name, "kind": kind, "scope": scope}]))
    return points


def savings(model, suffix="") -> dict:
    report = crossbar_report(model)
    report["adc_complexity"] = pruned_adc_complexity(model)
    return {f"{k}{suffix}": v for k, v in report.items()}


def prune_run(zoo, entry, kind, layers, mask_path, unpruned, args):
    """One greedy pruning run on a masked copy of the model, or its saved masks if an earlier run left them.

    unpruned: the unpruned model's values by model name, filled on a model's first run (all its runs
    start from the same model). Returns the row's pruning and digital values, and the pruned model."""
    model = attach_masks(copy.deepcopy(without_state_quantizer(entry.model))).to(zoo.device)
    val, test = zoo.batches("val"), zoo.batches("test")
    if entry.name not in unpruned:
        unpruned[entry.name] = {
            "val_accuracy_unpruned": evaluate(model, val, "conv", zoo.device),
            "test_accuracy_unpruned": evaluate(model, test, "conv", zoo.device),
            **savings(model, "_unpruned"),
        }
    before = unpruned[entry.name]
    if mask_path.exists():
        saved = torch.load(mask_path, weights_only=True)
        load_masks(model, saved.pop("masks"))
    else:
        threshold = before["val_accuracy_unpruned"] - args.tolerance / 100
        result = prune(model, kind, lambda: accuracy_at_least(model, val, threshold), layers, args.max_candidates)
        saved = {"candidates": result.candidates, "pruned": len(result.pruned), "evaluations": result.evaluations}
        masks = {name: mask.cpu() for name, mask in mask_tensors(model).items()}
        atomic_write(mask_path, lambda f: torch.save({"masks": masks, **saved}, f), "wb")
    return {
        **saved,
        "pruned_fraction": saved["pruned"] / max(saved["candidates"], 1),
        **before,
        "val_accuracy": evaluate(model, val, "conv", zoo.device),
        "test_accuracy": evaluate(model, test, "conv", zoo.device),
        **savings(model),
    }, model


def analog_accuracy(zoo, model, devices, calibration, args) -> float:
    """Test accuracy of `model` on the device's crossbars, every noise source x --noise-scale (programmed once)."""
    deployer = Deployer(model, calibration, one_setting("mapping", args.mapping), **devices.kernel_options())
    analog = deployer(devices.configs(noise_scale=args.noise_scale))
    t_inference = DRIFT_TIMES["1s"] if args.noise_scale > 0 else None  # no noise: the tiles keep their targets
    return analog_draws(analog, zoo.batches("test"), 1, args.seed, [t_inference], zoo.device, devices.zero_cells)[0][0].accuracy


def run_all(zoo, devices, table, points, mask_dir, args):
    calibration = calibration_inputs(zoo).to(zoo.device)
    unpruned, unpruned_analog = {}, {}  # per model, on its first run

    def measure(run):
        entry, kind, scope = run.model, run.kind, run.scope
        start = time.time()
        if entry.name not in unpruned_analog:
            unpruned_analog[entry.name] = analog_accuracy(zoo, entry.model, devices, calibration, args)
        values, pruned_model = prune_run(zoo, entry, kind, run.layers, mask_dir / f"{entry.name}-{kind}-{scope}.pt", unpruned, args)
        row = {
            "setup": run.keys[0]["setup"], "model": entry.name, "method": entry.method, "bits": entry.bits,
            "kind": kind, "scope": scope, **values,
            "analog_accuracy_unpruned": unpruned_analog[entry.name],
            "analog_accuracy": analog_accuracy(zoo, pruned_model, devices, calibration, args),
            "tolerance": args.tolerance, "samples": zoo.samples("val"), "seconds": round(time.time() - start, 2),
        }
        tqdm.write(f"{entry.name} {kind} {scope}: pruned {values['pruned']}/{values['candidates']} in {values['evaluations']} evaluations")
        return [row]

    table.measure_pending(points, measure, NAME)


# -- plots and summary ---------------------------------------------------------------------------------
def bar_labels(grid):
    for ax in grid.axes.flat:
        for container in ax.containers:
            ax.bar_label(container, fmt="%.2f", fontsize=7)


def plot(frame, args):
    whole = frame[frame.scope == "model"]
    grid = sns.catplot(data=whole, x="kind", y="pruned_fraction", hue="model", kind="bar", order=[k for k in KINDS if k in set(whole.kind)], height=3.3, aspect=1.3)
    bar_labels(grid)
    grid.set_axis_labels("pruned elements", "fraction pruned")
    grid.ax.set_title(f"Greedy pruning, whole model, within {args.tolerance:g} point of the unpruned validation accuracy", fontsize=10)
    save_figure(grid.figure, args.out / "pruned_fraction.png")

    per_layer = frame[frame.scope != "model"]
    if not per_layer.empty:
        grid = sns.catplot(data=per_layer, x="scope", y="pruned_fraction", hue="model", col="kind", kind="bar", height=3.3, aspect=1.2, sharex=False)
        bar_labels(grid)
        grid.set_titles("{col_name} pruning, one layer at a time")
        grid.set_axis_labels("layer (pruned alone)", "fraction pruned")
        save_figure(grid.figure, args.out / "per_layer.png")

    metrics = {"crossbar_cells": "fused-crossbar cells (dead modes removed)", "adc_complexity": "ADC complexity"}
    relative = whole.assign(**{
        label: whole[name] / whole[f"{name}_unpruned"] for name, label in metrics.items()
    }).melt(id_vars=["model", "kind"], value_vars=list(metrics.values()), var_name="metric", value_name="relative")
    grid = sns.catplot(data=relative, x="kind", y="relative", hue="model", col="metric", kind="bar", height=3.3, aspect=1.1)
    bar_labels(grid)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("pruned elements", "after / before pruning")
    grid.figure.suptitle("What whole-model pruning saves", y=1.04)
    save_figure(grid.figure, args.out / "savings.png")


SUMMARY_COLUMNS = [
        "model", "kind", "scope", "pruned", "candidates", "pruned_fraction", "val_accuracy_unpruned", "val_accuracy", "test_accuracy",
    "analog_accuracy_unpruned", "analog_accuracy", "crossbar_cells", "crossbar_cells_unpruned", "adc_complexity", "adc_complexity_unpruned", "evaluations",
]


def summary(frame) -> str:
    return frame[SUMMARY_COLUMNS].to_string(index=False, float_format=lambda v: f"{v:.3f}")


def main(argv=None):
    args = parse_args(argv)
    try:
        devices = DeviceSettings.from_args(args, noise_scales=[args.noise_scale])
    except DeviceError as err:
        usage_error(err)
    prepare(args)  # after the device checks: a usage error leaves no output folder behind
    zoo = ModelZoo(study_setup(args), args.models_dir)
    models = study_models(zoo, args.bits, "channel-asym-state16", methods=("float", "qat"))
    pruning_key = study_key(zoo, tolerance=args.tolerance, max_candidates=args.max_candidates)
    setup_key = study_key(zoo, pruning=pruning_key, devices=devices.as_dict(), noise_scale=args.noise_scale, seed=args.seed)
    table = ResultTable(args.out / "results.csv", KEY)
    points = run_points(models, args.kinds, setup_key)
    run_all(zoo, devices, table, points, args.out / "masks" / pruning_key, args)
    frame = table.rows_of(run_keys(points))
    plot(frame, args)
    linear, kernel = devices.configs(noise_scale=args.noise_scale)
    write_summary(
        args.out, frame, "Pruning", SUMMARY_COLUMNS, [p for p in ("pruned_fraction.png", "per_layer.png", "savings.png") if (args.out / p).exists()], args,
        {"linear": linear, "kernel": kernel, "settings": devices.as_dict()},
    )
    print(summary(frame))
    print(f"wrote {args.out / 'results.csv'}, masks and plots to {args.out}")


if __name__ == "__main__":
    main()
