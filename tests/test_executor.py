"""Points measured on Ray (aimc_ssm.study.executor) write the CSV of a local run: a study on a Ray of two
workers on this machine (the one an executor starts), and a driver killed mid-sweep whose rerun resumes;
out-of-order points, a lost worker and a failing point through the results table; quantized and pruned
models sent to a worker; the executor flags and the model presets of the study parser."""
from __future__ import annotations

import importlib.util
import os
import pickle
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch

from aimc_ssm.core.data import load_dataset
from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.metrics import report
from aimc_ssm.quant.precision import recipe_spec
from aimc_ssm.quant.pruning import attach_masks
from aimc_ssm.quant.quantize import ptq_model
from aimc_ssm.study.executor import LocalExecutor, PointLost, RayExecutor, executor_of, pickled, shown_lines
from aimc_ssm.study.harness import PRESETS, ResultTable, study_parser, study_setup

ROOT = Path(__file__).resolve().parents[1]
STUDY = [
    "studies/ptq_vs_qat.py", "--quick", "--dataset", "digits", "--compute", "cpu", "--epochs", "6", "--qat-epochs", "2",
    "--d-model", "8", "--d-state", "8", "--bits", "3", "6",
]
KEY = ["setup", "experiment", "recipe", "component", "bits", "method", "mode"]


# -- a study, three ways ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    """The Ray that an executor of two workers starts on this machine (two CPUs); the study runs join it by its address."""
    RayExecutor(workers=2).connect()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this module's points and measures: workers cannot import it
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def study(out: Path, models: Path, *flags, python=(sys.executable,)) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the process is now: with the cluster's RAY_AUTH_MODE once it has joined one
    command = [*python, *STUDY, "--out", str(out), "--models-dir", str(models), *flags]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return out, err


def text_table(path: Path) -> pd.DataFrame:
    """A results CSV as text, in its row order, timing aside: what must agree bit for bit."""
    return pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns="seconds")


def study_module():
    """studies/ptq_vs_qat.py as a module of this process."""
    spec = importlib.util.spec_from_file_location("study_ptq_vs_qat_executor", ROOT / STUDY[0])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look the module up
    spec.loader.exec_module(module)
    return module


def rows_in(table: Path) -> int:
    try:
        return max(table.read_text().count("\n") - 1, 0)
    except FileNotFoundError:
        return 0


