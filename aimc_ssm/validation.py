"""The one gate of every setting a user gives: the command line, the Python API and device files pass it.

Each concept has one check, and each error names the setting, its value, what it takes and the fix
(`SettingError`, a ValueError). The checks the device loader calls, check_override and
check_device_config, raise aimc_ssm.analog.devices.DeviceError with the same message instead: what
the loader's callers already catch.

    precision      check_quantizer_bits, check_recipe, check_recipe_bits, check_component, check_ladder,
                   precision_spec(json or dict), read_precision_spec(path): bit widths, components,
                   recipes, granularities and every other field of a PrecisionSpec (the tables of
                   aimc_ssm.quant, not copies of them)
    converters     check_converter_bits (0: off, or 2 to CONVERTER_MAX_BITS), check_drift_time,
    and devices    check_device (a known name or a file), check_override (a dotted or knob override:
                   a known key, the nearest one suggested for a typo, of the field's type and range),
                   check_device_config (what a device file returns), check_device_flags
    configs        check_model_config, check_train_config (ModelConfig, TrainConfig), check_values
                   (the same rules over flags or dict entries, by name)
    paths          check_output_dir (an output directory: not a file, writable, room on its disk),
                   check_run_dir (a training run directory: empty, or holding this run)
    commands       check_values(vars(args), flag_name) then check_environment(vars(args), flag_name):
                   every setting a parsed command line has, by name; the study harness and
                   `python -m aimc_ssm` run them before anything is computed

The checks take `setting`, the name to report: the flag (`--adc-bits`) on a command line, the field
(`adc_bits`) in Python. This module imports the tables it checks against inside the checks, so that
every layer (core, quant, analog) can call it without importing the others.
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import functools
import json
import math
import re
import shutil
import tempfile
import typing
from pathlib import Path
from typing import Callable, Iterable

# aihwkit computes in float32: with more bits a converter's steps are finer than float32 resolves
# over its range (24 significand bits), and the setting no longer changes anything
CONVERTER_MAX_BITS = 24
MIN_FREE_BYTES = 64 * 2**20  # a study writes models, tables and plots of a few MB; less free space fails up front
MAX_SEED = 2**32 - 1  # numpy and scikit-learn seeds (the data splits)
# numeric device fields that are magnitudes of noise, spreads, scales or times: never negative
NON_NEGATIVE_FIELD = re.compile(r"noise|std|scale$|^t_|_t0$|t_inference$")


class SettingError(ValueError):
    """A setting that cannot take its value: the message names the setting, the value, what it takes and the fix."""

    def __init__(self, setting: str, value, allowed: str, fix: str):
        self.setting, self.value, self.allowed, self.fix = setting, value, allowed, fix
        super().__init__(message(setting, value, allowed, fix))


def message(setting: str, value, allowed: str, fix: str) -> str:
    return f"{setting} cannot be {show(value)}: it takes {allowed}; {fix}"


def show(value) -> str:
    """A value as the user wrote it: text quoted, a list as its items."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(show, value))
    return repr(value) if isinstance(value, str) else str(value)


