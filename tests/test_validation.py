"""Bad input is refused before anything is computed: a usage error (exit status 2) that names the flag,
no traceback, on every command line (`python -m aimc_ssm train`, `devices`, every study); and the gates
behind them (aimc_ssm.validation): precision specifications and device overrides either read back as
written or raise the documented error, whatever the input."""
from __future__ import annotations

import copy
import enum
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aimc_ssm import validation
from aimc_ssm.__main__ import main as package_main
from aimc_ssm.analog.devices import DeviceError, apply_overrides, load_device, parse_value
from aimc_ssm.quant.precision import COMPONENTS, PARAMETERIZATIONS, RECIPES, PrecisionSpec
from aimc_ssm.quant.quantizers import GRANULARITIES, RANGES, SCHEMES, STES, QuantizerConfig
from aimc_ssm.validation import SettingError

ROOT = Path(__file__).resolve().parents[1]
# the smallest run of a study: a bad flag after these is the one that must be refused
TINY_STUDY = (
    "--quick", "--dataset", "digits", "--compute", "cpu", "--threads", "1", "--epochs", "1", "--test-samples", "20",
    "--d-model", "4", "--d-state", "4", "--out", "{tmp}/out", "--models-dir", "{tmp}/models",
)
TINY_TRAIN = ("--dataset", "digits", "--epochs", "1", "--d-model", "4", "--d-state", "4", "--compute", "cpu", "--no-progress", "--run-dir", "{tmp}/run")
PREFIX = {"train": TINY_TRAIN, "devices": ("--device", "pcm")}


@dataclass(frozen=True)
class Case:
    """A command line (`cli` is train, devices or a study's name) with one bad setting, and what its error must name."""

    cli: str
    args: tuple[str, ...]
    names: str

    def argv(self, tmp: Path) -> list[str]:
        return [a.replace("{tmp}", str(tmp)) for a in (*PREFIX.get(self.cli, TINY_STUDY), *self.args)]

    @property
    def id(self) -> str:
        return f"{self.cli} {' '.join(self.args)}"


def cases(cli: str, *table) -> list[Case]:
    return [Case(cli, tuple(args.split()), names) for args, names in table]


