"""How many bits each component needs: per-component sensitivity sweeps and [S25]'s greedy search.

Specs come from a recipe of the registry (aimc_ssm.quant.precision.RECIPES) at b bits, by default
"channel-asym": [Z25]-style quantizers with every component at b bits and the conv-mode state proxy on, so
that QAT, which fine-tunes in conv mode, sees the state's precision (recurrent mode, where accuracy
is measured, re-quantizes the state itself).

Sensitivity (`component_spec`, `sensitivity_points`, `sensitivity_sweep`): one component at b bits
with the recipe's quantizer for it, every other component float; "all" is the whole recipe at b
bits. dt exists only as log dt of the "continuous" parameterization, so a dt-only spec switches to
it (with everything else float the parameterization changes nothing else).

Greedy search (`greedy_search`; `search_precision` runs it on a ModelZoo): start with every
component at the ladder's first rung (12 bits), then repeatedly

    1. for every component not yet frozen, the saving of lowering it to its next rung: the chosen
       hardware metric (METRICS) of the current spec minus that of the lowered one;
    2. evaluate the largest saving (ties: the component with more bits, then COMPONENTS order);
    3. keep the lowering if the accuracy is at least the cutoff, else undo it and freeze the component;

until no component can be lowered. Components whose lowering saves nothing in the metric (the state
for memory, B for ACE, ...) stay at the first rung and cost no evaluation. Everything is
deterministic: the evaluation subset and training runs are seeded, the choices have fixed tie-breaks.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from tqdm.auto import tqdm

from .metrics import HardwareReport
from .precision import COMPONENTS, PrecisionSpec, check_component, recipe_spec
from .quantizers import MAX_BITS, MIN_BITS

SWEEP_COMPONENTS = (*COMPONENTS, "all")
# metric name -> HardwareReport field
METRICS = {"memory": "memory_bits", "ace": "ace", "size": "model_size_bits", "adc": "adc_complexity"}
START_BITS, MIN_LADDER_BITS = 12, 2
DEFAULT_LADDER = tuple(range(START_BITS, MIN_LADDER_BITS - 1, -1))  # 12, 11, ..., 2
DEFAULT_TOLERANCE = 0.01  # one accuracy point below float
# accuracies are ratios of counts, and a cutoff found by subtraction may land a rounding error above
# an accuracy that equals it: compare with this slack
ROUNDING_SLACK = 1e-9

Accuracy = Callable[[PrecisionSpec], float]
Measure = Callable[[PrecisionSpec], HardwareReport]


# -- specs ------------------------------------------------------------------------------------
def component_spec(component: str, bits: int, recipe: str = "channel-asym") -> PrecisionSpec:
    """`component` at `bits` with the recipe's quantizer, every other component float ("all": the recipe)."""
    if component not in SWEEP_COMPONENTS:
        raise ValueError(f"unknown component {component!r}; choose from {SWEEP_COMPONENTS}")
    full = recipe_spec(recipe, bits)
    if component == "all":
        return full
    # the recipe's spec-level options carried over, every other quantizer float; dt (float in most recipes)
    # with the recipe's quantizer at `bits`, where it is deployed: the continuous parameterization
    alone = full.only(component)
    if component == "dt":
        alone = alone.replace(parameterization="continuous")
    return alone.replace(**{component: replace(full.config(component), bits=bits)})


def sensitivity_points(components, bits, recipe: str = "channel-asym") -> list[tuple[str, int, PrecisionSpec]]:
    """(component, bits, spec) of a per-component sweep, components outer, bits inner."""
    return [(c, b, component_spec(c, b, recipe)) for c in components for b in check_bits_list(bits)]


def sensitivity_sweep(accuracy: Accuracy, components, bits, recipe: str = "channel-asym", progress: bool = False) -> list[dict]:
    """Accuracy with one component at a time quantized: rows {component, bits, accuracy}.

    `accuracy(spec)` measures one spec (PTQ or QAT, see ModelZoo.spec_accuracy)."""
    points = sensitivity_points(components, bits, recipe)
    return [
        {"component": c, "bits": b, "accuracy": accuracy(spec)}
        for c, b, spec in tqdm(points, desc="sensitivity", disable=not progress)
    ]


