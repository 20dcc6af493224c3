"""Export the crossbars of a deployed analog S4D model, read them back, and draw them.

`export(analog_model, path)` writes path.npz (arrays) and path.json (metadata), both atomically.
Per SSM layer l the npz holds, under "layer{l}/" (H channels, N real states, one crossbar each;
matrices in aihwkit's orientation (outputs N+1, inputs I = k·(N+2) for k copies per weight), see `LAYOUT`):

    weights        (H, N+1, I)   float32  target crossbar matrix: W = Ā (Ā - I under the incremental mapping),
                                          B̄/s, s·C̄, D as in aimc_ssm.analog, W/k in each of the k copies'
                                          row groups (inputs g·(N+2) to (g+1)·(N+2) - 1 for copy g)
    state_scales   (H, N/2)      float32  state scale s per mode: the crossbar holds x/s (1: direct)
    normalized     (H, N+1, I)   float32  weights / column_scales: what the conductances encode, |·| ≤ ω
    column_scales  (H, N+1)      float32  digital output scale α per column (aihwkit weight_scaling_omega)
    conductances   (H, K, N+1, I) float32 target conductances in µS of the K devices per cell
                                          (aihwkit's g_converter of the device: max|normalized| -> g_max;
                                          K = 2 for a pair (G+, G-), weight ∝ G+ - G-)
    programmed     (H, N+1, I)   float32  normalized weights now on the tiles (after programming / drift)
    drift_alpha    (H, N+1)      float32  drift compensation factor now applied per column (one per crossbar
                                          where the compensation is global)
    input_range    (H,)          float32  DAC range r_h: inputs clipped to ±r_h      (devices with a DAC)
    dac_step       (H,)          float32  one DAC level in signal units              (quantizing DAC)
    adc_step       (H, N+1)      float32  one ADC level in signal units, per column, the y column's from
                                          its own range where the layer has a y_adc_range (quantizing ADC)
    levels         (H, N+1, I)   int64    integer level of each cell on its PTQ/QAT quantizer grid
    level_steps    (H, N+1, I)   float32  the grid step (0: cell not quantized, as Re Ā - 1 under the
                                          incremental mapping; each copy's grid is 1/k of W's);
                                          weights = levels·level_steps (the last two for quantized models only)

The JSON holds the format version, the layout, units, the model and device configs, converter bit
widths and level counts (aihwkit: n bits = 2^n - 1 levels), g_max, and per layer the arrays present,
the layer's `mapping` (aimc_ssm.analog.kernel.MAPPINGS): "direct" (state as it is, state_scales 1),
"balanced" (state x/s), "incremental" (state x/s, the state block holds Ā - I, and the periphery adds
x_{t-1} to the state read: x_t = x_{t-1} + read), its `copies` k and its `y_adc_range` (the y column's
ADC range in one copy's normalized units; null: the state columns'). ADC bounds are the crossbar's, in
its normalized units: k times one copy's, as the column sums k devices. Format version 2 added
`mapping`, version 3 `copies` and `y_adc_range`.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write, save_figure
from .devices import config_summary, res_to_bits, res_to_steps
from .kernel import FusedS4D, fused_layers
from .mvm import column_scales

FORMAT, VERSION = "aimc-ssm crossbars", 3
LAYOUT = {
    "orientation": "matrices are (outputs, inputs) as aihwkit tiles; the physical crossbar's rows are the inputs",
    "inputs": "u_t, then x_{t-1} as (Re, Im) pairs of the N/2 modes, then u_{t-1}; with k copies per weight "
    "k such row groups in a row, each holding W/k and driven by the same inputs: a column sums its k devices",
    "state": "the crossbar's state is the digital state divided by state_scales, per mode (Re and Im alike)",
    "outputs": "x_t as (Re, Im) pairs (under the incremental mapping x_t - x_{t-1}), then y_{t-1}",
    "step": "step t reads [u_t, x_{t-1}, u_{t-1}] and writes [x_t, y_{t-1} = C̄ x_{t-1} + D u_{t-1}]; "
    "a sequence of L inputs takes L + 1 steps, the last with u_L = 0",
    "mapping": "per layer: direct or balanced, the state outputs are x_t; incremental, the state block holds "
    "Ā - I and the digital periphery adds the state it holds to the read, x_t = x_{t-1} + read",
    "signal": "digital value of an input = DAC code × dac_step; of an output = ADC code × adc_step; "
    "for the state, the crossbar's value times state_scales of its mode is the digital model's state",
}


def converter_levels(res: float) -> int | None:
    """Levels of an aihwkit converter with resolution res (None: not quantized)."""
    steps = res_to_steps(res)
    return None if steps is None else steps + 1


def converter_meta(res: float, bound: float) -> dict:
    return {"bits": res_to_bits(res), "levels": converter_levels(res), "bound": bound}


def crossbar_arrays(kernel: FusedS4D) -> dict[str, np.ndarray]:
    """The arrays of one FusedS4D layer, as documented in the module docstring."""
    tiles = kernel.tiles
    config = kernel.rpu_config
    io_pars = config.forward
    programmed = torch.stack([t.get_weights(apply_weight_scaling=False)[0] for t in tiles])  # CPU copies
    # aihwkit keeps the target of a programmed tile as its reference weights
    references = [t.reference_combined_weights for t in tiles]
    target = torch.stack([p if r is None else r.cpu() for p, r in zip(programmed, references)])
    scales = column_scales(tiles).cpu()  # (H, N+1)
    converter = config.noise_model.g_converter
    conductances = torch.stack([torch.stack(converter.convert_to_conductances(w)[0]) for w in target])
    arrays = {
        "weights": target * scales[:, :, None],
        "normalized": target,
        "column_scales": scales,
        "conductances": conductances,
        "programmed": programmed,
        "drift_alpha": torch.stack([t.alpha.detach().cpu().reshape(-1).expand(scales.shape[1]) for t in tiles]),
        "state_scales": kernel.state_scales,
    }
    ranges = kernel.input_ranges()
    if ranges is not None:
        ranges = ranges.cpu()
        arrays["input_range"] = ranges
        if io_pars.inp_res > 0:
            arrays["dac_step"] = ranges * 2 * io_pars.inp_bound / (converter_levels(io_pars.inp_res) - 1)
        if io_pars.out_res > 0:

            def adc_steps(bound: float) -> torch.Tensor:  # (H, N+1): one level of an ADC of range `bound`
                return 2 * bound / (converter_levels(io_pars.out_res) - 1) * ranges[:, None] * scales * arrays["drift_alpha"]

            arrays["adc_step"] = adc_steps(io_pars.out_bound)
            if kernel.y_io is not None:  # the y column's own range
                arrays["adc_step"][:, -1] = adc_steps(kernel.y_io.out_bound)[:, -1]
    steps = kernel.level_steps
    if steps is not None:
        on = steps > 0
        arrays["levels"] = torch.where(on, arrays["weights"] / torch.where(on, steps, 1), 0).round().to(torch.int64)
        arrays["level_steps"] = steps
    return {k: v.detach().cpu().numpy().astype(np.int64 if k == "levels" else np.float32) for k, v in arrays.items()}


def export(analog_model, path: str | Path) -> tuple[Path, Path]:
    """Write the model's SSM crossbars to path.npz and path.json; returns both paths."""
    path = Path(path)
    npz_path, json_path = path.with_suffix(".npz"), path.with_suffix(".json")
    layers = fused_layers(analog_model)
    arrays, layer_meta = {}, []
    for l, kernel in enumerate(layers):
        layer_arrays = crossbar_arrays(kernel)
        arrays.update({f"layer{l}/{name}": value for name, value in layer_arrays.items()})
        layer_meta.append(
            {
                "prefix": f"layer{l}/",
                "H": kernel.d_model,
                "N": kernel.d_state,
                "execution": kernel.execution(),
                "mapping": kernel.mapping,
                "copies": kernel.copies,
                "y_adc_range": kernel.y_adc_range,
                "arrays": sorted(layer_arrays),
            }
        )
    config = layers[0].rpu_config
    io_pars = config.forward
    converter = config.noise_model.g_converter
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "layout": LAYOUT,
        "units": {"conductances": "uS", "dac_step": "input signal units", "adc_step": "output signal units"},
        "model": analog_model.cfg.to_dict() if hasattr(analog_model, "cfg") else None,
        "precision": analog_model.precision.to_dict() if getattr(analog_model, "precision", None) is not None else None,
        "device": config_summary(config),
        "g_converter": str(converter),
        "g_max": getattr(converter, "g_max", None),
        "g_min": getattr(converter, "g_min", None),
        "dac": converter_meta(io_pars.inp_res, io_pars.inp_bound),
        "adc": converter_meta(io_pars.out_res, io_pars.out_bound),
        "layers": layer_meta,
    }

    def write_npz(f):
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        f.write(buffer.getvalue())

    atomic_write(npz_path, write_npz, "wb")
    atomic_write(json_path, lambda f: f.write(json.dumps(meta, indent=2)))
    return npz_path, json_path


