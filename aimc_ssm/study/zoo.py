"""The models a quantization study compares, each built once, and their accuracy as deployed.

    zoo = ModelZoo(study_setup(args), args.models_dir)
    zoo.float_model                        trained once (aimc_ssm.cache.float_model)
    zoo.ptq(spec)                          a PTQ copy of it (calibrated on training batches if static)
    zoo.qat(spec)                          fine-tuned from it with the quantizers on, once per spec
                                           (aimc_ssm.cache.qat_model); with from_scratch=True trained
                                           from a seeded init with the quantizers on instead ([S25])
    zoo.following(plan, epochs)            this zoo with its QAT as a recipe's QATPlan runs it
    zoo.accuracy(model, split, mode)       accuracy on the study's subset of a split
    zoo.spec_accuracy(spec, method, ...)   both steps at once: method "float", "ptq" or "qat"
    zoo.key                                hash of the setup, for the rows of a results table

Evaluation subset: the first `setup.test_samples` samples of the split (all when None), in batches
of the float training's batch size, in a fixed order. The order matters: dynamic quantization
ranges (the state's, the activations') are taken over a batch, so other batches give other grids.

QAT: setup.finetune is the QAT's training config either way; `from_scratch` picks its start, the
float model (fine-tuning, [Z25]) or a fresh seeded model of the same configs ([S25]). Both kinds are
trained once and cached (aimc_ssm.cache.qat_model, keyed by what they start from).

Under noise and pruning (`noisy_accuracies`, `pruned`): the convolution of the deployed system
without state re-quantization, as studies/noise_resilience.py and studies/pruning.py measure them.

Recurrent mode runs as convolution when nothing re-quantizes the state: the recurrence is then
linear with the same (quantized) Ā, B̄, C, D as the kernel, so the two compute the same outputs up
to float rounding, and the convolution is tens of times faster on a CPU. `exact_recurrence=True`
runs the recurrence anyway.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import cache
from ..analog.hwa import with_weight_noise
from ..cache import DEFAULT_CACHE
from ..core.data import SequenceData, load_dataset
from ..core.model import S4DModel
from ..core.train import DivergenceError, evaluate, first_training_batches, resolve_device
from ..io import config_key
from ..quant.metrics import report
from ..quant.precision import PrecisionSpec, QATPlan, recipe_spec
from ..quant.pruning import accuracy_at_least, attach_masks, prune
from ..quant.quantize import CALIBRATION_BATCHES, ptq_model, without_state_quantizer
from ..quant.search import DEFAULT_LADDER, SearchResult, SearchStep, check_ladder, greedy_search, resolve_cutoff
from .harness import StudySetup

METHODS = ("float", "ptq", "qat")
SPLITS = ("train", "val", "test")
MODES = ("conv", "recurrent")


def requantizes_state(model: S4DModel) -> bool:
    """Whether any layer of `model` re-quantizes its state in recurrent mode."""
    return any(block.ssm.requantizes_state() for block in model.blocks)


def forward_for(mode: str, state_requantized: bool, exact_recurrence: bool = False) -> str:
    """The forward that computes `mode`'s outputs (see the module docstring)."""
    check_choice("mode", mode, MODES)
    if mode == "recurrent" and not exact_recurrence and not state_requantized:
        return "conv"
    return mode


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose one of {allowed}")


