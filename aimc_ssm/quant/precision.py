"""One precision specification: a QuantizerConfig for every quantizable component of an S4D model.

Components (COMPONENTS):

    A       the state matrix: discretized Ā ("cartesian", "polar") or continuous A ("continuous")
    B       the input vector: B̄, or continuous B
    C       the output vector
    D       the skip term
    dt      the step, quantized as log(dt) ([S25]); only deployed in the "continuous" parameterization
    state   the state x, re-quantized at every recurrent step
    act     activations: the SSM output after its activation, i.e. the mixing layer's input
    mixing  the weights of each block's mixing Linear
    coder   the weights of the encoder and decoder Linears (biases of all Linears stay float)

The same spec drives post-training quantization and quantization-aware training
(aimc_ssm.quant.quantize.quantize_). `bits(component)` counts float as 32, as the hardware metrics do.

Recipes (RECIPES, `recipe_spec(name, bits)`): the one registry of named specifications at b bits that
studies, the search, the CLI and the docs use; each name is one specification:

    z25          [Z25]'s quantizers (percentile-clipped, asymmetric, per channel for Ā, B̄, C) with every
                 component at b bits, the state too, and the conv-mode state proxy on, so that QAT in
                 conv mode sees the state's precision: the quantization sweeps and the search
    z25-state16  the same quantizers at b bits with the state at [Z25]'s default 16 bits and no proxy:
                 the deployment studies' PTQ and QAT models (on a crossbar the converters quantize the state)
    s25          [S25]'s QS4D quantizers: symmetric abs-max per tensor, continuous A, B and D float
    uniform      every component symmetric abs-max per tensor at b bits
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from typing import Callable

from ..io import from_dict_strict
from .quantizers import FLOAT, Z25_PERCENTILE, QuantizerConfig

COMPONENTS = ("A", "B", "C", "D", "dt", "state", "act", "mixing", "coder")
PARAMETERIZATIONS = ("continuous", "cartesian", "polar")
FLOAT_BITS = 32


def check_component(name: str) -> None:
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; the components are {COMPONENTS}")


@dataclass(frozen=True)
class PrecisionSpec:
    """Per-component quantizers and how the complex system is parameterized for quantization.

    Attributes:
        A, B, C, D, dt, state, act, mixing, coder: QuantizerConfig of each component (see the
            module docstring); QuantizerConfig(bits=None) keeps a component float.
        parameterization: which numbers of the SSM are quantized. The trainable parameters are
            always S4D's continuous ones; this picks what is rounded on the way to the deployed system:
            "continuous"  Re and Im of continuous A, B and C, and log dt; then discretize ([S25])
            "cartesian"   discretize in float; then Re and Im of Ā, B̄ and C
            "polar"       as cartesian, but Ā as |Ā| and ∠Ā, and the state as |x| and ∠x ([Z25])
        partial_products: in recurrent mode, also re-quantize Ā⊙x and B̄u (with the state's
            config and form) before they are added.
        conv_state_proxy: convolution mode has no state; quantize the kernel K and the SSM input u
            with the state's config instead ([S25]). False leaves conv mode without state quantization.
    """

    A: QuantizerConfig = FLOAT
    B: QuantizerConfig = FLOAT
    C: QuantizerConfig = FLOAT
    D: QuantizerConfig = FLOAT
    dt: QuantizerConfig = FLOAT
    state: QuantizerConfig = FLOAT
    act: QuantizerConfig = FLOAT
    mixing: QuantizerConfig = FLOAT
    coder: QuantizerConfig = FLOAT
    parameterization: str = "cartesian"
    partial_products: bool = False
    conv_state_proxy: bool = False

    def __post_init__(self):
        for name in COMPONENTS:
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, QuantizerConfig.from_dict(value))
            elif not isinstance(value, QuantizerConfig):
                raise TypeError(
                    f"component {name!r} needs a QuantizerConfig (or its dict), got {type(value).__name__}; "
                    f"to set only the bits use spec.with_bits({name!r}, bits)"
                )
        if self.parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {self.parameterization!r}; choose one of {PARAMETERIZATIONS}")
        if not self.dt.is_float and self.parameterization != "continuous":
            raise ValueError(
                f"dt is folded into Ā and B̄ in the {self.parameterization!r} parameterization, so it "
                "cannot be quantized there: use parameterization='continuous' or keep dt float"
            )

    # -- queries ---------------------------------------------------------------------------
    def config(self, component: str) -> QuantizerConfig:
        check_component(component)
        return getattr(self, component)

    def bits(self, component: str) -> int:
        """Bits of a component; float counts as 32."""
        bits = self.config(component).bits
        return FLOAT_BITS if bits is None else bits

    def quantized(self) -> tuple[str, ...]:
        """Names of the components that are quantized."""
        return tuple(c for c in COMPONENTS if not getattr(self, c).is_float)

    def static(self) -> tuple[str, ...]:
        """Names of the quantized components whose ranges need calibration."""
        return tuple(c for c in self.quantized() if getattr(self, c).ranges == "static")

    # -- variants --------------------------------------------------------------------------
    def with_bits(self, component: str, bits: int | None) -> "PrecisionSpec":
        """The same spec with one component at `bits` (None: float), its other options kept."""
        return replace(self, **{component: replace(self.config(component), bits=bits)})

    def replace(self, **changes) -> "PrecisionSpec":
        """dataclasses.replace with checked field names."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ValueError(f"unknown precision fields {sorted(unknown)}; known fields: {sorted(known)}")
        return replace(self, **changes)

    # -- serialization ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)  # every field, so that a new one reaches the cache keys built from it

    @classmethod
    def from_dict(cls, d: dict) -> "PrecisionSpec":
        return from_dict_strict(cls, d, "precision")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "PrecisionSpec":
        return cls.from_dict(json.loads(text))

    # -- presets ---------------------------------------------------------------------------
    @classmethod
    def float(cls) -> "PrecisionSpec":
        """Everything float: quantize_ with it changes no output."""
        return cls()

    @classmethod
    def uniform(cls, bits: int, parameterization: str = "cartesian", **options) -> "PrecisionSpec":
        """Every component at `bits` with one QuantizerConfig(bits, **options); dt only where it is
        deployed (the "continuous" parameterization)."""
        config = QuantizerConfig(bits=bits, **options)
        dt = config if parameterization == "continuous" else replace(config, bits=None)
        return cls(**{c: config for c in COMPONENTS if c != "dt"}, dt=dt, parameterization=parameterization)

    @classmethod
    def z25(
        cls,
        bits: int = 8,
        state_bits: int = 16,
        parameterization: str = "cartesian",
        scheme: str = "asymmetric",
        ranges: str = "dynamic",
    ) -> "PrecisionSpec":
        """[Z25]: percentile-clipped (99.999) uniform quantizers with clipped STE; per channel for the
        SSM's A, B̄, C, per tensor for D (one value per channel would be stored exactly), the
        activations and the Linear weights; the state re-quantized every step at `state_bits`.
        `ranges="static"` calibrates them instead (aimc_ssm.quant.quantize.calibrate)."""
        per_tensor = QuantizerConfig(bits, scheme, Z25_PERCENTILE, "tensor", ranges, "clipped")
        per_channel = replace(per_tensor, granularity="channel")
        return cls(
            A=per_channel,
            B=per_channel,
            C=per_channel,
            D=per_tensor,
            dt=replace(per_tensor, bits=None),
            state=replace(per_channel, bits=state_bits),
            act=per_tensor,
            mixing=per_tensor,
            coder=per_tensor,
            parameterization=parameterization,
        )

    @classmethod
    def s25(cls, bits: int = 8) -> "PrecisionSpec":
        """[S25] QS4D: symmetric abs-max per tensor, dynamic ranges, identity STE; continuous A
        (Re, Im), C, log dt, the state (in conv mode through the kernel K and input u), activations,
        mixing and coder weights at `bits`; B and D float.

        Levels: [S25] counts q = 2^b levels with the grid ±q/2 (q + 1 values, one more than b bits
        hold); here b bits give ±(2^(b-1) - 1), so their ternary q = 2 is bits=2 and for b >= 3 this
        grid has one step fewer on each side than theirs.
        """
        config = QuantizerConfig(bits, "symmetric", 100.0, "tensor", "dynamic", "identity")
        float_ = replace(config, bits=None)
        return cls(
            **{c: config for c in ("A", "C", "dt", "state", "act", "mixing", "coder")},
            B=float_,
            D=float_,
            parameterization="continuous",
            conv_state_proxy=True,
        )


# -- the recipe registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """A named family of specifications: `build(bits)` is the spec at b bits."""

    name: str
    description: str
    build: Callable[[int], PrecisionSpec]


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "z25", "[Z25] quantizers, every component (state too) at b bits, conv-mode state proxy",
            lambda b: PrecisionSpec.z25(b, state_bits=b).replace(conv_state_proxy=True),
        ),
        Recipe("z25-state16", "[Z25] quantizers at b bits, the state at 16 bits", lambda b: PrecisionSpec.z25(b)),
        Recipe("s25", "[S25] QS4D: symmetric abs-max per tensor, continuous A; B, D float", PrecisionSpec.s25),
        Recipe("uniform", "every component symmetric abs-max per tensor at b bits", PrecisionSpec.uniform),
    )
}


def recipe_spec(name: str, bits: int) -> PrecisionSpec:
    """The specification of recipe `name` (RECIPES) at `bits`."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name].build(bits)


def recipe_help() -> str:
    """One line per recipe, for a --recipe flag's help."""
    return "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values())
