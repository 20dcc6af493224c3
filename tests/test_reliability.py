"""Nothing lost, duplicated or half-read: runs of a study at the same time share its models and its table,
a killed run resumes to the uninterrupted result, the same command gives the same CSV with or without a
warm model cache, an unusable cache entry is trained again, and files get the user's permissions."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aimc_ssm import ModelConfig, validation
from aimc_ssm.cache import CacheWarning, float_model, float_run_dir
from aimc_ssm.core.train import TrainConfig
from aimc_ssm.io import CheckpointError, atomic_write, checksum_path, load_checkpoint, save_checkpoint
from aimc_ssm.study.harness import ResultTable, read_table

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(d_input=1, d_output=10, d_model=4, d_state=4)
FAST = TrainConfig(dataset="digits", epochs=1, compute="cpu")


# -- files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_atomic_writes_get_the_users_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "table.csv", lambda f: f.write("a\n1\n"))
        save_checkpoint({"x": torch.ones(2)}, tmp_path / "model.pt")
    finally:
        os.umask(old)
    for name in ("table.csv", "model.pt", "model.pt.sha256"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "model.pt.sha256", "table.csv"]  # no temporary left


def test_a_checkpoint_is_read_whole_and_unchanged_or_not_at_all(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint({"weights": torch.arange(1000.0)}, path)
    assert torch.equal(load_checkpoint(path)["weights"], torch.arange(1000.0))
    assert subprocess.run(["sha256sum", "-c", checksum_path(path).name], cwd=tmp_path, capture_output=True).returncode == 0
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(CheckpointError, match="does not match its checksum: truncated or changed"):
        load_checkpoint(path)
    path.write_bytes(data)
    checksum_path(path).unlink()  # an earlier version's checkpoint, or one whose checksum a kill cut off
    with pytest.raises(CheckpointError, match="has no checksum beside it"):
        load_checkpoint(path)


# -- the model cache -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A float model trained once into a cache, and its state: what every retrained entry must give again."""
    cache = tmp_path_factory.mktemp("cache")
    model, metrics = float_model(TINY, FAST, cache, progress=False)
    return cache, {k: v.clone() for k, v in model.state_dict().items()}, metrics


def spoil_checkpoint(run_dir: Path) -> None:
    data = (run_dir / "best.pt").read_bytes()
    (run_dir / "best.pt").write_bytes(data[:-100])


def other_version(run_dir: Path) -> None:
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "aimc_ssm": "0.0.1"}))


def other_weights(run_dir: Path) -> None:
    save_checkpoint({"model": {"encoder.weight": torch.zeros(3, 3)}}, run_dir / "best.pt")  # whole, of another model


