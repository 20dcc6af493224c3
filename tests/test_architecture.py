"""The package's import rules (README, "Architecture"), checked on the imports of every module."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aimc_ssm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the aimc_ssm modules `path` imports, at any depth of the file (lazy imports too)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            names.add(stem)
            names |= {f"{stem}.{a.name}" for a in node.names}  # `from . import cache` imports a module
    return {n for n in names if n.split(".")[0] == "aimc_ssm"}


MODULES = {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def is_within(name: str, area: str) -> bool:
    return name == area or name.startswith(area + ".")


# area -> areas it may never import
FORBIDDEN = {
    "aimc_ssm.core": ("aimc_ssm.quant", "aimc_ssm.analog", "aimc_ssm.study", "aimc_ssm.cache"),
    "aimc_ssm.quant": ("aimc_ssm.core.train", "aimc_ssm.core.data", "aimc_ssm.analog", "aimc_ssm.study", "aimc_ssm.cache"),
    "aimc_ssm.analog": ("aimc_ssm.core.train", "aimc_ssm.core.data", "aimc_ssm.study", "aimc_ssm.cache"),
    "aimc_ssm.cache": ("aimc_ssm.study",),
    "aimc_ssm.io": ("aimc_ssm.core", "aimc_ssm.quant", "aimc_ssm.analog", "aimc_ssm.study", "aimc_ssm.cache"),
}
# what of a quantization the analog layer may use: the quantize module's public API, nothing inside it
ANALOG_MAY_USE_OF_QUANT = {"aimc_ssm.quant.quantize", "aimc_ssm.quant.quantize.without_state_quantizer"}


@pytest.mark.parametrize("area", FORBIDDEN)
def test_area_imports_only_downstream(area):
    broken = {
        (module, name)
        for module, names in MODULES.items()
        if is_within(module, area)
        for name in names
        if any(is_within(name, forbidden) for forbidden in FORBIDDEN[area])
    }
    assert not broken, f"{area} imports what its rules forbid: {sorted(broken)}"


def test_only_the_scripts_and_the_command_line_import_the_study_harness():
    importers = {m for m, names in MODULES.items() if any(is_within(n, "aimc_ssm.study") for n in names)}
    assert {m for m in importers if not is_within(m, "aimc_ssm.study")} <= {"aimc_ssm.__main__"}


def test_analog_reaches_a_quantization_only_through_its_public_api():
    used = {n for m, names in MODULES.items() if is_within(m, "aimc_ssm.analog") for n in names if is_within(n, "aimc_ssm.quant")}
    assert used <= ANALOG_MAY_USE_OF_QUANT, sorted(used - ANALOG_MAY_USE_OF_QUANT)


def test_the_rules_see_the_imports():  # the parser itself: known edges are found
    assert "aimc_ssm.core.s4d" in MODULES["aimc_ssm.core.model"]
    assert "aimc_ssm.quant.quantize" in MODULES["aimc_ssm.cache"]
    assert "aimc_ssm.cache" in MODULES["aimc_ssm.study.zoo"]
