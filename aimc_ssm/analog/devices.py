"""Analog devices: one plain Python file per device, each returning an aihwkit inference RPU config.

A device file (devices/<name>.py, or any path) defines `rpu_config(...)` returning an aihwkit
`InferenceRPUConfig` (compiled tile) or `TorchInferenceRPUConfig` (pure-PyTorch tile). A device
modeler copies one, edits it and passes `--device path/to/my_device.py` (or a short name such as
`--device pcm`) to any study. Overrides are routed in one place, `load_device`:

    keyword parameters the file's rpu_config names     -> passed to it (gaussian.py: sigma=0.02)
    common knobs: dac_bits, adc_bits, adc_range,       -> applied by `apply_overrides`
                  out_noise, tile_size
    dotted config fields: forward.out_noise=0.02,      -> set on the returned config
                  mapping.weight_scaling_columnwise=false, noise_model.drift_scale=0.5

Bits follow aihwkit's n-bit convention, `bits_to_res`: n bits = 2^n - 2 steps over the full range
2·bound, res = 1/(2^n - 2); None or 0 turns the converter's quantization off (res -1).

    python -m aimc_ssm.analog.devices --list
    python -m aimc_ssm.analog.devices --device pcm --set adc_bits=6 --set forward.out_noise=0.02
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any

from ..validation import check_device_config, check_override

DEVICES_DIR = Path(__file__).resolve().parents[2] / "devices"
COMMON_KNOBS = {
    "dac_bits": "DAC resolution in bits (forward.inp_res); 0 or None: no input quantization",
    "adc_bits": "ADC resolution in bits (forward.out_res); 0 or None: no output quantization",
    "adc_range": "ADC range (forward.out_bound), in units of the normalized MVM output",
    "out_noise": "additive Gaussian output noise std (forward.out_noise), same units",
    "tile_size": "largest physical crossbar (mapping.max_input_size and max_output_size); 0: unlimited",
    "drift_compensation": "after drift: global (aihwkit's, one factor per tile from one noisy read), averaged "
    "(the same from 64 averaged reads, aimc_ssm.analog.compensation), global-exact (aihwkit's, reference read "
    "noise-free), per-column (aihwkit's, one factor per output column) or none",
}
CONVERTER_KNOBS = ("dac_bits", "adc_bits", "adc_range", "out_noise")


def drift_compensations() -> dict:
    """aihwkit's drift compensations by knob value (None: no compensation)."""
    from aihwkit.inference.compensation.drift import (
        GlobalDriftCompensation,
        GlobalDriftCompensationWithExactReference,
        PerColumnDriftCompensation,
    )

    from .compensation import AveragedDriftCompensation

    return {
        "global": GlobalDriftCompensation,
        "averaged": AveragedDriftCompensation,
        "global-exact": GlobalDriftCompensationWithExactReference,
        "per-column": PerColumnDriftCompensation,
        "none": None,
    }


class DeviceError(ValueError):
    """A device name, file or override that cannot be resolved; the message says how to fix it."""


def bits_to_res(bits: int | None) -> float:
    """aihwkit resolution of an n-bit converter: 1/(2^n - 2) of the full range; None or 0: off (-1)."""
    if bits is None or bits == 0:
        return -1.0
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 2:
        raise DeviceError(
            f"converter bits must be an integer >= 2 (aihwkit: n bits = 2^n - 2 steps), or 0/None for "
            f"no quantization; got {bits!r}"
        )
    return 1.0 / (2**bits - 2)


def res_to_steps(res: float) -> int | None:
    """Steps of an aihwkit converter's full range (res < 1: a fraction of it; res >= 1: a count); None
    where it does not quantize. It has steps + 1 levels."""
    if res <= 0:
        return None
    return round(1 / res) if res < 1 else round(res)


def res_to_bits(res: float) -> int | None:
    """Inverse of `bits_to_res` for n-bit resolutions; None where the converter does not quantize."""
    steps = res_to_steps(res)
    if steps is None:
        return None
    bits = (steps + 2).bit_length() - 1
    return bits if 2**bits - 2 == steps else None


def list_devices() -> list[str]:
    """Short names of the shipped device files."""
    return sorted(p.stem for p in DEVICES_DIR.glob("*.py") if not p.stem.startswith("_"))