@pytest.mark.parametrize("spoil", [spoil_checkpoint, other_version, other_weights], ids=lambda f: f.__name__)
def test_an_unusable_cache_entry_is_trained_again_with_a_warning(trained, spoil):
    cache, state, metrics = trained
    run_dir = float_run_dir(TINY, FAST, cache)
    spoil(run_dir)
    with pytest.warns(CacheWarning, match=f"cached run {run_dir} is not used"):
        model, again = float_model(TINY, FAST, cache, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # retrained: the same model
    assert again["test_acc_conv"] == metrics["test_acc_conv"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        float_model(TINY, FAST, cache, progress=False)  # whole again: reused without a warning


def test_a_whole_entry_is_reused_without_a_warning(trained, recwarn):
    cache, state, _ = trained
    model, _ = float_model(TINY, FAST, cache, progress=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not [w for w in recwarn if issubclass(w.category, CacheWarning)]


def test_a_run_dir_of_another_run_is_refused_by_the_train_command(trained, tmp_path, capsys):
    from aimc_ssm.__main__ import main

    cache, _, _ = trained
    args = ["train", "--dataset", "digits", "--d-model", "4", "--d-state", "4", "--compute", "cpu", "--no-progress"]
    run_dir = float_run_dir(TINY, FAST, cache)
    assert main([*args, "--epochs", "2", "--run-dir", str(run_dir)]) == 2  # it holds the 1-epoch run
    assert "--run-dir cannot be" in capsys.readouterr().err
    assert main([*args, "--epochs", "1", "--run-dir", str(run_dir)]) == 0  # its own run: reused


# -- the results table -------------------------------------------------------------------------------------
def test_tables_of_two_runs_on_one_file_keep_every_row_once(tmp_path):
    path = tmp_path / "results.csv"
    first, second = ResultTable(path, ["run", "point"]), ResultTable(path, ["run", "point"])
    for i in range(3):  # interleaved, as two processes write
        first.add({"run": "a", "point": i, "value": i / 10})
        second.add({"run": "b", "point": i, "value": -i / 10})
        second.add({"run": "a", "point": i, "value": 99.0})  # measured by `first` already: not added twice
    frame = pd.read_csv(path)
    assert len(frame) == 6 and not frame.duplicated(["run", "point"]).any()
    assert frame[frame.run == "a"].value.tolist() == [0.0, 0.1, 0.2]
    assert len(ResultTable(path, ["run", "point"]).rows) == 6


hashes = st.text("0123456789abcdef", min_size=12, max_size=12) | st.sampled_from(["1234e5678901", "000123456789", "123456789012", "nan", "NA", "inf"])
cells = st.one_of(hashes, st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=False), st.booleans(), st.none())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(hashes, cells, st.floats(allow_nan=True, allow_infinity=False)), min_size=1, max_size=6))
def test_a_table_reads_back_as_written_cell_for_cell(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("table") / "results.csv"
    pd.DataFrame([{"setup": a, "mixed": b, "value": c} for a, b, c in rows]).to_csv(path, index=False)
    written = path.read_text()
    frame = read_table(path)
    assert frame.to_csv(index=False) == written
    assert [str(s) for s in frame.setup] == [a for a, _, _ in rows]  # keys as they were written


def test_a_full_disk_fails_before_the_study_computes(tmp_path, monkeypatch, capsys):
    import importlib.util

    class Full:
        free = 10 * 2**20

    monkeypatch.setattr(validation.shutil, "disk_usage", lambda path: Full)
    spec = importlib.util.spec_from_file_location("study_ptq_vs_qat_disk", ROOT / "studies" / "ptq_vs_qat.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit:
        module.main(["--quick", "--dataset", "digits", "--out", str(tmp_path / "out"), "--models-dir", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "--out" in err and "10 MiB are" in err
    assert not (tmp_path / "models").exists()  # nothing trained


# -- whole studies: concurrent, killed, cold and warm ------------------------------------------------------------
STUDY = [
    sys.executable, "studies/ptq_vs_qat.py", "--quick", "--dataset", "digits", "--compute", "cpu", "--threads", "1", "--epochs", "6",
    "--test-samples", "100", "--d-model", "8", "--d-state", "8", "--methods", "ptq",
]
SWEEP = ["--components", "A", "state", "all", "--bits", "2", "3", "4", "6"]
OTHER_SWEEP = ["--components", "state", "act", "--bits", "3", "4", "5"]  # partly the same points
KEY = ["setup", "experiment", "recipe", "component", "bits", "method", "mode"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(out: Path, models: Path, sweep: list[str]) -> subprocess.Popen:
    command = [*STUDY, *sweep, "--out", str(out), "--models-dir", str(models)]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> str:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out


def rows_in(table: Path) -> int:
    try:
        return max(table.read_text().count("\n") - 1, 0)
    except FileNotFoundError:
        return 0


def kill_mid_sweep(process: subprocess.Popen, table: Path) -> int:
    """SIGKILL the run once its table has two rows (the float model trained, the sweep begun); the rows it left."""
    while rows_in(table) < 2 and process.poll() is None:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    return rows_in(table)


def text_table(path: Path) -> pd.DataFrame:
    """A results CSV as text, timing aside: what must agree bit for bit."""
    return pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="seconds").set_index(KEY)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The study run three ways at once, then once more:
    alone   cold (a fresh model cache), SIGKILLed mid-sweep, then the same command again (warm): resumes;
    shared  two runs of partly the same points into one table and one fresh cache at the same time."""
    tmp = tmp_path_factory.mktemp("runs")
    alone = start(tmp / "alone", tmp / "models_alone", SWEEP)
    shared = [start(tmp / "shared", tmp / "models_shared", sweep) for sweep in (SWEEP, OTHER_SWEEP)]
    left = kill_mid_sweep(alone, tmp / "alone" / "results.csv")
    shared_outputs = [finish(process) for process in shared]
    resumed_output = finish(start(tmp / "alone", tmp / "models_alone", SWEEP))
    return tmp, left, shared_outputs, resumed_output


def test_a_killed_run_resumes_warm_to_the_csv_of_uninterrupted_cold_runs(runs):
    tmp, left, shared_outputs, resumed_output = runs
    alone, shared = text_table(tmp / "alone" / "results.csv"), text_table(tmp / "shared" / "results.csv")
    assert 2 <= left < len(alone), f"killed with {left} of {len(alone)} rows"
    assert "epoch 6:" not in resumed_output  # the model the killed run trained, reused
    pd.testing.assert_frame_equal(alone, shared.loc[alone.index])  # the same command's rows, bit for bit
    assert alone.accuracy.nunique() > 3  # a table whose equality says something
    assert not list((tmp / "alone").glob(".*.tmp"))  # what the kill left half-written is gone
    (alone_run,), (shared_run,) = (list((tmp / name).glob("float-*/best.pt")) for name in ("models_alone", "models_shared"))
    alone_state, shared_state = load_checkpoint(alone_run)["model"], load_checkpoint(shared_run)["model"]
    assert all(torch.equal(alone_state[k], shared_state[k]) for k in alone_state)  # trained in two processes, bit for bit


def test_runs_at_the_same_time_train_once_and_lose_no_row(runs):
    tmp, _, shared_outputs, _ = runs
    assert sum(output.count("epoch 6:") for output in shared_outputs) == 1  # one trained the float model, the other waited
    shared = text_table(tmp / "shared" / "results.csv").reset_index()
    assert not shared.duplicated(KEY).any()
    sweep = shared[shared.experiment == "sweep"]
    expected = {(c, b) for c in ("A", "state", "all") for b in "2346"} | {(c, b) for c in ("state", "act") for b in "345"}
    assert set(zip(sweep.component, sweep.bits)) == expected
    assert set(shared.experiment) == {"float", "sweep", "headline"} and len(shared) == len(expected) + 4
    assert (shared.accuracy != "").all() and not list((tmp / "shared").glob(".*.tmp"))  # every row whole, no temporary left
