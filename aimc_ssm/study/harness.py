"""What every study script shares: common flags and budgets, a resumable tidy results table, training configs.

    study_parser(name, doc, budget)   the common flags (--quick, --out, --models-dir, --compute, --threads,
                                      --seed, the model, data and budget flags); its parse_args fills
                                      every budgeted flag left at None from `budget`, quick or full
    prepare(args)                     what every study does before it computes (torch's threads)
    ResultTable(path, key_columns)    results/<study>/results.csv, one row per measurement:
        .pending(keys), .rows_of(keys)    the keys not measured yet, the rows of a run
        .measure_pending(points, measure)   measures the points with a row missing, adds those rows
    study_setup(args)                 the model, float training and QAT fine-tuning configs

A study writes one row per measurement to results/<study>/results.csv. The table is rewritten
atomically after every row, and only the rows whose key is not in the table yet are measured, so a
killed sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd
import torch
from tqdm.auto import tqdm

from ..cache import DEFAULT_CACHE
from ..core.model import ModelConfig
from ..core.s4d import A_INITS
from ..core.train import TrainConfig
from ..io import atomic_write

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
POSITIVE = ("epochs", "qat_epochs", "test_samples", "threads")  # common flags that must be >= 1 when given


# -- flags --------------------------------------------------------------------------------------------
class StudyParser(argparse.ArgumentParser):
    """An ArgumentParser whose parse_args fills the budgeted flags and checks the common ones."""

    def __init__(self, budget: Budget, **kwargs):
        super().__init__(**kwargs)
        self.budget = budget

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        parsed = super().parse_args(args, namespace)
        self.budget.apply(parsed)
        for name in POSITIVE:
            if getattr(parsed, name) is not None and getattr(parsed, name) < 1:
                self.error(f"--{name.replace('_', '-')} must be positive")
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
    parser.add_argument("--d-model", type=int, default=16, help="H (default: the [Z25] model, H=16)")
    parser.add_argument("--d-state", type=int, default=64, help="N (default: 64)")
    parser.add_argument("--n-layers", type=int, default=1)
    parser.add_argument("--a-init", choices=A_INITS, default="lin", help="S4D init of A: lin (Im A = π·n) or lin-quarter (π/4·n, slower rotations) (default: %(default)s)")
    parser.add_argument("--dt-min", type=float, default=1e-3, help="smallest initial step dt (default: %(default)s)")
    parser.add_argument("--dt-max", type=float, default=1e-1, help="largest initial step dt (default: %(default)s)")
    return parser


def prepare(args: argparse.Namespace) -> None:
    """What every study does before it computes anything."""
    torch.set_num_threads(args.threads)


# -- results ------------------------------------------------------------------------------------------
class ResultTable:
    """One CSV of measurements, identified by `key_columns`, written atomically row by row.

    A key is a dict of the key columns. Keys compare as text, as they read back from the CSV.
    """

    def __init__(self, path: Path, key_columns: list[str]):
        self.path, self.key_columns = Path(path), list(key_columns)
        self.rows: list[dict] = []
        if self.path.exists():
            frame = pd.read_csv(self.path)
            missing = set(self.key_columns) - set(frame.columns)
            if missing:
                raise ValueError(
                    f"{self.path} lacks key columns {sorted(missing)}: it was written by another version "
                    "of this study; delete it (or pass another --out) to start afresh"
                )
            self.rows = frame.to_dict("records")
        self._keys = {self._key(r) for r in self.rows}

    def _key(self, row: dict) -> tuple:
        missing = set(self.key_columns) - set(row)
        if missing:
            raise ValueError(f"row or key lacks key columns {sorted(missing)}")
        return tuple(str(row[c]) for c in self.key_columns)

    def pending(self, keys: Iterable[dict]) -> list[dict]:
        """The keys that no row of the table has yet, in their order."""
        return [key for key in keys if self._key(key) not in self._keys]

    def rows_of(self, keys: Iterable[dict]) -> pd.DataFrame:
        """The rows whose key is among `keys`, in table order: a run's rows, where the table may hold other runs' too."""
        wanted = {self._key(key) for key in keys}
        frame = self.frame()
        return frame[pd.Series([self._key(row) in wanted for row in self.rows], index=frame.index, dtype=bool)]

    def add(self, row: dict) -> None:
        key = self._key(row)
        self.rows.append(row)
        self._keys.add(key)
        atomic_write(self.path, lambda f: self.frame().to_csv(f, index=False))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def measure_pending(self, points: list, measure: Callable[[object], list[dict]], desc: str) -> None:
        """Measure every point that has a row missing from the table, adding its missing rows.

        A point is what a study measures at once (one model at one setting with all its noise draws,
        say): its `.keys` are the keys of the rows it writes, and measure(point) returns those rows. A
        point is measured whole even where a killed run left some of its rows, because its rows come
        from one deployment (a drift run reads one programming at every time).
        """
        pending = {self._key(key) for key in self.pending(run_keys(points))}
        todo = [point for point in points if any(self._key(key) in pending for key in point.keys)]
        for point in tqdm(todo, desc=desc, unit="point"):
            for row in measure(point):
                if self._key(row) in pending:
                    self.add(row)


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
    model = ModelConfig(
        d_input=data.d_input, d_output=data.d_output, d_model=args.d_model, d_state=args.d_state, n_layers=args.n_layers,
        a_init=args.a_init, dt_min=args.dt_min, dt_max=args.dt_max,
    )
    train = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed, epochs=args.epochs, compute=args.compute)
    finetune = replace(train, epochs=args.qat_epochs, lr=1e-3, ssm_lr=1e-3)
    return StudySetup(model, train, finetune, args.test_samples)
