"""The README's code runs as written: every ```python block, and every command of a ```bash block that
starts with `.venv/bin/python`.

python blocks
    Each block is pasted, as it stands, into a fresh interactive interpreter (`python -i`, in a
    subprocess), as a reader would paste it: a compound statement the REPL cannot end fails here too.
    The blocks run in README order in one temporary working directory, so that they share its model
    cache results/models/ and write nothing into the checkout. The interpreter must report no error,
    and a block that only reads models an earlier block trained ("read from the cache") must add no
    cache entry.

bash blocks
    Each command that starts with .venv/bin/python is checked as far as it goes without computing,
    in a temporary working directory that holds a copy of devices/ (where the block's `cp` lines run,
    so that a later command finds the device file they make):

    -m aimc_ssm devices ...   run: it only reads device files
    -m aimc_ssm train ...     the command's own main parses and checks every flag (aimc_ssm.validation)
                              and builds its configs; it is stopped where it would train. --help runs.
    studies/<name>.py ...     the study's parse_args(argv): argparse, the budget and preset defaults,
                              and every check of aimc_ssm.validation and of the executor flags
    benchmarks/<name>.py ...  the script's own ArgumentParser on the exact arguments; the script is
                              stopped once they are parsed
    -m pytest                 the suite collects (--collect-only), in the checkout

    What the machine of a command is assumed to have is provided: a command with --compute cuda is
    checked as on a machine with a GPU (torch.cuda.is_available patched to True), and a data
    directory it names under ~ is made, empty, in a temporary home (the files are the reader's).
    Every other command (bash setup.sh, cp) must name files that exist.

Running the studies, the training and the benchmarks themselves is other tests' work
(tests/test_*_studies.py, tests/test_train.py) and takes minutes; here only the documentation is at stake.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import aimc_ssm.__main__ as package_main
from aimc_ssm import ModelConfig
from aimc_ssm.core.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PYTHON = ".venv/bin/python"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
MENTIONED_FILE = re.compile(r"\b(?:aimc_ssm|studies|benchmarks|tests)/[\w/]+\.py\b")


def blocks(language: str) -> list[str]:
    """The README's fenced blocks of `language`, in order."""
    return [body for lang, body in BLOCK.findall(README.read_text()) if lang == language]


def commands(block: str) -> list[list[str]]:
    """The commands of a bash block as argument lists: comments dropped, continued lines joined."""
    joined = block.replace("\\\n", " ")
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def python_commands() -> list[list[str]]:
    return [words for block in blocks("bash") for words in commands(block) if words[0] == PYTHON]


