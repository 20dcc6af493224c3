"""The seeds' headline findings, reproduced with this tool: one table, finding by finding.

Each finding: the paper's figure, this tool's figure (mean ± standard deviation over --seeds seeds:
seed s trains every model of the finding with seed s), a verdict against the criterion below, and the
data it used. results/reproduce/report.md is the table; results.csv holds every measured value.

    F1  [Z25] 8-bit recurrent PTQ vs QAT with the faithful z25 recipe (aimc_ssm.quant.precision: the
        public code's quantizers): the paper has PTQ ≈ 40 %, QAT ≈ 96 % (float ≈ 97 %). Criterion: a gap
        of at least 40 points and QAT within 1.5 points of float; or else the ablation names the setting
        that makes PTQ collapse: PTQ with each z25 setting reverted to the channel-asym recipe's (one at
        a time), and channel-asym-state16 with the joint Re/Im range alone, with the largest |Ā| each
        deploys (above 1: a mode grows instead of decaying).
    F2  [Z25] heterogeneous precision: [S25]'s greedy search on memory (aimc_ssm.quant.search) over the
        --search-ladder, every candidate QAT-fine-tuned (--search-epochs, channel-asym quantizers, cached
        per spec) and kept while its validation accuracy (recurrent) stays within --tolerance of float; then
        the found spec's test accuracy. Criterion: float memory / searched memory
        (aimc_ssm.quant.metrics) ≥ 6 with the test accuracy within --tolerance (1 point) of float.
    F3  [S25]'s hardware metrics of its sCIFAR model (4 layers, H = N = 128) in float, by [S25]'s
        formulas (aimc_ssm.quant.metrics; the same values tests/test_metrics.py pins).
    F4  [S25] per component (A B C D dt state act mixing coder), the fewest bits of --f4-bits at which PTQ
        and QAT reach the float accuracy (within --tolerance): the s25 recipe with that component alone
        quantized (aimc_ssm.quant.search.component_spec); PTQ at every bit width, QAT upwards from the
        lowest until it reaches float (fine-tuned from the float model, --f4-epochs: a QAT from scratch
        per component and bit width does not fit the budget). Criterion: QAT needs no more bits than
        PTQ for any component.
    F5  [S25] Gaussian noise on the continuous A, std --sigmas (% of A's range), drawn afresh at every
        forward (aimc_ssm.analog.hwa.WeightNoise, target "A"), at test only, on the float model and on
        QAT from scratch at --noise-bits. Criterion: at 0.6 % every QAT model keeps its clean accuracy
        within 5 points, where float loses more than half of its margin over chance.
    F6  [S25] structured greedy pruning of the whole model (aimc_ssm.quant.pruning: whole modes, kept
        zero while the validation accuracy stays within --tolerance of the unpruned model's) of the
        float model and of QAT from scratch at --prune-bits. Criterion: QAT prunes at least 1.5 times
        the float model's fraction.
    F7  [S25] model size vs precision: accuracy vs N (--sizes-n, H fixed) and vs H (--sizes-h, N fixed)
        of float and QAT from scratch at --size-bits. Criterion as the paper states it: the float
        accuracy rises with N and with H, and the QAT model's gap to float grows with N.

Models: F1 and F2 train the [Z25] model (recipe z25's settings: H 16, N 64, GELU, B trained); F4-F7 the
same sizes with recipe s25's settings (no activation, B = 1, Im A = π/4·n), unless F7 varies them.
QAT as [Z25] ran it (F1, F2): fine-tuning the float model at lr 1e-3; F1 without weight decay for
--qat-epochs. The paper's code trains through the quantized recurrence (--qat-mode recurrent, slow:
784 steps per sequence); the default trains in convolution mode, which sees every quantizer of the
recipe but the state's (16 bits) and the partial products' (at the state's 16 bits). QAT as [S25]
ran it (F5-F7; aimc_ssm.quant.precision.recipe_qat_plan("s25")): from a seeded init with the
quantizers on, AdamW lr 1e-2, convolution mode, for --scratch-epochs (the paper: 200 on sCIFAR),
cached once per spec (aimc_ssm.study.zoo.ModelZoo.following). Accuracies are on the test subset in
recurrent mode ([Z25]: F1, F2) or in [S25]'s convolution mode, the state through its proxy (the
kernel K and the input u quantized: F4, F7); under noise and pruning (F5, F6) without state
quantization, as studies/noise_resilience.py and studies/pruning.py measure them.

    python studies/reproduce.py --quick --dataset digits     # CI's tiny settings, every finding: about 15 s on one core
    python studies/reproduce.py                              # the report, 3 seeds (as parts, two at a time: 50 min on 2 cores)
    python studies/reproduce.py --findings F1 F2 --threads 1 # a part; parts may run at once, sharing
                                                             # results.csv and the model cache
    python studies/reproduce.py --compute cuda               # on a GPU

Measured on this project's 2-core CPU, 3 seeds, two parts at a time with one thread each: F3 and F6
19 min, F4 and F5 20 min, F1 and F2 19 min, F7 30 min. A training epoch of these small models takes
about 4 s there.

--findings measures only those findings; the report shows every finding whose rows the table holds
for these settings, so the second call of a split run writes the whole report.

results/reproduce/results.csv, one row per value:
    setup      hash of the finding's models and settings;  finding: "F1" ... "F7";  seed: the models' seed
    quantity   what was measured, e.g. "float", "ptq", "qat", "ptq without zero point", "max_abs_A ptq";
               F2 "memory reduction", "bits A"; F4 "ptq A 6", "qat A first" (NaN: not reached);
               F5 "qat-7 noise 0.006"; F6 "float pruned_fraction"; F7 "qat-6 H=16 N=64"
    value      the measurement (accuracy as a fraction, or the quantity's own unit);  seconds
Plots: f4_bits.png (bits per component, PTQ vs QAT), f5_noise.png (accuracy vs noise),
f6_pruning.png (pruned fraction), f7_size.png (accuracy vs N and vs H).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from aimc_ssm.core.data import load_dataset
from aimc_ssm.core.model import ModelConfig
from aimc_ssm.io import atomic_write, config_key, save_figure
from aimc_ssm.quant.metrics import ace, adc_complexity, float_bits, model_size_bytes
from aimc_ssm.quant.precision import COMPONENTS, FINETUNE_CONV_QAT, FLOAT, recipe_model_config, recipe_qat_plan, recipe_spec
from aimc_ssm.quant.quantize import stability_report
from aimc_ssm.quant.search import DEFAULT_TOLERANCE, check_ladder, component_spec, meets
from aimc_ssm.study.harness import Budget, ResultTable, prepare, run_keys, study_parser, study_setup
from aimc_ssm.study.summary import markdown_table, write_summary
from aimc_ssm.study.zoo import ModelZoo, search_precision

NAME = "reproduce"
KEY = ["setup", "finding", "quantity", "seed"]
FINDINGS = ("F1", "F2", "F3", "F4", "F5", "F6", "F7")
BITS = 8  # [Z25]'s headline
NOISE_TARGET = "A"  # [S25] perturbs the continuous A
PRUNE_KIND = "structured"
BUDGET = Budget(
    full={
        "seeds": 3, "qat_epochs": 10, "search_epochs": 2, "search_ladder": (12, 8, 6, 4, 3), "f4_bits": (2, 3, 4, 5, 6, 8, 10),
        "f4_epochs": 2, "scratch_epochs": 20, "sigmas": (0, 0.3, 0.6, 1.2, 1.8), "noise_bits": (6, 7), "noise_repeats": 2,
        "prune_bits": 7, "max_candidates": None, "sizes_n": (16, 64, 256), "sizes_h": (8, 16, 32),
    },
    quick={
        "seeds": 1, "qat_epochs": 1, "search_epochs": 1, "search_ladder": (12, 4), "f4_bits": (2, 4, 8),
        "f4_epochs": 1, "scratch_epochs": 2, "sigmas": (0, 0.6), "noise_bits": (7,), "noise_repeats": 1,
        "prune_bits": 7, "max_candidates": 16, "sizes_n": (16, 64), "sizes_h": (8, 16),
    },
)
# one z25 setting at a time put back as channel-asym has it: which one makes PTQ collapse
ABLATIONS = {
    "joint range": lambda s: s.replace(**{c: replace(getattr(s, c), complex_range="planes") for c in ("A", "B", "C")}),
    "zero point": lambda s: s.replace(**{c: replace(getattr(s, c), zero_point_bits=None) for c in ("A", "B", "C", "D", "mixing", "coder")}),
    "state clamp": lambda s: s.replace(state=replace(s.state, clamp=None)),
    "activation quantizers": lambda s: s.replace(encoder_input=FLOAT, ssm_input=FLOAT, y=FLOAT, pre_activation=FLOAT, decoder_input=FLOAT),
    "partial products": lambda s: s.replace(partial_products=False),
    "hard GELU": lambda s: s.replace(hard_gelu=False),
}
S25_SCIFAR = ModelConfig(d_input=1, d_output=10, d_model=128, d_state=128, n_layers=4, mixing="relu", trainable_B=False)
PAPER = {  # finding: (claim, the paper's figure)
    "F1": ("[Z25] 8-bit recurrent PTQ vs QAT, faithful z25 recipe", "PTQ ≈ 40 %, QAT ≈ 96 %, float ≈ 97 %"),
    "F2": ("[Z25] heterogeneous precision by the QAT-mode search", "95.99 % at 84.05 % less memory (6.3×), float ≈ 97 %"),
    "F3": ("[S25] hardware metrics, sCIFAR model in float", "[S25]'s formulas (per step)"),
    "F4": ("[S25] bits at which PTQ / QAT first reach float, per component",
           "QAT / PTQ: all 7 / 10; A 5 / 9–10; C 3 / 5; state 5 / 8; act 5 / 7–8; mixing 3–4 / 5; coder 2–3 / 4; dt 2 / 10–12"),
    "F5": ("[S25] Gaussian noise on A at test, % of its range", "float collapses near 0.5–0.7 %; 7-bit QAT holds ≈ 83 % to 0.6 %; 6-bit ≈ 74 % → 60 % at 1.8 %"),
    "F6": ("[S25] structured pruning of the whole model", "≈ 21 % pruned at 7-bit QAT vs ≈ 10 % float"),
    "F7": ("[S25] accuracy vs N and H at 6 bits", "rises with N and H; 6-bit models worse as N grows; wider models compensate"),
}
NOISE_HOLD, NOISE_LEVEL, PRUNE_RATIO, SEARCH_REDUCTION = 0.05, 0.006, 1.5, 6.0  # the criteria of F5, F6, F2


def parse_args(argv=None):
    parser = study_parser(NAME, __doc__, BUDGET)
    parser.add_argument("--findings", nargs="+", choices=FINDINGS, default=list(FINDINGS), help="the findings to measure (default: all)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds of every finding's models (0, 1, ...) " + BUDGET.help("seeds"))
    parser.add_argument("--qat-mode", choices=("conv", "recurrent"), default="conv", help="the forward F1's QAT trains through (default: %(default)s; [Z25]'s code: recurrent)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE, help="accuracy (fraction) below float that still counts as float: F2, F4, F6 (default: %(default)s)")
    f2 = parser.add_argument_group("F2: heterogeneous precision")
    f2.add_argument("--search-ladder", nargs="+", type=int, default=None, help="bit widths of the search " + BUDGET.help("search_ladder"))
    f2.add_argument("--search-epochs", type=int, default=None, help="QAT fine-tuning epochs of every candidate " + BUDGET.help("search_epochs"))
    f4 = parser.add_argument_group("F4: bits per component")
    f4.add_argument("--f4-bits", nargs="+", type=int, default=None, help="bit widths, ascending " + BUDGET.help("f4_bits"))
    f4.add_argument("--f4-epochs", type=int, default=None, help="QAT fine-tuning epochs per component and bit width " + BUDGET.help("f4_epochs"))
    s25 = parser.add_argument_group("F5-F7: [S25]'s QAT from scratch")
    s25.add_argument("--scratch-epochs", type=int, default=None, help="epochs of QAT from scratch " + BUDGET.help("scratch_epochs"))
    s25.add_argument("--sigmas", nargs="+", type=float, default=None, help="F5 noise, %% of A's range " + BUDGET.help("sigmas"))
    s25.add_argument("--noise-bits", nargs="+", type=int, default=None, help="F5 QAT bit widths " + BUDGET.help("noise_bits"))
    s25.add_argument("--noise-repeats", type=int, default=None, help="F5 noise draws per model and level " + BUDGET.help("noise_repeats"))
    s25.add_argument("--prune-bits", type=int, default=None, help="F6 QAT bit width " + BUDGET.help("prune_bits"))
    s25.add_argument("--max-candidates", type=int, default=None, help="F6: try only the smallest modes " + BUDGET.help("max_candidates"))
    s25.add_argument("--sizes-n", nargs="+", type=int, default=None, help="F7 state sizes N at the preset's H " + BUDGET.help("sizes_n"))
    s25.add_argument("--sizes-h", nargs="+", type=int, default=None, help="F7 widths H at the preset's N " + BUDGET.help("sizes_h"))
    s25.add_argument("--size-bits", type=int, default=6, help="F7 QAT bit width (default: %(default)s)")
    args = parser.parse_args(argv)
    # counts, bit widths, noise levels and the tolerance's sign: the parser's shared checks (aimc_ssm.validation)
    try:
        args.search_ladder = check_ladder(args.search_ladder)  # a tuple of at least two rungs
    except ValueError as err:
        parser.error(str(err))
    args.f4_bits = tuple(sorted(args.f4_bits))
    if args.tolerance >= 1:
        parser.error(f"--tolerance is {args.tolerance}; give an accuracy fraction in [0, 1), e.g. 0.01 for one point")
    if any(n % 2 or n < 2 for n in args.sizes_n) or min(args.sizes_h) < 1:
        parser.error(f"--sizes-n {' '.join(map(str, args.sizes_n))} / --sizes-h {' '.join(map(str, args.sizes_h))}: "
                     "N must be even and at least 2 (N/2 complex modes), H at least 1")
    args.sigmas = tuple(round(float(s) / 100, 12) for s in args.sigmas)  # fractions, as they read back from the CSV
    return args


# -- the models of a seed ---------------------------------------------------------------------------------
def base_zoo(args, seed: int, recipe: str, **model_changes) -> ModelZoo:
    """The float model of `recipe`'s settings (and `model_changes`) trained with `seed`, and its evaluation subset."""
    setup = study_setup(argparse.Namespace(**{**vars(args), "seed": seed}))
    model = replace(recipe_model_config(recipe, setup.model), **model_changes)
    return ModelZoo(replace(setup, model=model), args.models_dir)


