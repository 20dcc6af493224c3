"""Throughput of the S4D model: FFT training step vs a plain direct-sum reference, and recurrent evaluation.

    python benchmarks/bench_s4d.py                 # CPU, the [Z25] model (H=16, N=64, 1 layer), L=784
    python benchmarks/bench_s4d.py --compute cuda  # the same on a GPU

The reference computes the same model with the kernel built by repeated multiplication and the
convolution as a direct causal sum (`ssm_kernel_ref`, `causal_conv_ref`); both run in one process, so
the printed ratio compares like with like.
"""
from __future__ import annotations

import argparse
import time
import types

import torch

from aimc_ssm import ModelConfig, S4DModel
from aimc_ssm.core.s4d import causal_conv_ref, ssm_kernel_ref


def reference_forward_conv(self, u):
    dA, dB, C, D = self.ssm_parameters()
    return causal_conv_ref(u, ssm_kernel_ref(dA, dB, C, u.shape[1])) + D * u


def as_reference(model: S4DModel) -> S4DModel:
    for block in model.blocks:
        block.ssm.forward_conv = types.MethodType(reference_forward_conv, block.ssm)
    return model


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn, device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def train_step(model, opt, x, y):
    def step():
        loss = torch.nn.functional.cross_entropy(model(x, "conv"), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compute", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--batch", type=int, default=100, help="training batch")
    parser.add_argument("--eval-batch", type=int, default=500, help="recurrent evaluation batch")
    parser.add_argument("--length", type=int, default=784)
    parser.add_argument("--d-model", type=int, default=16)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.compute)
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=args.d_model, d_state=args.d_state, n_layers=args.n_layers)
    x = torch.randn(args.batch, args.length, 1, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)

    model = S4DModel(cfg).to(device)
    fast = seconds_per_call(train_step(model, torch.optim.AdamW(model.parameters()), x, y), device, args.repeats)
    reference = as_reference(S4DModel(cfg).to(device))
    ref = seconds_per_call(train_step(reference, torch.optim.AdamW(reference.parameters()), x, y), device, max(1, args.repeats // 2))

    x_eval = torch.randn(args.eval_batch, args.length, 1, device=device)
    model.eval()
    with torch.no_grad():
        rec = seconds_per_call(lambda: model(x_eval, "recurrent"), device, max(1, args.repeats // 2))
        conv_eval = seconds_per_call(lambda: model(x_eval, "conv"), device, args.repeats)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; model H={cfg.d_model} N={cfg.d_state} layers={cfg.n_layers}; L={args.length}")
    print(f"training step, batch {args.batch}:")
    print(f"  FFT convolution        {args.batch / fast:10.1f} sequences/s")
    print(f"  direct-sum reference   {args.batch / ref:10.1f} sequences/s")
    print(f"  ratio FFT / reference  {ref / fast:10.1f}x")
    print(f"evaluation, batch {args.eval_batch}:")
    print(f"  recurrent mode         {args.eval_batch / rec:10.1f} sequences/s")
    print(f"  convolution mode       {args.eval_batch / conv_eval:10.1f} sequences/s")


if __name__ == "__main__":
    main()