# -- python blocks -------------------------------------------------------------------------------------------
def paste(block: str, cwd: Path) -> subprocess.CompletedProcess:
    """`block` pasted into a fresh interactive interpreter working in `cwd`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}  # tiny models; a second thread only waits
    return subprocess.run(
        [sys.executable, "-i", "-q"], input=block, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def cache_entries(cwd: Path) -> set[str]:
    models = cwd / "results" / "models"
    return {path.name for path in models.iterdir()} if models.is_dir() else set()


def test_every_python_block_runs_as_written_pasted_into_python(tmp_path):
    python_blocks = blocks("python")
    assert python_blocks, "the README has no python block"
    for number, block in enumerate(python_blocks, 1):
        before = cache_entries(tmp_path)
        result = paste(block, tmp_path)
        # the REPL carries on after an error and exits 0: its report ('File "<stdin>", line n') is what shows one
        assert result.returncode == 0 and '"<stdin>"' not in result.stderr, f"python block {number}:\n{result.stderr[-4000:]}"
        assert result.stdout.strip(), f"python block {number} printed nothing"
        if "read from the cache" in block:
            assert cache_entries(tmp_path) == before, f"python block {number} trained a model it says it reads from the cache"


# -- bash blocks ---------------------------------------------------------------------------------------------
class Parsed(Exception):
    """Raised where a command would start computing: it got that far."""


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A working directory with a copy of devices/ and a home of its own; the commands' `cp` lines run in it."""
    shutil.copytree(ROOT / "devices", tmp_path / "devices", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for block in blocks("bash"):
        for words in commands(block):
            if words[0] == "cp":
                subprocess.run(words, check=True)
    return tmp_path


def as_given(words: list[str], monkeypatch) -> list[str]:
    """The arguments as the shell would pass them (~ expanded), with what the command assumes of the
    machine provided: a GPU for --compute cuda, the data directories it names."""
    args = [os.path.expanduser(word) for word in words]
    if "--compute" in args and args[args.index("--compute") + 1] == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    if "--data-dir" in args:
        Path(args[args.index("--data-dir") + 1]).mkdir(parents=True, exist_ok=True)
    return args


def check_devices(args: list[str], capsys) -> None:
    assert package_main.main(args) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip()


def check_train(args: list[str], monkeypatch, capsys) -> None:
    if "--help" in args:
        with pytest.raises(SystemExit) as done:
            package_main.main(args)
        assert done.value.code == 0 and "--d-model" in capsys.readouterr().out
        return

    def would_train(model_cfg, train_cfg, **_):
        raise Parsed(model_cfg, train_cfg)

    monkeypatch.setattr(package_main, "float_model", would_train)
    with pytest.raises(Parsed) as parsed:
        status = package_main.main(args)
        pytest.fail(f"train {args} returned {status} before training: {capsys.readouterr().err}")
    model_cfg, train_cfg = parsed.value.args
    flags = dict(zip(args[1::2], args[2::2]))  # every flag of `train` takes one value
    assert train_cfg.dataset == flags.get("--dataset", TrainConfig().dataset)
    assert model_cfg.d_model == int(flags.get("--d-model", ModelConfig().d_model))


def import_script(path: Path, monkeypatch):
    spec = importlib.util.spec_from_file_location(f"readme_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look a script's classes up by module name
    spec.loader.exec_module(module)
    return module


def check_study(path: Path, args: list[str], monkeypatch, capsys) -> None:
    try:
        parsed = import_script(path, monkeypatch).parse_args(args)
    except SystemExit as exit_:
        pytest.fail(f"{path.name} {args} is refused (status {exit_.code}): {capsys.readouterr().err}")
    assert parsed.quick == ("--quick" in args)


def check_benchmark(path: Path, args: list[str], monkeypatch, capsys) -> None:
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(parser, argv=None, namespace=None):
        raise Parsed(parse(parser, argv, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(path), *args])
    monkeypatch.syspath_prepend(str(path.parent))  # as `python benchmarks/x.py` puts the script's folder first
    try:
        with pytest.raises(Parsed):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        pytest.fail(f"{path.name} {args} is refused (status {exit_.code}): {capsys.readouterr().err}")


def check_pytest(args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", *args, "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("words", python_commands(), ids=shlex.join)
def test_every_python_command_of_a_bash_block_is_accepted(words, workdir, monkeypatch, capsys):
    args = as_given(words[1:], monkeypatch)
    if args[:3] == ["-m", "aimc_ssm", "devices"]:
        check_devices(args[2:], capsys)
    elif args[:3] == ["-m", "aimc_ssm", "train"]:
        check_train(args[2:], monkeypatch, capsys)
    elif args[:2] == ["-m", "pytest"]:
        check_pytest(args[2:])
    elif args[0].startswith("studies/"):
        check_study(ROOT / args[0], args[1:], monkeypatch, capsys)
    elif args[0].startswith("benchmarks/"):
        check_benchmark(ROOT / args[0], args[1:], monkeypatch, capsys)
    else:
        pytest.fail(f"no check for the command {shlex.join(words)}: add one to tests/test_readme.py")


def test_the_other_commands_and_the_files_the_readme_names_exist():
    others = [words for block in blocks("bash") for words in commands(block) if words[0] != PYTHON]
    for words in others:
        named = {"bash": words[1:2], "cp": words[1:2]}.get(words[0])
        assert named is not None, f"no check for the command {shlex.join(words)}: add one to tests/test_readme.py"
        assert all((ROOT / path).is_file() for path in named), shlex.join(words)
    missing = sorted({path for path in MENTIONED_FILE.findall(README.read_text()) if not (ROOT / path).is_file()})
    assert not missing, f"the README names files that do not exist: {missing}"
