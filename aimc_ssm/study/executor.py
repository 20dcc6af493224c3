"""Where a study's points are measured: one after another in this process, or many at once on Ray.

    add_executor_flags(parser)     --executor, --workers, --ray-address, --cpus-per-point, --gpus-per-point
    check_executor_flags(args)     the combinations those flags cannot take, as SettingErrors
    executor_of(args)              the executor the flags name
    LocalExecutor()                the points in this process, in their order; Ray is never imported
    RayExecutor(...)               the points on Ray workers, `workers` at once: on a Ray started for the
                                   run on this machine, or on a running cluster (`address`)

An executor's `results(points, measure, wanted, desc)` yields (point, rows) in the order of the points,
under a progress bar over the points as they finish. wanted(point), asked just before a point starts,
lets the run skip a point that another run has measured meanwhile. The driver (the process that runs
the study) writes the rows: aimc_ssm.study.harness.ResultTable.measure_pending, the one caller. Points
that finish before an earlier one wait in the driver for it, so that a table holds the rows of the
first points of a sweep, as a local run's does, and a killed run's rerun, on either executor, writes
the same CSV; what waits when the driver is killed is measured again by the rerun.

On Ray, each worker is an actor holding `cpus_per_point` CPUs (its torch threads) and, when the study
computes on a GPU, `gpus_per_point` of one, started for a sweep and stopped at its end. It receives the
study's `measure` once (the closure with the study's models and data, cloudpickled once into Ray's
object store; `pickled` also sends the quantized and pruned models, which torch will not pickle) and
keeps what that builds (the data, models read from the cache, calibrated deployments) from point to
point; a point is one call, its point pickled along. What a point prints is printed by the driver when
the point is done.

Models that a point trains land in the model cache (--models-dir) through aimc_ssm.cache.train_once:
each is trained once per sweep, by the first point that needs it, while the points that need it too
wait on the cache entry's file lock and then read it; its files are written atomically. Workers on
other machines therefore need the model cache on a shared filesystem with working file locks, at the
same path. Workers run in the driver's working directory, so that relative paths (--models-dir,
--data-dir, a device file) mean what they mean on the driver: that directory must exist on every node,
with the same package version installed.

Failures: a worker that dies (a crash, the OOM killer, a lost node) is restarted and its point
measured again, up to `max_retries` times (Ray prints each retry); a point whose measure raises, or
whose retries are spent, stops the sweep with its error and the point's keys. A point's rows come
back whole or not at all, so nothing of a failed point is written, and the points measured before it
keep their rows: the same command resumes.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.util
import io
import os
import pickle
import sys
from typing import Callable, Iterator

import torch
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from ..validation import SettingError, flag_name

EXECUTORS = ("local", "ray")
MAX_RETRIES = 3  # Ray's own default for tasks: a worker lost three times in a row on one point is not bad luck


def add_executor_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("where the points are measured")
    group.add_argument(
        "--executor", choices=EXECUTORS, default="local",
        help="local: one point after another in this process; ray: several at once on Ray workers, the same CSV (default: %(default)s)",
    )
    group.add_argument(
        "--workers", type=int, default=None,
        help="points measured at once with --executor ray (default: as many as the CPUs hold, --cpus-per-point each: "
        "this machine's cores, or the cluster's CPUs; with a GPU, also no more than its GPUs hold)",
    )
    group.add_argument(
        "--ray-address", default=None,
        help="a running Ray cluster (auto, HOST:PORT or ray://HOST:10001) for --executor ray (default: a Ray started on this machine for the run)",
    )
    group.add_argument(
        "--cpus-per-point", type=int, default=1, help="CPUs, and torch threads, of each Ray worker (default: %(default)s)",
    )
    group.add_argument(
        "--gpus-per-point", type=float, default=None,
        help="GPUs of each Ray worker when the study computes on a GPU (--compute cuda, or auto on a machine with one); "
        "0.25: four workers share a GPU (default: 1)",
    )


def check_executor_flags(args: argparse.Namespace) -> None:
    """What the executor flags cannot take, alone or together; SettingError naming the flag, the value and the fix."""
    if args.workers is not None and args.workers < 1:
        raise SettingError(flag_name("workers"), args.workers, "an integer of at least 1", "pass e.g. 2")
    if args.cpus_per_point < 1:
        raise SettingError(flag_name("cpus_per_point"), args.cpus_per_point, "an integer of at least 1", "pass e.g. 1")
    gpus = args.gpus_per_point
    if gpus is not None and not (0 < gpus <= 1 or float(gpus).is_integer()):
        raise SettingError(flag_name("gpus_per_point"), gpus, "a fraction of one GPU (0 to 1) or a whole number of GPUs", "pass e.g. 0.5 or 1")
    if args.executor == "local":
        for name, given in (("workers", (args.workers or 1) > 1), ("ray_address", args.ray_address is not None)):
            if given:
                raise SettingError(flag_name(name), getattr(args, name), "a value only with --executor ray", "add --executor ray, or leave it out")
        return
    if importlib.util.find_spec("ray") is None:
        raise SettingError(flag_name("executor"), "ray", "ray where Ray is installed", "pip install 'aimc-ssm[ray]' (requirements.txt pins its version)")
    if gpus is not None and not on_gpu(args.compute):
        raise SettingError(flag_name("gpus_per_point"), gpus, "a value only when the study computes on a GPU", "add --compute cuda, or leave it out")


def on_gpu(compute: str) -> bool:
    """Whether the points compute on a GPU: --compute cuda, or auto where this machine has one (as a local run would)."""
    return compute == "cuda" or (compute == "auto" and torch.cuda.is_available())


def executor_of(args: argparse.Namespace) -> LocalExecutor | RayExecutor:
    """The executor of checked flags (check_executor_flags)."""
    if args.executor == "local":
        return LocalExecutor()
    gpus = (1.0 if args.gpus_per_point is None else args.gpus_per_point) if on_gpu(args.compute) else 0.0
    return RayExecutor(address=args.ray_address, workers=args.workers, cpus_per_point=args.cpus_per_point, gpus_per_point=gpus)


Measure = Callable[[object], list[dict]]


class LocalExecutor:
    """The points one after another in this process, in their order."""

    def results(self, points: list, measure: Measure, wanted: Callable[[object], bool], desc: str) -> Iterator[tuple[object, list[dict]]]:
        for point in tqdm(points, desc=desc, unit="point"):
            if wanted(point):
                yield point, measure(point)


class RayExecutor:
    """The points on `workers` Ray actors at once (module docstring); Ray is imported and started on the first sweep.

    address None starts a Ray on this machine with workers × cpus_per_point CPUs for this process
    (never joining another one running here); an address joins that cluster. workers None: as many
    as the machine's cores, or the cluster's CPUs and GPUs, hold.
    """

    def __init__(self, address: str | None = None, workers: int | None = None, cpus_per_point: int = 1, gpus_per_point: float = 0.0,
                 max_retries: int = MAX_RETRIES):
        self.address, self.cpus_per_point, self.gpus_per_point, self.max_retries = address, cpus_per_point, gpus_per_point, max_retries
        if workers is None and address is None:
            workers = max(len(os.sched_getaffinity(0)) // cpus_per_point, 1)
        self.workers = workers

    def connect(self):
        """Ray, started or joined on the first call; the workers that the cluster's resources hold."""
        import ray

        if not ray.is_initialized():
            if self.address is None:
                ray.init(address="local", num_cpus=self.workers * self.cpus_per_point, include_dashboard=False, log_to_driver=False)
            else:
                try:
                    ray.init(address=self.address, log_to_driver=False)
                except ConnectionError as err:
                    raise SettingError(
                        flag_name("ray_address"), self.address, "the address of a running Ray cluster",
                        f"start one (ray start --head) or check the address; a cluster with token authentication takes RAY_AUTH_MODE=token "
                        f"and its token (ray get-auth-token on its head node) in RAY_AUTH_TOKEN ({err})",
                    ) from None
        self.workers = workers_held(ray.cluster_resources(), self.workers, self.cpus_per_point, self.gpus_per_point)
        return ray

    def results(self, points: list, measure: Measure, wanted: Callable[[object], bool], desc: str) -> Iterator[tuple[object, list[dict]]]:
        if not points:
            return
        ray = self.connect()
        shipped = [ray.put(pickled(measure, "the study's measure"))]  # in a list: a worker reads it once (PointWorker.measure), not on every call
        actor = ray.remote(PointWorker).options(
            num_cpus=self.cpus_per_point, num_gpus=self.gpus_per_point, max_restarts=-1, max_task_retries=self.max_retries,
        )
        # workers of this sweep alone: they hold its models and data, and their CPUs and GPUs, until it ends
        workers = [actor.remote(os.getcwd(), self.cpus_per_point) for _ in range(min(self.workers, len(points)))]
        idle, running, waiting, written = list(workers), {}, {}, 0  # waiting: index -> (point, rows), None if skipped
        try:
            with tqdm(total=len(points), desc=desc, unit="point") as bar:
                for index, point in enumerate(points):
                    if not idle:
                        self.finished(ray, running, idle, waiting, bar)
                    if wanted(point):
                        worker = idle.pop()
                        running[worker.measure.remote(shipped, pickled(point, "a point"))] = (worker, index, point)
                    else:
                        waiting[index] = None
                        bar.update()
                    written = yield from in_order(waiting, written)
                while running:
                    self.finished(ray, running, idle, waiting, bar)
                    written = yield from in_order(waiting, written)
        finally:  # also when a point failed or the caller stopped: the points still running are dropped with their workers
            for worker in workers:
                ray.kill(worker)

    def finished(self, ray, running: dict, idle: list, waiting: dict, bar: tqdm) -> None:
        """The next point to finish into `waiting`, with its rows; what it printed, printed here. Its worker goes back to `idle`."""
        (ref,), _ = ray.wait(list(running), num_returns=1)
        worker, index, point = running.pop(ref)
        try:
            rows, out, err = ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # measure raised: its own exception, with the worker's traceback
            cause = error.as_instanceof_cause()
            cause.add_note(f"while measuring the point of rows {point.keys} on a Ray worker")
            raise cause from None
        except ray.exceptions.RayError as error:  # the worker was lost on every attempt
            raise PointLost(f"the point of rows {point.keys} was lost with its Ray worker on {self.max_retries + 1} attempts: {error}") from error
        for line in shown_lines(out):
            tqdm.write(line)
        for line in shown_lines(err):
            tqdm.write(line, file=sys.stderr)
        idle.append(worker)
        bar.update()
        waiting[index] = (point, rows)


