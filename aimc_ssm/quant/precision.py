"""One precision specification: a QuantizerConfig for every quantizable component of an S4D model.

Components (COMPONENTS), the quantities the hardware metrics count (aimc_ssm.quant.metrics):

    A       the state matrix: discretized Ā ("cartesian", "polar") or continuous A ("continuous")
    B       the input vector: B̄, or continuous B
    C       the output vector
    D       the skip term
    dt      the step, quantized as log(dt) ([S25]); only deployed in the "continuous" parameterization
    state   the state x, re-quantized at every recurrent step
    act     activations: the mixing layer's input (the SSM output after its activation), or with
            act_point="block_output" the block's output after the mixing and its GLU ([S25])
    mixing  the weights of each block's mixing Linear
    coder   the weights of the encoder and decoder Linears (biases of all Linears stay float)

Activation quantizers at the further points [Z25]'s code quantizes (ACTIVATION_QUANTIZERS), float
unless a spec sets them; the metrics count their bits as `act`'s:

    encoder_input   the model's input, before the encoder
    ssm_input       each SSM layer's input u (after a pre-norm)
    y               the SSM output y_t = 2·Re(C·x_t) before the skip term, in recurrent mode ([Z25]'s y_recur)
    pre_activation  the SSM layer's output y + D·u, before the activation ([Z25]'s y_pre_output)
    decoder_input   the pooled features, the decoder's input

Dynamic ranges of every activation (these, `act`, the state, the partial products, the conv-mode
proxy of the input) are taken per sequence (aimc_ssm.quant.quantizers): no result depends on the
other sequences of a batch. The same spec drives post-training quantization and quantization-aware
training (aimc_ssm.quant.quantize.quantize_). `bits(name)` counts float as 32, as the metrics do.

Recipes (RECIPES, `recipe_spec(name, bits)`): the one registry of named specifications at b bits that
studies, the search, the CLI and the docs use. A recipe also carries the model settings it assumes
(`recipe_model_config`) and the QAT its source ran (`recipe_qat_plan`).

    z25      [Z25]'s public code (github SirRendore/QSSM, S4/configs/q_config.yaml, S4/quantization/):
             - Ā, B̄, C asymmetric per channel, one range shared by Re and Im ("joint": the channel's
               (N/2, 2) real view reduced at once), zero point on 16 bits; D asymmetric per tensor (its
               (1, H) tensor reduced over H); percentile 99.999 (the code takes nearest quantiles along
               each reduced axis in turn, the extremes below 50,001 values an axis; here one nearest rank
               over the range, the extremes below 100,000 values); clipped straight-through gradient;
             - the state dynamic per (sequence, channel), joint over Re and Im (dims N and 2 of
               (B, H, N, 2) reduced), at 16 bits whatever b: the config holds `state_quantizer_bits: 16`
               beside 8 bits everywhere else, [Z25]'s default state precision, so the paper's 8-bit
               headline (PTQ ≈ 40 %, QAT ≈ 96 %) has a 16-bit state;
             - the partial products Ā⊙x and B̄u re-quantized with the state's quantizer, then their sum;
             - the state clamped at ±50, before its quantization here (the code clamps after quantizing
               it; the two differ only once the state leaves ±50, where clamping first keeps it on its grid);
             - y clamped at ±1000 and quantized per (sequence, step) over the channels (y_recur: the
               (B, H, L) output reduced over H), y + D·u likewise (y_pre_output), the SSM input likewise
               (the quantizer inserted before the block);
             - every Linear's input per tensor (the encoder's, the mixing's = `act`, the decoder's),
               taken here per sequence, where the code pools them over the batch;
             - Linear weights asymmetric per tensor with the 16-bit zero point, biases float;
             - GELU replaced by x·clamp(x + 2, 0, 4)/4 (QGELU);
             - the polar parameterization keeps a range per plane: the code's polar block quantizes
               magnitude and angle with quantizers of their own.
             Not reproduced: y read from the state before its re-quantization (here from the state as
             re-quantized, as the fused crossbar kernel reads it) and the state quantizer's gradient clip
             at ±1000. Model: the [Z25] one, GELU, B trained. QAT: fine-tune the float model for
             10 epochs, Adam lr 1e-3 (no weight decay, cosine), in recurrent mode (S4BlockRecurrent).
    s25      [S25]'s QS4D code (github YounesBouhadjar/state-spaces, branch quantSSM, src/models/s4/s4d.py,
             "latest version for paper"), max_quant_fn from BitNet b1.58:
             - symmetric abs-max per tensor with q = 2^b levels: scale (q/2)/max|a|, integers in ±q/2
               ("q-levels"); identity straight-through gradient; dynamic ranges (per sequence here,
               where the code takes one over the whole batch);
             - continuous A, its real part -exp(log_A_real) and A_imag each with a range of its own;
               C with one range over its (H, N/2, 2) real view ("joint"); log dt (log-domain);
               B = 1 fixed and D unquantized (no B or D quantizer);
             - the conv-mode state proxy: kernel K and input u each with q/2 levels
               (`state_quant / 2`, i.e. one bit fewer than the state: state_proxy_levels="half");
             - activations after the mixing and its GLU (act_point="block_output"); no activation
               after the SSM; mixing and encoder/decoder weights abs-max per tensor.
             Model: activation "none", B fixed (trainable_B=False), A_imag = π/4·n ("lin-quarter").
             QAT: from scratch with the quantizers on, 200 epochs (sCIFAR; 100 the code's default),
             AdamW lr 1e-2, in convolution mode.
    channel-asym          [Z25]'s quantizers as this suite first ran them (percentile-clipped,
             asymmetric, per channel and per plane for Ā, B̄, C, unlimited zero point, GELU kept) with every
             component at b bits, the state too, and the conv-mode state proxy on, so that QAT in conv
             mode sees the state's precision: the quantization sweeps and the search. QAT: fine-tune
             10 epochs, lr 1e-3, conv mode.
    channel-asym-state16  the same quantizers at b bits with the state at 16 bits and no proxy:
             the deployment studies' PTQ and QAT models (on a crossbar the converters quantize the state).
    uniform  every component symmetric abs-max per tensor at b bits.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable

from ..core.model import ModelConfig
from ..io import from_dict_strict
from .quantizers import FLOAT, Z25_PERCENTILE, QuantizerConfig

COMPONENTS = ("A", "B", "C", "D", "dt", "state", "act", "mixing", "coder")
ACTIVATION_QUANTIZERS = ("encoder_input", "ssm_input", "y", "pre_activation", "decoder_input")
QUANTIZERS = COMPONENTS + ACTIVATION_QUANTIZERS
# quantizers of tensors without a time axis: no per-step ranges
WITHOUT_STEPS = ("A", "B", "C", "D", "dt", "state", "mixing", "coder", "decoder_input")
PARAMETERIZATIONS = ("continuous", "cartesian", "polar")
ACT_POINTS = ("mixing_input", "block_output")
STATE_PROXY_LEVELS = ("state", "half")
FLOAT_BITS = 32
Z25_ZERO_POINT_BITS = 16
Z25_STATE_BITS = 16
Z25_STATE_CLAMP = 50.0
Z25_Y_CLAMP = 1000.0


def check_component(name: str) -> None:
    if name not in COMPONENTS:
        raise ValueError(f"unknown component {name!r}; the components are {COMPONENTS}")


def check_quantizer(name: str) -> None:
    if name not in QUANTIZERS:
        raise ValueError(
            f"unknown component {name!r}; the components are {COMPONENTS} and the activation quantizers "
            f"{ACTIVATION_QUANTIZERS}"
        )


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
            config and form, without its clamp) before they are added.
        conv_state_proxy: convolution mode has no state; quantize the kernel K and the SSM input u
            with the state's config (no clamp) instead ([S25]). False leaves conv mode without state quantization.
        encoder_input, ssm_input, y, pre_activation, decoder_input: the activation quantizers of
            ACTIVATION_QUANTIZERS (module docstring); float by default.
        act_point: where `act` quantizes: "mixing_input" (after the activation) or "block_output"
            (after the mixing and its GLU, before dropout and residual: [S25]).
        state_proxy_levels: levels of the conv-mode proxy: "state" (the state's config) or "half"
            (q/2 levels, one bit fewer: [S25]'s `state_quant / 2`).
        hard_gelu: replace each block's GELU by x·clamp(x + 2, 0, 4)/4 when quantizing ([Z25]'s QGELU).

    Fields added after the first release default to what a spec without them did, so older JSON
    loads with its old meaning.
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
    encoder_input: QuantizerConfig = FLOAT
    ssm_input: QuantizerConfig = FLOAT
    y: QuantizerConfig = FLOAT
    pre_activation: QuantizerConfig = FLOAT
    decoder_input: QuantizerConfig = FLOAT
    act_point: str = "mixing_input"
    state_proxy_levels: str = "state"
    hard_gelu: bool = False

    def __post_init__(self):
        for name in QUANTIZERS:
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, QuantizerConfig.from_dict(value))
            elif not isinstance(value, QuantizerConfig):
                raise TypeError(
                    f"component {name!r} needs a QuantizerConfig (or its dict), got {type(value).__name__}; "
                    f"to set only the bits use spec.with_bits({name!r}, bits)"
                )
        for name, allowed in (
            ("parameterization", PARAMETERIZATIONS),
            ("act_point", ACT_POINTS),
            ("state_proxy_levels", STATE_PROXY_LEVELS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {allowed}")
        if not self.dt.is_float and self.parameterization != "continuous":
            raise ValueError(
                f"dt is folded into Ā and B̄ in the {self.parameterization!r} parameterization, so it "
                "cannot be quantized there: use parameterization='continuous' or keep dt float"
            )
        for name in WITHOUT_STEPS:
            if getattr(self, name).granularity == "step":
                raise ValueError(
                    f"{name} has no time axis, so granularity='step' cannot apply to it: use 'tensor' or "
                    "'channel' (per-step ranges are for ssm_input, y, pre_activation, act, encoder_input)"
                )
        if self.state_proxy_levels == "half" and self.state.bits == 1:
            raise ValueError(
                "state_proxy_levels='half' quantizes the conv-mode proxy one bit below the state, and a "
                "1-bit state leaves none: give the state at least 2 bits or use state_proxy_levels='state'"
            )

    # -- queries ---------------------------------------------------------------------------
    def config(self, name: str) -> QuantizerConfig:
        """The QuantizerConfig of a component or an activation quantizer."""
        check_quantizer(name)
        return getattr(self, name)

    def bits(self, name: str) -> int:
        """Bits of a component (or activation quantizer); float counts as 32."""
        bits = self.config(name).bits
        return FLOAT_BITS if bits is None else bits

    def quantized(self) -> tuple[str, ...]:
        """Names of the components that are quantized (COMPONENTS only)."""
        return tuple(c for c in COMPONENTS if not getattr(self, c).is_float)

    def static(self) -> tuple[str, ...]:
        """Names of the quantizers (components and activation quantizers) whose ranges need calibration."""
        return tuple(q for q in QUANTIZERS if not getattr(self, q).is_float and getattr(self, q).ranges == "static")

    def proxy_config(self) -> QuantizerConfig:
        """The config of the conv-mode state proxy (kernel K and input u): the state's, without its
        clamp, one bit fewer with state_proxy_levels='half'."""
        config = replace(self.state, clamp=None)
        if self.state_proxy_levels == "half" and not config.is_float:
            config = replace(config, bits=config.bits - 1)
        return config

    # -- variants --------------------------------------------------------------------------
    def with_bits(self, name: str, bits: int | None) -> "PrecisionSpec":
        """The same spec with one component (or activation quantizer) at `bits` (None: float), its other
        options kept."""
        return replace(self, **{name: replace(self.config(name), bits=bits)})

    def only(self, *names: str) -> "PrecisionSpec":
        """The same spec with every quantizer but `names` float, every other setting kept."""
        for name in names:
            check_quantizer(name)
        return replace(self, **{q: FLOAT for q in QUANTIZERS if q not in names})

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
    def channel_asym(
        cls,
        bits: int = 8,
        state_bits: int = 16,
        parameterization: str = "cartesian",
        scheme: str = "asymmetric",
        ranges: str = "dynamic",
    ) -> "PrecisionSpec":
        """[Z25]'s quantizers as this suite first ran them: percentile-clipped (99.999) uniform quantizers
        with clipped STE, per channel (a range per plane) for the SSM's A, B̄, C, per tensor for D (one
        value per channel would be stored exactly), the activations and the Linear weights; the state
        re-quantized every step at `state_bits`. `ranges="static"` calibrates them instead
        (aimc_ssm.quant.quantize.calibrate)."""
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
    def z25(
        cls,
        bits: int = 8,
        state_bits: int = Z25_STATE_BITS,
        parameterization: str = "cartesian",
        scheme: str = "asymmetric",
        ranges: str = "dynamic",
    ) -> "PrecisionSpec":
        """[Z25]'s public code at `bits`, the state at `state_bits` (the module docstring lists each setting
        and its source). `ranges="static"` calibrates every range; the per-step activation ranges then
        become per channel, as the code's calibration (`static_dims_to_reduce`) takes them."""
        zero_point_bits = Z25_ZERO_POINT_BITS if scheme == "asymmetric" else None
        joint = "joint" if parameterization != "polar" else "planes"
        per_tensor = QuantizerConfig(
            bits, scheme, Z25_PERCENTILE, "tensor", ranges, "clipped", zero_point_bits=zero_point_bits
        )
        per_channel = replace(per_tensor, granularity="channel", complex_range=joint)
        per_step = replace(per_tensor, granularity="step" if ranges == "dynamic" else "channel")
        return cls(
            A=per_channel,
            B=per_channel,
            C=per_channel,
            D=per_tensor,
            dt=replace(per_tensor, bits=None),
            state=replace(per_channel, bits=state_bits, clamp=Z25_STATE_CLAMP),
            act=per_tensor,
            mixing=per_tensor,
            coder=per_tensor,
            parameterization=parameterization,
            partial_products=True,
            encoder_input=per_tensor,
            ssm_input=per_step,
            y=replace(per_step, clamp=Z25_Y_CLAMP),
            pre_activation=per_step,
            decoder_input=per_tensor,
            hard_gelu=True,
        )

    @classmethod
    def s25(cls, bits: int = 8) -> "PrecisionSpec":
        """[S25]'s QS4D code at q = 2^bits levels (the module docstring lists each setting and its source):
        symmetric abs-max per tensor on the grid ±q/2, dynamic ranges, identity STE; continuous A (Re,
        Im apart), C (Re and Im together), log dt, the state (in conv mode through the kernel K and input
        u at q/2 levels), the block outputs, mixing and coder weights; B and D float."""
        config = QuantizerConfig(bits, "symmetric", 100.0, "tensor", "dynamic", "identity", symmetric_grid="q-levels")
        float_ = replace(config, bits=None)
        return cls(
            **{c: config for c in ("A", "dt", "state", "act", "mixing", "coder")},
            C=replace(config, complex_range="joint"),
            B=float_,
            D=float_,
            parameterization="continuous",
            conv_state_proxy=True,
            act_point="block_output",
            state_proxy_levels="half",
        )