def suggestion(value, choices: Iterable[str]) -> str:
    """ " (did you mean 'x'?)" for the choice nearest to a typo, or nothing."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


# -- numbers ------------------------------------------------------------------------------------------
def is_integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_integer(setting: str, value, low: int, high: int | None = None, example: int | None = None) -> None:
    if is_integer(value) and value >= low and (high is None or value <= high):
        return
    allowed = f"an integer from {low} to {high}" if high is not None else f"an integer of at least {low}"
    raise SettingError(setting, value, allowed, f"pass e.g. {low if example is None else example}")


def check_count(setting: str, value) -> None:
    check_integer(setting, value, 1)


def check_positive(setting: str, value) -> None:
    if not (is_number(value) and value > 0):
        raise SettingError(setting, value, "a finite number above 0", "pass a positive value, e.g. 0.01")


def check_non_negative(setting: str, value) -> None:
    if not (is_number(value) and value >= 0):
        raise SettingError(setting, value, "a finite number of at least 0", "pass 0 or a positive value")


def check_fraction(setting: str, value, high_open: bool = False) -> None:
    if not (is_number(value) and 0 <= value and (value < 1 if high_open else value <= 1)):
        allowed = "a number in [0, 1)" if high_open else "a number from 0 to 1"
        raise SettingError(setting, value, allowed, "pass a fraction, e.g. 0.1")


def check_choice(setting: str, value, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise SettingError(setting, value, f"one of {', '.join(map(str, choices))}", f"pick one{suggestion(value, choices)}")


def check_seed(setting: str, value) -> None:
    check_integer(setting, value, 0, MAX_SEED, example=0)


# -- precision ----------------------------------------------------------------------------------------
def check_quantizer_bits(setting: str, bits) -> None:
    """Bits of a quantizer (aimc_ssm.quant.quantizers: MIN_BITS to MAX_BITS)."""
    from .quant.quantizers import MAX_BITS, MIN_BITS

    check_integer(setting, bits, MIN_BITS, MAX_BITS, example=8)


def check_component(setting: str, name) -> None:
    from .quant.precision import COMPONENTS

    check_choice(setting, name, COMPONENTS)


def check_recipe(setting: str, name) -> None:
    from .quant.precision import RECIPES

    check_choice(setting, name, RECIPES)


def check_recipe_bits(setting: str, recipe: str, bits: int) -> None:
    """Bits a recipe (aimc_ssm.quant.precision.RECIPES) can be built at."""
    from .quant.precision import recipe_spec

    try:
        recipe_spec(recipe, bits)
    except (ValueError, TypeError) as err:
        raise SettingError(setting, bits, f"bit widths the {recipe!r} recipe builds ({err})", "pass e.g. 8") from err


def check_ladder(setting: str, ladder) -> None:
    """Bit widths a search steps down through: quantizer bits, strictly decreasing (aimc_ssm.quant.search.check_ladder).
    A single rung passes here: a budget may give one, and the search itself says it needs a lower one."""
    from .quant.search import check_ladder as check

    each(check_quantizer_bits)(setting, ladder)
    try:
        if len(ladder) > 1:
            check(ladder)
    except ValueError as err:
        raise SettingError(setting, list(ladder), "a start and lower rungs, strictly decreasing", str(err).split("; ")[-1]) from err


def precision_spec(data, setting: str = "precision spec"):
    """The PrecisionSpec of JSON text or a dict (PrecisionSpec.to_json / to_dict), every field checked.

    Raises SettingError naming the field (`<setting>.A.bits`), its value and what it takes; a spec that
    passes writes back to the same JSON (to_json) and reads back equal.
    """
    from .quant.precision import PARAMETERIZATIONS, QUANTIZERS, PrecisionSpec

    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as err:
            shown = data[max(0, err.pos - 20) : err.pos + 20]
            raise SettingError(
                setting, shown, "JSON as PrecisionSpec.to_json() writes it", f"fix the JSON: {err.msg} (line {err.lineno}, column {err.colno})"
            ) from err
    check_object(setting, data, PrecisionSpec)
    values = {}
    for name, value in data.items():
        if name in QUANTIZERS:
            values[name] = quantizer_config(f"{setting}.{name}", value)
        else:
            check_field_type(f"{setting}.{name}", value, PrecisionSpec, name)
            values[name] = value
    parameterization = values.get("parameterization", PrecisionSpec.parameterization)
    check_choice(f"{setting}.parameterization", parameterization, PARAMETERIZATIONS)
    try:
        return PrecisionSpec(**values)
    except ValueError as err:  # a component its parameterization cannot quantize (dt folded into Ā, B̄), say
        culprit = next((name for name in QUANTIZERS if name in values and not constructs(PrecisionSpec, name, values[name], parameterization=parameterization)), None)
        where, what = (f"{setting}.{culprit}", values[culprit]) if culprit else (f"{setting}.parameterization", parameterization)
        raise SettingError(where, what, f"settings that go together ({err})", "change it as the message says") from err


def quantizer_config(setting: str, value):
    """A QuantizerConfig from its dict, the field at fault named."""
    from .quant.quantizers import QuantizerConfig

    if isinstance(value, QuantizerConfig):
        return value
    check_object(setting, value, QuantizerConfig)
    for name, field_value in value.items():
        check_field_type(f"{setting}.{name}", field_value, QuantizerConfig, name)
    try:
        return QuantizerConfig(**value)
    except ValueError as err:
        culprit = next((name for name in value if not constructs(QuantizerConfig, name, value[name])), None)
        where, what = (f"{setting}.{culprit}", value[culprit]) if culprit else (setting, value)
        raise SettingError(where, what, f"a value QuantizerConfig accepts ({err})", "change it as the message says") from err


def constructs(cls, name: str, value, **others) -> bool:
    """Whether cls accepts `value` for field `name`, with `others`, every other field at its default."""
    try:
        cls(**{name: value}, **others)
    except (ValueError, TypeError):
        return False
    return True


def check_object(setting: str, data, cls) -> None:
    """A dict whose keys are fields of the dataclass `cls`; the nearest field suggested for a typo."""
    if not isinstance(data, dict):
        raise SettingError(setting, data, f"an object with the fields of {cls.__name__}", "write it as {\"field\": value, ...}")
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in known:
            raise SettingError(f"{setting} key", key, f"the known keys: {', '.join(known)}", f"remove or rename it{suggestion(key, known)}")


def check_field_type(setting: str, value, cls, name: str) -> None:
    """`value` of the type that cls's annotation of `name` declares (bool never for a number; int for a float)."""
    hint = field_types(cls)[name]
    allowed = typing.get_args(hint) or (hint,)
    kinds = {bool: bool, int: int, float: (int, float), str: str, type(None): type(None)}
    checkable = [kind for kind in allowed if kind in kinds]
    if len(checkable) < len(allowed):
        return  # another class (a QuantizerConfig): its own check
    ok = any(
        isinstance(value, kinds[kind]) and (kind is bool or not isinstance(value, bool)) and not (kind is float and not math.isfinite(value))
        for kind in checkable
    )
    if not ok:
        names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in checkable)
        raise SettingError(setting, value, f"a value of type {names}", f"write a {names}, e.g. {getattr(cls(), name)!r}")




