"""Hardware metrics of an S4D model: [S25]'s analytical costs and the memory of a deployed model.

Precision is a mapping ``bits: component -> bits`` over ``COMPONENTS`` = A, B, C, D, dt, state,
act, mixing, coder. A component left out is float, and float counts as 32 bits. Any object with a
``.bits(name)`` method (such as ``aimc_ssm.quant.precision.PrecisionSpec``) may be passed instead.

Symbols: H = d_model, N = d_state (the real state size: N/2 complex modes, Re and Im each count),
L = n_layers, r_X = bits of X, r_lin = bits of the mixing, r_coder = bits of encoder/decoder,
M = outputs of the mixing Linear. [S25]'s mixing is H×H; ours is H×H for ``mixing="relu"`` but
H×2H for ``mixing="glu"``, and the formulas count the matrix the model has: M = H (relu) or 2H (glu).

Analytical metrics, per time step ([S25]):

    ACE (bit operations, Σ over MACs of weight bits × input bits)
        kernel  N·r_A·r_state + N·r_C·r_state  [+ N·r_B·r_act if count_B]
        layer   H·kernel + H·M·r_act·r_lin     [+ H·r_D·r_act if count_D]
        total   L·layer + H·d_in·r_coder·r_act + H·d_out·r_coder·r_act
    model size (bits)
        L·(N·H·r_A + N·H·r_C + H·M·r_lin) + coder_weights·r_coder  [+ N·H·L·r_B, H·L·r_D]
        coder_weights = 2·H·d_in ("s25") or H·(d_in + d_out) ("matrices")
    ADC complexity (converted outputs × ADC bits)
        L·H·(N·r_state + r_act) + L·M·r_lin + (H + d_out)·r_act

Conventions that reproduce [S25]'s float figures for sCIFAR (L = 4, H = N = 128, d_in = 1,
d_out = 10, mixing H×H, all 32 bits): ACE 202,768,384; model size 787,456 bytes; ADC 2,134,336.

- N is the real state size (128), not the number of complex modes (64).
- B is not counted (``count_B=False``): [S25] fixes B = 1. Counting it adds L·H·N·r_B·r_act to ACE.
- D, dt and biases are counted nowhere ([S25] does not quantize them).
- Float counts as 32 bits in every metric, ADC complexity included.
- Model size counts 2·H·d_in coder weights (``coder_weights="s25"``: 256 for sCIFAR), not the
  H·(d_in + d_out) = 1,408 of the real encoder and decoder matrices, which would give 792,064 bytes;
  ``coder_weights="matrices"`` counts the real matrices.

Memory footprint of a deployed model ([Z25]-style, ``memory_footprint_bits``): the bits of the
tensors the deployed model stores, not an analytical estimate.

- Every S4D layer stores its discrete system from ``S4D.ssm_parameters()``: Ā, B̄, C (H, N/2) complex,
  two real numbers each, at r_A, r_B, r_C; D (H,) at r_D. dt is not stored: it is folded into Ā and
  B̄. B̄ is stored even when B is fixed, since B̄ = B·(Ā - 1)/A differs per mode.
- Linear layers named ``encoder``/``decoder`` store their weight at r_coder, those named ``mixing``
  at r_lin; their biases stay float.
- Every other parameter and floating-point buffer (norms) is float.
- A quantized tensor (bits < 32) adds metadata: a 32-bit scale per tensor or per channel (channels =
  first axis: the SSM channel h, or the Linear's output), and as many 32-bit zero points when
  asymmetric. Float tensors carry none, so the float baseline is 32 bits for everything.
- State and activations are not stored and do not count.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..core.model import ModelConfig
from ..core.s4d import S4D
from .precision import COMPONENTS, FLOAT_BITS
from .quantizers import SCHEMES

METADATA_BITS = 32  # one scale or one zero point
GRANULARITIES = ("per_tensor", "per_channel")
CODER_WEIGHTS = ("s25", "matrices")
LINEAR_ROLES = {"encoder": "coder", "decoder": "coder", "mixing": "mixing"}


# -- precision --------------------------------------------------------------------------------
def float_bits() -> dict[str, int]:
    """Every component at float precision (32 bits)."""
    return dict.fromkeys(COMPONENTS, FLOAT_BITS)


def check_component(name: str) -> None:
    if name not in COMPONENTS:
        raise ValueError(f"unknown precision component {name!r}; allowed components: {list(COMPONENTS)}")


def check_bit_width(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= FLOAT_BITS:
        raise ValueError(
            f"bits of {name!r} must be an integer in 1..{FLOAT_BITS} ({FLOAT_BITS} = float), got {value!r}"
        )


def bits_from_spec(spec) -> dict[str, int]:
    """The bits mapping of any object with a ``.bits(component) -> int`` method."""
    return resolve_bits({name: spec.bits(name) for name in COMPONENTS})


def resolve_bits(bits_or_spec) -> dict[str, int]:
    """A checked, complete bits mapping; missing components are float (32 bits)."""
    if not isinstance(bits_or_spec, Mapping):
        if not callable(getattr(bits_or_spec, "bits", None)):
            raise TypeError(
                f"expected a mapping component -> bits or an object with a .bits(name) method, "
                f"got {type(bits_or_spec).__name__}"
            )
        return bits_from_spec(bits_or_spec)
    resolved = float_bits()
    for name, value in bits_or_spec.items():
        check_component(name)
        check_bit_width(name, value)
        resolved[name] = value
    return resolved


def mixing_outputs(cfg: ModelConfig) -> int:
    """M: outputs of the mixing Linear, H for "relu" (H×H) and 2H for "glu" (H×2H)."""
    return 2 * cfg.d_model if cfg.mixing == "glu" else cfg.d_model


# -- [S25] analytical metrics ------------------------------------------------------------------
def ace(cfg: ModelConfig, bits, *, count_B: bool = False, count_D: bool = False) -> int:
    """Bit operations per step: L·(H·kernel + H·M·r_act·r_lin) + H·(d_in + d_out)·r_coder·r_act.

    kernel = N·r_A·r_state + N·r_C·r_state, plus N·r_B·r_act with ``count_B``; ``count_D`` adds
    H·r_D·r_act per layer.
    """
    r = resolve_bits(bits)
    H, N = cfg.d_model, cfg.d_state
    kernel = N * r["A"] * r["state"] + N * r["C"] * r["state"]
    if count_B:
        kernel += N * r["B"] * r["act"]
    layer = H * kernel + H * mixing_outputs(cfg) * r["act"] * r["mixing"]
    if count_D:
        layer += H * r["D"] * r["act"]
    coders = H * (cfg.d_input + cfg.d_output) * r["coder"] * r["act"]
    return cfg.n_layers * layer + coders


def coder_weight_count(cfg: ModelConfig, coder_weights: str = "s25") -> int:
    """Encoder and decoder weights: 2·H·d_in as [S25] counts them, or H·(d_in + d_out)."""
    if coder_weights not in CODER_WEIGHTS:
        raise ValueError(f"unknown coder_weights {coder_weights!r}; choose one of {CODER_WEIGHTS}")
    if coder_weights == "s25":
        return 2 * cfg.d_model * cfg.d_input
    return cfg.d_model * (cfg.d_input + cfg.d_output)


def model_size_bits(
    cfg: ModelConfig, bits, *, count_B: bool = False, count_D: bool = False, coder_weights: str = "s25"
) -> int:
    """L·(N·H·r_A + N·H·r_C + H·M·r_lin) + coder_weights·r_coder, plus N·H·L·r_B and H·L·r_D by flag."""
    r = resolve_bits(bits)
    H, N, L = cfg.d_model, cfg.d_state, cfg.n_layers
    layer = N * H * r["A"] + N * H * r["C"] + H * mixing_outputs(cfg) * r["mixing"]
    if count_B:
        layer += N * H * r["B"]
    if count_D:
        layer += H * r["D"]
    return L * layer + coder_weight_count(cfg, coder_weights) * r["coder"]


def model_size_bytes(cfg: ModelConfig, bits, **options) -> float:
    """``model_size_bits`` / 8."""
    return model_size_bits(cfg, bits, **options) / 8


def adc_complexity(cfg: ModelConfig, bits) -> int:
    """Converted outputs × ADC bits per step: L·H·(N·r_state + r_act) + L·M·r_lin + (H + d_out)·r_act.

    Each SSM channel converts its N state outputs at r_state and its output y at r_act; the mixing
    converts its M outputs at r_lin; the encoder its H outputs and the decoder its d_out at r_act.
    """
    r = resolve_bits(bits)
    H, N, L = cfg.d_model, cfg.d_state, cfg.n_layers
    kernels = L * H * (N * r["state"] + r["act"])
    mixing = L * mixing_outputs(cfg) * r["mixing"]
    coders = (H + cfg.d_output) * r["act"]
    return kernels + mixing + coders


# -- memory footprint of a deployed model --------------------------------------------------------
def normalized_granularity(value) -> str:
    text = str(getattr(value, "value", value)).lower().replace("-", "_")
    text = text if text.startswith("per_") else f"per_{text}"
    if text not in GRANULARITIES:
        raise ValueError(f"unknown granularity {value!r}; choose one of {GRANULARITIES}")
    return text


def normalized_scheme(value) -> str:
    text = str(getattr(value, "value", value)).lower()
    text = {"sym": "symmetric", "asym": "asymmetric"}.get(text, text)
    if text not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {value!r}; choose one of {SCHEMES}")
    return text


def component_setting(name: str, explicit: Mapping | None, spec, attribute: str, default: str):
    """The explicit mapping's entry, else ``spec.<name>.<attribute>``, else the default."""
    if explicit is not None and name in explicit:
        return explicit[name]
    return getattr(getattr(spec, name, None), attribute, None) or default