def z25_zoo(args, seed: int) -> ModelZoo:
    """F1: the [Z25] model, fine-tuned as [Z25]'s QAT plan (lr 1e-3, no weight decay) in --qat-mode."""
    zoo = base_zoo(args, seed, "z25")
    plan = recipe_qat_plan("z25")
    finetune = replace(zoo.setup.finetune, epochs=args.qat_epochs, lr=plan.lr, ssm_lr=plan.lr, weight_decay=0.0, mode=args.qat_mode)
    return replace(zoo, setup=replace(zoo.setup, finetune=finetune))


def search_zoo(args, seed: int) -> ModelZoo:
    """F2: the [Z25] model, every candidate fine-tuned as the channel-asym recipe's QAT plan."""
    return base_zoo(args, seed, "z25").following(recipe_qat_plan("channel-asym"), args.search_epochs)


def finetune_s25_zoo(args, seed: int) -> ModelZoo:
    """F4: the s25 model, QAT fine-tuned from it (the budget's stand-in for [S25]'s QAT from scratch)."""
    return base_zoo(args, seed, "s25").following(FINETUNE_CONV_QAT, args.f4_epochs)


def scratch_s25_zoo(args, seed: int, **model_changes) -> ModelZoo:
    """F5-F7: the s25 model and [S25]'s QAT from scratch (recipe_qat_plan("s25")) for --scratch-epochs."""
    return base_zoo(args, seed, "s25", **model_changes).following(recipe_qat_plan("s25"), args.scratch_epochs)


