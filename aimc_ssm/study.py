"""What every study script shares: a resumable tidy results table, atomic figures, common flags.

A study writes one row per measurement to results/<study>/results.csv. The table is rewritten
atomically after every row, and a row whose key columns are already present is skipped, so a killed
sweep resumes where it stopped.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from .model import ModelConfig
from .train import DEFAULT_CACHE, TrainConfig, atomic_write

RESULTS = Path("results")

# Training budgets of the studies: (float epochs, QAT fine-tuning epochs, test samples evaluated).
# The full float budget is half the `train` default (95 % on smnist in 40 epochs, about 94 % in 20)
# so that a study on a fresh machine finishes in minutes; --epochs overrides it.
FULL_BUDGET = (20, 5, None)
QUICK_BUDGET = (3, 1, 100)


class ResultTable:
    """One CSV of measurements, identified by `key_columns`, written atomically row by row."""

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
        return tuple(str(row[c]) for c in self.key_columns)

    def done(self, **key) -> bool:
        return self._key(key) in self._keys

    def add(self, row: dict) -> None:
        missing = set(self.key_columns) - set(row)
        if missing:
            raise ValueError(f"row lacks key columns {sorted(missing)}")
        self.rows.append(row)
        self._keys.add(self._key(row))
        atomic_write(self.path, lambda f: self.frame().to_csv(f, index=False))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def save_figure(fig, path: Path) -> None:
    """Save a matplotlib figure atomically (format from the suffix) and close it."""
    import matplotlib.pyplot as plt

    atomic_write(Path(path), lambda f: fig.savefig(f, format=Path(path).suffix[1:], dpi=150, bbox_inches="tight"), "wb")
    plt.close(fig)


def study_parser(name: str, doc: str) -> argparse.ArgumentParser:
    """Flags every study has; a study adds its own."""
    parser = argparse.ArgumentParser(prog=f"studies/{name}.py", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sweep that finishes in about a minute on 2 cores")
    parser.add_argument("--out", type=Path, default=RESULTS / name, help="output directory (default: %(default)s)")
    parser.add_argument("--dataset", default="smnist", help="dataset name (default: %(default)s, the embedded MNIST digits)")
    parser.add_argument("--data-dir", default=None, help="directory of the mnist / scifar files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compute", default="auto", choices=["auto", "cpu", "cuda"], help="torch device for training and evaluation")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_CACHE, help="trained-model cache (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None, help="float training epochs (default: 20; 3 with --quick)")
    parser.add_argument("--qat-epochs", type=int, default=None, help="QAT fine-tuning epochs (default: 5; 1 with --quick)")
    parser.add_argument("--d-model", type=int, default=16, help="H (default: the [Z25] model, H=16)")
    parser.add_argument("--d-state", type=int, default=64, help="N (default: 64)")
    parser.add_argument("--n-layers", type=int, default=1)
    return parser


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """--threads N, torch's CPU threads; apply with torch.set_num_threads(args.threads)."""
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)),
        help="torch CPU threads (default: the cores this process may use, %(default)s; training gains from them. On a "
        "machine shared with other jobs use 1: a thread waiting for a descheduled sibling costs milliseconds per operation)",
    )


@dataclass
class StudySetup:
    """The models a study compares: the float model's configs, QAT fine-tuning, the test subset."""

    model: ModelConfig
    train: TrainConfig  # float training
    finetune: TrainConfig  # QAT fine-tuning from the float model ([Z25]: Adam-style lr 1e-3)
    test_samples: int | None  # None: the whole test split


def study_setup(args: argparse.Namespace) -> StudySetup:
    """Resolve the common flags into configs; models with equal configs are shared through the cache."""
    from .data import load_dataset

    epochs, qat_epochs, test_samples = QUICK_BUDGET if args.quick else FULL_BUDGET
    data = load_dataset(args.dataset, root=args.data_dir, seed=args.seed)
    model = ModelConfig(d_input=data.d_input, d_output=data.d_output, d_model=args.d_model, d_state=args.d_state, n_layers=args.n_layers)
    train = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, seed=args.seed, epochs=args.epochs or epochs, device=args.compute)
    finetune = replace(train, epochs=args.qat_epochs or qat_epochs, lr=1e-3, ssm_lr=1e-3)
    return StudySetup(model, train, finetune, test_samples)