CASES = [
    *cases(
        "train",
        ("--epochs 0", "--epochs"), ("--epochs -3", "--epochs"), ("--batch-size 0", "--batch-size"), ("--lr -0.1", "--lr"),
        ("--lr nan", "--lr"), ("--ssm-lr 0", "--ssm-lr"), ("--weight-decay -0.5", "--weight-decay"), ("--d-model 0", "--d-model"),
        ("--d-state 7", "--d-state"), ("--n-layers 0", "--n-layers"), ("--dropout 1.5", "--dropout"), ("--dt-min 0", "--dt-min"),
        ("--dt-min 0.5 --dt-max 0.1", "--dt-min"), ("--dt-max inf", "--dt-max"), ("--dataset mnst", "--dataset"),
        ("--dataset mnist --data-dir {tmp}/missing", "--data-dir"), ("--mode recurent", "--mode"), ("--val-mode fast", "--val-mode"),
        ("--compute gpu", "--compute"), ("--permuted maybe", "--permuted"), ("--residual 2", "--residual"), ("--seed -1", "--seed"),
        ("--norm batchnorm", "--norm"), ("--activation relu", "--activation"), ("--run-dir {tmp}/afile", "--run-dir"),
        ("--run-dir {tmp}/other_run", "--run-dir"), ("--d-output 0", "--d-output"), ("--a-init linear", "--a-init"),
    ),
    *cases(
        "devices",
        ("--device pcn", "--device"), ("--set adc_bits=1", "adc_bits"), ("--set adc_bits=40", "adc_bits"),
        ("--set adc_bits=eight", "adc_bits"), ("--set dac_bits=-2", "dac_bits"), ("--set forward.out_nois=0.02", "forward.out_nois"),
        ("--set forward.out_noise=-0.1", "forward.out_noise"), ("--set forward.out_noise=abc", "forward.out_noise"),
        ("--set noise_model.prog_noise_scale=-1", "noise_model.prog_noise_scale"), ("--set forward.is_perfect=maybe", "forward.is_perfect"),
        ("--set mapping.max_input_size=1.5", "mapping.max_input_size"), ("--set tile_size=-3", "tile_size"),
        ("--set adc_range=0", "adc_range"), ("--set drift_compensation=globl", "drift_compensation"), ("--set forward.out_noise", "--set"),
        ("--set frward.out_noise=0.1", "frward.out_noise"), ("--set adc_bit=8", "adc_bit"), ("--set forward=3", "forward"),
        ("--set noise_model.t_read=-1", "noise_model.t_read"),
    ),
    *cases(
        "adc_sweep",
        ("--adc-bits 1", "--adc-bits"), ("--adc-bits 8 40", "--adc-bits"), ("--dac-bits -4", "--dac-bits"), ("--repeats 0", "--repeats"),
        ("--t-inference -5", "--t-inference"), ("--t-inference nan", "--t-inference"), ("--kernel-adc-range 0", "--kernel-adc-range"),
        ("--copies 0", "--copies"), ("--hwa-lr 0", "--hwa-lr"), ("--bits 0", "--bits"), ("--bits 17", "--bits"),
        ("--set forward.out_nois=0.02", "forward.out_nois"), ("--device nosuch", "--device"), ("--out {tmp}/afile", "--out"),
        ("--models-dir {tmp}/afile", "--models-dir"), ("--hwa-epochs 0", "--hwa-epochs"), ("--y-adc-range -1", "--y-adc-range"),
        ("--tile-size -2", "--tile-size"), ("--out-noise -0.1", "--out-noise"), ("--adc-range inf", "--adc-range"),
        ("--d-state 128 --copies 4", "--copies 3"), ("--d-state 512 --copies 1", "--tile-size 514"),
    ),
    *cases(
        "noise_resilience",
        ("--noise-scales -0.5", "--noise-scales"), ("--sigmas nan", "--sigmas"), ("--drift-noise-scales inf", "--drift-noise-scales"),
        ("--analog-samples 0", "--analog-samples"), ("--kernel-out-noise -1", "--kernel-out-noise"), ("--adc-bits 1", "--adc-bits"),
        ("--seed -1", "--seed"), ("--hwa-sigmas -1", "--hwa-sigmas"), ("--out /proc/aimc-results", "--out"),
    ),
    *cases(
        "pruning",
        ("--noise-scale -1", "--noise-scale"), ("--tolerance nan", "--tolerance"), ("--max-candidates 0", "--max-candidates"),
        ("--adc-range 0", "--adc-range"), ("--dt-max 0", "--dt-max"), ("--set forward.out_noise=-1", "forward.out_noise"),
    ),
    *cases(
        "ptq_vs_qat",
        ("--bits 0", "--bits"), ("--d-state 5", "--d-state"), ("--dataset foo", "--dataset"),
        ("--dataset mnist --data-dir {tmp}/missing", "--data-dir"), ("--epochs 0", "--epochs"), ("--threads 0", "--threads"),
        ("--test-samples -5", "--test-samples"),
    ),
    *cases(
        "heterogeneous",
        ("--cutoff 1.5", "--cutoff"), ("--tolerance -0.1", "--tolerance"), ("--ladder 12 12", "--ladder"), ("--ladder 40 12", "--ladder"),
        ("--dt-min 1 --dt-max 0.1", "--dt-min"),
    ),
    *cases(
        "complexity",
        ("--spec {tmp}/missing.json", "--spec"), ("--spec {tmp}/broken.json", "--spec"), ("--spec {tmp}/bits20.json", "A.bits"),
        ("--spec {tmp}/unknown.json", "--spec"), ("--bits 0", "--bits"), ("--spec {tmp}/typed.json", "ternary"),
    ),
    *cases(
        "reproduce",
        ("--seeds 0", "--seeds"), ("--qat-mode fast", "--qat-mode"), ("--qat-epochs 0", "--qat-epochs"), ("--epochs -1", "--epochs"),
    ),
]


def make_inputs(tmp: Path) -> None:
    """The files the cases point at: a plain file, a run directory of something else, broken specs."""
    (tmp / "afile").write_text("not a directory\n")
    (tmp / "other_run").mkdir()
    (tmp / "other_run" / "notes.txt").write_text("another run's folder\n")
    spec = json.loads(PrecisionSpec.uniform(8).to_json())
    (tmp / "broken.json").write_text(json.dumps(spec)[:-10])
    (tmp / "bits20.json").write_text(json.dumps({**spec, "A": {**spec["A"], "bits": 20}}))
    (tmp / "unknown.json").write_text(json.dumps({**spec, "Q": spec["A"]}))
    (tmp / "typed.json").write_text(json.dumps({**spec, "B": {**spec["B"], "ternary": "yes"}}))