def check_bits_list(bits) -> tuple[int, ...]:
    bits = tuple(bits)
    if not bits or any(isinstance(b, bool) or not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS for b in bits):
        raise ValueError(f"bit widths must be integers from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def check_ladder(ladder) -> tuple[int, ...]:
    """The ladder as a tuple: strictly decreasing bit widths within the quantizers' range."""
    ladder = tuple(ladder)
    if len(ladder) < 2:
        raise ValueError(f"a ladder needs a start and at least one lower rung, got {ladder!r}; e.g. (12, 10, 8, 6, 4)")
    check_bits_list(ladder)
    if any(high <= low for high, low in zip(ladder, ladder[1:])):
        raise ValueError(f"ladder rungs must strictly decrease, got {ladder!r}; e.g. (12, 10, 8, 6, 4)")
    return ladder


def next_rung(bits: int, ladder: tuple[int, ...]) -> int | None:
    """The highest rung below `bits`, or None at the bottom."""
    return next((rung for rung in ladder if rung < bits), None)


def allocation(spec: PrecisionSpec) -> dict[str, int | None]:
    """Bits per component (None: float)."""
    return {c: spec.config(c).bits for c in COMPONENTS}


def bits_key(bits: dict[str, int | None]) -> str:
    """A readable key of an allocation, e.g. "A=8 B=12 C=6 D=12 dt=float ...", to tell searched specs apart."""
    return " ".join(f"{c}={'float' if bits.get(c) is None else bits[c]}" for c in COMPONENTS)


def allocation_key(spec: PrecisionSpec) -> str:
    """bits_key of the spec's allocation."""
    return bits_key(allocation(spec))


# -- greedy search ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchStep:
    """One evaluated spec: the start (step 0, component None) or one component lowered by one rung.

    cost is the metric of the evaluated spec, saving what the lowering saved against the spec it
    started from, accepted whether accuracy reached the cutoff (for the start: whether it did)."""

    step: int
    component: str | None
    bits_from: int | None
    bits_to: int | None
    saving: float
    cost: float
    accuracy: float
    accepted: bool
    bits: dict[str, int | None]

    def as_row(self) -> dict:
        """Flat dict: the bits as bits_<component> (0 for float, which a CSV column of ints can hold)."""
        row = {k: v for k, v in asdict(self).items() if k != "bits"}
        row.update({f"bits_{c}": 0 if b is None else b for c, b in self.bits.items()})
        return row


@dataclass(frozen=True)
class SearchResult:
    """What a greedy search found.

    Attributes:
        metric: the metric lowered (METRICS key); cutoff: the accuracy every kept spec reached.
        start, spec: the starting and the final PrecisionSpec.
        start_accuracy, accuracy: their accuracies (on the search's split and mode).
        report, float_report: hardware metrics of the final spec and of the float model.
        trace: every evaluation, in order (SearchStep).
        reference_accuracy: the float model's accuracy the cutoff was derived from, if it was.
    """

    metric: str
    cutoff: float
    start: PrecisionSpec
    spec: PrecisionSpec
    start_accuracy: float
    accuracy: float
    report: HardwareReport
    float_report: HardwareReport
    trace: list[SearchStep] = field(default_factory=list)
    reference_accuracy: float | None = None

    @property
    def within_cutoff(self) -> bool:
        """False only when even the start spec missed the cutoff (the search then lowered nothing)."""
        return meets(self.accuracy, self.cutoff)

    @property
    def bits(self) -> dict[str, int | None]:
        return allocation(self.spec)

    @property
    def reductions(self) -> dict[str, float | None]:
        """Float metric / final metric, per HardwareReport field (6.3 means 6.3 times smaller)."""
        return self.float_report.ratio_to(self.report)

    def to_dict(self) -> dict:
        """JSON-ready summary: bits, metrics, reductions, accuracies, the final spec and the trace."""
        return {
            "metric": self.metric,
            "cutoff": self.cutoff,
            "reference_accuracy": self.reference_accuracy,
            "start_accuracy": self.start_accuracy,
            "accuracy": self.accuracy,
            "within_cutoff": self.within_cutoff,
            "bits": self.bits,
            "report": self.report.as_dict(),
            "float_report": self.float_report.as_dict(),
            "reductions": self.reductions,
            "evaluations": len(self.trace),
            "spec": self.spec.to_dict(),
            "trace": [s.as_row() for s in self.trace],
        }


def meets(accuracy: float, cutoff: float) -> bool:
    """accuracy >= cutoff up to ROUNDING_SLACK; NaN (a diverged run) never does."""
    return accuracy >= cutoff - ROUNDING_SLACK


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {tuple(METRICS)}")
    return METRICS[metric]


def check_search_components(start: PrecisionSpec, components) -> tuple[str, ...]:
    if components is None:
        return start.quantized()
    components = tuple(components)
    for c in components:
        check_component(c)
        if start.config(c).is_float:
            raise ValueError(f"component {c!r} is float in the start spec: quantize it there or leave it out of the search")
    return components


def greedy_search(
    start: PrecisionSpec,
    accuracy: Accuracy,
    measure: Measure,
    *,
    cutoff: float,
    metric: str = "memory",
    components=None,
    ladder=DEFAULT_LADDER,
    known: dict[str, float] | None = None,
    on_step: Callable[[SearchStep], None] | None = None,
    progress: bool = False,
) -> SearchResult:
    """Lower bits greedily from `start` while accuracy stays at or above `cutoff` (module docstring).

    Args:
        start: the spec to start from; its quantized components are searched unless `components`
            names some of them.
        accuracy: spec -> accuracy (e.g. ModelZoo.spec_accuracy of PTQ or QAT on the validation split).
        measure: spec -> HardwareReport (e.g. aimc_ssm.quant.metrics.report with the float model, for memory).
        cutoff: the lowest acceptable accuracy.
        metric: "memory", "ace", "size" or "adc" (METRICS).
        ladder: strictly decreasing bit widths; a component goes from its bits to the next lower rung.
        known: accuracies already measured, by allocation_key (a resumed search replays them).
        on_step: called with every SearchStep as it is taken.
    Returns:
        SearchResult with the final spec, its metrics and the trace.
    """
    field_name = check_metric(metric)
    ladder = check_ladder(ladder)
    components = check_search_components(start, components)
    known = {} if known is None else known

    def cost(spec: PrecisionSpec) -> float:
        return getattr(measure(spec), field_name)

    def evaluate(spec: PrecisionSpec) -> float:
        key = allocation_key(spec)
        if key not in known:
            known[key] = accuracy(spec)
        return known[key]

    trace: list[SearchStep] = []
    with tqdm(desc=f"greedy search ({metric})", unit="eval", disable=not progress) as bar:

        def record(step: SearchStep) -> None:
            trace.append(step)
            if on_step is not None:
                on_step(step)
            verdict = "kept" if step.accepted else "undone"
            bar.set_postfix_str(f"{step.component or 'start'}->{step.bits_to} acc {step.accuracy:.3f} {verdict}")
            bar.update()

        start_accuracy = evaluate(start)
        spec, spec_accuracy, frozen = start, start_accuracy, set()
        start_ok = meets(start_accuracy, cutoff)
        record(SearchStep(0, None, None, None, 0.0, cost(start), start_accuracy, start_ok, allocation(start)))
        while start_ok:
            candidate = best_lowering(spec, components, frozen, ladder, cost)
            if candidate is None:
                break
            component, lowered, saving = candidate
            acc = evaluate(lowered)
            accepted = meets(acc, cutoff)
            bits_from, bits_to = spec.bits(component), lowered.bits(component)
            record(SearchStep(len(trace), component, bits_from, bits_to, saving, cost(lowered), acc, accepted, allocation(lowered)))
            if accepted:
                spec, spec_accuracy = lowered, acc
            else:
                frozen.add(component)

    return SearchResult(metric, cutoff, start, spec, start_accuracy, spec_accuracy, measure(spec), measure(PrecisionSpec.float()), trace)


def best_lowering(spec, components, frozen, ladder, cost) -> tuple[str, PrecisionSpec, float] | None:
    """(component, lowered spec, saving) of the lowering that saves most, or None if none saves anything."""
    now = cost(spec)
    best, best_rank = None, None
    for order, component in enumerate(components):
        to = next_rung(spec.bits(component), ladder)
        if component in frozen or to is None:
            continue
        lowered = spec.with_bits(component, to)
        saving = now - cost(lowered)
        rank = (saving, spec.bits(component), -order)  # largest saving, then most bits, then first listed
        if saving > 0 and (best_rank is None or rank > best_rank):
            best, best_rank = (component, lowered, saving), rank
    return best


# -- the search on a study's models ------------------------------------------------------------
def resolve_cutoff(reference: float, cutoff: float | None = None, tolerance: float | None = None) -> float:
    """`cutoff`, or `reference` (the float accuracy) minus `tolerance` (default DEFAULT_TOLERANCE)."""
    if cutoff is not None and tolerance is not None:
        raise ValueError("give either an absolute cutoff or a tolerance below the float accuracy, not both")
    if cutoff is not None:
        return cutoff
    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if tolerance < 0:
        raise ValueError(f"tolerance is an accuracy drop and cannot be negative, got {tolerance}")
    return reference - tolerance