def imported(importtime: str) -> set[str]:
    """The modules a `python -X importtime` run imported, from what it wrote to stderr."""
    return {line.rsplit("|", 1)[-1].strip() for line in importtime.splitlines() if line.startswith("import time:")}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The study in one process, one thread (a Ray worker's share: training depends on the thread count); its output and imports."""
    tmp = tmp_path_factory.mktemp("local")
    output, err = finish(study(tmp / "out", tmp / "models", "--threads", "1", python=(sys.executable, "-X", "importtime")))
    return text_table(tmp / "out" / "results.csv"), output, imported(err)


def test_the_local_executor_never_imports_ray(local_run):
    _, _, modules = local_run
    assert "aimc_ssm.study.executor" in modules and not {m for m in modules if m.split(".")[0] == "ray"}


def test_a_study_on_a_local_ray_of_two_workers_writes_the_local_csv(local_run, cluster, tmp_path):
    local, local_output, _ = local_run
    output, _ = finish(study(tmp_path / "out", tmp_path / "models", "--executor", "ray", "--ray-address", cluster))  # workers: as many as it holds
    pd.testing.assert_frame_equal(text_table(tmp_path / "out" / "results.csv"), local)  # row order too
    assert local.accuracy.nunique() > 3  # a table whose equality says something
    trainings = sum(line.startswith("epoch ") for line in local_output.splitlines())
    assert sum(line.startswith("epoch ") for line in output.splitlines()) == trainings  # each model trained once, on a worker
    assert len(list((tmp_path / "models").glob("*-*/best.pt"))) == 6  # the float model and five QAT models
    assert released(), "the study's workers still hold CPUs"  # its workers are gone with it


def released(seconds: float = 10.0) -> bool:
    """Whether the cluster's two CPUs are free again within `seconds` (Ray releases them asynchronously)."""
    deadline = time.time() + seconds
    while ray.available_resources().get("CPU") != 2 and time.time() < deadline:
        time.sleep(0.1)
    return ray.available_resources().get("CPU") == 2


def test_a_killed_driver_resumes_to_the_local_csv(local_run, cluster, tmp_path):
    local, _, _ = local_run
    flags = ("--executor", "ray", "--ray-address", cluster)  # a cluster that outlives the killed driver
    process = study(tmp_path / "out", tmp_path / "models", *flags)
    while rows_in(tmp_path / "out" / "results.csv") < 3 and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    left = rows_in(tmp_path / "out" / "results.csv")
    rerun = [*STUDY[1:], "--threads", "1", "--out", str(tmp_path / "out"), "--models-dir", str(tmp_path / "models")]
    study_module().main(rerun)  # locally, in this process: any executor resumes what a Ray run left
    assert 3 <= left < len(local), f"killed with {left} of {len(local)} rows"
    pd.testing.assert_frame_equal(text_table(tmp_path / "out" / "results.csv"), local)  # nothing lost, nothing twice, in order
    assert not list((tmp_path / "out").glob(".*.tmp"))


# -- the results table on Ray ---------------------------------------------------------------------------------
@dataclass
class Point:
    index: int
    keys: list[dict]


POINTS = [Point(i, [{"point": i, "draw": d} for d in range(2)]) for i in range(6)]


def later_first(folder: Path):
    """Rows of a point, the later points finishing first (each leaves a file `folder`/<index> when done);
    the worker of point 2 dies on its first attempt (it leaves `folder`/crashed)."""

    def measure(point: Point) -> list[dict]:
        if point.index == 2 and not (folder / "crashed").exists():
            (folder / "crashed").touch()
            os._exit(1)  # the worker process dies mid-point, as it would from a crash or the OOM killer
        time.sleep(0.05 * (len(POINTS) - point.index))
        print(f"\rbar {point.index}\rpoint {point.index} done")
        (folder / str(point.index)).touch()
        return [{**key, "value": point.index + key["draw"] / 10} for key in point.keys]

    return measure


def finishing_order(folder: Path) -> list[int]:
    return [int(p.name) for p in sorted(folder.glob("[0-9]*"), key=lambda p: p.stat().st_mtime_ns)]


class Table(ResultTable):
    """A results table that notes the order in which the points' rows arrive."""

    arrived: list[int]

    def add_rows(self, rows: list[dict]) -> None:
        self.arrived.append(rows[0]["point"])
        super().add_rows(rows)


def measured(executor, path: Path, measure, points=POINTS) -> tuple[str, list[int]]:
    """The table file that measure_pending writes, and the order in which the points arrived."""
    table = Table(path, ["point", "draw"], executor)
    table.arrived = []
    table.measure_pending(points, measure, "test")
    return path.read_text(), table.arrived


@pytest.fixture
def executor(cluster):
    return RayExecutor(workers=2)


def test_points_finishing_out_of_order_or_retried_give_the_local_table(executor, tmp_path, capsys):
    (tmp_path / "ray").mkdir()
    table, arrived = measured(executor, tmp_path / "ray.csv", later_first(tmp_path / "ray"))
    assert (tmp_path / "ray" / "crashed").exists()  # a worker was lost and its point measured again
    assert finishing_order(tmp_path / "ray") != sorted(finishing_order(tmp_path / "ray")) and arrived == sorted(arrived)
    assert capsys.readouterr().out.count("point 2 done") == 1  # what the point printed, bars wiped, printed once by the driver
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "crashed").touch()
    assert table == measured(LocalExecutor(), tmp_path / "local.csv", later_first(tmp_path / "local"))[0]


def test_a_point_lost_on_every_attempt_is_reported_and_nothing_of_it_written(cluster, tmp_path):
    def always_crash(point: Point) -> list[dict]:
        if point.index == 1:
            os._exit(1)
        return [{**key, "value": 0.0} for key in point.keys]

    with pytest.raises(PointLost, match=r"rows \[\{'point': 1, 'draw': 0\}, \{'point': 1, 'draw': 1\}\] was lost .* on 1 attempts"):
        measured(RayExecutor(workers=1, max_retries=0), tmp_path / "ray.csv", always_crash)
    assert set(pd.read_csv(tmp_path / "ray.csv").point) == {0}


def test_a_failing_point_stops_the_sweep_and_the_rerun_measures_only_the_rest(executor, tmp_path):
    def fails_at_3(point: Point) -> list[dict]:
        if point.index == 3:
            raise ValueError("no such setting")
        time.sleep(0.1)
        return [{**key, "value": -1.0} for key in point.keys]  # -1: measured by the first run

    with pytest.raises(ValueError, match="no such setting") as error:
        measured(executor, tmp_path / "ray.csv", fails_at_3)
    assert "while measuring the point of rows [{'point': 3, 'draw': 0}, {'point': 3, 'draw': 1}]" in str(error.value.__notes__)
    # the points before the failure that finished before it, in order: on Ray, possibly none of them
    written = tmp_path / "ray.csv"
    first = pd.read_csv(written) if written.exists() else pd.DataFrame({"point": [], "value": []})
    assert list(first.point.drop_duplicates()) in ([], [0], [0, 1], [0, 1, 2]) and (first.value == -1).all()

    (tmp_path / "crashed").touch()  # no worker lost this time
    measured(executor, tmp_path / "ray.csv", later_first(tmp_path))
    resumed = pd.read_csv(tmp_path / "ray.csv")
    assert list(zip(resumed.point, resumed.draw)) == [(p.index, d) for p in POINTS for d in range(2)]  # every row once, in order
    assert resumed.set_index("point").loc[list(set(first.point))].value.eq(-1).all()  # what the first run wrote is kept