@functools.cache
def field_types(cls) -> dict:
    """cls's field annotations resolved (typing.get_type_hints evaluates them anew on every call)."""
    return typing.get_type_hints(cls)


def read_precision_spec(path, setting: str = "--spec"):
    """The PrecisionSpec of a JSON file (studies/heterogeneous.py's final_spec.json, spec.to_json())."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise SettingError(setting, str(path), "a readable PrecisionSpec JSON file", f"check the path ({err.strerror})") from err
    return precision_spec(text, f"{setting} {path}")


# -- converters and devices ---------------------------------------------------------------------------
def check_converter_bits(setting: str, bits) -> None:
    """DAC or ADC bits: 0 or None (no quantization), or 2 to CONVERTER_MAX_BITS (aihwkit: n bits = 2^n - 2 steps)."""
    if bits is None or (is_integer(bits) and (bits == 0 or 2 <= bits <= CONVERTER_MAX_BITS)):
        return
    allowed = f"0 (no quantization) or an integer from 2 to {CONVERTER_MAX_BITS} (aihwkit: n bits = 2^n - 2 steps, in float32)"
    raise SettingError(setting, bits, allowed, "pass e.g. 8")


def check_drift_time(setting: str, seconds) -> None:
    """Seconds after programming: a finite number of at least 0."""
    if not (is_number(seconds) and seconds >= 0):
        raise SettingError(setting, seconds, "seconds after programming, a finite number of at least 0", "pass e.g. 3600 (one hour)")


def check_device(setting: str, name) -> Path:
    """The file of a device: a short name of devices/ or the path of a device file."""
    from .analog.devices import DeviceError, device_path, list_devices

    try:
        return device_path(name)
    except DeviceError as err:
        allowed = f"a device of devices/ ({', '.join(list_devices())}) or the path of a device file"
        raise SettingError(setting, name, allowed, f"pick one{suggestion(name, list_devices())}, or copy devices/pcm.py and pass its path") from err


@contextlib.contextmanager
def device_errors():
    """SettingErrors raised as aimc_ssm.analog.devices.DeviceError (the message and fields kept): what the
    device loader's callers catch, for the checks it calls."""
    from .analog.devices import DeviceError

    try:
        yield
    except SettingError as err:
        converted = DeviceError(str(err))
        converted.setting, converted.value, converted.allowed, converted.fix = err.setting, err.value, err.allowed, err.fix
        raise converted from None