def max_abs_A(model) -> float:
    return max(row["max_abs_A"] for row in stability_report(model))


# -- the points ---------------------------------------------------------------------------------------------
@dataclass
class Point:
    """One finding on one seed (and one part of it, e.g. F4's component): the rows of its quantities."""

    finding: str
    seed: int
    part: str | None
    keys: list[dict]


def f1_quantities() -> list[str]:
    base = ["float", "ptq", "qat", "max_abs_A ptq", "max_abs_A channel-asym-state16", "ptq channel-asym-state16",
            "ptq channel-asym-state16 with joint range", "max_abs_A channel-asym-state16 with joint range"]
    return base + [f"ptq without {name}" for name in ABLATIONS] + [f"max_abs_A without {name}" for name in ABLATIONS]


def f2_quantities() -> list[str]:
    return ["float val", "float test", "search val", "search test", "memory reduction", "cutoff", "evaluations"] + [f"bits {c}" for c in COMPONENTS]


def f4_quantities(component: str, args) -> list[str]:
    return [f"{m} {component} {b}" for m in ("ptq", "qat") for b in args.f4_bits] + [f"{m} {component} first" for m in ("ptq", "qat")]


def noise_models(args) -> list[str]:
    return ["float"] + [f"qat-{b}" for b in args.noise_bits]


def f5_quantities(model: str, args) -> list[str]:
    chance = ["chance"] if model == "float" else []  # 1 / classes: where a collapsed model ends
    return chance + [f"{model} noise {s:g}" for s in args.sigmas]


def f6_quantities(model: str) -> list[str]:
    return [f"{model} {q}" for q in ("pruned_fraction", "pruned", "candidates", "evaluations", "val_accuracy_unpruned", "val_accuracy")]


def size_configs(args) -> list[tuple[int, int]]:
    """(H, N) of F7: N varied at the preset's H, H varied at the preset's N, each once."""
    configs = [(args.d_model, n) for n in args.sizes_n] + [(h, args.d_state) for h in args.sizes_h]
    return list(dict.fromkeys(configs))


