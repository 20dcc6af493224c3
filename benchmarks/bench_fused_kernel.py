"""Speed of the fused SSM crossbar kernel against its reference (a per-channel loop of aihwkit tiles) and its floor.

    .venv/bin/python benchmarks/bench_fused_kernel.py                      # batch 500, L 784, H 16, N 64, pcm
    .venv/bin/python benchmarks/bench_fused_kernel.py --ref-steps 100      # reference timed on 100 steps, scaled
    .venv/bin/python benchmarks/bench_fused_kernel.py --compute cuda --graphs --compile-step
    .venv/bin/python benchmarks/bench_fused_kernel.py --set forward.out_noise=0   # converters only, no noise draws
    .venv/bin/python benchmarks/bench_fused_kernel.py --batch 100 --copies 4 --y-adc-range 8   # adc_sweep's kernels

All runs use the same programmed tiles: `FusedS4D.scan` (the fused kernel: on the CPU the compiled scan of
aimc_ssm.analog.numba_scan where it runs the device's settings, which --steps compares with `StaticScan`'s
steps; on a GPU the Triton scan where it runs them, else the steps captured in CUDA graphs, which --graphs
also times), with --plain its plain twin `FusedS4D.scan_plain`, with --with-mvm the
scan through aihwkit's `AnalogMVM.matmul` per step, and `FusedS4D.scan_ref`, one AnalogLinear call per
channel and step. With --ref-steps the reference runs on the first steps of the sequence only and its time
is scaled to the full length (the per-step cost does not depend on t).

Floors: the work no implementation of the step can skip, timed in the same run, every step:
  float32  one batched float32 matmul of the (H, B, k·(N+2)) inputs with the (H, k·(N+2), N+1) crossbars
           (k copies) and, where the device has output noise, one torch.randn draw per output: aihwkit's
           batched read.
  own      the kernel's own read under per-sequence reads (the default): the inputs cast to float64, the
           float64 matmul (a sequence's result must not depend on its batch) rounded back to float32, and
           the counter-based normals of every output, each sequence its stream: on the CPU their uniforms
           hashed by the compiled scan's loop and torch's log, sqrt, cos and sin on them (what the
           compiled scan must run), on a GPU `SequenceDraws.normal_`; copies that read the same inputs
           summed before the product, N+2 rows.
The float32 floor is not reachable by per-sequence reads: their product is float64 and their normals
are hashed, not drawn from torch's generator; the "own" floor is the one they can reach. The run shows
why, measured: the share of a sequence's float32 products that change when it is read alone. On a GPU both
floors are timed eagerly and as CUDA graphs of 16 steps; ratios are against the faster. The Triton scan
keeps per-sequence reads' float64 product and hashed normals, in one kernel for the whole scan.
"""
from __future__ import annotations

import argparse
import time

import numpy
import torch
from common import fastest

from aimc_ssm.analog.deploy import program
from aimc_ssm.analog.devices import load_device, parse_settings
from aimc_ssm.analog.draws import SequenceDraws, counter
from aimc_ssm.analog.kernel import GRAPH_STEPS, FusedS4D, StaticScan, copies_share_inputs, triton_scan_runs
from aimc_ssm.analog.numba_scan import box_muller, unsupported
from aimc_ssm.core.s4d import S4D
from aimc_ssm.threads import match_torch_threads


