"""What every study script shares: common flags and budgets, a resumable tidy results table, training configs.

    study_parser(name, doc, budget)   the common flags (--quick, --out, --models-dir, --compute, --threads,
                                      --seed, the model preset and its flags, data, budget and executor
                                      flags); its parse_args fills every budgeted flag left at None from
                                      `budget`, quick or full, and every model flag left at None from
                                      the --preset (PRESETS), then checks every flag it knows by name
                                      (aimc_ssm.validation, aimc_ssm.study.executor)
    prepare(args)                     what every study does before it computes: the output folders
                                      checked (writable, room on the disk), torch's threads, the
                                      executor of the points (--executor local or ray)
    ResultTable(path, key_columns)    results/<study>/results.csv, one row per measurement:
        .pending(keys), .rows_of(keys)    the keys not measured yet, the rows of a run
        .measure_pending(points, measure)   measures the points with a row missing, on the executor
                                          that prepare chose, and adds those rows
    study_setup(args)                 the model, float training and QAT fine-tuning configs

A study writes one row per measurement to results/<study>/results.csv. The table is rewritten
atomically after every point (its rows at once), and only the rows whose key is not in the table yet are measured, so a
killed sweep resumes where it stopped. Runs into the same table at the same time lose nothing: each
rewrite holds the table's lock (results.csv.lock) and merges the rows other runs added meanwhile, a
row whose key another run wrote first is not added twice, and a point another run measured is
skipped. The table reads back as it was written, cell for cell (`read_table`).

Executors (aimc_ssm.study.executor): the points are measured in this process one after another
(--executor local, the default), or several at once on Ray workers (--executor ray, --workers N; on a
cluster with --ray-address). Either way this process writes the rows, a point's rows in one atomic
rewrite, in the order of the points: the CSV of a sweep on Ray is the local run's, killed and resumed
or not.

Determinism: the same command with the same seed writes the same CSV on CPU, bit for bit but the
timing columns (`seconds`), whether its models are trained or read from the cache, in one run or
resumed after a kill (tests/test_reliability.py runs a study all three ways), in this process or on
Ray workers (tests/test_executor.py). Every point seeds its own draws. The torch thread count is
another matter: torch's CPU reductions add in an order that depends on it, so a model trained with
2 threads differs from one trained with 1 in the last bits. A run on Ray workers (--cpus-per-point
threads each) writes the CSV of a local run with --threads equal to that, or of one that reads the
same model cache.

A bad flag is a usage error (exit status 2, no traceback) before anything is computed: a value out
of its range, a device override that is not a field of the device, an output folder that is a file.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from filelock import FileLock

from ..cache import DEFAULT_CACHE
from ..core.model import ModelConfig
from ..core.s4d import A_INITS
from ..core.train import TrainConfig
from ..io import atomic_write, remove_temporaries
from ..quant.precision import RECIPES
from ..validation import SettingError, check_environment, check_output_dir, check_values, flag_name
from .executor import LocalExecutor, add_executor_flags, check_executor_flags, executor_of

RESULTS = Path("results")


# -- budgets ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Budget:
    """Defaults of the flags that size a study: `full`, or `quick` with --quick.

    A budgeted flag defaults to None on the command line and is filled after parsing, so that a value
    given on the command line wins in both modes and --help can show both defaults.
    """

    full: dict = field(default_factory=dict)
    quick: dict = field(default_factory=dict)

    def __post_init__(self):
        if set(self.full) != set(self.quick):
            raise ValueError(f"a budget needs full and quick values of the same flags, not {sorted(self.full)} and {sorted(self.quick)}")

    def __or__(self, other: Budget) -> Budget:
        """This budget with `other`'s entries added, `other` winning where both have a flag."""
        return Budget({**self.full, **other.full}, {**self.quick, **other.quick})

    def help(self, name: str) -> str:
        return f"(default: {show(self.full[name])}; {show(self.quick[name])} with --quick)"

    def apply(self, args: argparse.Namespace) -> None:
        """Fill every budgeted flag left at None."""
        for name, value in (self.quick if args.quick else self.full).items():
            if getattr(args, name) is None:
                setattr(args, name, value)