@dataclass
class ModelZoo:
    """Float, PTQ and QAT models of one study setup, with cached training and a fixed evaluation subset."""

    setup: StudySetup
    models_dir: Path = DEFAULT_CACHE
    progress: bool = True
    exact_recurrence: bool = False
    from_scratch: bool = False  # QAT from a seeded init ([S25]) rather than fine-tuned from the float model

    @cached_property
    def key(self) -> str:
        """Short hash of everything that decides a measurement here: the model, its float training,
        the QAT training and where it starts, and the evaluation subset. Studies keep it in their rows,
        so that a run with other settings into the same results table measures afresh instead of resuming."""
        start = {"from_scratch": True} if self.from_scratch else {}  # fine-tuning zoos keep their older keys
        return config_key(self.setup.model, self.setup.train, self.setup.finetune, {"test_samples": self.setup.test_samples, **start})

    def following(self, plan: QATPlan, epochs: int | None = None) -> ModelZoo:
        """This zoo with its QAT as `plan` runs it (aimc_ssm.quant.precision.recipe_qat_plan): from scratch
        or fine-tuned, at the plan's lr and in its mode, for `epochs` (default: the plan's)."""
        finetune = replace(self.setup.finetune, epochs=epochs or plan.epochs, lr=plan.lr, mode=plan.mode)
        return replace(self, setup=replace(self.setup, finetune=finetune), from_scratch=plan.from_scratch)

    @cached_property
    def data(self) -> SequenceData:
        train = self.setup.train
        return load_dataset(train.dataset, root=train.data_dir, permuted=train.permuted, seed=train.seed)

    @cached_property
    def device(self) -> torch.device:
        return resolve_device(self.setup.train.compute)

    @cached_property
    def float_model(self) -> S4DModel:
        model, _ = cache.float_model(self.setup.model, self.setup.train, self.models_dir, self.progress)
        return model

    # -- data ------------------------------------------------------------------------------
    def batches(self, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The evaluation subset of `split` as (x (B, L, d_in), y (B,)) batches, always the same."""
        check_choice("split", split, SPLITS)
        dataset = getattr(self.data, split)
        x, y = dataset.tensors
        n = len(y) if self.setup.test_samples is None else min(self.setup.test_samples, len(y))
        size = self.setup.train.batch_size
        return [(x[i : min(i + size, n)], y[i : min(i + size, n)]) for i in range(0, n, size)]

    def calibration_batches(self, count: int = CALIBRATION_BATCHES) -> list:
        """The first training batches in the seeded training order (what qat_model calibrates on)."""
        return first_training_batches(self.data, self.setup.train, count)

    # -- models ----------------------------------------------------------------------------
    def ptq(self, spec: PrecisionSpec) -> S4DModel:
        """Post-training quantization of the float model with `spec`."""
        calibration = self.calibration_batches() if spec.static() else None
        return ptq_model(self.float_model, spec, calibration)

    def qat(self, spec: PrecisionSpec) -> tuple[S4DModel, dict]:
        """The model trained with `spec`'s quantizers on (setup.finetune), and its training metrics: the
        float model fine-tuned, or with from_scratch a seeded fresh model trained (module docstring)."""
        return cache.qat_model(
            self.setup.model,
            self.setup.finetune,
            spec,
            finetune_from=None if self.from_scratch else self.setup.train,
            cache_dir=self.models_dir,
            progress=self.progress,
        )

    # -- accuracy --------------------------------------------------------------------------
    def spec_forward(self, spec: PrecisionSpec | None, mode: str) -> str:
        """The forward that `accuracy` runs for `mode` on a model quantized with `spec` (None: float)."""
        per_step = spec is not None and not (spec.state.is_float and spec.y.is_float)  # y's quantizer acts per step of the recurrence
        return forward_for(mode, per_step, self.exact_recurrence)

    def samples(self, split: str) -> int:
        """How many samples of `split` the evaluation subset holds."""
        return sum(len(y) for _, y in self.batches(split))

    def accuracy(self, model: S4DModel, split: str = "test", mode: str = "recurrent") -> float:
        """Accuracy of `model` on the evaluation subset of `split` in `mode`."""
        model.to(self.device)
        forward = forward_for(mode, requantizes_state(model), self.exact_recurrence)
        return evaluate(model, self.batches(split), forward, self.device)

    def spec_accuracy(self, spec: PrecisionSpec | None, method: str, split: str = "test", mode: str = "recurrent") -> float:
        """Accuracy of the float model ("float", spec ignored) or of its PTQ or QAT version with `spec`.

        A QAT run that diverges scores NaN (a warning says so) rather than stopping a sweep.
        """
        check_choice("method", method, METHODS)
        if method == "float":
            return self.accuracy(self.float_model, split, mode)
        if method == "ptq":
            return self.accuracy(self.ptq(spec), split, mode)
        try:
            model, _ = self.qat(spec)
        except DivergenceError as err:
            tqdm.write(f"QAT diverged, scored NaN: {err}")
            return math.nan
        return self.accuracy(model, split, mode)

    # -- under noise and pruning -------------------------------------------------------------
    def noisy_accuracies(self, model: S4DModel, sigma: float, target: str, repeats: int, seed: int) -> list[float]:
        """Test accuracy of `model` with relative Gaussian noise `sigma` on A or Ā (aimc_ssm.analog.hwa.WeightNoise)
        drawn afresh at every forward (every batch): one value per pass over the test subset, pass r seeded
        with seed_for(seed, r)."""
        noisy = with_weight_noise(without_state_quantizer(model), sigma, target).to(self.device)
        accuracies = []
        for repeat in range(repeats):
            torch.manual_seed(seed_for(seed, repeat))
            accuracies.append(evaluate(noisy, self.batches("test"), "conv", self.device))
        return accuracies

    def pruned(self, model: S4DModel, kind: str, tolerance: float, max_candidates: int | None = None) -> tuple[S4DModel, dict]:
        """A copy of `model` greedily pruned (aimc_ssm.quant.pruning.prune, whole model) while its validation
        accuracy stays within `tolerance` (a fraction) of the unpruned one's, and what it took:
        {candidates, pruned, pruned_fraction, evaluations, val_accuracy_unpruned, val_accuracy}."""
        pruned = attach_masks(copy.deepcopy(without_state_quantizer(model))).to(self.device)
        val = self.batches("val")
        before = evaluate(pruned, val, "conv", self.device)
        result = prune(pruned, kind, lambda: accuracy_at_least(pruned, val, before - tolerance), max_candidates=max_candidates)
        return pruned, {
            "candidates": result.candidates, "pruned": len(result.pruned), "pruned_fraction": len(result.pruned) / max(result.candidates, 1),
            "evaluations": result.evaluations, "val_accuracy_unpruned": before, "val_accuracy": evaluate(pruned, val, "conv", self.device),
        }


def seed_for(seed: int, repeat: int) -> int:
    """The random seed of one repeat: the same draw index gets the same seed at every point of a sweep."""
    return 1000 * seed + repeat


def search_precision(
    zoo: ModelZoo,
    *,
    metric: str = "memory",
    method: str = "ptq",
    cutoff: float | None = None,
    tolerance: float | None = None,
    recipe: str = "channel-asym",
    ladder=DEFAULT_LADDER,
    components=None,
    split: str = "val",
    mode: str = "recurrent",
    known: dict[str, float] | None = None,
    on_step: Callable[[SearchStep], None] | None = None,
) -> SearchResult:
    """Greedy search on the models of `zoo`: which bits keep the accuracy.

    Starts from `recipe` at the ladder's first rung; accuracy is that of PTQ (method "ptq", fast) or
    of QAT fine-tuning per candidate (method "qat", one cached run each), on `split` in `mode`
    (recurrent: the deployed recurrence, the state re-quantized every step). The cutoff is `cutoff`,
    or the float model's accuracy minus `tolerance` (default DEFAULT_TOLERANCE, one point); give one.
    """
    if method not in ("ptq", "qat"):
        raise ValueError(f"unknown search method {method!r}; choose 'ptq' (fast) or 'qat' (fine-tunes every candidate)")
    ladder = check_ladder(ladder)
    reference = zoo.spec_accuracy(None, "float", split, mode)
    result = greedy_search(
        recipe_spec(recipe, ladder[0]),
        lambda spec: zoo.spec_accuracy(spec, method, split, mode),
        lambda spec: report(zoo.setup.model, spec, zoo.float_model),
        cutoff=resolve_cutoff(reference, cutoff, tolerance),
        metric=metric,
        components=components,
        ladder=ladder,
        known=known,
        on_step=on_step,
        progress=zoo.progress,
    )
    return replace(result, reference_accuracy=reference)