# -- the recipe registry ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class QATPlan:
    """Quantization-aware training as a recipe's source ran it.

    from_scratch: train a fresh model with the quantizers on (True) or fine-tune the trained float model;
    epochs, lr: of that training; mode: "conv" or "recurrent", the forward it trains through."""

    from_scratch: bool
    epochs: int
    lr: float
    mode: str


Z25_QAT = QATPlan(from_scratch=False, epochs=10, lr=1e-3, mode="recurrent")
S25_QAT = QATPlan(from_scratch=True, epochs=200, lr=1e-2, mode="conv")
FINETUNE_CONV_QAT = QATPlan(from_scratch=False, epochs=10, lr=1e-3, mode="conv")


@dataclass(frozen=True)
class Recipe:
    """A named family of specifications: `build(bits)` is the spec at b bits; `model` the ModelConfig
    settings it assumes (none: any model); `qat` the QAT its source ran."""

    name: str
    description: str
    build: Callable[[int], PrecisionSpec]
    qat: QATPlan
    model: dict = field(default_factory=dict)


RECIPES = {
    recipe.name: recipe
    for recipe in (
        Recipe(
            "z25", "[Z25]'s public code: joint Re/Im per-channel ranges, 16-bit zero points and state, "
            "partial products, clamps, y/pre-activation/input quantizers, hard GELU",
            PrecisionSpec.z25, Z25_QAT, {"activation": "gelu", "trainable_B": True},
        ),
        Recipe(
            "s25", "[S25] QS4D: symmetric abs-max per tensor on q = 2^b levels, continuous A, B and D float, "
            "block outputs, conv proxy at q/2", PrecisionSpec.s25, S25_QAT,
            {"activation": "none", "trainable_B": False, "a_init": "lin-quarter"},
        ),
        Recipe(
            "channel-asym", "[Z25]-style per-channel asymmetric quantizers, every component (state too) at b bits, "
            "conv-mode state proxy", lambda b: PrecisionSpec.channel_asym(b, state_bits=b).replace(conv_state_proxy=True),
            FINETUNE_CONV_QAT,
        ),
        Recipe(
            "channel-asym-state16", "[Z25]-style per-channel asymmetric quantizers at b bits, the state at 16 bits",
            lambda b: PrecisionSpec.channel_asym(b), FINETUNE_CONV_QAT,
        ),
        Recipe("uniform", "every component symmetric abs-max per tensor at b bits", PrecisionSpec.uniform, FINETUNE_CONV_QAT),
    )
}


def recipe(name: str) -> Recipe:
    """The registered recipe `name`."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return RECIPES[name]


def recipe_spec(name: str, bits: int) -> PrecisionSpec:
    """The specification of recipe `name` (RECIPES) at `bits`."""
    return recipe(name).build(bits)


def recipe_model_config(name: str, base: ModelConfig) -> ModelConfig:
    """`base` with the model settings recipe `name` assumes (e.g. s25: no activation, B fixed)."""
    return replace(base, **recipe(name).model)


def recipe_qat_plan(name: str) -> QATPlan:
    """How recipe `name`'s source ran QAT (from scratch or fine-tuning, epochs, lr, mode)."""
    return recipe(name).qat


def recipe_help() -> str:
    """One line per recipe, for a --recipe flag's help."""
    return "; ".join(f"{r.name}: {r.description}" for r in RECIPES.values())
