"""Shared fixtures: `compute` (the torch devices the parity tests run on) and the study runner.

`compute` is "cpu", and also "cuda" where torch sees a GPU: the parity tests of the fast paths and
their reference twins run on every device the machine has. Without a GPU, Triton kernels run in
Triton's interpreter.

`studies` runs a script of studies/ in a subprocess, its --quick sweep on the small `digits` data set
so that CI stays fast. Its models directory lasts the session: the float and QAT models are trained
once for all six studies.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
COMPUTES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# without a GPU, Triton's interpreter runs the Triton scan on CPU tensors (aimc_ssm.analog.triton_scan);
# triton reads the switch when it is first imported
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(params=COMPUTES)
def compute(request) -> torch.device:
    return torch.device(request.param)


QUICK = ["--quick", "--dataset", "digits", "--compute", "cpu", "--threads", "1"]
COMMON_FLAGS = ("--quick", "--out", "--models-dir", "--compute", "--threads", "--seed", "--epochs", "--qat-epochs", "--test-samples")


@dataclass
class Studies:
    """Runs studies/<name>.py; quick() runs its small sweep into `out` with the session's models."""

    models: Path

    def run(self, name: str, *args) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny tensors; a second thread only waits on a shared machine
        result = subprocess.run(
            [sys.executable, str(ROOT / "studies" / f"{name}.py"), *map(str, args)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, f"studies/{name}.py failed:\n{result.stderr[-3000:]}"
        return result

    def help(self, name: str) -> str:
        """The study's --help, checked to document the flags every study has."""
        text = self.run(name, "--help").stdout
        assert all(flag in text for flag in COMMON_FLAGS) and "with --quick" in text
        return text

    def quick(self, name: str, out: Path, *extra) -> subprocess.CompletedProcess:
        return self.run(name, *QUICK, "--out", out, "--models-dir", self.models, *extra)

    @staticmethod
    def results(out: Path, key: list[str]) -> pd.DataFrame:
        """The study's table, checked to hold every key once."""
        frame = pd.read_csv(out / "results.csv")
        assert not frame.duplicated(key).any(), frame[frame.duplicated(key, keep=False)]
        return frame

    def check_resumes(self, name: str, out: Path, key: list[str], *extra) -> pd.DataFrame:
        """Cut the CSV in half as a killed run would leave it: the rerun measures the missing rows only,
        and the same values as the uninterrupted run (every draw is seeded)."""
        frame = self.results(out, key)
        kept = len(frame) // 2
        frame.iloc[:kept].to_csv(out / "results.csv", index=False)
        self.quick(name, out, *extra)
        resumed = self.results(out, key)
        pd.testing.assert_frame_equal(resumed.drop(columns="seconds", errors="ignore"), frame.drop(columns="seconds", errors="ignore"))
        return resumed


@pytest.fixture(scope="session")
def studies(tmp_path_factory) -> Studies:
    return Studies(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests: tiny tensors gain nothing from a second, and on a shared
    machine it costs time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
