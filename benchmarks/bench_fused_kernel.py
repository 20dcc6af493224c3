"""Speed of the fused SSM crossbar kernel against its reference: a per-channel loop of aihwkit tiles.

    .venv/bin/python benchmarks/bench_fused_kernel.py                      # batch 500, L 784, H 16, N 64, pcm
    .venv/bin/python benchmarks/bench_fused_kernel.py --ref-steps 100      # reference timed on 100 steps, scaled
    .venv/bin/python benchmarks/bench_fused_kernel.py --compute cuda
    .venv/bin/python benchmarks/bench_fused_kernel.py --set forward.out_noise=0   # converters only, no noise draws

All three runs use the same programmed tiles: `FusedS4D.scan` (the fused kernel, `CrossbarStack.step`), the
same scan with aihwkit's `AnalogMVM.matmul` per step (`--with-mvm`), and `FusedS4D.scan_ref`, one
AnalogLinear call per channel and step. With --ref-steps the reference runs on the first steps of the
sequence only and its time is scaled to the full length (the per-step cost does not depend on t).

The floor is the work no implementation of the step can skip, timed in the same run: one batched
matmul of the (H, B, N+2) inputs with the (H, N+2, N+1) crossbars and, where the device has output
noise, one Gaussian draw per output, every step. Both paths pay the noise draws alike, so on a CPU,
where drawing is slower than the matmul, they bound the speed-up over the reference.
"""
from __future__ import annotations

import argparse
import time

import torch

from aimc_ssm.analog.deploy import program
from aimc_ssm.analog.devices import load_device, parse_settings
from aimc_ssm.analog.kernel import FusedS4D
from aimc_ssm.core.s4d import S4D


def timed(fn, compute: str) -> float:
    if compute == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if compute == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--length", type=int, default=784)
    parser.add_argument("--d-model", type=int, default=16, help="H, crossbars per layer")
    parser.add_argument("--d-state", type=int, default=64, help="N; each crossbar is (N+2) x (N+1)")
    parser.add_argument("--device", default="pcm", help="device name or file (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="device override; repeatable")
    parser.add_argument("--compute", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ref-steps", type=int, default=None, help="time the reference on this many steps and scale")
    parser.add_argument("--with-mvm", action="store_true", help="also time the scan through AnalogMVM.matmul")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ssm = S4D(args.d_model, args.d_state).eval()
    u = torch.randn(args.batch, args.length, args.d_model)
    kernel = FusedS4D(ssm, load_device(args.device, **parse_settings(args.set)))
    kernel.calibrate(u[:16])
    program(kernel, t_inference=3600.0)
    kernel.to(args.compute)
    u = u.to(args.compute)
    ref_steps = min(args.ref_steps or args.length, args.length)

    print(
        f"batch {args.batch}, L {args.length}, H {args.d_model}, N {args.d_state} "
        f"({args.d_state + 2}x{args.d_state + 1} crossbars), device {' '.join([args.device, *args.set])}, compute {args.compute}, "
        f"{torch.get_num_threads()} threads, execution {kernel.execution()}"
    )
    with torch.no_grad():
        kernel(u[:, :2])  # warm-up
        fused = timed(lambda: kernel(u), args.compute)
        print(f"fused kernel (execution {kernel.execution()}):              {fused:8.2f} s")
        if args.with_mvm:
            mvm = timed(lambda: kernel.scan(u, reference_mvm=True), args.compute)
            print(f"fused, AnalogMVM.matmul per step (twin):        {mvm:8.2f} s   ({mvm / fused:.1f}x the fused kernel)")
        ref = timed(lambda: kernel.scan_ref(u[:, :ref_steps]), args.compute) * (args.length + 1) / (ref_steps + 1)
        scaled = f", timed on {ref_steps} of {args.length} steps and scaled" if ref_steps < args.length else ""
        print(f"reference (AnalogLinear per channel per step):  {ref:8.2f} s{scaled}")
        floor = timed(lambda: floor_steps(kernel, args.batch, args.length + 1), args.compute)
        noise = "matmul and output-noise draws" if kernel.rpu_config.forward.out_noise > 0 else "matmul"
        print(f"floor ({noise} per step):{' ' * (23 - len(noise))}{floor:8.2f} s   (fused kernel: {fused / floor:.1f}x the floor)")
    print(f"speed-up of the fused kernel over the reference: {ref / fused:.1f}x (a kernel at the floor would reach {ref / floor:.1f}x)")


def floor_steps(kernel: FusedS4D, batch: int, steps: int) -> None:
    """The arithmetic of `steps` steps that every implementation does: the stack's matmul and noise draws."""
    H, N = kernel.d_model, kernel.d_state
    weight = torch.randn(H, N + 2, N + 1, device=kernel.D.device)
    inp = torch.randn(H, batch, N + 2, device=weight.device)
    out, noise = torch.empty(H, batch, N + 1, device=weight.device), torch.empty(H, batch, N + 1, device=weight.device)
    draws = kernel.rpu_config.forward.out_noise > 0
    for _ in range(steps):
        torch.bmm(inp, weight, out=out)
        if draws:
            noise.normal_()


if __name__ == "__main__":
    main()
