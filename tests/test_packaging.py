"""Packaging: the `aimc-ssm` command (studies, train, devices) and what pyproject.toml and setup.sh declare."""
import importlib
import importlib.metadata
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from aimc_ssm import cli

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
STUDIES = sorted(p.stem.replace("_", "-") for p in (ROOT / "studies").glob("*.py"))


def run(capsys, *argv) -> tuple[int, str, str]:
    """cli.main in-process: its exit status (returned, or raised as SystemExit), stdout, stderr."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_:
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_help_lists_every_study_and_the_package_commands(capsys):
    status, out, _ = run(capsys, "--help")
    assert status == 0 and STUDIES
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("    ") and line.split()}
    assert set(STUDIES) | {"train", "devices"} <= listed


def test_a_study_subcommand_is_the_script(capsys):
    status, out, _ = run(capsys, "adc-sweep", "--help")
    assert status == 0 and "studies/adc_sweep.py" in out and "--adc-bits" in out and "--quick" in out


def test_package_commands_delegate(capsys):
    status, out, _ = run(capsys, "devices", "--list")
    assert status == 0 and "pcm" in out
    status, out, _ = run(capsys, "train", "--help")
    assert status == 0 and "--d-model" in out


def test_errors_name_the_fix(capsys, monkeypatch, tmp_path):
    status, _, err = run(capsys, "no-such-study")
    assert status == 2 and "invalid choice" in err and "adc-sweep" in err
    monkeypatch.setenv(cli.STUDIES_ENV, str(tmp_path / "absent"))
    status, _, err = run(capsys, "adc-sweep", "--quick")
    assert status == 2 and "no studies found" in err and cli.STUDIES_ENV in err
    status, out, _ = run(capsys, "--help")
    assert status == 0 and "no studies found" in out and "train" in out


def test_console_script_points_at_the_command():
    module, _, function = PYPROJECT["project"]["scripts"]["aimc-ssm"].partition(":")
    assert getattr(importlib.import_module(module), function) is cli.main


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_declared_versions_hold_the_installed_ones():
    """Every runtime dependency is declared by its distribution name, in a range that holds the version this
    environment (setup.sh's pins) runs; so is every extra that is installed."""
    project = PYPROJECT["project"]
    runtime = [Requirement(r) for r in project["dependencies"]]
    extras = [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    assert {"torch", "aihwkit", "numpy", "pandas", "scipy", "scikit-learn", "matplotlib", "seaborn", "tqdm", "mlxtend", "filelock"} <= {r.name for r in runtime}
    assert {"ray"} == {r.name for r in map(Requirement, project["optional-dependencies"]["ray"])}
    for requirement in runtime + [r for r in extras if installed(r.name)]:
        version = installed(requirement.name)
        assert version is not None, f"{requirement.name} is declared but not installed"
        assert requirement.specifier.contains(version, prereleases=True), f"{requirement} excludes the installed {version}"
    torch = next(r for r in runtime if r.name == "torch")
    assert not torch.specifier.contains("2.14.1"), "without a cap, aihwkit's torchvision pulls the newest (CUDA) torch"


def test_setup_installs_the_package_without_its_dependencies():
    """setup.sh installs torch (CPU) and aihwkit itself: pip resolving the declared ones would pull torchvision."""
    lines = [line for line in (ROOT / "setup.sh").read_text().splitlines() if "install" in line and "-e ." in line]
    assert lines and all("--no-deps" in line for line in lines)