def size_label(h: int, n: int) -> str:
    return f"H={h} N={n}"


def parts(finding: str, args) -> list[tuple[str | None, list[str]]]:
    """(part, its quantities) of one seed of `finding`."""
    if finding == "F1":
        return [(None, f1_quantities())]
    if finding == "F2":
        return [(None, f2_quantities())]
    if finding == "F3":
        return [(None, list(measure_f3()))]
    if finding == "F4":
        return [("float", ["float"])] + [(c, f4_quantities(c, args)) for c in COMPONENTS]
    if finding == "F5":
        return [(m, f5_quantities(m, args)) for m in noise_models(args)]
    if finding == "F6":
        return [(m, f6_quantities(m)) for m in ("float", f"qat-{args.prune_bits}")]
    return [(size_label(h, n), [f"{m} {size_label(h, n)}" for m in ("float", f"qat-{args.size_bits}")]) for h, n in size_configs(args)]  # F7


def finding_settings(finding: str, args) -> dict:
    """The flags that decide a finding's values besides the common ones (setup_keys)."""
    names = {
        "F1": ("qat_epochs", "qat_mode"), "F2": ("search_ladder", "search_epochs", "tolerance"), "F3": (),
        "F4": ("f4_bits", "f4_epochs", "tolerance"), "F5": ("scratch_epochs", "sigmas", "noise_bits", "noise_repeats"),
        "F6": ("scratch_epochs", "prune_bits", "max_candidates", "tolerance"), "F7": ("scratch_epochs", "sizes_n", "sizes_h", "size_bits"),
    }[finding]
    return {name: getattr(args, name) for name in names}


def setup_keys(args) -> dict[str, str]:
    """Per finding, the hash of its models and settings: the float models' configs (seed aside), the
    evaluation subset and the finding's own flags. Rows of other settings in the same table are kept, not mixed."""
    setup = study_setup(argparse.Namespace(**{**vars(args), "seed": 0}))
    return {f: config_key(setup.model, setup.train, {"test_samples": setup.test_samples, "finding": f, **finding_settings(f, args)}) for f in FINDINGS}


def run_points(args) -> list[Point]:
    """Every point of every finding, for every seed (F3, analytical: one)."""
    keys = setup_keys(args)
    points = []
    for finding in FINDINGS:
        for seed in range(1 if finding == "F3" else args.seeds):
            quantities = parts(finding, args)
            points += [
                Point(finding, seed, part, [{"setup": keys[finding], "finding": finding, "quantity": q, "seed": seed} for q in qs])
                for part, qs in quantities
            ]
    return points


# -- measurements ---------------------------------------------------------------------------------------------
def measure_f1(args, seed: int) -> dict[str, float]:
    zoo = z25_zoo(args, seed)
    spec = recipe_spec("z25", BITS)
    ptq = zoo.ptq(spec)
    values = {"float": zoo.accuracy(zoo.float_model), "ptq": zoo.accuracy(ptq), "max_abs_A ptq": max_abs_A(ptq)}
    reference = recipe_spec("channel-asym-state16", BITS)
    joint = reference.replace(**{c: replace(getattr(reference, c), complex_range="joint") for c in ("A", "B", "C")})
    for label, variant in (("channel-asym-state16", reference), ("channel-asym-state16 with joint range", joint)):
        model = zoo.ptq(variant)
        values[f"ptq {label}"], values[f"max_abs_A {label}"] = zoo.accuracy(model), max_abs_A(model)
    for name, revert in ABLATIONS.items():
        model = zoo.ptq(revert(spec))
        values[f"ptq without {name}"], values[f"max_abs_A without {name}"] = zoo.accuracy(model), max_abs_A(model)
    qat, _ = zoo.qat(spec)
    values["qat"] = zoo.accuracy(qat)
    return values


def measure_f2(args, seed: int) -> dict[str, float]:
    zoo = search_zoo(args, seed)
    result = search_precision(zoo, method="qat", tolerance=args.tolerance, ladder=args.search_ladder)
    values = {
        "float val": result.reference_accuracy, "float test": zoo.spec_accuracy(None, "float"), "search val": result.accuracy,
        "search test": zoo.spec_accuracy(result.spec, "qat"), "memory reduction": result.reductions["memory_bits"],
        "cutoff": result.cutoff, "evaluations": len(result.trace),
    }
    return values | {f"bits {c}": (math.nan if b is None else b) for c, b in result.bits.items()}


def measure_f3() -> dict[str, float]:
    bits = float_bits()
    return {
        "ace": ace(S25_SCIFAR, bits), "model_size_bytes": model_size_bytes(S25_SCIFAR, bits), "adc_complexity": adc_complexity(S25_SCIFAR, bits),
    }


def first_meeting(measured: dict[int, float], reference: float, tolerance: float) -> float:
    """The fewest bits whose accuracy reaches reference - tolerance (NaN if none does)."""
    return next((b for b in sorted(measured) if meets(measured[b], reference - tolerance)), math.nan)


def upwards_until_met(accuracy, bits, reference: float, tolerance: float) -> dict[int, float]:
    """Accuracies from the fewest bits up, stopping at the first that reaches reference - tolerance."""
    measured = {}
    for b in sorted(bits):
        measured[b] = accuracy(b)
        if meets(measured[b], reference - tolerance):
            break
    return measured


def measure_f4(args, seed: int, component: str) -> dict[str, float]:
    """One component of F4 ("float": the reference accuracy). PTQ costs an evaluation per width: every
    width, for the curve; QAT a training per width: upwards until it reaches float (NaN above it)."""
    zoo = finetune_s25_zoo(args, seed)
    reference = zoo.accuracy(zoo.float_model, mode="conv")
    if component == "float":
        return {"float": reference}
    accuracy = lambda b, method: zoo.spec_accuracy(component_spec(component, b, "s25"), method, mode="conv")  # noqa: E731
    measured = {
        "ptq": {b: accuracy(b, "ptq") for b in args.f4_bits},
        "qat": upwards_until_met(lambda b: accuracy(b, "qat"), args.f4_bits, reference, args.tolerance),
    }
    values = {}
    for method, accuracies in measured.items():
        values |= {f"{method} {component} {b}": accuracies.get(b, math.nan) for b in args.f4_bits}
        values[f"{method} {component} first"] = first_meeting(accuracies, reference, args.tolerance)
    return values