MODULES: dict[str, object] = {}


def study_main(name: str):
    """studies/<name>.py's main, the script imported once."""
    if name not in MODULES:
        spec = importlib.util.spec_from_file_location(f"study_{name}", ROOT / "studies" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        MODULES[name] = module
    return MODULES[name].main


def run_in_process(case: Case, tmp: Path, capsys) -> tuple[object, str]:
    """(exit status, stderr) of a case's command line called in this process; a traceback propagates."""
    argv = case.argv(tmp)
    main = (lambda a: package_main([case.cli, *a])) if case.cli in PREFIX else study_main(case.cli)
    try:
        status = main(argv)
    except SystemExit as exit:
        status = exit.code
    err = capsys.readouterr().err
    if isinstance(status, str):  # sys.exit("message"): printed by the interpreter at exit
        status, err = 1, err + status
    return status, err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bad_inputs")
    make_inputs(tmp)
    return tmp


def test_the_table_covers_every_command_line():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    studies = {p.stem for p in (ROOT / "studies").glob("*.py")}
    assert {c.cli for c in CASES} == {"train", "devices"} | studies


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_usage_error_naming_the_flag(case, inputs, capsys):
    status, err = run_in_process(case, inputs, capsys)
    assert status == 2, f"exit status {status!r}: {err[-2000:]}"
    message = err.strip().splitlines()[-1]
    assert "error" in message and case.names in message, message
    assert not (inputs / "out" / "results.csv").exists() and not (inputs / "models").exists()  # nothing computed


SUBPROCESS_CASES = [
    (["-m", "aimc_ssm", "train", "--lr", "-1", "--no-progress"], "--lr"),
    (["-m", "aimc_ssm", "devices", "--device", "pcm", "--set", "forward.out_nois=0.1"], "did you mean 'forward.out_noise'"),
    (["studies/adc_sweep.py", "--adc-bits", "1", "--out", "{tmp}/out", "--models-dir", "{tmp}/models"], "--adc-bits"),
]


def test_bad_input_as_a_user_runs_it_exits_2_without_traceback(inputs):
    """The same as the scripts run: exit status 2, the message on stderr, no traceback."""
    runs = [
        (subprocess.Popen([sys.executable, *(a.replace("{tmp}", str(inputs)) for a in args)], cwd=ROOT, stderr=subprocess.PIPE, text=True), names)
        for args, names in SUBPROCESS_CASES
    ]
    for process, names in runs:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 2 and names in err and "Traceback" not in err, err


# -- the gates one by one ------------------------------------------------------------------------------
def test_an_error_names_the_setting_the_value_what_it_takes_and_the_fix():
    with pytest.raises(SettingError) as err:
        validation.check_values({"d_state": 7}, validation.flag_name)
    assert (err.value.setting, err.value.value) == ("--d-state", 7)
    assert str(err.value) == "--d-state cannot be 7: it takes a positive even integer; got N=7, use N=8 or 6"
    with pytest.raises(SettingError, match=r"--dataset cannot be 'mnst'.*\(did you mean 'mnist'\?\)"):
        validation.check_values({"dataset": "mnst"}, validation.flag_name)
    with pytest.raises(SettingError, match="dt_min cannot be 0.5: it takes a step no larger than dt_max"):
        validation.check_values({"dt_min": 0.5, "dt_max": 0.1})


def test_configs_pass_the_same_rules_as_the_flags():
    from aimc_ssm.core.model import ModelConfig
    from aimc_ssm.core.train import TrainConfig

    validation.check_model_config(ModelConfig())
    validation.check_train_config(TrainConfig())
    with pytest.raises(SettingError, match="lr cannot be -0.1"):
        validation.check_train_config(TrainConfig(lr=-0.1))
    with pytest.raises(SettingError, match="dt_max cannot be 0"):
        validation.check_model_config({"dt_min": 1e-3, "dt_max": 0.0})


def test_converter_bits_are_off_or_what_aihwkit_resolves():
    for bits in (None, 0, 2, 8, validation.CONVERTER_MAX_BITS):
        validation.check_converter_bits("adc_bits", bits)
    for bits in (1, -2, validation.CONVERTER_MAX_BITS + 1, 8.0, True):
        with pytest.raises(SettingError, match="adc_bits cannot be"):
            validation.check_converter_bits("adc_bits", bits)


def test_recipe_bits_are_checked_by_building_the_recipe():
    for name in RECIPES:
        validation.check_recipe_bits("--bits", name, 8)
        with pytest.raises(SettingError, match=f"--bits cannot be 0: it takes bit widths the '{name}' recipe builds"):
            validation.check_recipe_bits("--bits", name, 0)


def test_output_dirs_must_be_writable_folders_with_room(tmp_path, monkeypatch):
    validation.check_output_dir("--out", tmp_path / "new" / "folder")
    assert (tmp_path / "new" / "folder").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(SettingError, match="--out cannot be .*file.*: it takes a directory \\(it is a file\\)"):
        validation.check_output_dir("--out", tmp_path / "file")
    with pytest.raises(SettingError, match="a directory this user can write to"):
        validation.check_output_dir("--out", "/proc/aimc-results")

    class Full:
        free = 2**20

    monkeypatch.setattr(validation.shutil, "disk_usage", lambda path: Full)
    with pytest.raises(SettingError, match="at least 64 MiB free \\(1 MiB are\\)"):
        validation.check_output_dir("--out", tmp_path)


def test_a_run_dir_holds_its_own_run_or_nothing(tmp_path):
    from aimc_ssm.io import run_identity, write_run_config

    identity = run_identity({"a": 1})
    validation.check_run_dir("--run-dir", tmp_path / "fresh", identity)
    write_run_config(tmp_path / "fresh", identity, {})
    validation.check_run_dir("--run-dir", tmp_path / "fresh", identity)  # this run's own: it resumes
    with pytest.raises(SettingError, match="its key is"):
        validation.check_run_dir("--run-dir", tmp_path / "fresh", run_identity({"a": 2}))


def test_shipped_device_files_pass_the_device_gate():
    for name in ("ideal", "pcm", "pcm_compiled", "hwa_preset", "gaussian"):
        validation.check_device_config(load_device(name), name)


def test_a_device_file_returning_negative_noise_is_refused(tmp_path):
    path = tmp_path / "noisy.py"
    path.write_text((ROOT / "devices" / "pcm.py").read_text().replace("out_noise=0.04", "out_noise=-0.04"))
    with pytest.raises(SettingError, match="noisy.py: forward.out_noise cannot be -0.04"):
        validation.check_device_flags({"device": str(path)}, validation.flag_name)
    with pytest.raises(DeviceError, match="noisy.py: forward.out_noise cannot be -0.04"):  # the device loader's hook
        validation.check_device_config(load_device(path), "noisy.py")


def test_yes_no_flags_refuse_other_words():
    assert [validation.parse_bool(w) for w in ("true", "Yes", "on", "1", "false", "no", "OFF", "0")] == [True] * 4 + [False] * 4
    with pytest.raises(Exception, match="'maybe' is not a boolean"):
        validation.parse_bool("maybe")


# -- properties: precision specifications -------------------------------------------------------------
def with_typo(fields: st.SearchStrategy, typo: dict) -> st.SearchStrategy:
    """`fields`, now and then with an unknown key added."""
    return st.tuples(fields, st.sampled_from([{}] * 7 + [typo])).map(lambda pair: {**pair[0], **pair[1]})


quantizer_dicts = with_typo(
    st.fixed_dictionaries(
        {},
        optional={
            "bits": st.one_of(st.none(), st.integers(-2, 20), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)),
            "scheme": st.one_of(st.sampled_from(SCHEMES), st.text(max_size=12)),
            "percentile": st.one_of(st.none(), st.floats(40, 110), st.floats(), st.integers(50, 101), st.booleans()),
            "granularity": st.one_of(st.sampled_from(GRANULARITIES), st.text(max_size=8)),
            "ranges": st.one_of(st.sampled_from(RANGES), st.integers()),
            "ste": st.sampled_from(STES + ("straight",)),
            "ternary": st.one_of(st.booleans(), st.sampled_from(["yes", 0, 1])),
        },
    ),
    {"bitz": 4},
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
spec_dicts = with_typo(
    st.fixed_dictionaries(
        {},
        optional={
            **{c: st.one_of(quantizer_dicts, quantizer_dicts, json_values) for c in COMPONENTS},
            "parameterization": st.one_of(st.sampled_from(PARAMETERIZATIONS), st.text(max_size=10)),
            "partial_products": st.one_of(st.booleans(), json_values),
            "conv_state_proxy": st.booleans(),
        },
    ),
    {"paramterization": "polar"},
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(spec_dicts, json_values))
def test_any_precision_json_round_trips_or_is_refused_naming_the_field(data):
    text = json.dumps(data)
    try:
        spec = validation.precision_spec(text)
    except SettingError as err:
        assert str(err).startswith("precision spec")
        return
    assert PrecisionSpec.from_json(spec.to_json()) == spec == validation.precision_spec(spec.to_json())


OPTIONS = [dict(scheme=a, granularity=g, ranges=r, ste=e) for a in SCHEMES for g in GRANULARITIES for r in RANGES for e in STES]


def accepted(component: str, parameterization: str) -> list[dict]:
    """The quantizer options PrecisionSpec accepts for a component in a parameterization (it is the oracle)."""
    options = []
    for option in OPTIONS:
        try:
            PrecisionSpec(**{component: QuantizerConfig(bits=8, **option)}, parameterization=parameterization)
        except ValueError:
            continue
        options.append(option)
    return options


ACCEPTED = {(c, p): accepted(c, p) for c in COMPONENTS for p in PARAMETERIZATIONS}


@st.composite
def valid_specs(draw) -> PrecisionSpec:
    """Specifications PrecisionSpec accepts, drawn over its tables."""
    parameterization = draw(st.sampled_from(PARAMETERIZATIONS))
    fields = {}
    for c in COMPONENTS:
        options = ACCEPTED[c, parameterization]
        if options and draw(st.booleans()):
            fields[c] = QuantizerConfig(bits=draw(st.integers(2, 16)), **draw(st.sampled_from(options)))
    try:
        return PrecisionSpec(**fields, parameterization=parameterization, partial_products=draw(st.booleans()))
    except ValueError:  # components that do not go together
        assume(False)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(valid_specs())
def test_every_valid_spec_passes_the_gate_unchanged(spec):
    assert validation.precision_spec(spec.to_json()) == spec
    assert validation.precision_spec(spec.to_dict()) == spec


# -- properties: dotted device overrides ---------------------------------------------------------------
PCM = load_device("pcm")
FIELDS = [name for name in validation.dotted_fields(PCM) if name.count(".") == 1 and name.split(".")[0] in ("forward", "mapping", "noise_model")]
override_values = st.one_of(
    st.integers(-5, 600).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str), st.sampled_from(["true", "no", "none", "abc", "", "1e-3"]),
)
override_keys = st.one_of(
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS),
    st.sampled_from(FIELDS).map(lambda k: k[:-1]),  # a typo: the last letter lost
    st.sampled_from(["adc_bits", "dac_bits", "out_noise", "adc_range", "tile_size", "adc_bit", "forward", "forward.nope.x"]),
)


@settings(max_examples=300, deadline=None)
@given(key=override_keys, value=override_values)
def test_any_override_reads_back_as_parsed_or_is_refused_naming_the_key(key, value):
    """What the gate accepts, the device loader applies as the gate parsed it (or refuses as its tile's limit),
    and the value written back as text reads back the same; what it refuses is a DeviceError naming --set."""
    try:
        parsed = validation.check_override(copy.deepcopy(PCM), key, value, "--set")
    except DeviceError as err:
        assert str(err).startswith("--set")
        return
    try:
        applied = apply_overrides(copy.deepcopy(PCM), **{key: value})
    except DeviceError as err:
        assert "pure-PyTorch tile" in str(err)  # a setting the tile cannot simulate: the loader's own check
        return
    if "." in key:
        current = validation.resolve_field(PCM, key, "--set")
        assert validation.resolve_field(applied, key, "--set") == parsed
        assert parse_value(parsed.name if isinstance(parsed, enum.Enum) else str(parsed), current) == parsed