def show(value) -> str:
    """A default as it would be typed on the command line; None (no limit) as "all"."""
    if value is None:
        return "all"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


# The full float budget is half the `train` default (95 % on smnist in 40 epochs, about 94 % in 20)
# so that a study on a fresh machine finishes in minutes; --epochs overrides it.
COMMON_BUDGET = Budget(
    full={"epochs": 20, "qat_epochs": 5, "test_samples": None},
    quick={"epochs": 3, "qat_epochs": 1, "test_samples": 100},
)


# -- model presets ------------------------------------------------------------------------------------
# The model a study starts from (its d_input and d_output come from the data); --d-model, --d-state,
# --n-layers and --a-init override a preset's. s25-scifar is [S25]'s sCIFAR model: 4 layers, H = N = 128,
# the H×H mixing that [S25]'s hardware metrics count (tests/test_metrics.py pins its figures), the s25
# recipe's model settings (no activation after the SSM, B fixed at 1, Im A = π/4·n), and the post-norm
# LayerNorm and dropout 0.1 of the state-spaces S4D sCIFAR configuration of that size.
PRESETS = {
    "z25": ModelConfig(),  # [Z25]'s sMNIST model: H 16, N 64, 1 layer, GELU, GLU mixing, B trained
    "s25-scifar": ModelConfig(
        n_layers=4, d_model=128, d_state=128, mixing="relu", norm="layer", prenorm=False, dropout=0.1, **RECIPES["s25"].model,
    ),
}
PRESET_FLAGS = ("d_model", "d_state", "n_layers", "a_init")  # the model flags every study has


def preset_help(name: str) -> str:
    """The default of a model flag: the --preset's, unless a study sets its own (parser.set_defaults, in its description)."""
    return "(default: the --preset's, " + ", ".join(f"{getattr(config, name)} for {preset}" for preset, config in PRESETS.items()) + "; a study may set its own)"


def apply_preset(args: argparse.Namespace) -> None:
    """Fill every model flag left at None from the --preset."""
    for name in PRESET_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, getattr(PRESETS[args.preset], name))


# -- flags --------------------------------------------------------------------------------------------
class StudyParser(argparse.ArgumentParser):
    """An ArgumentParser whose parse_args fills the budgeted flags and the model preset's, and checks every
    flag it knows by name (aimc_ssm.validation: the common ones, the device flags, a study's own; the
    executor flags), so that every study has the same checks without a line of its own."""

    def __init__(self, budget: Budget, **kwargs):
        super().__init__(**kwargs)
        self.budget = budget

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        self.budget.apply(parsed)
        apply_preset(parsed)
        try:
            check_values(vars(parsed), flag_name)
            check_executor_flags(parsed)
            check_environment(vars(parsed), flag_name)
        except SettingError as err:
            self.error(str(err))
        return parsed


def study_parser(name: str, doc: str, budget: Budget = Budget()) -> StudyParser:
    """Flags every study has; a study adds its own, with `budget` the defaults of its budgeted flags."""
    budget = COMMON_BUDGET | budget
    parser = StudyParser(budget, prog=f"studies/{name}.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sweep that finishes in about a minute on 2 cores")
    parser.add_argument("--out", type=Path, default=RESULTS / name, help="output directory (default: %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_CACHE, help="trained-model cache (default: %(default)s)")
    parser.add_argument("--compute", default="auto", choices=["auto", "cpu", "cuda"], help="torch device for training and evaluation")
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="torch CPU threads (default: the cores this process may use, %(default)s; training gains from them. On a "
        "machine shared with other jobs use 1: a thread waiting for a descheduled sibling costs milliseconds per operation)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="smnist", help="dataset name (default: %(default)s, the embedded MNIST digits)")
    parser.add_argument("--data-dir", default=None, help="directory of the mnist / scifar files")
    parser.add_argument("--epochs", type=int, default=None, help="float training epochs " + budget.help("epochs"))
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT fine-tuning epochs " + budget.help("qat_epochs"))
    parser.add_argument(
        "--test-samples", type=int, default=None, help="samples evaluated of each split (the first ones) " + budget.help("test_samples")
    )
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="z25",
        help="the model: z25 ([Z25]'s sMNIST model, H 16, N 64, 1 layer) or s25-scifar ([S25]'s sCIFAR model, 4 layers, H = N = 128, "
        "H×H ReLU mixing, no activation, B fixed, LayerNorm, dropout 0.1; train it with --dataset scifar --data-dir DIR) (default: %(default)s)",
    )
    parser.add_argument("--d-model", type=int, default=None, help="H " + preset_help("d_model"))
    parser.add_argument("--d-state", type=int, default=None, help="N " + preset_help("d_state"))
    parser.add_argument("--n-layers", type=int, default=None, help="S4D blocks " + preset_help("n_layers"))
    parser.add_argument("--a-init", choices=A_INITS, default=None, help="S4D init of A: lin (Im A = π·n) or lin-quarter (π/4·n, slower rotations) " + preset_help("a_init"))
    parser.add_argument("--dt-min", type=float, default=1e-3, help="smallest initial step dt (default: %(default)s)")
    parser.add_argument("--dt-max", type=float, default=1e-1, help="largest initial step dt (default: %(default)s)")
    add_executor_flags(parser)
    return parser