def s25_model(zoo: ModelZoo, name: str):
    """"float" or "qat-<bits>" (QAT from scratch with the s25 recipe) of an s25 zoo."""
    if name == "float":
        return zoo.float_model
    return zoo.qat(recipe_spec("s25", int(name.split("-")[1])))[0]


def measure_f5(args, seed: int, name: str) -> dict[str, float]:
    zoo = scratch_s25_zoo(args, seed)
    model = s25_model(zoo, name)
    values = {"chance": 1 / zoo.setup.model.d_output}
    for sigma in args.sigmas:
        accuracies = zoo.noisy_accuracies(model, sigma, NOISE_TARGET, args.noise_repeats if sigma > 0 else 1, seed)
        values[f"{name} noise {sigma:g}"] = sum(accuracies) / len(accuracies)
    return values


def measure_f6(args, seed: int, name: str) -> dict[str, float]:
    zoo = scratch_s25_zoo(args, seed)
    _, values = zoo.pruned(s25_model(zoo, name), PRUNE_KIND, args.tolerance, args.max_candidates)
    return {f"{name} {q}": v for q, v in values.items()}


def measure_f7(args, seed: int, label: str) -> dict[str, float]:
    h, n = (int(part.split("=")[1]) for part in label.split())
    zoo = scratch_s25_zoo(args, seed, d_model=h, d_state=n)
    qat = s25_model(zoo, f"qat-{args.size_bits}")
    return {f"float {label}": zoo.accuracy(zoo.float_model, mode="conv"), f"qat-{args.size_bits} {label}": zoo.accuracy(qat, mode="conv")}


MEASURES = {  # finding -> its values at (args, seed, part)
    "F1": lambda args, seed, part: measure_f1(args, seed),
    "F2": lambda args, seed, part: measure_f2(args, seed),
    "F3": lambda args, seed, part: measure_f3(),
    "F4": measure_f4, "F5": measure_f5, "F6": measure_f6, "F7": measure_f7,
}


def measure(point: Point, args) -> list[dict]:
    start = time.time()
    values = MEASURES[point.finding](args, point.seed, point.part)
    seconds = round(time.time() - start, 1)
    return [{**key, "value": values[key["quantity"]], "seconds": seconds} for key in point.keys]


# -- the report -------------------------------------------------------------------------------------------
def stat(frame: pd.DataFrame, quantity: str, percent: bool = True) -> tuple[float, float]:
    """Mean and standard deviation over the seeds of one quantity (0 spread for a single seed)."""
    values = frame.loc[frame.quantity == quantity, "value"].astype(float) * (100 if percent else 1)
    return values.mean(), (values.std() if len(values) > 1 else 0.0)


def shown(frame, quantity, percent=True, digits=1) -> str:
    mean, spread = stat(frame, quantity, percent)
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" + (" %" if percent else "")


def seeds_of(frame: pd.DataFrame) -> str:
    count = frame.seed.nunique()
    return f"{count} seed" + ("s" if count > 1 else "")


def f1_rows(frame: pd.DataFrame, args) -> list[dict]:
    f1 = frame[frame.finding == "F1"]
    (ptq, _), (qat, _), (flt, _) = (stat(f1, q) for q in ("ptq", "qat", "float"))
    reproduced = qat - ptq >= 40 and flt - qat <= 1.5
    # the setting whose reversal moves PTQ the most, either way
    moved, name = max(((stat(f1, f"ptq without {n}")[0] - ptq, n) for n in ABLATIONS), key=lambda pair: abs(pair[0]))
    joint, _ = stat(f1, "ptq channel-asym-state16 with joint range")
    reference, _ = stat(f1, "ptq channel-asym-state16")
    if reproduced:
        verdict = "reproduced"
    elif qat - ptq >= 40:
        verdict = f"gap reproduced; QAT {flt - qat:.1f} points below float (criterion 1.5)"
    else:
        verdict = (
            f"not reproduced: QAT - PTQ = {qat - ptq:.1f} points (criterion ≥ 40), QAT {flt - qat:.1f} points below float. "
            f"Largest single effect: reverting the {name} moves PTQ by {moved:+.1f} points (to {ptq + moved:.1f} %); "
            f"the joint range alone on channel-asym-state16: {joint:.1f} % (per plane: {reference:.1f} %)"
        )
    tool = (
        f"float {shown(f1, 'float')}, PTQ {shown(f1, 'ptq')} (max|Ā| {shown(f1, 'max_abs_A ptq', False, 4)}), "
        f"QAT {shown(f1, 'qat')}"
    )
    data = f"{args.dataset}, {seeds_of(f1)}; [Z25] model; QAT fine-tuned {args.qat_epochs} epochs ({args.qat_mode})"
    return [{"finding": "F1", "this tool": tool, "verdict": verdict, "data": data}]


def ablation_table(frame: pd.DataFrame) -> pd.DataFrame:
    f1 = frame[frame.finding == "F1"]
    rows = [("z25 (every setting)", "ptq", "max_abs_A ptq")]
    rows += [(f"z25 without {n}", f"ptq without {n}", f"max_abs_A without {n}") for n in ABLATIONS]
    rows += [(label, f"ptq {label}", f"max_abs_A {label}") for label in ("channel-asym-state16", "channel-asym-state16 with joint range")]
    return pd.DataFrame([{"PTQ at 8 bits": label, "accuracy": shown(f1, acc), "max |Ā|": shown(f1, a, False, 4)} for label, acc, a in rows])


