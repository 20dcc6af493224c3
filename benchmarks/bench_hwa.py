"""Training-step time through the differentiable kernel (hardware-aware training) against the float
model's recurrent-mode training step, measured in one run.

    .venv/bin/python benchmarks/bench_hwa.py                 # CPU, one thread: [Z25] model, batch 64, L 784, pcm
    .venv/bin/python benchmarks/bench_hwa.py --quick         # batch 16, L 256, fewer repeats
    .venv/bin/python benchmarks/bench_hwa.py --device cuda

A training step is forward, cross-entropy, backward and an AdamW step on (B, L, 1) inputs and 10
classes, for three forms of the same trained-from-init [Z25] model (H 16, N 64):

    conv        the float model in convolution mode (how it trains: for context)
    recurrent   the float model in recurrent mode (the reference: one step of the recurrence per t)
    hwa         the model through `aimc_ssm.analog.hwa.through_kernels`, as the studies' hardware-aware
                training runs it: the device's crossbars (pcm by default) under the incremental mapping,
                4 copies, y column range 8, the device's noise drawn for 1 h of drift, DAC and ADC
                rounding with straight-through gradients, output noise

On a GPU two more forms, "recurrent graphed" and "hwa graphed", are those steps as
aimc_ssm.core.train.fit runs them: forward and backward replayed from CUDA graphs (`TrainingForward`),
the hwa model's device noise drawn afresh at every replay. The ratio is printed for both pairs.

The steps alternate, so load from other processes hits each alike; each time is the median over the
repeats after the warm-up. The ratio hwa / recurrent is the cost of simulating the crossbars on top of
the recurrence itself.
"""
from __future__ import annotations

import argparse
import copy

import torch
from common import add_device_flags, alternating_medians, default_groups, machine, torch_device, training_step

from aimc_ssm import ModelConfig, S4DModel
from aimc_ssm.analog.deploy import measure_signals
from aimc_ssm.analog.devices import load_device
from aimc_ssm.analog.hwa import KernelHWA, through_kernels
from aimc_ssm.core.train import TrainingForward

CLASSES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_flags(parser)
    parser.add_argument("--analog-device", default="pcm", help="device file of the crossbars (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="batch 16, L 256, 3 repeats after 1 warm-up")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (default: 64, quick 16)")
    parser.add_argument("--length", type=int, default=None, help="steps per sequence (default: 784, quick 256)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per form (default: 5, quick 3)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per form first (default: 2, quick 1)")
    args = parser.parse_args()
    batch = args.batch or (16 if args.quick else 64)
    length = args.length or (256 if args.quick else 784)
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    if min(batch, length, repeats) < 1 or warmup < 0:
        parser.error(f"--batch, --length and --repeats must be >= 1 and --warmup >= 0; got {batch}, {length}, {repeats}, {warmup}")
    device = torch_device(parser, args)

    torch.manual_seed(0)
    x = torch.randn(batch, length, 1, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    model = S4DModel(ModelConfig(d_input=1, d_output=CLASSES)).to(device)
    peaks = measure_signals(model, x, state_quantizer=False)
    kernel_config = load_device(args.analog_device, adc_range=2.0, drift_compensation="averaged")
    hwa = through_kernels(model, kernel_config, peaks, KernelHWA(mapping="incremental", copies=4, y_adc_range=8.0)).to(device).train()
    steps = {
        "conv": training_step(model, default_groups(model), lambda v: model(v, "conv"), x, y),
        "recurrent": training_step(model, default_groups(model), lambda v: model(v, "recurrent"), x, y),
        "hwa": training_step(hwa, default_groups(hwa), lambda v: hwa(v, "recurrent"), x, y),
    }
    if device.type == "cuda":
        for name, source in (("recurrent graphed", model), ("hwa graphed", hwa)):
            graphed = copy.deepcopy(source).train()
            steps[name] = training_step(graphed, default_groups(graphed), TrainingForward(graphed, "recurrent"), x, y)
    times = alternating_medians(steps, device, warmup, repeats)

    print(f"{machine(device)}; batch {batch}, L {length}, H 16, N 64, {args.analog_device}; median of {repeats} steps after {warmup} warm-up")
    for name, seconds in times.items():
        print(f"{name:17s} {1e3 * seconds:10.1f} ms")
    print(f"hwa / recurrent {times['hwa'] / times['recurrent']:.2f}   (recurrent / conv {times['recurrent'] / times['conv']:.1f})")
    if "hwa graphed" in times:
        print(f"graphed: hwa / recurrent {times['hwa graphed'] / times['recurrent graphed']:.2f}   "
              f"(eager / graphed: recurrent {times['recurrent'] / times['recurrent graphed']:.1f}, hwa {times['hwa'] / times['hwa graphed']:.1f})")


if __name__ == "__main__":
    main()