def prepare(args: argparse.Namespace) -> None:
    """What every study does before it computes anything: its output folders checked (a folder, writable,
    room on the disk: a usage error now rather than a failed write after the training), torch's threads,
    and the executor that measures its points (ResultTable.measure_pending)."""
    try:
        for name in ("out", "models_dir"):
            check_output_dir(flag_name(name), getattr(args, name))
    except SettingError as err:
        usage_error(err)
    torch.set_num_threads(args.threads)
    use_executor(executor_of(args))


def usage_error(err: Exception) -> None:
    """Stop the study as a command-line usage error: the message alone, exit status 2."""
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None


_executor = LocalExecutor()  # what measures the points of a table made without one: the one prepare chose


def use_executor(executor) -> None:
    """Make `executor` (aimc_ssm.study.executor) measure the points of the tables made without one."""
    global _executor
    _executor = executor


# -- results ------------------------------------------------------------------------------------------
class ResultTable:
    """One CSV of measurements, identified by `key_columns`, written atomically row by row.

    A key is a dict of the key columns. Keys compare as text, as they read back from the CSV. Several
    processes may add rows to one table at once (module docstring). `executor` measures the points of
    measure_pending (aimc_ssm.study.executor; None: the one `prepare` chose, local by default).
    """

    def __init__(self, path: Path, key_columns: list[str], executor=None):
        self.path, self.key_columns, self.executor = Path(path), list(key_columns), executor
        self.lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        self.rows: list[dict] = []
        self._keys: set[tuple] = set()
        self._seen = None  # the file as this table last read or wrote it (file_version)
        self.refresh()

    def _key(self, row: dict) -> tuple:
        missing = set(self.key_columns) - set(row)
        if missing:
            raise ValueError(f"row or key lacks key columns {sorted(missing)}")
        return tuple(str(row[c]) for c in self.key_columns)

    def refresh(self) -> None:
        """Take in the rows that other runs wrote to the file since this table last read or wrote it."""
        version = file_version(self.path)
        if version is None or version == self._seen:
            return
        frame = read_table(self.path)
        missing = set(self.key_columns) - set(frame.columns)
        if missing:
            raise ValueError(
                f"{self.path} lacks key columns {sorted(missing)}: it was written by another version "
                "of this study; delete it (or pass another --out) to start afresh"
            )
        for row in frame.to_dict("records"):
            if self._key(row) not in self._keys:
                self.rows.append(row)
                self._keys.add(self._key(row))
        self._seen = version

    def pending(self, keys: Iterable[dict]) -> list[dict]:
        """The keys that no row of the table has yet, in their order."""
        return [key for key in keys if self._key(key) not in self._keys]

    def rows_of(self, keys: Iterable[dict]) -> pd.DataFrame:
        """The rows whose key is among `keys`, in table order: a run's rows, where the table may hold other runs' too."""
        wanted = {self._key(key) for key in keys}
        frame = self.frame()
        return frame[pd.Series([self._key(row) in wanted for row in self.rows], index=frame.index, dtype=bool)]

    def add(self, row: dict) -> None:
        """Add a row and rewrite the file with it, merging what other runs wrote meanwhile; a row whose key
        another run added first is left out (it measured the same)."""
        self.add_rows([row])

    def add_rows(self, rows: list[dict]) -> None:
        """add() for several rows at once: one rewrite of the file, so that they land together or not at all."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            remove_temporaries(self.path)  # of killed writers; under the lock no other writer has one open
            self.refresh()
            new = [row for row in rows if self._key(row) not in self._keys]
            if not new:
                return
            for row in new:
                self.rows.append(row)
                self._keys.add(self._key(row))
            self.write()

    def write(self) -> None:
        """The table's rows to its file, atomically; under the table's lock."""
        atomic_write(self.path, lambda f: self.frame().to_csv(f, index=False))
        self._seen = file_version(self.path)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def measure_pending(self, points: list, measure: Callable[[object], list[dict]], desc: str) -> None:
        """Measure every point that has a row missing from the table, adding its missing rows.

        A point is what a study measures at once (one model at one setting with all its noise draws,
        say): its `.keys` are the keys of the rows it writes, and measure(point) returns those rows. A
        point is measured whole even where a killed run left some of its rows, because its rows come
        from one deployment (a drift run reads one programming at every time). A point whose rows
        another run has added meanwhile is skipped. The executor (class docstring) measures the points
        and hands their rows over in the order of `points`; the rows of a point are added at once.
        """
        pending = {self._key(key) for key in self.pending(run_keys(points))}
        todo = [point for point in points if any(self._key(key) in pending for key in point.keys)]
        executor = self.executor or _executor
        with contextlib.closing(executor.results(todo, measure, self.still_pending, desc)) as results:
            for _, rows in results:
                self.add_rows([row for row in rows if self._key(row) in pending])

    def still_pending(self, point) -> bool:
        """Whether `point` has a row missing from the table as it is on disk now."""
        self.refresh()
        return bool(self.pending(point.keys))


def file_version(path: Path) -> tuple | None:
    """What tells one version of a file from the next (every atomic write is a new file); None: no file."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def read_table(path: Path) -> pd.DataFrame:
    """A results CSV as pandas types it, except the columns whose cells that typing would change: those
    stay text. A hash such as 1234e5678901 or 000123456789 reads back as itself, not as a number, so
    that its rows keep their keys and the file is written back cell for cell as it was."""
    typed = pd.read_csv(path)
    text = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in typed.columns:
        if [csv_cell(v) for v in typed[column]] != list(text[column]):
            typed[column] = text[column].where(text[column] != "", math.nan)
    return typed