def f2_rows(frame: pd.DataFrame, args) -> list[dict]:
    f2 = frame[frame.finding == "F2"]
    (reduction, _), (flt, _), (searched, _) = stat(f2, "memory reduction", False), stat(f2, "float test"), stat(f2, "search test")
    drop = flt - searched
    small, close = reduction >= SEARCH_REDUCTION, drop <= 100 * args.tolerance
    verdict = ("reproduced" if small and close else "not reproduced") + (
        f": {reduction:.1f}× less memory (criterion ≥ {SEARCH_REDUCTION:g}×), test accuracy {drop:.1f} points below float "
        f"(criterion ≤ {100 * args.tolerance:g})"
    )
    bits = ", ".join(f"{c} {stat(f2, f'bits {c}', False)[0]:.1f}" for c in COMPONENTS if f2.loc[f2.quantity == f"bits {c}", "value"].notna().any())
    tool = (
        f"{shown(f2, 'memory reduction', False)}× less memory at {shown(f2, 'search test')} (float {shown(f2, 'float test')}); "
        f"mean bits: {bits}; {stat(f2, 'evaluations', False)[0]:.0f} QAT runs per search"
    )
    data = (f"{args.dataset}, {seeds_of(f2)}; [Z25] model, channel-asym quantizers; ladder {' '.join(map(str, args.search_ladder))}, "
            f"every candidate fine-tuned {args.search_epochs} epochs (the paper: 10); search on validation, recurrent; memory counts "
            "the 32-bit scales and zero points of every channel and the float biases (aimc_ssm.quant.metrics)")
    return [{"finding": "F2", "this tool": tool, "verdict": verdict, "data": data}]


def f3_rows(frame: pd.DataFrame) -> list[dict]:
    f3 = frame[frame.finding == "F3"].set_index("quantity").value
    tool = f"ACE {f3['ace']:,.0f} bit-ops, model size {f3['model_size_bytes']:,.0f} bytes, ADC complexity {f3['adc_complexity']:,.0f} bits per step"
    return [{"finding": "F3", "this tool": tool, "verdict": "computed by [S25]'s formulas, pinned by tests/test_metrics.py", "data": "none (analytical)"}]


def first_bits(frame: pd.DataFrame, args) -> pd.DataFrame:
    """F4: per seed, component and method the first bits reaching float; a component that never reaches it
    counts as one bit above the highest width tried."""
    f4 = frame[(frame.finding == "F4") & frame.quantity.str.endswith(" first")]
    words = f4.quantity.str.split(" ", expand=True)
    table = pd.DataFrame({"seed": f4.seed.values, "method": words[0].values, "component": words[1].values, "value": f4.value.astype(float).values})
    beyond = max(args.f4_bits) + 1
    return table.assign(bits=table.value.fillna(beyond))


def f4_rows(frame: pd.DataFrame, args) -> list[dict]:
    firsts = first_bits(frame, args)
    means = firsts.groupby(["component", "method"]).bits.mean().unstack("method")
    beyond = max(args.f4_bits) + 1
    label = lambda v: f"> {beyond - 1}" if v >= beyond else f"{v:.3g}"  # noqa: E731
    worse = [c for c in COMPONENTS if c in means.index and means.loc[c, "qat"] > means.loc[c, "ptq"]]
    parts_shown = "; ".join(f"{c} {label(means.loc[c, 'qat'])} / {label(means.loc[c, 'ptq'])}" for c in COMPONENTS if c in means.index)
    verdict = "reproduced: QAT needs no more bits than PTQ for any component" if not worse else (
        f"not reproduced for {', '.join(worse)}: QAT needs more bits than PTQ there (criterion: never more)"
    )
    f4 = frame[frame.finding == "F4"]
    tool = f"QAT / PTQ bits (mean over seeds): {parts_shown}; float {shown(f4, 'float')}"
    data = (f"{args.dataset}, {seeds_of(f4)}; s25 recipe and model, one component quantized at a time, bits {' '.join(map(str, args.f4_bits))}; "
            f"accuracy in conv mode within {100 * args.tolerance:g} point of float; QAT fine-tuned {args.f4_epochs} epochs from the float model "
            "(not from scratch: one training per component and width does not fit the budget)")
    return [{"finding": "F4", "this tool": tool, "verdict": verdict, "data": data}]


def noise_curve(frame: pd.DataFrame, model: str, args) -> dict[float, tuple[float, float]]:
    """F5: (mean, spread) accuracy in % per noise level of one model."""
    f5 = frame[frame.finding == "F5"]
    return {s: stat(f5, f"{model} noise {s:g}") for s in args.sigmas}


def f5_rows(frame: pd.DataFrame, args) -> list[dict]:
    level = min(args.sigmas, key=lambda s: abs(s - NOISE_LEVEL))  # the measured level nearest 0.6 %
    curves = {m: noise_curve(frame, m, args) for m in noise_models(args)}
    clean = {m: curve[0.0][0] for m, curve in curves.items()}
    chance, _ = stat(frame[frame.finding == "F5"], "chance")
    float_noisy = curves["float"][level][0]
    collapsed = float_noisy < (clean["float"] + chance) / 2
    held = {m: clean[m] - curves[m][level][0] <= 100 * NOISE_HOLD for m in curves if m != "float"}
    verdict = ("reproduced" if collapsed and all(held.values()) else "not reproduced") + (
        f" at {100 * level:g} %: float {clean['float']:.1f} → {float_noisy:.1f} % ("
        + ("collapses" if collapsed else "does not collapse") + f": criterion below {(clean['float'] + chance) / 2:.1f} %, half-way to chance); "
        + "; ".join(f"{m} {clean[m]:.1f} → {curves[m][level][0]:.1f} % (" + ("holds" if held[m] else "does not hold") + f" within {100 * NOISE_HOLD:g} points)" for m in held)
    )
    tool = "; ".join(
        f"{m}: " + ", ".join(f"{100 * s:g} % {mean:.1f} ± {spread:.1f}" for s, (mean, spread) in curves[m].items()) for m in curves
    )
    f5 = frame[frame.finding == "F5"]
    data = (f"{args.dataset}, {seeds_of(f5)} × {args.noise_repeats} draws; s25 model, QAT from scratch {args.scratch_epochs} epochs "
            "(the paper: 200 on sCIFAR); conv mode without state quantization")
    return [{"finding": "F5", "this tool": tool, "verdict": verdict, "data": data}]