def load_export(path: str | Path) -> dict:
    """{"meta": the JSON, "layers": [{name: array}] per SSM layer} of an export (path with or without suffix)."""
    path = Path(path)
    npz_path, json_path = path.with_suffix(".npz"), path.with_suffix(".json")
    for p in (npz_path, json_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found: an export is the pair {npz_path.name} + {json_path.name}")
    meta = json.loads(json_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{json_path} is not an {FORMAT!r} export (format {meta.get('format')!r})")
    with np.load(npz_path) as data:
        layers = [{name: data[layer["prefix"] + name] for name in layer["arrays"]} for layer in meta["layers"]]
    return {"meta": meta, "layers": layers}


def plot_crossbar(exported: dict, layer: int = 0, channel: int = 0, path=None, quantity: str = "normalized"):
    """Heat map of one channel's crossbar, inputs as rows and outputs as columns, as drawn in [S24]; the
    row groups of copies one below the other, parted by thick lines.

    exported: `load_export`'s dict. quantity: "normalized" (weights in conductance units of g_max),
    "weights" or "programmed". Saved atomically to `path` if given; returns the figure.
    """
    import matplotlib.pyplot as plt

    arrays = exported["layers"][layer]
    matrices = sorted(name for name, value in arrays.items() if value.ndim == 3)
    if quantity not in matrices:
        raise ValueError(f"unknown quantity {quantity!r}; choose one of {matrices}")
    W = arrays[quantity][channel].T  # (inputs, outputs)
    n_in, n_out = W.shape
    N = n_out - 1
    starts = range(0, n_in, N + 2)  # the first input row of every copy's row group
    limit = float(np.abs(W).max()) or 1.0
    fig, ax = plt.subplots(figsize=(0.12 * n_out + 2.5, 0.12 * n_in + 1.5))
    image = ax.imshow(W, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    for start in starts:
        for edge in (start + 0.5, start + N + 0.5):  # u_t | x_{t-1} | u_{t-1}
            ax.axhline(edge, color="k", lw=0.6)
        if start:
            ax.axhline(start - 0.5, color="k", lw=1.5)  # the next copy
    ax.axvline(N - 0.5, color="k", lw=0.6)  # x_t | y_{t-1}
    ticks = [start + offset for start in starts for offset in (0, (N + 1) / 2, N + 1)]
    ax.set_yticks(ticks, ["$u_t$", "$x_{t-1}$", "$u_{t-1}$"] * len(starts))
    ax.set_xticks([(N - 1) / 2, N], ["$x_t$", "$y_{t-1}$"])
    ax.set_xlabel("outputs (ADC)")
    ax.set_ylabel("inputs (DAC)")
    ax.set_title(f"layer {layer}, channel {channel}: {quantity}")
    fig.colorbar(image, ax=ax, fraction=0.05, label="weight / column scale" if quantity != "weights" else "weight")
    if path is not None:
        save_figure(fig, Path(path))
    return fig