def quantization_layouts(bits_or_spec, granularity: Mapping | None, scheme: Mapping | None):
    """component -> (granularity, scheme), by default per tensor and symmetric."""
    for explicit in (granularity, scheme):
        for name in explicit or ():
            check_component(name)
    spec = None if isinstance(bits_or_spec, Mapping) else bits_or_spec
    return {
        name: (
            normalized_granularity(component_setting(name, granularity, spec, "granularity", "per_tensor")),
            normalized_scheme(component_setting(name, scheme, spec, "scheme", "symmetric")),
        )
        for name in COMPONENTS
    }


def tensor_bits(tensor: torch.Tensor, bits: int, layout: tuple[str, str]) -> int:
    """Elements × bits (a complex element is two reals), plus scales and zero points if quantized.

    Metadata: one 32-bit scale per tensor or per channel (first axis), and as many zero points
    when asymmetric; none for float tensors (32 bits). A complex tensor is quantized as two real
    planes (Re/Im or |z|/angle) with ranges of their own, so it stores twice the metadata.
    """
    planes = 2 if tensor.is_complex() else 1
    elements = tensor.numel() * planes
    if bits == FLOAT_BITS:
        return elements * FLOAT_BITS
    granularity, scheme = layout
    scales = planes * (tensor.shape[0] if granularity == "per_channel" and tensor.dim() > 0 else 1)
    per_scale = 2 if scheme == "asymmetric" else 1
    return elements * bits + scales * per_scale * METADATA_BITS