def f6_rows(frame: pd.DataFrame, args) -> list[dict]:
    f6 = frame[frame.finding == "F6"]
    qat = f"qat-{args.prune_bits}"
    (flt, _), (quantized, _) = stat(f6, "float pruned_fraction"), stat(f6, f"{qat} pruned_fraction")
    reached = quantized >= PRUNE_RATIO * flt and quantized > 0
    ratio = f"{quantized / flt:.2f}×" if flt > 0 else "∞×" if quantized > 0 else "0/0"
    verdict = ("reproduced" if reached else "not reproduced") + f": QAT prunes {ratio} the float fraction (criterion ≥ {PRUNE_RATIO:g}×)"
    tool = (f"pruned {shown(f6, f'{qat} pruned_fraction')} at {qat} vs {shown(f6, 'float pruned_fraction')} float "
            f"(validation accuracy {shown(f6, f'{qat} val_accuracy')} / {shown(f6, 'float val_accuracy')})")
    data = (f"{args.dataset}, {seeds_of(f6)}; s25 model, QAT from scratch {args.scratch_epochs} epochs; whole modes, "
            f"within {100 * args.tolerance:g} point on validation" + ("" if args.max_candidates is None else f", the {args.max_candidates} smallest modes tried"))
    return [{"finding": "F6", "this tool": tool, "verdict": verdict, "data": data}]


def size_table(frame: pd.DataFrame) -> pd.DataFrame:
    """F7: mean and spread (%) per model ("float", "qat-<b>"), H and N."""
    f7 = frame[frame.finding == "F7"]
    words = f7.quantity.str.extract(r"^(?P<model>\S+) H=(?P<H>\d+) N=(?P<N>\d+)$")
    rows = pd.DataFrame({"model": words.model.values, "H": words.H.astype(int).values, "N": words.N.astype(int).values,
                         "accuracy": 100 * f7.value.astype(float).values})
    return rows.groupby(["model", "H", "N"]).accuracy.agg(["mean", "std"]).fillna(0.0).reset_index()


def per_seed(frame: pd.DataFrame, quantity: str) -> pd.Series:
    """One quantity's values (%) by seed."""
    rows = frame[frame.quantity == quantity]
    return rows.set_index(rows.seed.astype(int)).value.astype(float) * 100


def paired_rise(difference: pd.Series) -> tuple[float, float]:
    """Mean and standard error over the seeds of a per-seed difference (end minus start: the seeds pair them)."""
    return difference.mean(), (difference.std() / math.sqrt(len(difference)) if len(difference) > 1 else 0.0)


def size_trends(frame: pd.DataFrame, args) -> dict[str, tuple[float, float]]:
    """F7's trends, each as the per-seed change (points) from the smallest size to the largest: mean and standard error."""
    f7, qat, h, n = frame[frame.finding == "F7"], f"qat-{args.size_bits}", args.d_model, args.d_state

    def seeds(model: str, width: int, state: int) -> pd.Series:
        return per_seed(f7, f"{model} {size_label(width, state)}")

    def gap(state: int) -> pd.Series:
        return seeds("float", h, state) - seeds(qat, h, state)

    return {
        "float rises with N": paired_rise(seeds("float", h, max(args.sizes_n)) - seeds("float", h, min(args.sizes_n))),
        "float rises with H": paired_rise(seeds("float", max(args.sizes_h), n) - seeds("float", min(args.sizes_h), n)),
        f"the {qat} gap grows with N": paired_rise(gap(max(args.sizes_n)) - gap(min(args.sizes_n))),
    }


def f7_rows(frame: pd.DataFrame, args) -> list[dict]:
    # a trend holds where its rise is positive and above one standard error over the seeds
    trends = {f"{name} ({mean:+.1f} ± {error:.1f} points)": mean > 0 and mean > error for name, (mean, error) in size_trends(frame, args).items()}
    held, failed = [name for name, ok in trends.items() if ok], [name for name, ok in trends.items() if not ok]
    verdict = ("reproduced" if not failed else "partly reproduced" if held else "not reproduced") + f": {', '.join(held) or 'none'} hold"
    if failed:
        verdict += f"; {', '.join(failed)} not (criterion: a rise above one standard error; on {args.dataset}, not the paper's sCIFAR)"
    table, qat = size_table(frame), f"qat-{args.size_bits}"

    def series(axis: str, model: str) -> pd.Series:
        fixed = {"N": ("H", args.d_model), "H": ("N", args.d_state)}[axis]  # the preset's sizes: the other axis
        rows = table[(table.model == model) & (table[fixed[0]] == fixed[1])]
        return rows.set_index(axis)["mean"].sort_index()

    float_n, float_h, qat_n, qat_h = series("N", "float"), series("H", "float"), series("N", qat), series("H", qat)
    show = lambda s: ", ".join(f"{k} {v:.1f}" for k, v in s.items())  # noqa: E731
    tool = (f"N: float {show(float_n)}, {qat} {show(qat_n)}, gap {show(float_n - qat_n)}; H: float {show(float_h)}, {qat} {show(qat_h)}, "
            f"gap {show(float_h - qat_h)} (%, mean over seeds)")
    data = (f"{args.dataset}, {seeds_of(frame[frame.finding == 'F7'])}; s25 model at H {args.d_model} (N varied) and N {args.d_state} "
            f"(H varied), QAT from scratch {args.scratch_epochs} epochs; conv mode")
    return [{"finding": "F7", "this tool": tool, "verdict": verdict, "data": data}]


ROWS = {"F1": f1_rows, "F2": f2_rows, "F3": lambda frame, args: f3_rows(frame), "F4": f4_rows, "F5": f5_rows, "F6": f6_rows, "F7": f7_rows}


def complete(frame: pd.DataFrame, points: list[Point], finding: str) -> bool:
    """Whether `points` has rows of `finding` and the table holds every one of them."""
    wanted = {(k["quantity"], str(k["seed"])) for p in points if p.finding == finding for k in p.keys}
    rows = frame[frame.finding == finding]
    return bool(wanted) and wanted <= set(zip(rows.quantity, rows.seed.astype(str)))


