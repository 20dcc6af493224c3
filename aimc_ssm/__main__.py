"""Command line: `python -m aimc_ssm train ...` and `python -m aimc_ssm devices ...`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from .cache import DEFAULT_CACHE, float_model, float_run_dir
from .core.model import ModelConfig
from .core.train import TrainConfig


def add_dataclass_flags(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field, typed from its default."""
    for f in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default, metavar="BOOL")
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
        from .analog.devices import main as devices_main

        return devices_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        model_cfg, train_cfg = pick(args, ModelConfig), pick(args, TrainConfig)
        run_dir = args.run_dir or float_run_dir(model_cfg, train_cfg)
        _, metrics = float_model(model_cfg, train_cfg, progress=not args.no_progress, run_dir=run_dir)
        summary = {k: metrics[k] for k in ("best_val_acc", "test_acc_conv", "test_acc_recurrent", "epochs", "train_seconds", "device")}
        print(json.dumps({"run_dir": str(run_dir), **summary}, indent=2))
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
