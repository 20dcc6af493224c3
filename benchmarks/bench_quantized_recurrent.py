"""Speed of the quantized recurrence: the vectorized fast path against its per-step reference twin.

    python benchmarks/bench_quantized_recurrent.py [--batch 500] [--length 784] [--compute cpu|cuda]

One S4D layer (H = 16, N = 64 by default) quantized with a [Z25] spec, static ranges calibrated in
recurrent mode (fixed ranges, as a deployed chip has), state re-quantized every step. The reference
loops over time and channel; when it would take long it runs on the first --ref-steps steps only and
its time is scaled to the full length (the cost per step is constant), which the output says.

CPU runs use one thread by default: each step's operations touch only a few MB, too little to gain
from a second thread, and on a machine shared with other jobs an OpenMP thread that waits for a
descheduled sibling costs milliseconds per operation.
"""
from __future__ import annotations

import argparse
import time

import torch

from aimc_ssm.core.model import ModelConfig, S4DModel
from aimc_ssm.quant.precision import PrecisionSpec
from aimc_ssm.quant.qrecurrent import quantized_scan, quantized_scan_ref
from aimc_ssm.quant.quantize import calibrate, quantize_


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--length", type=int, default=784)
    p.add_argument("--d-model", type=int, default=16, help="H, channels")
    p.add_argument("--d-state", type=int, default=64, help="N, real state size per channel")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--state-bits", type=int, default=16)
    p.add_argument("--parameterization", default="cartesian", choices=("continuous", "cartesian", "polar"))
    p.add_argument("--ranges", default="static", choices=("static", "dynamic"))
    p.add_argument("--partial-products", action="store_true", help="also quantize Ā⊙x and B̄u")
    p.add_argument("--ref-steps", type=int, default=64, help="steps the reference runs before its time is scaled")
    p.add_argument("--compute", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=1, help="CPU threads (see the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def timed(fn, device: str) -> tuple[float, torch.Tensor]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


@torch.no_grad()
def main():
    args = parse_args()
    if args.compute == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no GPU")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    H, B, L = args.d_model, args.batch, args.length
    spec = PrecisionSpec.channel_asym(args.bits, args.state_bits, args.parameterization, ranges=args.ranges)
    spec = spec.replace(partial_products=args.partial_products)
    model = quantize_(S4DModel(ModelConfig(d_model=H, d_state=args.d_state)), spec).to(args.compute).eval()
    ssm = model.blocks[0].ssm
    u = torch.randn(B, L, H, device=args.compute)
    if spec.static():
        calibrate(model, [torch.randn(min(B, 32), L, 1, device=args.compute)], "recurrent")
    params = ssm.ssm_parameters()

    quantized_scan(u[:, :8], params, ssm.quantization)  # warm-up
    fast_s, y_fast = timed(lambda: quantized_scan(u, params, ssm.quantization), args.compute)
    ref_steps = min(L, args.ref_steps)
    ref_s, y_ref = timed(lambda: quantized_scan_ref(u[:, :ref_steps], params, ssm.quantization), args.compute)
    ref_full_s = ref_s * L / ref_steps
    err = (y_fast[:, :ref_steps] - y_ref).abs().max().item()

    print(f"device {args.compute}, threads {torch.get_num_threads()}; batch {B}, L {L}, H {H}, N {args.d_state}")
    print(f"spec: channel-asym {args.bits} bit, state {args.state_bits} bit, {args.parameterization}, {args.ranges} ranges, "
          f"partial products {'on' if args.partial_products else 'off'}")
    print(f"fast path   quantized_scan      {fast_s:8.3f} s   ({fast_s / L * 1e3:.3f} ms/step)")
    scaled = f", timed on {ref_steps} of {L} steps and scaled" if ref_steps < L else ""
    print(f"reference   quantized_scan_ref  {ref_full_s:8.3f} s   ({ref_s / ref_steps * 1e3:.3f} ms/step{scaled})")
    print(f"speed-up {ref_full_s / fast_s:.1f}x   (max |y_fast - y_ref| over the reference's steps: {err:.2e})")


if __name__ == "__main__":
    main()