def report_table(frame: pd.DataFrame, points: list[Point], args) -> pd.DataFrame:
    """One row per finding: the paper's claim and figure, and this tool's figure and verdict where the table
    holds the finding's rows; "not run" where it does not (another --findings call measures it)."""
    rows = []
    for finding in FINDINGS:
        claim, paper = PAPER[finding]
        if complete(frame, points, finding):
            (row,) = ROWS[finding](frame, args)
        else:
            row = {"finding": finding, "this tool": "not run", "verdict": f"not run yet: measure it with --findings {finding}", "data": ""}
        rows.append({"finding": finding, "claim": claim, "paper": paper, **{k: v for k, v in row.items() if k != "finding"}})
    return pd.DataFrame(rows, columns=["finding", "claim", "paper", "this tool", "verdict", "data"])


# -- plots ------------------------------------------------------------------------------------------------
def plot_f4(frame, args, path) -> None:
    firsts = first_bits(frame, args)
    grid = sns.catplot(data=firsts, x="component", y="bits", hue="method", order=list(COMPONENTS), hue_order=["ptq", "qat"],
                       kind="bar", errorbar="sd", height=3.3, aspect=2.2)
    grid.ax.axhline(max(args.f4_bits) + 1, color="gray", linestyle=":", linewidth=1)
    grid.ax.set_ylabel(f"fewest bits within {100 * args.tolerance:g} point of float\n(dotted: not reached by {max(args.f4_bits)})")
    grid.ax.set_title("F4: [S25]'s recipe, one component quantized at a time (mean ± sd over seeds)", fontsize=10)
    save_figure(grid.figure, path)


def plot_f5(frame, args, path) -> None:
    f5 = frame[frame.finding == "F5"]
    words = f5.quantity.str.extract(r"^(?P<model>\S+) noise (?P<sigma>\S+)$")
    rows = pd.DataFrame({"model": words.model.values, "sigma": 100 * words.sigma.astype(float).values, "accuracy": f5.value.astype(float).values})
    fig, ax = plt.subplots(figsize=(6, 3.6))
    sns.lineplot(data=rows, x="sigma", y="accuracy", hue="model", style="model", markers=True, errorbar="sd", ax=ax)
    ax.axvline(100 * NOISE_LEVEL, color="gray", linestyle=":", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("noise std on A, % of its range (drawn every forward)")
    ax.set_ylabel("test accuracy")
    ax.set_title("F5: [S25]'s Gaussian noise on A at test", fontsize=10)
    save_figure(fig, path)


def plot_f6(frame, args, path) -> None:
    f6 = frame[(frame.finding == "F6") & frame.quantity.str.endswith(" pruned_fraction")]
    rows = f6.assign(model=f6.quantity.str.split(" ").str[0], value=f6.value.astype(float))
    grid = sns.catplot(data=rows, x="model", y="value", kind="bar", errorbar="sd", height=3.2, aspect=1.2)
    grid.ax.set_ylabel("fraction of modes pruned")
    grid.ax.set_title("F6: structured pruning, whole model", fontsize=10)
    save_figure(grid.figure, path)


def plot_f7(frame, args, path) -> None:
    table = size_table(frame)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, axis, fixed, value in ((axes[0], "N", "H", args.d_model), (axes[1], "H", "N", args.d_state)):
        rows = table[table[fixed] == value]
        for model, curve in rows.groupby("model"):
            curve = curve.sort_values(axis)
            ax.errorbar(curve[axis], curve["mean"], yerr=curve["std"], marker="o", capsize=3, label=model)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"{axis} ({fixed} = {value})")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("test accuracy (%)")
    fig.suptitle("F7: accuracy vs model size, float and QAT from scratch (mean ± sd over seeds)", fontsize=10)
    save_figure(fig, path)


PLOTS = {"F4": ("f4_bits.png", plot_f4), "F5": ("f5_noise.png", plot_f5), "F6": ("f6_pruning.png", plot_f6), "F7": ("f7_size.png", plot_f7)}


def data_note(args) -> str:
    """The data every row used, against the papers'."""
    data = load_dataset(args.dataset, root=args.data_dir, seed=args.seed)
    sizes = " / ".join(f"{len(getattr(data, split)):,} {split}" for split in ("train", "val", "test"))
    return (f"Data: {data.name}, {sizes} sequences of {data.seq_len} steps, {data.d_output} classes. The papers: [Z25] on sequential "
            "MNIST (60,000 training digits), [S25] on sCIFAR-10 in gray (50,000 training images, 1,024 steps).")


def report(frame: pd.DataFrame, points: list[Point], args, note: str = "") -> tuple[pd.DataFrame, str, list[str]]:
    """The report's table, its text (`note` below the table), and the plots drawn (of the findings the table holds)."""
    table = report_table(frame, points, args)
    plots = []
    for finding, (name, draw) in PLOTS.items():
        if complete(frame, points, finding):
            draw(frame, args, args.out / name)
            plots.append(name)
    text = "# Reproduction of the seeds' findings\n\n" + markdown_table(table)
    if complete(frame, points, "F1"):
        text += f"\n## F1 ablation: PTQ at {BITS} bits, one z25 setting reverted at a time\n\n" + markdown_table(ablation_table(frame))
    text += (
        "\nAccuracies on " + (f"the first {args.test_samples} samples of each split" if args.test_samples else "the whole splits")
        + f" of {args.dataset}; mean ± standard deviation over the seeds. {note}\n"
    )
    if plots:
        text += "\n## Plots\n\n" + "\n\n".join(f"![{name}]({name})" for name in plots) + "\n"
    return table, text, plots


def main(argv=None):
    args = parse_args(argv)
    prepare(args)
    table = ResultTable(args.out / "results.csv", KEY)
    points = run_points(args)
    table.measure_pending([p for p in points if p.finding in args.findings], lambda point: measure(point, args), NAME)
    frame = table.rows_of(run_keys(points))
    summary, text, plots = report(frame, points, args, data_note(args))
    atomic_write(args.out / "report.md", lambda f: f.write(text))
    write_summary(args.out, summary, "Reproduction of the seeds' findings", list(summary.columns), plots, args, notes="Full report: report.md.")
    print(text)
    print(f"wrote {args.out / 'results.csv'} and {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
