"""The reproduction report's logic (studies/reproduce.py): verdicts computed from small synthetic results
frames, the scans that find the fewest bits, and which findings a split run reports."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("study_reproduce", ROOT / "studies" / "reproduce.py")
reproduce = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = reproduce  # its dataclasses look the module up
spec.loader.exec_module(reproduce)


@pytest.fixture
def args():
    return reproduce.parse_args(["--seeds", "2", "--f4-bits", "2", "4", "8", "--sigmas", "0", "0.6", "--noise-bits", "7"])


def frame_of(finding: str, values: dict[str, list[float]]) -> pd.DataFrame:
    """Rows of one finding: every quantity with one value per seed."""
    return pd.DataFrame(
        [{"setup": "s", "finding": finding, "quantity": q, "seed": seed, "value": v} for q, vs in values.items() for seed, v in enumerate(vs)]
    )


# -- F4: the fewest bits, PTQ vs QAT ---------------------------------------------------------------------------------
def test_first_meeting_is_the_fewest_bits_within_tolerance_or_nan():
    assert reproduce.first_meeting({8: 0.95, 2: 0.5, 4: 0.945}, reference=0.955, tolerance=0.01) == 4
    assert math.isnan(reproduce.first_meeting({2: 0.5, 4: 0.6}, reference=0.955, tolerance=0.01))


def test_upwards_until_met_stops_at_the_first_width_that_reaches_float():
    tried = []

    def accuracy(bits):
        tried.append(bits)
        return {2: 0.3, 3: 0.8, 4: 0.95, 6: 0.96}[bits]

    assert reproduce.upwards_until_met(accuracy, (6, 2, 4, 3), reference=0.955, tolerance=0.01) == {2: 0.3, 3: 0.8, 4: 0.95}
    assert tried == [2, 3, 4]  # ascending, and 6 bits never trained


def f4_frame(qat_A: list[float]) -> pd.DataFrame:
    firsts = {f"{m} {c} first": [4.0, 4.0] for m in ("ptq", "qat") for c in reproduce.COMPONENTS}
    return frame_of("F4", {**firsts, "qat A first": qat_A, "ptq state first": [math.nan, 8.0], "float": [0.9, 0.92]})


def test_f4_reproduced_when_qat_never_needs_more_bits(args):
    (row,) = reproduce.f4_rows(f4_frame([2.0, 4.0]), args)
    assert row["verdict"].startswith("reproduced")
    assert "A 3 / 4" in row["this tool"]  # mean over seeds: QAT (2 + 4) / 2, PTQ 4
    assert "state 4 / 8.5" in row["this tool"]  # PTQ never reached on seed 0: counted one above the widest, 9


def test_f4_names_the_components_where_qat_needs_more_bits(args):
    (row,) = reproduce.f4_rows(f4_frame([8.0, math.nan]), args)  # QAT reaches A at 8 bits on one seed, never on the other
    assert row["verdict"].startswith("not reproduced for A:")
    assert "A > 8 /" not in row["this tool"] and "A 8.5 / 4" in row["this tool"]


# -- F5: noise -------------------------------------------------------------------------------------------------------
def f5_frame(float_noisy: float, qat_noisy: float) -> pd.DataFrame:
    return frame_of("F5", {
        "chance": [0.1, 0.1], "float noise 0": [0.9, 0.9], "float noise 0.006": [float_noisy] * 2,
        "qat-7 noise 0": [0.85, 0.85], "qat-7 noise 0.006": [qat_noisy] * 2,
    })


def test_f5_reproduced_when_float_collapses_and_qat_holds(args):
    (row,) = reproduce.f5_rows(f5_frame(float_noisy=0.2, qat_noisy=0.82), args)
    assert row["verdict"].startswith("reproduced at 0.6 %")
    assert "float 90.0 → 20.0 % (collapses" in row["verdict"] and "qat-7 85.0 → 82.0 % (holds" in row["verdict"]


@pytest.mark.parametrize("float_noisy, qat_noisy, failing", [(0.6, 0.82, "does not collapse"), (0.2, 0.7, "does not hold")])
def test_f5_not_reproduced_when_either_part_fails(args, float_noisy, qat_noisy, failing):
    (row,) = reproduce.f5_rows(f5_frame(float_noisy, qat_noisy), args)
    assert row["verdict"].startswith("not reproduced") and failing in row["verdict"]


# -- F6: pruning -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qat_fraction, reproduced", [(0.21, True), (0.12, False)])
def test_f6_compares_the_pruned_fractions(args, qat_fraction, reproduced):
    quantities = {f"{m} {q}": [0.5, 0.5] for m in ("float", "qat-7") for q in ("val_accuracy", "val_accuracy_unpruned")}
    frame = frame_of("F6", {**quantities, "float pruned_fraction": [0.1, 0.1], "qat-7 pruned_fraction": [qat_fraction] * 2})
    (row,) = reproduce.f6_rows(frame, args)
    assert row["verdict"].startswith("reproduced" if reproduced else "not reproduced")
    assert f"{qat_fraction / 0.1:.2f}×" in row["verdict"]


# -- F7: model size --------------------------------------------------------------------------------------------------
def f7_frame(args, accuracy) -> pd.DataFrame:
    """accuracy(model, H, N) for every size of F7."""
    return frame_of("F7", {
        f"{m} {reproduce.size_label(h, n)}": [accuracy(m, h, n)] * 2 for m in ("float", "qat-6") for h, n in reproduce.size_configs(args)
    })


def test_f7_reproduced_when_float_rises_and_the_gap_grows_with_n(args):
    def accuracy(model, h, n):
        return 0.5 + 0.01 * math.log2(h * n) - (0.002 * n if model == "qat-6" else 0)

    (row,) = reproduce.f7_rows(f7_frame(args, accuracy), args)
    assert row["verdict"].startswith("reproduced:")


def test_f7_says_which_part_fails(args):
    def accuracy(model, h, n):  # saturated in N: float flat, the gap constant
        return 0.5 + 0.01 * h - (0.05 if model == "qat-6" else 0)

    (row,) = reproduce.f7_rows(f7_frame(args, accuracy), args)
    assert row["verdict"].startswith("partly reproduced: float rises with H (+24.0 ± 0.0 points) hold")
    assert "float rises with N (+0.0 ± 0.0 points), the qat-6 gap grows with N (+0.0 ± 0.0 points) not" in row["verdict"]


def test_f7_a_rise_within_the_seeds_spread_does_not_count(args):
    def accuracy(model, h, n, seed):  # float rises with N by 1 point on average, but by +5 and -3 on the two seeds
        return 0.5 + 0.01 * h + (0.01 * n / 256) * (5 if seed == 0 else -3) - (0.01 * n / 256 if model == "qat-6" else 0)

    rows = [
        {"setup": "s", "finding": "F7", "quantity": f"{m} {reproduce.size_label(h, n)}", "seed": seed, "value": accuracy(m, h, n, seed)}
        for m in ("float", "qat-6") for h, n in reproduce.size_configs(args) for seed in (0, 1)
    ]
    trends = reproduce.size_trends(pd.DataFrame(rows), args)
    mean, error = trends["float rises with N"]
    assert mean == pytest.approx(0.9375) and error == pytest.approx(3.75)  # (240/256)·(5 - 3)/2 points, and its standard error
    (row,) = reproduce.f7_rows(pd.DataFrame(rows), args)
    assert "float rises with N (+0.9 ± 3.8 points)" in row["verdict"].split("hold")[1]  # among the trends that do not hold


# -- F2: the search --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reduction, searched, reproduced", [(6.3, 0.955, True), (4.0, 0.955, False), (6.3, 0.93, False)])
def test_f2_needs_the_reduction_and_the_accuracy(args, reduction, searched, reproduced):
    bits = {f"bits {c}": [4.0, 4.0] for c in reproduce.COMPONENTS}
    frame = frame_of("F2", {**bits, "memory reduction": [reduction] * 2, "float test": [0.96] * 2, "search test": [searched] * 2, "evaluations": [20, 22]})
    (row,) = reproduce.f2_rows(frame, args)
    assert row["verdict"].startswith("reproduced" if reproduced else "not reproduced")
    assert f"{reduction:.1f}× less memory" in row["verdict"] and "21 QAT runs per search" in row["this tool"]


# -- a split run ------------------------------------------------------------------------------------------------------
def test_report_marks_findings_without_rows_as_not_run(args):
    f6 = reproduce.Point("F6", 0, "float", [{"setup": "s", "finding": "F6", "quantity": q, "seed": 0} for q in reproduce.f6_quantities("float")])
    f7 = reproduce.Point("F7", 0, "H=16 N=64", [{"setup": "s", "finding": "F7", "quantity": "float H=16 N=64", "seed": 0}])
    frame = frame_of("F6", {q: [0.2] for q in reproduce.f6_quantities("float")})
    assert reproduce.complete(frame, [f6, f7], "F6") and not reproduce.complete(frame, [f6, f7], "F7")
    table = reproduce.report_table(frame, [f6, f7], args).set_index("finding")
    assert list(table.index) == list(reproduce.FINDINGS)
    assert table.loc["F7", "this tool"] == "not run" and "--findings F7" in table.loc["F7", "verdict"]


def test_findings_flag_and_bad_settings(args, capsys):
    assert args.findings == list(reproduce.FINDINGS)  # default: all
    assert reproduce.parse_args(["--findings", "F2", "F5"]).findings == ["F2", "F5"]
    assert args.sigmas == (0.0, 0.006)  # percent on the command line, fractions inside
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--sizes-n", "16", "15"])
    assert "--sizes-n 16 15" in (err := capsys.readouterr().err) and "N must be even" in err
    with pytest.raises(SystemExit):
        reproduce.parse_args(["--tolerance", "1.5"])
    assert "--tolerance is 1.5" in capsys.readouterr().err


# -- [S25]'s QAT from scratch, trained once -----------------------------------------------------------------------------
def test_qat_from_scratch_is_trained_once_without_a_float_model(tmp_path):
    from aimc_ssm import cache
    from aimc_ssm.quant.precision import recipe_qat_plan, recipe_spec

    args = reproduce.parse_args(["--quick", "--dataset", "digits", "--compute", "cpu", "--threads", "1", "--models-dir", str(tmp_path), "--scratch-epochs", "1"])
    zoo = reproduce.scratch_s25_zoo(args, seed=0)
    finetuning = reproduce.finetune_s25_zoo(args, seed=0)
    assert zoo.from_scratch and zoo.setup.finetune.lr == recipe_qat_plan("s25").lr and zoo.setup.finetune.epochs == args.scratch_epochs
    assert zoo.key != finetuning.key  # rows of the two kinds of QAT never mix
    spec = recipe_spec("s25", 6)
    model, metrics = zoo.qat(spec)
    assert metrics["finetune_from"] is None and not list(tmp_path.glob("float-*"))  # started from a seeded init, no float model trained
    run_dir = cache.run_dir_of("qat", zoo.setup.model, zoo.setup.finetune, spec.to_dict(), {}, cache_dir=tmp_path)
    assert (run_dir / "best.pt").exists()
    stamp = (run_dir / "best.pt").stat().st_mtime_ns
    again, _ = zoo.qat(spec)
    assert (run_dir / "best.pt").stat().st_mtime_ns == stamp  # read from the cache, not trained again
    assert all((a == b).all() for a, b in zip(model.state_dict().values(), again.state_dict().values()))