def csv_cell(value) -> str:
    """A value as DataFrame.to_csv writes it."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return repr(float(value)) if isinstance(value, float) else str(value)


def run_keys(points) -> list[dict]:
    """The keys of every row of a run's points (objects with `.keys`, see ResultTable.measure_pending), in order."""
    return [key for point in points for key in point.keys]


# -- models -------------------------------------------------------------------------------------------
@dataclass
class StudySetup:
    """The models a study compares: the float model's configs, QAT fine-tuning, the evaluation subset."""

    model: ModelConfig
    train: TrainConfig  # float training
    finetune: TrainConfig  # QAT fine-tuning from the float model ([Z25]: Adam-style lr 1e-3)
    test_samples: int | None  # samples evaluated of each split; None: the whole split


def study_setup(args: argparse.Namespace) -> StudySetup:
    """Resolve the common flags into configs; models with equal configs are shared through the cache."""
    from ..core.data import load_dataset

    data = load_dataset(args.dataset, root=args.data_dir, seed=args.seed)
    model = replace(
        PRESETS[args.preset], d_input=data.d_input, d_output=data.d_output, d_model=args.d_model, d_state=args.d_state, n_layers=args.n_layers,
        a_init=args.a_init, dt_min=args.dt_min, dt_max=args.dt_max,
    )
    train = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed, epochs=args.epochs, compute=args.compute)
    finetune = replace(train, epochs=args.qat_epochs, lr=1e-3, ssm_lr=1e-3)
    return StudySetup(model, train, finetune, args.test_samples)