def test_quantized_and_pruned_models_reach_a_worker_unchanged():
    torch.manual_seed(0)
    model = ptq_model(S4DModel(ModelConfig(d_model=8, d_state=8)), recipe_spec("channel-asym-state16", 4))
    attach_masks(model)
    model.decoder.parametrizations.weight[1].keep[0] = False  # a Linear with two parametrizations: a quantizer, a pruning mask
    sent = pickle.loads(pickled([model, model], "the models"))  # torch refuses to pickle parametrized modules itself
    x = torch.randn(3, 20, 1)  # (B, L, d_input)
    assert sent[0] is sent[1] and all(torch.equal(model(x, mode), sent[0](x, mode)) for mode in ("conv", "recurrent"))
    assert sent[0].state_dict().keys() == model.state_dict().keys()
    assert isinstance(model.decoder.weight, torch.Tensor)  # the model that was sent keeps its parametrizations


def test_shown_lines_are_what_a_terminal_keeps():
    assert shown_lines("epoch 1/2:  50%|#\repoch 1/2: 100%|##\r          \repoch 1: loss 0.5\n\nwarning\n") == ["epoch 1: loss 0.5", "warning"]


# -- flags ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workers", "2"], "--workers cannot be 2: it takes a value only with --executor ray"),
        (["--ray-address", "auto"], "--ray-address cannot be 'auto': it takes a value only with --executor ray"),
        (["--executor", "ray", "--workers", "0"], "--workers cannot be 0"),
        (["--executor", "ray", "--cpus-per-point", "0"], "--cpus-per-point cannot be 0"),
        (["--executor", "ray", "--compute", "cpu", "--gpus-per-point", "0.5"], "--gpus-per-point cannot be 0.5: it takes a value only when the study computes on a GPU"),
        (["--executor", "ray", "--gpus-per-point", "1.5"], "--gpus-per-point cannot be 1.5: it takes a fraction of one GPU"),
    ],
)
def test_executor_flags_that_cannot_go_together_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        study_parser("t", "").parse_args(flags)
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_ray_flags_give_workers_their_share():
    args = study_parser("t", "").parse_args(["--executor", "ray", "--workers", "3", "--cpus-per-point", "2", "--compute", "cpu"])
    executor = executor_of(args)
    assert (executor.address, executor.workers, executor.cpus_per_point, executor.gpus_per_point) == (None, 3, 2, 0.0)
    assert isinstance(executor_of(study_parser("t", "").parse_args([])), LocalExecutor)


# -- model presets ------------------------------------------------------------------------------------------------
def test_presets_build_the_z25_and_s25_scifar_models_and_flags_override_them():
    parser = study_parser("t", "")
    z25 = study_setup(parser.parse_args(["--dataset", "digits"])).model
    assert z25 == ModelConfig(d_input=1, d_output=10)  # today's default model, so its cached entries keep their key
    s25 = study_setup(parser.parse_args(["--dataset", "digits", "--preset", "s25-scifar"])).model
    assert (s25.n_layers, s25.d_model, s25.d_state, s25.norm, s25.prenorm, s25.dropout) == (4, 128, 128, "layer", False, 0.1)
    assert (s25.activation, s25.trainable_B, s25.a_init) == ("none", False, "lin-quarter")  # the s25 recipe's model
    float_s25 = report(s25, {})  # [S25]'s sCIFAR figures in float (tests/test_metrics.py pins them)
    assert (float_s25.ace, float_s25.model_size_bytes, float_s25.adc_complexity) == (202_768_384, 787_456, 2_134_336)
    narrow = study_setup(parser.parse_args(["--dataset", "digits", "--preset", "s25-scifar", "--d-model", "32", "--n-layers", "2"])).model
    assert (narrow.d_model, narrow.n_layers, narrow.d_state, narrow.norm) == (32, 2, 128, "layer")


def test_the_s25_scifar_model_trains_a_step_on_smnist():
    data = load_dataset("smnist")
    x, y = data.train.tensors[0][:2], data.train.tensors[1][:2]  # (2, 784, 1), (2,)
    torch.manual_seed(0)
    model = S4DModel(PRESETS["s25-scifar"])
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and sum(p.numel() for p in model.parameters()) > 100_000
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
