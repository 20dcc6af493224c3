"""A study's readable record: results/<study>/summary.md (its main table, its plots) and run.json (how it ran).

    write_summary(out_dir, table, title, main_columns, plots, args, device_config=None, notes="")
    markdown_table(frame)               a DataFrame as a markdown table (pandas' to_markdown needs tabulate)
    run_record(args, device_config)     what run.json holds: command line, seed, config hash, package
                                        versions, the resolved device config

Both files are written atomically, after the results table and the plots they describe.
"""
from __future__ import annotations

import argparse
import json
import math
import numbers
import shlex
import sys
from pathlib import Path

import pandas as pd

from ..analog.devices import config_summary, jsonable
from ..io import atomic_write, config_key, package_versions

NOT_CONFIG = ("out", "models_dir", "threads")  # where a run writes and how fast: not what it measures


def cell(value) -> str:
    """One table cell: integers as they are, other numbers to 4 significant digits (whole with thousands
    separators from 10,000 on), missing values empty, text safe for a markdown row."""
    if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
        return ""
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return f"{value:,.0f}" if 1e4 <= abs(value) < 1e15 else f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame) -> str:
    """The frame as a GitHub markdown table, numeric columns right-aligned, without its index."""
    align = ["---:" if pd.api.types.is_numeric_dtype(frame[c]) else "---" for c in frame.columns]
    lines = ["| " + " | ".join(cell(c) for c in frame.columns) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def plain(value):
    """A value JSON-ready: lists and dicts entry by entry, paths and other objects as text."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return jsonable(value)


def resolved_device(config):
    """An aihwkit RPU config as its flat summary (aimc_ssm.analog.devices.config_summary); a dict of them
    (e.g. {"linear": ..., "kernel": ...}) entry by entry; anything else as it is."""
    if hasattr(config, "forward") and hasattr(config, "mapping"):
        return config_summary(config)
    if isinstance(config, dict):
        return {key: resolved_device(value) for key, value in config.items()}
    return plain(config)


def run_record(args: argparse.Namespace, device_config=None) -> dict:
    """What run.json holds: the command line, the seed, a hash of the flags that decide the results (all but
    NOT_CONFIG), every flag, package versions and the resolved device config."""
    flags = plain(vars(args))
    return {
        "command": shlex.join(sys.argv),
        "seed": flags.get("seed"),
        "config_hash": config_key({k: v for k, v in flags.items() if k not in NOT_CONFIG}),
        "arguments": flags,
        "package_versions": package_versions(),
        "device_config": resolved_device(device_config),
    }


def plot_links(out_dir: Path, plots: list) -> list[str]:
    """Markdown image links to the plots, relative to out_dir; a plot missing is an error, not a broken link."""
    links = []
    for plot in plots:
        path = Path(plot) if Path(plot).is_absolute() else out_dir / plot
        if not path.is_file():
            raise ValueError(f"plot {path} does not exist: write the plots before the summary, or leave it out of `plots`")
        relative = path.resolve().relative_to(out_dir.resolve()) if path.resolve().is_relative_to(out_dir.resolve()) else path
        links.append(f"![{path.stem}]({relative.as_posix()})")
    return links


def write_summary(
    out_dir: Path,
    table: pd.DataFrame,
    title: str,
    main_columns: list[str],
    plots: list,
    args: argparse.Namespace,
    device_config=None,
    notes: str = "",
) -> None:
    """Write out_dir/summary.md (title, notes, `table`'s main columns as markdown, the plots) and
    out_dir/run.json (`run_record`), each atomically.

    table: the rows to show (a study aggregates its results first); plots: image paths, relative to
    out_dir or absolute; device_config: an aihwkit RPU config or a dict of them (or of plain values).
    """
    out_dir = Path(out_dir)
    missing = [c for c in main_columns if c not in table.columns]
    if missing:
        raise ValueError(f"main_columns {missing} are not columns of the table; its columns: {list(table.columns)}")
    parts = [f"# {title}\n", notes.strip() + "\n" if notes.strip() else "", markdown_table(table[list(main_columns)])]
    links = plot_links(out_dir, plots)
    if links:
        parts.append("## Plots\n\n" + "\n\n".join(links) + "\n")
    parts.append(f"Command: `{shlex.join(sys.argv)}`; every setting, the package versions and the device: run.json.\n")
    text = "\n".join(p for p in parts if p)
    record = json.dumps(run_record(args, device_config), indent=2, sort_keys=False) + "\n"
    atomic_write(out_dir / "summary.md", lambda f: f.write(text))
    atomic_write(out_dir / "run.json", lambda f: f.write(record))