def check_override(config, key: str, value, setting: str | None = None, parameters: Iterable[str] = ()):
    """The value of one device override (aimc_ssm.analog.devices.load_device), parsed and checked, or DeviceError.

    key: a common knob (COMMON_KNOBS), a parameter of the device file's rpu_config (`parameters`,
    passed through), or a dotted field of `config` such as forward.out_noise, whose type the parsed
    value must have; noise, spread, scale and time fields take no negative values. The nearest known
    key is suggested for a typo. `setting` names where the override came from (e.g. --set).
    """
    with device_errors():
        return override_value(config, key, value, setting, tuple(parameters))


def override_value(config, key: str, value, setting: str | None, parameters: tuple[str, ...]):
    from .analog.devices import COMMON_KNOBS

    if key in parameters:
        return value
    label = f"{setting} {key}" if setting else key
    if key in COMMON_KNOBS:
        return knob_value(label, key, value)
    if "." not in key:
        known = [*COMMON_KNOBS, *parameters]
        raise SettingError(
            setting or "override", key, f"a common knob ({', '.join(known)}) or a dotted field such as forward.out_noise",
            f"unknown override {key!r}: fix the key{suggestion(key, [*known, *dotted_fields(config)])}",
        )
    current = resolve_field(config, key, setting or "override")
    if dataclasses.is_dataclass(current):
        raise SettingError(label, value, f"no value: {key} is a group of fields", f"set one of them, e.g. {key}.{dataclasses.fields(current)[0].name}")
    parsed = parsed_as(label, value, current, f"a value of {key}'s type ({type(current).__name__})")
    check_field_value(label, key, parsed, current)
    return parsed


# the common knobs (aimc_ssm.analog.devices.COMMON_KNOBS): the type parse_value reads each as, and its range
KNOBS: dict[str, tuple[object, Callable[[str, object], None]]] = {
    "dac_bits": (0, check_converter_bits),
    "adc_bits": (0, check_converter_bits),
    "adc_range": (1.0, check_positive),
    "out_noise": (1.0, check_non_negative),
    "tile_size": (0, lambda setting, value: check_integer(setting, value, 0)),
}


def knob_value(label: str, key: str, value):
    """A common knob's value, parsed and checked; drift_compensation one of aihwkit's compensations."""
    from .analog.devices import drift_compensations

    if key == "drift_compensation":
        check_choice(label, str(value), drift_compensations())
        return str(value)
    like, check = KNOBS[key]
    parsed = parsed_as(label, value, like, "a number")
    check(label, parsed)
    return parsed


def parsed_as(label: str, value, like, allowed: str):
    """parse_value(value, like) (aimc_ssm.analog.devices: a command-line string as like's type), its error named."""
    from .analog.devices import DeviceError, parse_value

    try:
        return parse_value(value, like)
    except DeviceError as err:
        raise SettingError(label, value, allowed, str(err)) from None


def resolve_field(config, dotted: str, setting: str):
    """The current value of a dotted field of config, every name on the way checked."""
    from .analog.devices import field_names

    obj, path = config, "config"
    for part in dotted.split("."):
        valid = field_names(obj)
        if part not in valid:
            raise SettingError(
                setting, dotted, f"a field of the device config ({path} has no field {part!r}; valid fields of {path}: {', '.join(valid)})",
                f"fix the key{suggestion(dotted, dotted_fields(config))}",
            )
        obj, path = getattr(obj, part), f"{path}.{part}"
    return obj