def deployed_tensors(model: nn.Module):
    """(component, tensor) the deployed model stores, and the ids of the trained tensors they replace."""
    tensors, replaced = [], set()
    for name, module in model.named_modules():
        if isinstance(module, S4D):
            with torch.no_grad():
                dA, dB, C, D = module.ssm_parameters()
            tensors += [("A", dA), ("B", dB), ("C", C), ("D", D)]
            replaced.update(id(t) for t in (*module.parameters(), *module.buffers()))
        elif linear_role(name, module) is not None:
            tensors.append((linear_role(name, module), module.weight))
            replaced.add(id(module.weight))
    return tensors, replaced


def linear_role(name: str, module: nn.Module) -> str | None:
    """"coder" or "mixing" for a weighted module named encoder, decoder or mixing; else None."""
    if not isinstance(getattr(module, "weight", None), torch.Tensor):
        return None
    return LINEAR_ROLES.get(name.rsplit(".", 1)[-1])


def float_tensors(model: nn.Module, replaced: set[int]):
    """Parameters and floating-point buffers not replaced by a deployed tensor (biases, norms)."""
    stored = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    return [t for t in stored if id(t) not in replaced]


def memory_footprint_bits(
    model: nn.Module, bits_or_spec, *, granularity: Mapping | None = None, scheme: Mapping | None = None
) -> int:
    """Bits of every tensor the deployed model stores, with quantization metadata.

    ``granularity``: component -> "per_tensor" | "per_channel"; ``scheme``: component ->
    "symmetric" | "asymmetric". Components missing there are read from ``spec.<component>.granularity``
    / ``.scheme`` when a spec is passed and has them, else per tensor and symmetric.
    """
    bits = resolve_bits(bits_or_spec)
    layouts = quantization_layouts(bits_or_spec, granularity, scheme)
    tensors, replaced = deployed_tensors(model)
    quantized = sum(tensor_bits(t, bits[name], layouts[name]) for name, t in tensors)
    floats = sum(t.numel() * FLOAT_BITS for t in float_tensors(model, replaced))
    return quantized + floats


# -- report -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HardwareReport:
    """The four hardware metrics of one model at one precision (memory only when a model was given)."""

    ace: int
    model_size_bits: int
    adc_complexity: int
    memory_bits: int | None = None

    @property
    def model_size_bytes(self) -> float:
        return self.model_size_bits / 8

    def as_dict(self) -> dict:
        return {**asdict(self), "model_size_bytes": self.model_size_bytes}

    def ratio_to(self, other: "HardwareReport") -> dict[str, float | None]:
        """self / other per metric: ``float_report.ratio_to(quantized_report)`` gives the reductions."""
        ratios = {}
        for name in ("ace", "model_size_bits", "adc_complexity", "memory_bits"):
            mine, theirs = getattr(self, name), getattr(other, name)
            ratios[name] = None if mine is None or theirs is None else mine / theirs
        return ratios


def report(
    cfg: ModelConfig,
    bits,
    model: nn.Module | None = None,
    *,
    count_B: bool = False,
    count_D: bool = False,
    coder_weights: str = "s25",
    granularity: Mapping | None = None,
    scheme: Mapping | None = None,
) -> HardwareReport:
    """All metrics for ``cfg`` at ``bits`` (mapping or spec); memory footprint of ``model`` if given."""
    memory = None
    if model is not None:
        memory = memory_footprint_bits(model, bits, granularity=granularity, scheme=scheme)
    return HardwareReport(
        ace=ace(cfg, bits, count_B=count_B, count_D=count_D),
        model_size_bits=model_size_bits(
            cfg, bits, count_B=count_B, count_D=count_D, coder_weights=coder_weights
        ),
        adc_complexity=adc_complexity(cfg, bits),
        memory_bits=memory,
    )
