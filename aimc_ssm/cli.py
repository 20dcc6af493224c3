"""The `aimc-ssm` command: every study of studies/ as a subcommand, and `train` and `devices`.

    aimc-ssm --help                    the subcommands
    aimc-ssm adc-sweep --quick ...     studies/adc_sweep.py's main(...) with the remaining arguments
    aimc-ssm train ...                 as python -m aimc_ssm train ...
    aimc-ssm devices --list            as python -m aimc_ssm devices --list

The studies are scripts of the source tree, beside the package and not in it. The command finds them
in studies/ of the checkout the package is imported from (an editable install: pip install -e .), or
in the directory that $AIMC_SSM_STUDIES names; without either it says so.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
from pathlib import Path

STUDIES_ENV = "AIMC_SSM_STUDIES"
PACKAGE_COMMANDS = {
    "train": "train an S4D classifier (float); resumable",
    "devices": "list device files or print a resolved RPU config",
}


def studies_dir() -> Path:
    """Where the study scripts are: $AIMC_SSM_STUDIES, else studies/ beside the package's directory."""
    configured = os.environ.get(STUDIES_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[1] / "studies"


def study_files() -> dict[str, Path]:
    """Subcommand (the file's name, '-' for '_') -> study script; empty where there is no studies directory."""
    directory = studies_dir()
    if not directory.is_dir():
        return {}
    return {path.stem.replace("_", "-"): path for path in sorted(directory.glob("*.py")) if not path.stem.startswith("_")}


def headline(path: Path) -> str:
    """The first paragraph of a script's docstring, on one line, read without importing the script."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return " ".join(doc.split("\n\n")[0].split())


def missing_studies() -> str:
    return (
        f"no studies found in {studies_dir()}: they are scripts of the source tree (studies/), beside the aimc_ssm "
        f"package; install the checkout editable (pip install -e <checkout>) or point ${STUDIES_ENV} at its studies/ directory"
    )


def run_study(path: Path, args: list[str]) -> int:
    """Import a study script and call its main(args); its exit status (main returns None: 0). A study that
    exits (sys.exit, argparse's --help) raises SystemExit as it does run as a script."""
    spec = importlib.util.spec_from_file_location(f"aimc_ssm_study_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look a script's classes up by module name
    spec.loader.exec_module(module)
    if not callable(getattr(module, "main", None)):
        raise SystemExit(f"error: {path} defines no main(argv); a study script needs `def main(argv=None)`")
    return module.main(args) or 0


def parser(studies: dict[str, Path]) -> argparse.ArgumentParser:
    """The top-level parser, for --help and for errors: one subcommand per study, train and devices."""
    epilog = "aimc-ssm COMMAND --help: the command's own flags." + ("" if studies else f" {missing_studies()}")
    top = argparse.ArgumentParser(prog="aimc-ssm", description=__doc__.splitlines()[0], epilog=epilog)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, path in studies.items():
        commands.add_parser(name, help=f"{headline(path)} ({path.name})", add_help=False)
    for name, text in PACKAGE_COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    studies = study_files()
    command, rest = (argv[0], argv[1:]) if argv else (None, [])
    if command in studies:
        return run_study(studies[command], rest)
    if command in PACKAGE_COMMANDS:
        from .__main__ import main as package_main

        return package_main(argv)
    if command is not None and not command.startswith("-") and not studies:
        print(f"error: unknown command {command!r}; {missing_studies()}", file=sys.stderr)
        return 2
    parser(studies).parse_args(argv)  # exits: the help, or the error that names the commands
    return 2


if __name__ == "__main__":
    sys.exit(main())