def check_field_value(label: str, key: str, parsed, current) -> None:
    """`parsed` of the type of the field's `current` value, finite, and not negative where it is a magnitude."""
    if current is None or isinstance(current, (enum.Enum, str, type)):
        return  # enums are parsed by name; None and classes have no type to hold the value to
    if isinstance(current, bool):
        ok = isinstance(parsed, bool)
    elif isinstance(current, int):
        ok = is_integer(parsed)
    elif isinstance(current, float):
        ok = is_number(parsed)
    else:
        ok = isinstance(parsed, type(current))
    if not ok:
        finite = " (finite)" if isinstance(current, float) else ""
        raise SettingError(label, parsed, f"a value of {key}'s type, {type(current).__name__}{finite}", f"e.g. {key}={current}")
    if is_number(parsed) and parsed < 0 and NON_NEGATIVE_FIELD.search(key.rsplit(".", 1)[-1]):
        raise SettingError(label, parsed, "a magnitude of at least 0 (a noise, spread, scale or time)", f"e.g. {key}={current}")


def dotted_fields(obj, prefix: str = "", depth: int = 3) -> list[str]:
    """Every dotted field name of an RPU config, for suggestions."""
    from .analog.devices import field_names

    names = []
    for name in field_names(obj):
        value = getattr(obj, name)
        names.append(prefix + name)
        nested = dataclasses.is_dataclass(value) or type(value).__module__.startswith("aihwkit")
        if depth > 1 and nested and not isinstance(value, (type, enum.Enum)):
            names += dotted_fields(value, f"{prefix}{name}.", depth - 1)
    return names


def check_device_config(config, source: str) -> None:
    """What a device file returned, or DeviceError: every number of its forward, noise model, mapping and
    modifier finite, the magnitudes (noise, spreads, scales, times) not negative."""
    with device_errors():
        check_device_numbers(config, source)


