"""Cost growth of one S4D layer's three ways through a sequence: time against length L and channels H.

    .venv/bin/python benchmarks/bench_scaling.py                  # CPU, the full sweep (minutes)
    .venv/bin/python benchmarks/bench_scaling.py --quick          # small batch, the L sweep at H 16: under a minute on 2 cores
    .venv/bin/python benchmarks/bench_scaling.py --device cuda    # the full sweep on a GPU

The three, forward only (no gradients, eval mode), on u (B, L, H):

    recurrent   `S4D(u, "recurrent")`: `S4D.scan`, one `S4D.step` per time step       expected ∝ L·H
    fused       the fused analog kernel, `FusedS4D` from `aimc_ssm.analog.deploy.to_analog` on the
                `ideal` device (a step loop of crossbar MVMs)                        expected ∝ L·H
    conv        `S4D(u, "conv")`: kernel and FFT convolution                          expected ∝ L log L · H

L runs 256 -> 4096 at a fixed H, H runs 16 -> 256 at a fixed L. Each point is the median of the repeats
after one warm-up call; the exponent b is the least-squares slope of log time against log L (or log H),
t ∝ L^b, and for conv also against log(L·log L), where b = 1 is the FFT's growth. An exponent below the
expected one means a fixed cost per call or per step (dispatch, Python) is not yet small at that size:
a step loop at a small batch, or any loop on a GPU, runs on launch overhead, not arithmetic.
On a CPU it runs on one thread unless --threads says otherwise: a step loop makes thousands of small
parallel regions, and on a machine whose cores other processes share each of them can wait a
scheduler time slice for its second thread, which buries the growth under waiting.
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import dataclass

import torch
from common import add_device_flags, machine, synchronize, torch_device

from aimc_ssm import ModelConfig, S4DModel
from aimc_ssm.analog.deploy import to_analog
from aimc_ssm.analog.devices import load_device

LENGTHS = (256, 512, 1024, 2048, 4096)
WIDTHS = (16, 32, 64, 128, 256)
MODES = ("recurrent", "fused", "conv")


@dataclass(frozen=True)
class Sweep:
    batch: int
    d_state: int
    width_for_lengths: int  # H of the L sweep
    length_for_widths: int  # L of the H sweep
    repeats: int


FULL = Sweep(batch=32, d_state=64, width_for_lengths=64, length_for_widths=1024, repeats=3)
QUICK = Sweep(batch=32, d_state=32, width_for_lengths=16, length_for_widths=256, repeats=5)


def layers(d_model: int, d_state: int, device: torch.device):
    """(S4D layer, its fused analog kernel on the ideal device), calibrated on a short random sequence."""
    torch.manual_seed(0)
    model = S4DModel(ModelConfig(d_model=d_model, d_state=d_state)).eval()
    analog = to_analog(model, load_device("ideal"), calibration_inputs=torch.randn(4, 128, 1))
    return model.blocks[0].ssm.to(device), analog.blocks[0].ssm.to(device)


def median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@torch.no_grad()
def time_modes(ssm, fused, length: int, sweep: Sweep, device: torch.device) -> dict[str, float]:
    u = torch.randn(sweep.batch, length, ssm.d_model, device=device)
    runs = {"recurrent": lambda: ssm(u, "recurrent"), "fused": lambda: fused(u), "conv": lambda: ssm(u, "conv")}
    return {mode: median_seconds(runs[mode], device, sweep.repeats) for mode in MODES}


def exponent(sizes, seconds) -> float:
    """Least-squares slope of log(seconds) against log(sizes)."""
    x = torch.tensor([math.log(s) for s in sizes], dtype=torch.float64)
    y = torch.tensor([math.log(t) for t in seconds], dtype=torch.float64)
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    return torch.linalg.lstsq(design, y[:, None]).solution[0, 0].item()


def report(axis: str, sizes, times: list[dict[str, float]], fixed: str) -> None:
    print(f"\n{axis} sweep ({fixed}), ms per forward:")
    print(f"{axis:>6s} " + " ".join(f"{mode:>11s}" for mode in MODES))
    for size, t in zip(sizes, times):
        print(f"{size:6d} " + " ".join(f"{1e3 * t[mode]:11.2f}" for mode in MODES))
    slopes = {mode: exponent(sizes, [t[mode] for t in times]) for mode in MODES}
    expected = {"recurrent": "1", "fused": "1", "conv": "1 (with log)"}
    print(f"fitted exponent, time ∝ {axis}^b:")
    for mode in MODES:
        print(f"  {mode:10s} b = {slopes[mode]:5.2f}   (expected {expected[mode]})")
    if axis == "L":
        conv = exponent([L * math.log(L) for L in sizes], [t["conv"] for t in times])
        print(f"  conv against L·log L: b = {conv:5.2f}   (expected 1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_flags(parser)
    parser.add_argument("--quick", action="store_true", help="N 32, H 16 for the L sweep, L 256 for the H sweep")
    args = parser.parse_args()
    device = torch_device(parser, args)
    sweep = QUICK if args.quick else FULL

    print(f"{machine(device)}; batch {sweep.batch}, N {sweep.d_state}; median of {sweep.repeats} after a warm-up")
    ssm, fused = layers(sweep.width_for_lengths, sweep.d_state, device)  # built once: its cost grows with H only
    by_length = [time_modes(ssm, fused, L, sweep, device) for L in LENGTHS]
    report("L", LENGTHS, by_length, f"H {sweep.width_for_lengths}")
    by_width = [time_modes(*layers(H, sweep.d_state, device), sweep.length_for_widths, sweep, device) for H in WIDTHS]
    report("H", WIDTHS, by_width, f"L {sweep.length_for_widths}")


if __name__ == "__main__":
    main()
