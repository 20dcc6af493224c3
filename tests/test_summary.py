"""A study's summary.md and run.json: the markdown table, the plot links, the run record."""
import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aimc_ssm.analog.devices import load_device
from aimc_ssm.study.summary import markdown_table, run_record, write_summary


def args(**changes) -> argparse.Namespace:
    flags = {"seed": 0, "out": Path("results/adc_sweep"), "threads": 2, "models_dir": Path("results/models"), "adc_bits": [8, 10], "device": "pcm"}
    return argparse.Namespace(**{**flags, **changes})


FRAME = pd.DataFrame(
    {"model": ["float", "qat|8"], "adc_bits": [8, 10], "accuracy": [0.8512345, math.nan], "energy_nj": np.float32([1.5, 20000.0])}
)


def test_markdown_table():
    assert markdown_table(FRAME) == (
        "| model | adc_bits | accuracy | energy_nj |\n"
        "| --- | ---: | ---: | ---: |\n"
        "| float | 8 | 0.8512 | 1.5 |\n"
        "| qat\\|8 | 10 |  | 20,000 |\n"
    )


def test_write_summary(tmp_path):
    (tmp_path / "accuracy_vs_adc_bits.png").write_bytes(b"png")
    linear, kernel = load_device("pcm"), load_device("pcm", adc_range=2)
    write_summary(
        tmp_path, FRAME, "ADC sweep", ["model", "accuracy"], ["accuracy_vs_adc_bits.png"], args(),
        {"linear": linear, "kernel": kernel, "settings": {"device": "pcm", "copies": 4}}, notes="Mean of 2 draws.",
    )
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("# ADC sweep\n") and "Mean of 2 draws." in text
    assert "| model | accuracy |\n| --- | ---: |\n| float | 0.8512 |\n" in text and "adc_bits" not in text.split("## Plots")[0]
    assert "![accuracy_vs_adc_bits](accuracy_vs_adc_bits.png)" in text
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["seed"] == 0 and record["arguments"]["out"] == "results/adc_sweep" and record["arguments"]["adc_bits"] == [8, 10]
    assert {"torch", "aihwkit", "aimc_ssm", "python"} <= set(record["package_versions"])
    device = record["device_config"]
    assert device["kernel"]["forward.out_bound"] == 2.0 and device["linear"]["adc_bits"] == 8 and device["settings"]["copies"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["accuracy_vs_adc_bits.png", "run.json", "summary.md"]  # no temporary files


def test_config_hash_names_what_decides_the_results():
    same = run_record(args())["config_hash"]
    assert run_record(args(out=Path("elsewhere"), threads=1, models_dir=Path("m")))["config_hash"] == same
    assert run_record(args(seed=1))["config_hash"] != same
    assert run_record(args(adc_bits=[8]))["config_hash"] != same


def test_bad_summaries_write_nothing(tmp_path):
    with pytest.raises(ValueError, match=r"main_columns \['energy'\].*model"):
        write_summary(tmp_path, FRAME, "t", ["model", "energy"], [], args())
    with pytest.raises(ValueError, match="missing.png does not exist"):
        write_summary(tmp_path, FRAME, "t", ["model"], ["missing.png"], args())
    assert list(tmp_path.iterdir()) == []
