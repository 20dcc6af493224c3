"""Speed of the quantized recurrence: the vectorized fast path against its per-step reference twin.

    python benchmarks/bench_quantized_recurrent.py [--batch 500] [--length 784] [--compute cpu|cuda]
    python benchmarks/bench_quantized_recurrent.py --ranges dynamic     # one setting only
    python benchmarks/bench_quantized_recurrent.py --partial-products   # one setting only

One S4D layer (H = 16, N = 64 by default) quantized with a [Z25] spec, the state re-quantized every
step. Without --ranges or --partial-products one run measures three settings, a row each: static
ranges calibrated in recurrent mode (fixed ranges, as a deployed chip has: the default spec), dynamic
ranges (taken from the state every step), and static ranges with the partial products Ā⊙x and B̄u
quantized too. Each row gives the fast path's time, the reference's and their ratio, both measured in
that run, each the fastest of --repeats runs (the machine may be shared: the minimum is the run least
disturbed by other jobs). The reference loops over time and channel; when it would take long it runs on
the first --ref-steps steps only and its time is scaled to the full length (the cost per step is
constant), which the output says.

CPU runs use one thread by default: the reference's operations are too small to gain from a second,
and one thread is the fair comparison for both. `--threads 2` lets the compiled loop spread its
blocks of sequences over two cores.

On the CPU the fast path is the compiled loop (aimc_ssm.quant.numba_scan): blocks of 64 sequences
run all L steps side by side, one vector operation across a block's sequences for every operation of
a step, bit for bit the eager scan (`eager_scan`). It is compiled once (about 30 s, by setup.sh, into
the package's __pycache__); the warm-up call keeps a compilation out of the timing anyway.
Measured on the project's 2-core CPU (shared with other jobs), one thread: static ranges 28-35x,
dynamic 22-34x, partial products 30-35x; two threads: 48-72x, 36-50x, 60-82x (the reference's time
varies by a third from run to run); the eager scan alone took 10-14x, 7-9x and 10-16x. What bounds the
compiled loop: the state's true division by its grid step, twice per mode (x / scale must be a true
division to round as the quantizer does): rounding the state onto its static grid took 40 % of a
block's step (8.4 of 20.9 µs).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from common import fastest

from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.qrecurrent import quantized_scan, quantized_scan_ref
from aimc_ssm.quant.quantize import calibrate, quantize_


@dataclass(frozen=True)
class Setting:
    """One row of the benchmark: how the state's ranges are taken, and whether Ā⊙x and B̄u are quantized."""

    ranges: str
    partial_products: bool

    def __str__(self) -> str:
        return f"{self.ranges} ranges, partial products {'on' if self.partial_products else 'off'}"


# the default spec first: the row the speed target is read from
DEFAULT_SETTINGS = (Setting("static", False), Setting("dynamic", False), Setting("static", True))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--length", type=int, default=784)
    p.add_argument("--d-model", type=int, default=16, help="H, channels")
    p.add_argument("--d-state", type=int, default=64, help="N, real state size per channel")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--state-bits", type=int, default=16)
    p.add_argument("--parameterization", default="cartesian", choices=("continuous", "cartesian", "polar"))
    p.add_argument("--ranges", choices=("static", "dynamic"), help="measure this setting only (default: all three rows)")
    p.add_argument("--partial-products", action="store_true", help="measure only with Ā⊙x and B̄u quantized too")
    p.add_argument("--ref-steps", type=int, default=64, help="steps the reference runs before its time is scaled")
    p.add_argument("--repeats", type=int, default=3, help="runs of each path; the fastest is reported")
    p.add_argument("--compute", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads (see the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1 (runs of each path, the fastest reported); got {args.repeats}")
    return args


def settings(args) -> tuple[Setting, ...]:
    """The three rows, or the one setting that --ranges / --partial-products ask for."""
    if args.ranges is None and not args.partial_products:
        return DEFAULT_SETTINGS
    return (Setting(args.ranges or "static", args.partial_products),)


def measure(args, setting: Setting) -> dict:
    """Fast and reference times (s, the reference's scaled to the full length) of one setting."""
    torch.manual_seed(args.seed)
    H, B, L = args.d_model, args.batch, args.length
    spec = PrecisionSpec.channel_asym(args.bits, args.state_bits, args.parameterization, ranges=setting.ranges)
    spec = spec.replace(partial_products=setting.partial_products)
    model = quantize_(S4DModel(ModelConfig(d_model=H, d_state=args.d_state)), spec).to(args.compute).eval()
    ssm = model.blocks[0].ssm
    u = torch.randn(B, L, H, device=args.compute)
    if spec.static():
        calibrate(model, [torch.randn(min(B, 32), L, 1, device=args.compute)], "recurrent")
    params = ssm.ssm_parameters()

    device = torch.device(args.compute)
    quantized_scan(u[:, :8], params, ssm.quantization)  # warm-up
    fast_s, y_fast = fastest(lambda: quantized_scan(u, params, ssm.quantization), device, args.repeats)
    ref_steps = min(L, args.ref_steps)
    ref_s, y_ref = fastest(
        lambda: quantized_scan_ref(u[:, :ref_steps], params, ssm.quantization), device, args.repeats
    )
    err = (y_fast[:, :ref_steps] - y_ref).abs().max().item()
    return {"fast_s": fast_s, "ref_s": ref_s * L / ref_steps, "ref_steps": ref_steps, "err": err}


@torch.no_grad()
def main():
    args = parse_args()
    if args.compute == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--compute cuda asked for, but torch sees no GPU: use --compute cpu")
    torch.set_num_threads(args.threads)
    L = args.length
    print(f"device {args.compute}, threads {torch.get_num_threads()}; batch {args.batch}, L {L}, "
          f"H {args.d_model}, N {args.d_state}; fastest of {args.repeats} runs")
    print(f"spec: channel-asym {args.bits} bit, state {args.state_bits} bit, {args.parameterization}")
    scaled = f"; reference timed on {min(L, args.ref_steps)} of {L} steps and scaled" if args.ref_steps < L else ""
    print(f"{'setting':42s} {'fast s':>8s} {'ms/step':>8s} {'ref s':>8s} {'ms/step':>8s} {'speed-up':>9s}"
          f"   max |y_fast - y_ref|{scaled}")
    for setting in settings(args):
        m = measure(args, setting)
        print(f"{str(setting):42s} {m['fast_s']:8.3f} {m['fast_s'] / L * 1e3:8.3f} {m['ref_s']:8.3f} "
              f"{m['ref_s'] / L * 1e3:8.3f} {m['ref_s'] / m['fast_s']:8.1f}x   {m['err']:.2e}")


if __name__ == "__main__":
    main()