def agreement(y: torch.Tensor, twin: torch.Tensor) -> str:
    if torch.equal(y, twin):
        return "bit for bit"
    equal = (y == twin).double().mean().item()
    return f"{equal:.4%} of outputs bit for bit, max |difference| {(y - twin).abs().max().item():.2e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--length", type=int, default=784)
    parser.add_argument("--d-model", type=int, default=16, help="H, crossbars per layer")
    parser.add_argument("--d-state", type=int, default=64, help="N; each crossbar is (N+2) x (N+1)")
    parser.add_argument("--device", default="pcm", help="device name or file (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=1, help="devices per weight (FusedS4D copies; default: %(default)s)")
    parser.add_argument("--y-adc-range", type=float, default=None, help="the y column's own ADC range (default: the device's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="device override; repeatable")
    parser.add_argument("--compute", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ref-steps", type=int, default=None, help="time the reference on this many steps and scale")
    parser.add_argument("--with-mvm", action="store_true", help="also time the scan through AnalogMVM.matmul")
    parser.add_argument("--plain", action="store_true", help="also time the plain twin (FusedS4D.scan_plain)")
    parser.add_argument("--steps", action="store_true", help="on cpu: also time StaticScan's steps, without the compiled scan")
    parser.add_argument("--graphs", action="store_true", help="on cuda: also time the scan as CUDA graphs of the step, without Triton")
    parser.add_argument("--eager", action="store_true", help="on cuda: also time the fast step without CUDA graphs or Triton")
    parser.add_argument("--compile-step", action="store_true", help="on cuda: compile the step (torch.compile) before capture")
    parser.add_argument("--graph-steps", type=int, default=GRAPH_STEPS, help="on cuda: steps per CUDA graph (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--cpu-time", action="store_true",
        help="on cpu with --threads 1: time in this process's CPU seconds, which neighbours on a shared machine do not inflate",
    )
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS", help="also profile a scan of this many steps (torch.profiler)")
    parser.add_argument("--repeat", type=int, default=1, help="report the best of this many runs of each (not the reference)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.cpu_time and (args.compute != "cpu" or args.threads != 1):
        parser.error("--cpu-time measures one CPU thread: use it with --compute cpu --threads 1")

    clock = time.process_time if args.cpu_time else time.perf_counter  # --cpu-time: the CPU time of this process

    def timed(fn, repeats: int = args.repeat):
        """(seconds, output) of fn: the best of `repeats` runs (a shared CPU's neighbours slow some)."""
        return fastest(fn, torch.device(args.compute), repeats, clock)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ssm = S4D(args.d_model, args.d_state).eval()
    u = torch.randn(args.batch, args.length, args.d_model)
    kernel = FusedS4D(ssm, load_device(args.device, **parse_settings(args.set)), copies=args.copies, y_adc_range=args.y_adc_range)
    kernel.calibrate(u[:16])
    program(kernel, t_inference=3600.0)
    kernel.to(args.compute)
    u = u.to(args.compute)
    ref_steps = min(args.ref_steps or args.length, args.length)

    print(
        f"batch {args.batch}, L {args.length}, H {args.d_model}, N {args.d_state} "
        f"({args.copies * (args.d_state + 2)}x{args.d_state + 1} crossbars, {args.copies} copies, y ADC range {args.y_adc_range}), "
        f"device {' '.join([args.device, *args.set])}, compute {args.compute}, "
        f"{torch.get_num_threads()} threads, execution {kernel.execution()}, "
        f"{'CPU' if args.cpu_time else 'wall-clock'} seconds, best of {args.repeat}"
    )
    kernel.graph_steps, kernel.compile_step = args.graph_steps, args.compile_step
    steps = args.length + 1
    triton = args.compute == "cuda" and kernel.triton and triton_scan_runs(kernel, kernel.crossbar_stack(u))

    def compile_the_step():  # the graphed step compiled for the scan's shapes, once: its first call
        first, _ = timed(lambda: kernel(u), 1)
        print(f"fused kernel, first call (compiles the step): {first:8.3f} s")

    with torch.no_grad():
        if kernel.compile_step and args.compute == "cuda" and not triton:
            compile_the_step()
        else:
            kernel(u[:, :2])  # warm-up, in which the Triton scan compiles for these settings
        fused, y = timed(lambda: kernel(u))
        graphs = f", CUDA graphs of {kernel.graph_steps} steps{', compiled step' if kernel.compile_step else ''}"
        compiled = args.compute == "cpu" and kernel.numba and compiled_scan_runs(kernel, u)
        how = ", Triton scan" if triton else graphs if args.compute == "cuda" else ", compiled scan" if compiled else ""
        print(f"fused kernel (execution {kernel.execution()}{how}):{' ' * max(1, 24 - len(how))}{fused:8.3f} s")
        if args.compute == "cuda" and (args.graphs or not triton) and kernel.graph_steps > 0:
            kernel.triton = False
            if triton and kernel.compile_step:
                compile_the_step()
            if triton:
                graphed, y_graphed = timed(lambda: kernel(u))
                print(f"fused kernel{graphs}:{' ' * max(1, 35 - len(graphs))}{graphed:8.3f} s   ({graphed / fused:.1f}x the Triton scan; agree {agreement(y, y_graphed)})")
            scan = StaticScan(kernel, kernel.crossbar_stack(u), u)
            capture, _ = timed(lambda: scan.capture(kernel.graph_steps, kernel.compile_step), 1)  # one capture, replayed once
            replay, y_replay = timed(scan.replay, 1)
            print(f"  of which capture{' and compilation' if kernel.compile_step else ''} {capture:.3f} s, replays {replay:.3f} s (agree {agreement(y, y_replay)})")
            kernel.triton = True
        if args.eager and args.compute == "cuda":
            kernel.triton, kernel.graph_steps, compiled, kernel.compile_step = False, 0, kernel.compile_step, False
            eager, y_eager = timed(lambda: kernel(u))
            kernel.triton, kernel.graph_steps, kernel.compile_step = True, args.graph_steps, compiled
            print(f"fused kernel, steps launched eagerly:           {eager:8.3f} s   ({eager / fused:.1f}x the fused kernel; agree {agreement(y, y_eager)})")
        if args.steps and compiled:
            kernel.numba = False
            stepped, y_stepped = timed(lambda: kernel(u))
            kernel.numba = True
            print(f"StaticScan's steps:                             {stepped:8.3f} s   ({stepped / fused:.1f}x the fused kernel; agree {agreement(y, y_stepped)})")
        if args.plain:
            plain, y_plain = timed(lambda: kernel.scan_plain(u))
            print(f"plain twin (scan_plain):                        {plain:8.3f} s   ({plain / fused:.1f}x the fused kernel; agree {agreement(y, y_plain)})")
        if args.with_mvm:
            mvm, _ = timed(lambda: kernel.scan(u, reference_mvm=True))
            print(f"fused, AnalogMVM.matmul per step (twin):        {mvm:8.3f} s   ({mvm / fused:.1f}x the fused kernel)")
        ref = timed(lambda: kernel.scan_ref(u[:, :ref_steps]), 1)[0] * (args.length + 1) / (ref_steps + 1)
        scaled = f", timed on {ref_steps} of {args.length} steps and scaled" if ref_steps < args.length else ""
        print(f"reference (AnalogLinear per channel per step):  {ref:8.3f} s{scaled}")
        noise = "output-noise draws" if kernel.rpu_config.forward.out_noise > 0 else "no noise"
        floors = {}
        for name in ("float32", "own"):
            floor = Floor(kernel, args.batch, name)
            times = {"eager": timed(lambda: floor.run(steps))[0]}
            if args.compute == "cuda":
                times["graphs"] = timed(lambda: floor.replay(steps, args.graph_steps))[0]
            floors[name] = min(times.values())
            detail = ", ".join(f"{k} {v:.3f} s" for k, v in times.items())
            print(f"floor {name:7s} (matmul, {noise}):{' ' * (18 - len(noise))}{floors[name]:8.3f} s   ({detail}; fused kernel: {fused / floors[name]:.2f}x this floor)")
            if name == "float32":
                print(f"  its product is not per-sequence: {floor.batch_dependence():.0%} of a sequence's outputs change "
                      "when it is read alone, not in its batch")
    if args.profile:
        profile(kernel, u[:, : args.profile], args.compute)
    print(f"speed-up of the fused kernel over the reference: {ref / fused:.1f}x (a kernel at the float32 floor would reach {ref / floors['float32']:.1f}x)")


def compiled_scan_runs(kernel: FusedS4D, u: torch.Tensor) -> bool:
    """Whether the compiled CPU scan (aimc_ssm.analog.numba_scan) runs this kernel's scan of u."""
    return unsupported(kernel, kernel.crossbar_stack(u), u) is None


def profile(kernel: FusedS4D, u: torch.Tensor, compute: str) -> None:
    """The operations of one scan of u, by their own time: what a step costs beyond the floor."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if compute == "cuda" else [])
    with torch.no_grad(), profiler(activities=activities) as run:
        kernel(u)
    key = "self_cuda_time_total" if compute == "cuda" else "self_cpu_time_total"
    print(f"one scan of {u.shape[1]} steps, by operation:")
    print(run.key_averages().table(sort_by=key, row_limit=20))


class Floor:
    """The arithmetic of one step that every implementation does (module docstring): "float32" (aihwkit's
    batched read) or "own" (the per-sequence read: float64 product, counter-based normals)."""

    def __init__(self, kernel: FusedS4D, batch: int, kind: str):
        H, N = kernel.d_model, kernel.d_state
        device = kernel.D.device
        self.kind, self.draws = kind, kernel.rpu_config.forward.out_noise > 0
        # aihwkit's read multiplies every copy's rows; the per-sequence read sums copies that share their inputs
        shared = kind == "own" and copies_share_inputs(kernel.rpu_config.forward)
        rows = (1 if shared else kernel.copies) * (N + 2)
        self.weight = torch.randn(H, rows, N + 1, device=device)
        self.inp = torch.randn(H, batch, rows, device=device)
        self.out, self.noise = torch.empty(H, batch, N + 1, device=device), torch.empty(H, batch, N + 1, device=device)
        if kind == "own":  # the per-sequence product's layout: weight (H, N+1, rows) @ inputs (H, rows, B)
            self.weight64 = self.weight.double().transpose(1, 2).contiguous()
            self.inp_t, self.inp64 = self.inp.transpose(1, 2).contiguous(), self.inp.double().transpose(1, 2).contiguous()
            self.out64, self.out_t = torch.empty(H, N + 1, batch, dtype=torch.float64, device=device), torch.empty(H, N + 1, batch, device=device)
            keys = torch.arange(batch, device=device, dtype=torch.int32) * 7919
            if device.type == "cpu":  # the compiled scan's draws: its uniforms, then torch's functions on them (`box_muller`)
                self.keys = keys.numpy().view("uint32")
                self.parts = min(match_torch_threads(), H)  # the compiled scan's parts of the crossbars
                self.uniforms = [torch.empty(H, (N + 2) // 2, batch) for _ in range(4)]  # radius, angle, cos, sin
            else:
                self.sequence_draws = SequenceDraws(keys)
        self.step = 0

    def read(self) -> None:
        if self.kind == "float32":
            torch.bmm(self.inp, self.weight, out=self.out)
            if self.draws:
                self.noise.normal_()
            return
        self.out_t.copy_(torch.bmm(self.weight64, self.inp64.copy_(self.inp_t), out=self.out64))
        if self.draws and self.out.device.type == "cpu":
            box_muller(self.parts, self.keys, numpy.uint64(counter(self.step, 0, "output_noise", 0)), *self.uniforms)
        elif self.draws:
            self.sequence_draws.normal_(self.noise, self.step, 0, "output_noise", 0)
        if isinstance(self.step, int):
            self.step += 1
        else:
            self.step.add_(1)

    def batch_dependence(self) -> float:
        """Share of the first sequence's float32 products that differ between a read of it alone and a read
        of the whole batch: BLAS sums in an order that depends on the batch's size, which is why per-sequence
        reads multiply in float64, and why the float32 floor is no floor for them."""
        alone = torch.bmm(self.inp[:, :1], self.weight)
        return (alone != torch.bmm(self.inp, self.weight)[:, :1]).float().mean().item()

    def run(self, steps: int) -> None:
        self.step = 0
        for _ in range(steps):
            self.read()

    def replay(self, steps: int, graph_steps: int) -> None:
        """The steps as CUDA graphs of graph_steps steps, as the kernel runs on a GPU."""
        replays = -(-steps // graph_steps)
        if self.kind == "own":
            self.sequence_draws.prepare(replays * graph_steps)
            self.step = torch.zeros((), dtype=torch.int64, device=self.out.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.read()  # warm-up
        torch.cuda.current_stream().wait_stream(side)
        if self.kind == "own":
            self.step.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(graph_steps):
                self.read()
        for _ in range(replays):
            graph.replay()


if __name__ == "__main__":
    main()
