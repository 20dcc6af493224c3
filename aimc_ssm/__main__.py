"""Command line: `python -m aimc_ssm train ...` and `python -m aimc_ssm devices ...`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .cache import DEFAULT_CACHE, float_identity, float_model, float_run_dir
from .core.model import ModelConfig
from .core.train import TrainConfig
from .validation import SettingError, check_environment, check_output_dir, check_run_dir, check_values, flag_name, parse_bool


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field, typed from its default."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, type=parse_bool, default=default, metavar="BOOL")
        elif default is None or isinstance(default, str):
            parser.add_argument(flag, type=str, default=default)
        else:
            parser.add_argument(flag, type=type(default), default=default)


def pick(args: argparse.Namespace, cls):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aimc_ssm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_train = sub.add_parser("train", help="train an S4D classifier (float); resumable")
    model_group = p_train.add_argument_group("model")
    add_dataclass_flags(model_group, ModelConfig)
    train_group = p_train.add_argument_group("training")
    add_dataclass_flags(train_group, TrainConfig)
    p_train.add_argument("--run-dir", type=Path, default=None, help=f"default: {DEFAULT_CACHE}/float-<config hash>")
    p_train.add_argument("--no-progress", action="store_true")

    sub.add_parser("devices", help="list device files or print a resolved RPU config (devices --help)", add_help=False)

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["devices"]:  # its own parser takes every flag after the word
        return devices_command(argv[1:])
    args = parser.parse_args(argv)
    try:
        check_values(vars(args), flag_name)
        check_environment(vars(args), flag_name)
        model_cfg, train_cfg = pick(args, ModelConfig), pick(args, TrainConfig)
        if args.run_dir is not None:
            check_run_dir("--run-dir", args.run_dir, float_identity(model_cfg, train_cfg))
        else:
            check_output_dir("--run-dir", DEFAULT_CACHE)
    except ValueError as err:  # a SettingError, or what ModelConfig and TrainConfig check themselves
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        run_dir = args.run_dir or float_run_dir(model_cfg, train_cfg)
        _, metrics = float_model(model_cfg, train_cfg, progress=not args.no_progress, run_dir=run_dir)
        summary = {k: metrics[k] for k in ("best_val_acc", "test_acc_conv", "test_acc_recurrent", "epochs", "train_seconds", "device")}
        print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def devices_command(argv: list[str]) -> int:
    """The devices command, its --device and --set checked first (aimc_ssm.validation: a typo in a key gets
    the nearest one suggested, a value out of its field's range is named)."""
    from .analog.devices import main as devices_main

    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--device")
    flags.add_argument("--set", dest="settings", action="append", default=[])
    given, _ = flags.parse_known_args(argv)
    if given.device is not None:
        try:
            check_environment(vars(given), flag_name)
        except SettingError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return devices_main(argv)


if __name__ == "__main__":
    sys.exit(main())