def check_device_numbers(config, source: str) -> None:
    from .analog.devices import field_names

    for group in ("forward", "noise_model", "mapping", "modifier"):
        obj = getattr(config, group, None)
        for name in field_names(obj) if obj is not None else ():
            value = getattr(obj, name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                check_field_value(f"{source}: {group}.{name}", f"{group}.{name}", value, value)


def check_device_flags(values: dict, name_of: Callable[[str], str]) -> None:
    """A command's device flags: --device, the --set overrides (checked against the device's own config),
    the knobs; then the device loaded with them all, so that whatever else cannot go together fails now."""
    from .analog.devices import DeviceError, device_parameters, import_device_file, load_device, parse_settings

    device = values["device"]
    path = check_device(name_of("device"), device)
    try:
        settings = parse_settings(values.get("settings") or [])
    except DeviceError as err:
        raise SettingError(name_of("settings"), values["settings"], "KEY=VALUE overrides", str(err)) from None
    try:
        base = load_device(path)
    except DeviceError as err:
        raise SettingError(name_of("device"), device, "a device file whose rpu_config() works", str(err)) from None
    check_device_numbers(base, str(path))
    parameters = tuple(device_parameters(import_device_file(path).rpu_config))
    for key, value in settings.items():
        override_value(base, key, value, name_of("settings"), parameters)
    knobs = {name: first(values[name]) for name in KNOB_FLAGS if values.get(name) is not None}
    try:
        load_device(path, **settings, **knobs)
    except DeviceError as err:
        raise SettingError(name_of("device"), device, "settings the device can take together", str(err)) from None


KNOB_FLAGS = ("dac_bits", "adc_bits", "adc_range", "out_noise", "tile_size", "drift_compensation")  # the flags of the common knobs


def first(value):
    """A representative of a swept setting (each of its values is checked on its own)."""
    return value[0] if isinstance(value, (list, tuple)) else value


# -- model and training configs -----------------------------------------------------------------------
def check_state_size(setting: str, value) -> None:
    """N: a positive even integer (S4D keeps N/2 complex modes of conjugate pairs)."""
    from .core.s4d import check_sizes

    check_count(setting, value)
    try:
        check_sizes(1, value)
    except ValueError as err:
        raise SettingError(setting, value, "a positive even integer", str(err).split("; ", 1)[-1]) from err


def check_model_choice(setting: str, value) -> None:
    """activation, mixing, norm, a_init, discretization: one of aimc_ssm.core.model's choices."""
    from .core import model

    choices = {"activation": model.ACTIVATIONS, "mixing": model.MIXINGS, "norm": model.NORMS, "a_init": model.A_INITS, "discretization": model.DISCRETIZATIONS}
    check_choice(setting, value, choices[field_of(setting)])


def check_train_choice(setting: str, value) -> None:
    """mode, val_mode, compute: what TrainConfig accepts."""
    from .core.train import TrainConfig

    try:
        TrainConfig(**{field_of(setting): value})
    except ValueError as err:
        raise SettingError(setting, value, f"a value TrainConfig accepts ({err})", "pick one of those") from err


def field_of(setting: str) -> str:
    """The field a setting's name stands for: a_init for --a-init."""
    return setting.lstrip("-").replace("-", "_")


def check_dataset(setting: str, value) -> None:
    from .core.data import DATASETS

    if str(value).lower().strip() not in DATASETS:
        check_choice(setting, value, DATASETS)


def each(check: Callable[[str, object], None]) -> Callable[[str, object], None]:
    """The check applied to every value of a list flag (nargs="+"), or to the one value."""

    def check_each(setting: str, value) -> None:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            check(setting, item)

    return check_each


TRAIN_CHOICES = ("mode", "val_mode", "compute")  # the settings TrainConfig checks itself

# Every setting with a range, by its name in ModelConfig, TrainConfig and the study flags: one rule each.
RULES: dict[str, Callable[[str, object], None]] = {
    **dict.fromkeys(
        ("epochs", "qat_epochs", "hwa_epochs", "batch_size", "test_samples", "analog_samples", "repeats", "threads", "copies",
         "max_candidates", "seeds", "search_epochs", "f4_epochs", "scratch_epochs", "noise_repeats", "d_model",
         "n_layers", "d_input", "d_output"),
        check_count,
    ),
    "d_state": check_state_size,
    "seed": check_seed,
    **dict.fromkeys(("lr", "ssm_lr", "hwa_lr", "dt_min", "dt_max", "adc_range", "kernel_adc_range"), check_positive),
    **dict.fromkeys(
        ("weight_decay", "out_noise", "kernel_out_noise", "y_adc_range", "hwa_linear_noise", "noise_scale", "noise_scales",
         "drift_noise_scales", "sigmas", "hwa_sigmas", "tolerance"),
        each(check_non_negative),
    ),
    "dropout": lambda setting, value: check_fraction(setting, value, high_open=True),
    "cutoff": check_fraction,
    **dict.fromkeys(("adc_bits", "dac_bits"), each(check_converter_bits)),
    "tile_size": lambda setting, value: check_integer(setting, value, 0),
    **dict.fromkeys(("t_inference", "hwa_t_inference"), check_drift_time),
    **dict.fromkeys(("bits", "f4_bits", "noise_bits", "prune_bits", "size_bits"), each(check_quantizer_bits)),
    "ladder": lambda setting, value: check_ladder(setting, value),
    "components": each(lambda setting, value: None if value == "all" else check_component(setting, value)),
    "dataset": check_dataset,
    "recipe": check_recipe,
    **dict.fromkeys(TRAIN_CHOICES, check_train_choice),
    **dict.fromkeys(("activation", "mixing", "norm", "a_init", "discretization"), check_model_choice),
}


def check_values(values: dict, name_of: Callable[[str], str] = str) -> None:
    """Every setting of `values` (a parsed command line's vars, a config's asdict) that has a rule, by
    name, and the rules between settings; None means "not given" and is left alone. name_of(name) is
    what an error calls the setting: its flag on a command line."""
    for name, value in values.items():
        if name in RULES and value is not None:
            RULES[name](name_of(name), value)
    if values.get("dt_min") is not None and values.get("dt_max") is not None and values["dt_min"] > values["dt_max"]:
        raise SettingError(name_of("dt_min"), values["dt_min"], f"a step no larger than {name_of('dt_max')} ({values['dt_max']})", "swap them or lower it")
    if values.get("recipe") is not None:
        for bits in each_value(values.get("bits")):
            check_recipe_bits(name_of("bits"), values["recipe"], bits)


def each_value(value) -> list:
    """The values of a setting that may be one value, a list of them, or not given (None)."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_model_config(cfg) -> None:
    """A ModelConfig (or its dict) by the rules of check_values."""
    check_values(dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg))


def check_train_config(cfg) -> None:
    """A TrainConfig (or its dict) by the rules of check_values, but the choices TrainConfig checks itself
    (check_train_choice builds a TrainConfig: TrainConfig.__post_init__ may call this)."""
    values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    check_values({name: value for name, value in values.items() if name not in TRAIN_CHOICES})


# -- what a command needs of the machine ----------------------------------------------------------------
def check_environment(values: dict, name_of: Callable[[str], str] = str) -> None:
    """What the settings need of this machine: a GPU for cuda, the data directory, a readable spec file,
    and the device with its overrides. Paths to write are check_output_dir's, before the run starts."""
    if values.get("compute") == "cuda":
        from .core.train import resolve_device

        try:
            resolve_device("cuda")
        except ValueError as err:
            raise SettingError(name_of("compute"), "cuda", "auto or cpu on this machine: torch sees no GPU", "pass --compute cpu or auto") from err
    check_data_dir(values, name_of)
    if isinstance(values.get("spec"), Path):
        read_precision_spec(values["spec"], name_of("spec"))
    if values.get("device") is not None:
        check_device_flags(values, name_of)


def check_data_dir(values: dict, name_of: Callable[[str], str]) -> None:
    """The directory of a dataset read from files (mnist, scifar) exists; the embedded ones need none."""
    from .core.data import EMBEDDED

    data_dir, dataset = values.get("data_dir"), str(values.get("dataset", "")).lower()
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SettingError(name_of("data_dir"), str(data_dir), "an existing directory with the dataset's files", "check the path")
    if data_dir is None and dataset and dataset not in EMBEDDED:
        raise SettingError(name_of("data_dir"), None, f"the directory of the {dataset} files", f"pass {name_of('data_dir')} DIR, or an embedded dataset: {', '.join(EMBEDDED)}")


def check_output_dir(setting: str, path, min_free: int = MIN_FREE_BYTES) -> None:
    """A directory that results are written to: created if missing, writable, with min_free bytes free."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SettingError(setting, str(path), "a directory (it is a file)", f"pass another {setting}, or move the file away")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise SettingError(setting, str(path), "a directory this user can write to", f"pass another {setting} ({err.strerror})") from err
    free = shutil.disk_usage(path).free
    if free < min_free:
        raise SettingError(
            setting, str(path), f"a directory on a disk with at least {min_free // 2**20} MiB free ({free // 2**20} MiB are)",
            f"free some space or pass another {setting}",
        )


def check_run_dir(setting: str, path, identity: dict) -> None:
    """A training run directory: writable, and empty or holding the run of `identity`
    (aimc_ssm.io.run_identity) so that it resumes or is reused, never mixed with another run's files."""
    from .io import RUN_CONFIG, run_config_mismatch

    path = Path(path)
    check_output_dir(setting, path)
    if any(path.iterdir()):
        mismatch = run_config_mismatch(path, identity)
        if mismatch is not None:
            raise SettingError(
                setting, str(path), f"an empty directory or one holding this run (its {RUN_CONFIG}); {mismatch}",
                f"pass an empty or new {setting}",
            )


def parse_bool(text: str) -> bool:
    """A yes/no flag: true/false, yes/no, on/off, 1/0 (the device overrides' words); anything else is refused."""
    import argparse

    from .analog.devices import DeviceError, parse_value

    try:
        return parse_value(text, False)
    except DeviceError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def flag_name(name: str) -> str:
    """The command-line flag of a setting: --adc-bits for adc_bits; --set for the device overrides."""
    return "--set" if name == "settings" else "--" + name.replace("_", "-")