def device_path(name_or_path: str | Path) -> Path:
    """A short name (devices/<name>.py) or a path to a device file."""
    text = str(name_or_path)
    if text.endswith(".py") or "/" in text or "\\" in text:
        path = Path(text)
        if not path.is_file():
            raise DeviceError(f"device file {path} does not exist; pass an existing .py file or one of {list_devices()}")
        return path
    path = DEVICES_DIR / f"{text}.py"
    if not path.is_file():
        raise DeviceError(
            f"unknown device {text!r}; known devices: {', '.join(list_devices())} "
            f"(in {DEVICES_DIR}), or pass the path of a device file"
        )
    return path


def import_device_file(path: Path):
    spec = importlib.util.spec_from_file_location(f"aimc_ssm_device_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise DeviceError(f"device file {path} failed to import: {type(err).__name__}: {err}") from err
    if not callable(getattr(module, "rpu_config", None)):
        raise DeviceError(f"device file {path} defines no function rpu_config(); add `def rpu_config(): return ...`")
    return module


def device_parameters(function) -> dict[str, inspect.Parameter]:
    """The keyword parameters a device file's rpu_config accepts by name."""
    return {
        name: p
        for name, p in inspect.signature(function).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


def load_device(name_or_path: str | Path, **overrides) -> Any:
    """The RPU config of a device, with its parameters, common knobs and dotted fields overridden."""
    from aihwkit.simulator.configs import InferenceRPUConfig

    path = device_path(name_or_path)
    module = import_device_file(path)
    own = device_parameters(module.rpu_config)
    kwargs = {k: parse_value(v, own[k].default) for k, v in overrides.items() if k in own}
    try:
        config = module.rpu_config(**kwargs)
    except DeviceError:
        raise
    except Exception as err:
        raise DeviceError(f"{path}: rpu_config({kwargs}) failed: {type(err).__name__}: {err}") from err
    if not isinstance(config, InferenceRPUConfig):
        raise DeviceError(
            f"{path}: rpu_config() returned {type(config).__name__}, not an aihwkit inference RPU config; "
            "return an InferenceRPUConfig (compiled tile) or TorchInferenceRPUConfig (pure-PyTorch tile)"
        )
    check_device_config(config, str(path))
    rest = {k: v for k, v in overrides.items() if k not in own}
    try:
        return apply_overrides(config, **rest)
    except DeviceError as err:
        if own:
            raise DeviceError(f"{err}; {path.name} also takes {sorted(own)}") from err
        raise


def apply_overrides(config, **overrides):
    """Set dotted fields first, then the common knobs; check the result against its tile."""
    overrides = {key: check_override(config, key, value) for key, value in overrides.items()}
    knobs = {k: v for k, v in overrides.items() if k in COMMON_KNOBS}
    for key, value in overrides.items():
        if key in knobs:
            continue
        if "." not in key:
            raise DeviceError(
                f"unknown override {key!r}: not a common knob ({', '.join(COMMON_KNOBS)}) and not a dotted "
                f"config field such as forward.out_noise; top-level fields: {', '.join(field_names(config))}"
            )
        set_field(config, key, value)
    io = config.forward
    if io.is_perfect and any(k in knobs and knobs[k] not in (None, 0) for k in CONVERTER_KNOBS):
        raise DeviceError(
            f"{sorted(set(knobs) & set(CONVERTER_KNOBS))} have no effect on a perfect forward "
            "(forward.is_perfect=True): also set forward.is_perfect=false"
        )
    if "dac_bits" in knobs:
        io.inp_res = bits_to_res(parse_value(knobs["dac_bits"], 0))
    if "adc_bits" in knobs:
        io.out_res = bits_to_res(parse_value(knobs["adc_bits"], 0))
    if "adc_range" in knobs:
        io.out_bound = positive("adc_range", parse_value(knobs["adc_range"], 1.0))
    if "out_noise" in knobs:
        io.out_noise = non_negative("out_noise", parse_value(knobs["out_noise"], 1.0))
    if "drift_compensation" in knobs:
        choices = drift_compensations()
        name = str(knobs["drift_compensation"])
        if name not in choices:
            raise DeviceError(f"drift_compensation must be one of {sorted(choices)}, got {name!r}")
        config.drift_compensation = choices[name]() if choices[name] is not None else None
    if "tile_size" in knobs:
        size = parse_value(knobs["tile_size"], 0)
        if not isinstance(size, int) or size < 0:
            raise DeviceError(f"tile_size must be a non-negative integer (0: unlimited), got {size!r}")
        config.mapping.max_input_size = config.mapping.max_output_size = size
    check_tile_support(config)
    return config


def positive(name: str, value) -> float:
    if not isinstance(value, (int, float)) or value <= 0:
        raise DeviceError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def non_negative(name: str, value) -> float:
    if not isinstance(value, (int, float)) or value < 0:
        raise DeviceError(f"{name} must be a non-negative number, got {value!r}")
    return float(value)


def field_names(obj) -> list[str]:
    if dataclasses.is_dataclass(obj):
        return [f.name for f in dataclasses.fields(obj)]
    return [k for k in vars(obj) if not k.startswith("_")]


def set_field(config, dotted: str, value) -> None:
    """config.forward.out_noise = value, checking every name on the way (dataclasses and noise models)."""
    *parents, name = dotted.split(".")
    obj, path = config, "config"
    for part in parents + [name]:
        valid = field_names(obj)
        if part not in valid:
            raise DeviceError(
                f"{path} has no field {part!r} (in override {dotted!r}); valid fields of {path}: {', '.join(valid)}"
            )
        if part == name:
            break
        obj, path = getattr(obj, part), f"{path}.{part}"
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        raise DeviceError(f"{dotted} is a group of fields; set one of them, e.g. {dotted}.{field_names(current)[0]}")
    setattr(obj, name, parse_value(value, current))


def parse_value(value, like):
    """A command-line string as the type of `like` (the current value or default); other values as they are."""
    if isinstance(like, enum.Enum):
        if isinstance(value, type(like)):
            return value
        members = type(like)
        for member in members:
            if str(value).lower() in (member.name.lower(), str(member.value).lower()):
                return member
        raise DeviceError(f"{value!r} is not a {members.__name__}; choose one of {[m.name for m in members]}")
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    if isinstance(like, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise DeviceError(f"{value!r} is not a boolean; use true or false")
    for kind in (int, float):
        try:
            number = kind(text)
        except ValueError:
            continue
        return float(number) if isinstance(like, float) else number
    if isinstance(like, (int, float)) and like is not None:
        raise DeviceError(f"{value!r} is not a number")
    return text


def check_tile_support(config) -> None:
    """Reject settings the config's tile cannot simulate, naming the fix."""
    from aihwkit.exceptions import ConfigError
    from aihwkit.simulator.configs import TorchInferenceRPUConfig
    from aihwkit.simulator.tiles.analog_mvm import AnalogMVM
    from aihwkit.simulator.tiles.torch_tile import TorchSimulatorTile

    if not isinstance(config, TorchInferenceRPUConfig):
        return
    try:
        AnalogMVM.check_support(config.forward)
        TorchSimulatorTile.check_rpu_config_support(config)
    except ConfigError as err:
        raise DeviceError(
            f"the pure-PyTorch tile (TorchInferenceRPUConfig) cannot simulate this: {err}; "
            "drop the setting or use a compiled-tile device (InferenceRPUConfig) such as pcm_compiled"
        ) from err


def config_summary(config) -> dict:
    """Flat, JSON-ready description of an RPU config: forward, mapping, input range, noise model, compensation."""
    summary = {"rpu_config": type(config).__name__}
    for group in ("forward", "mapping"):
        for f in dataclasses.fields(getattr(config, group)):
            summary[f"{group}.{f.name}"] = jsonable(getattr(getattr(config, group), f.name))
    summary["pre_post.input_range.enable"] = config.pre_post.input_range.enable
    summary["noise_model"] = str(config.noise_model)
    summary["drift_compensation"] = str(config.drift_compensation)
    summary["modifier.type"] = config.modifier.type.value
    summary["dac_bits"] = res_to_bits(config.forward.inp_res)
    summary["adc_bits"] = res_to_bits(config.forward.out_res)
    return summary


def jsonable(value):
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def parse_settings(pairs: list[str]) -> dict[str, str]:
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DeviceError(f"--set expects key=value, got {pair!r}")
        settings[key.strip()] = value
    return settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aimc_ssm.analog.devices", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--list", action="store_true", help="list the shipped devices")
    parser.add_argument("--device", help="short name (see --list) or path of a device file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override; repeatable")
    args = parser.parse_args(argv)
    try:
        if args.list or not args.device:
            for name in list_devices():
                doc = (import_device_file(device_path(name)).__doc__ or "").strip().splitlines()
                print(f"{name:16s} {doc[0] if doc else ''}")
            if not args.device:
                return 0
        path = device_path(args.device)
        config = load_device(path, **parse_settings(args.set))
        print(f"# {path}")
        print(config)
    except DeviceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
