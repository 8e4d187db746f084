"""`imagenet-kit bench data` on 20 generated JPEGs: one JSON line per measurement, ratios against the baseline."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from imagenet_kit.bench.data import bench_data_command

KEYS = {"kind", "date", "host", "cpu", "versions", "command", "src", "n_images", "res", "workers", "max_res",
        "loader", "img_per_s", "img_per_s_per_core", "ratio_vs_baseline"}


@pytest.mark.slow
def test_bench_data_writes_one_line_per_loader(tmp_path):
    src = tmp_path / "flat"  # flat folder, like imagenet-samples: one pseudo-class
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(src / f"img_{i:02d}.JPEG")
    (src / ".DS_Store").write_bytes(b"\0Bud1")
    results = tmp_path / "results"

    run = CliRunner().invoke(bench_data_command, [
        "--src", str(src), "--out", str(tmp_path / "betons"), "--results-dir", str(results),
        "--res", "64", "--max-res", "64,128", "-b", "8", "--epochs", "1", "-j", "1"])
    assert run.exit_code == 0, run.output

    lines = [json.loads(line) for line in (results / "data.jsonl").read_text().splitlines()]
    assert [(r["loader"], r["max_res"]) for r in lines] == [("pil-torchvision", None), ("ffcv", 64), ("ffcv", 128)]
    baseline = lines[0]
    for r in lines:
        assert KEYS <= set(r), KEYS - set(r)
        assert (r["kind"], r["src"], r["n_images"], r["res"], r["workers"]) == ("data", str(src), 20, 64, 1)
        assert r["versions"]["torch"] and r["img_per_s"] > 0
        assert r["img_per_s_per_core"] == r["img_per_s"]  # one worker
        # rounded independently: img/s to 0.1, the ratio to 0.001
        assert r["ratio_vs_baseline"] == pytest.approx(r["img_per_s"] / baseline["img_per_s"], rel=2e-3)
    assert baseline["ratio_vs_baseline"] == 1.0
    assert sorted(p.name for p in (tmp_path / "betons").glob("*.beton")) == ["flat-128-0.5.beton", "flat-64-0.5.beton"]