def in_order(waiting: dict, written: int):
    """Yield the finished points from index `written` on that no earlier point is still running before; the next index to write."""
    while written in waiting:
        finished = waiting.pop(written)
        if finished is not None:
            yield finished
        written += 1
    return written


class PointLost(RuntimeError):
    """A point whose Ray worker died on every attempt (a crash, the OOM killer, a lost node)."""


def workers_held(resources: dict, wanted: int | None, cpus_per_point: int, gpus_per_point: float) -> int:
    """How many workers of cpus_per_point CPUs and gpus_per_point GPUs the cluster's `resources` hold at
    once: `wanted`, or all that fit (None). More would wait for resources that never come."""
    cpu_fits = int(resources.get("CPU", 0) // cpus_per_point)
    gpu_fits = int(resources.get("GPU", 0) // gpus_per_point) if gpus_per_point else cpu_fits
    fits = min(cpu_fits, gpu_fits)
    if fits < 1:
        name, value = ("gpus_per_point", gpus_per_point) if gpu_fits < 1 else ("cpus_per_point", cpus_per_point)
        raise SettingError(
            flag_name(name), value, f"what the Ray cluster has room for (it has {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU)",
            "lower it, or add nodes",
        )
    if wanted is not None and wanted > fits:
        tqdm.write(f"--workers {wanted}: the Ray cluster has room for {fits} at once", file=sys.stderr)
    return fits if wanted is None else min(wanted, fits)


class PointWorker:
    """A Ray actor that measures points, one call each, in the driver's working directory with `threads` torch threads."""

    def __init__(self, cwd: str, threads: int):
        if not os.path.isdir(cwd):
            raise FileNotFoundError(
                f"the driver's working directory {cwd} is not on this node: run the study from a folder that every node "
                "mounts at the same path (the model cache and relative paths are read there)"
            )
        os.chdir(cwd)
        self.threads = threads
        self.measure_point = None  # the sweep's measure, read on the first call

    def measure(self, shipped: list, point: bytes) -> tuple[list[dict], str, str]:
        """The rows of the `pickled` point, and what measuring it printed to stdout and to stderr (also written
        to the worker's own log). shipped: [the object reference of the sweep's pickled measure]."""
        import ray

        torch.set_num_threads(self.threads)
        if self.measure_point is None:
            self.measure_point = pickle.loads(ray.get(shipped[0]))
        out, err = Copied(sys.stdout), Copied(sys.stderr)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rows = self.measure_point(pickle.loads(point))
        return rows, out.copy.getvalue(), err.copy.getvalue()


def pickled(obj, what: str) -> bytes:
    """obj cloudpickled for a Ray worker, parametrized torch modules (quantized or pruned Linears) included."""
    buffer = io.BytesIO()
    try:
        module_pickler()(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError, RuntimeError) as err:
        raise TypeError(f"{what} cannot be sent to a Ray worker ({type(err).__name__}: {err}); --executor local measures it in this process") from err
    return buffer.getvalue()


@functools.cache
def module_pickler() -> type:
    """Ray's cloudpickle Pickler, with torch modules that carry parametrizations pickled as a plain copy and
    the parametrizations to put back: torch refuses to pickle them any other way than by their state_dict."""
    from ray import cloudpickle

    class ModulePickler(cloudpickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, torch.nn.Module) and parametrize.is_parametrized(obj):
                return parametrized_reduction(obj)
            return super().reducer_override(obj)

    return ModulePickler


def parametrized_reduction(module: torch.nn.Module) -> tuple:
    """How to pickle a parametrized module: a copy of it as its own class with its original tensors (what
    torch.nn.utils.parametrize keeps under .parametrizations), and the parametrizations that
    `reparametrized` registers on it again. The copy changes class, never the class that torch made for
    the module, which the module itself still has."""
    plain = copy.deepcopy(module)
    plain.__class__ = type(module).__bases__[0]  # parametrize's own class derives from the module's
    lists = plain._modules.pop("parametrizations")
    chains = {}
    for name, chain in lists.items():
        if not chain.is_tensor:
            raise TypeError(f"{type(plain).__name__}.{name} is parametrized from several tensors, which cannot be sent to a worker")
        original = chain.original
        if isinstance(original, torch.nn.Parameter):
            plain.register_parameter(name, original)
        else:
            plain.register_buffer(name, original)
        chains[name] = list(chain)
    return reparametrized, (plain, chains)


def reparametrized(plain: torch.nn.Module, chains: dict) -> torch.nn.Module:
    for name, chain in chains.items():
        for parametrization in chain:
            parametrize.register_parametrization(plain, name, parametrization, unsafe=True)
    return plain


class Copied(io.TextIOBase):
    """A text stream that writes through to `stream` and keeps a copy of what it wrote."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text: str) -> int:
        self.stream.write(text)
        return self.copy.write(text)

    def flush(self) -> None:
        self.stream.flush()


def shown_lines(text: str) -> list[str]:
    """The lines a terminal shows of `text` once its progress bars are done: of each line, what follows
    its last carriage return (a bar redraws itself after one), the blank ones left out."""
    shown = (line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n"))
    return [line for line in shown if line]

