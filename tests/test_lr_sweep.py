"""`imagenet-kit bench lr-sweep`: one range test per seed, one run per factor of its pick, one row per run."""
import json
from fractions import Fraction

import pytest
import torch
from click.testing import CliRunner

from imagenet_kit.bench.lr_sweep import factor_label, parse_factors
from imagenet_kit.cli import cli
from imagenet_kit.data.pixels import normalize_constants
from imagenet_kit.errors import KitError


def test_factors_parse_and_label():
    assert parse_factors("1/9,1/3,1,3") == [Fraction(1, 9), Fraction(1, 3), 1, 3]
    assert factor_label(Fraction(1, 3)) == "x1/3" and factor_label(Fraction(1, 3), sep="_") == "x1_3"
    with pytest.raises(KitError, match="positive"):
        parse_factors("0,1")


@pytest.mark.slow
def test_a_sweep_trains_each_factor_of_the_pick_and_records_each_run_once(tiny_data, tmp_path):
    args = ["bench", "lr-sweep", "--recipe", "sample", "--data", str(tiny_data["root"]), "--factors", "1/3,1",
            "--seeds", "0", "--output-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"),
            "-j", "1", "--set", f"data.beton_dir={tmp_path / 'betons'}", "--set", "data.name=sweep",
            "--set", "data.max_res=64", "--set", "model.arch=resnet18", "--set", "train.epochs=1",
            "--set", "train.batch_size=8", "--set", "train.min_res=32", "--set", "train.max_res=32",
            "--set", "train.val_res=32", "--set", "lr_find.num_iter=10", "--set", "train.precision=fp32"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "results" / "accuracy.jsonl").read_text().splitlines()]
    pick = json.loads((tmp_path / "runs" / "sample-lr-test-s0" / "lr_find.json").read_text())["suggestions"]["turn_x3"]
    assert [r["run"] for r in rows] == ["sample-s0-turn_x3-x1_3", "sample-s0-turn_x3-x1"]
    assert [r["sweep"]["factor"] for r in rows] == ["1/3", "1"]
    assert rows[0]["lr"] == pytest.approx(pick / 3, rel=1e-5) and rows[1]["lr"] == pytest.approx(pick, rel=1e-5)
    assert all(r["kind"] == "accuracy" and 0 <= r["top1"] <= 1 and r["sweep"]["rule"] == "turn_x3" for r in rows)
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0
    assert len((tmp_path / "results" / "accuracy.jsonl").read_text().splitlines()) == 2  # nothing recorded twice


def test_normalize_constants_are_made_once_per_device():
    assert normalize_constants(torch.device("cpu")) is normalize_constants(torch.device("cpu"))
