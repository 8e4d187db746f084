"""`plan --target`: which schedules qualify, and the hours and dollars of two instances worked out by hand."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from imagenet_kit.cli import cli
from imagenet_kit.plan.targets import plan_targets
from imagenet_kit.plan.throughput import PlanError

A10G = {"kind": "train", "device": "NVIDIA A10G", "arch": "resnet50", "blurpool": True, "precision": "fp16",
        "gpus": 1, "date": "2026-12-01T00:00:00+00:00", "command": "imagenet-kit bench train"}
# 100 kB per image at the a10g profile's data settings: 25.6 GB of betons for the 256,000 images below
CONVERT = {"kind": "convert", "writer": "kit", "max_res": 320, "compress_prob": 1.0, "jpeg_quality": 90,
           "bytes_per_image": 100_000, "n_images": 400, "src": "x", "date": "2026-12-01T00:00:00+00:00"}


@pytest.fixture
def results(tmp_path):
    rows = [{**A10G, "res": 160, "img_per_s": 400.0}, {**A10G, "res": 192, "img_per_s": 300.0}, CONVERT]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _targets(results, **kwargs):
    return plan_targets(75, ("g5",), images=256_000, val_images=0, efficiency=0.9, results_dir=results, **kwargs)


def test_full_24_on_two_g5_sizes_by_hand(results):
    """full-24 ramps 160 -> 192 px between epochs 17 and 20: epochs 0-18 train at 160 px (epoch 18 rounds to 160),
    19-23 at 192. 256,000 images per epoch at 400 and 300 img/s, no validation (val_images 0)."""
    gpu_hours = (19 * 256_000 / 400 + 5 * 256_000 / 300) / 3600  # 4.5630 h
    first_read = 25.6e9 / (125 * 2**20) / 3600  # the betons in order from gp3 at 125 MiB/s, where they fit RAM
    rows = {(r["recipe"], r["instance"]): r for r in _targets(results, spot_discount=0.65)["rows"]}
    small, large = rows["full-24", "g5.xlarge"], rows["full-24", "g5.2xlarge"]
    for row, price, hours in ((small, 1.006, gpu_hours), (large, 1.212, gpu_hours + first_read)):
        assert row["hours"] == pytest.approx(hours)
        assert row["on_demand_usd"] == pytest.approx(hours * price)
        assert row["spot_usd"] == pytest.approx(hours * price * 0.35)
        assert row["throughput"] == "measured" and row["reference_top1"] == 75.6
    # 25.6 GB = 23.8 GiB of betons; page cache is RAM less 4 GiB and 4 GiB per training process
    assert (small["fits_page_cache"], small["fits_disk"]) == (False, True)  # 16 - 8 = 8 GiB
    # uncached, every epoch reads from gp3: 125 MiB/s / 100 kB = 1,311 img/s, more than the GPU's 400 here
    assert small["disk_img_per_s"] == pytest.approx(125 * 2**20 / 1e5) and small["first_read_min"] is None
    assert (large["fits_page_cache"], large["fits_disk"]) == (True, True)  # 32 - 8 = 24 GiB
    assert not small["runs_as_configured"] and large["runs_as_configured"]  # in_memory: true needs the page cache
    assert (small["batch_size"], small["data"]) == (256, "320:1:90")  # the a10g profile's batch and betons


def test_cheapest_and_fastest_are_marked_among_rows_that_run(results):
    result = _targets(results)
    rows = result["rows"]
    assert [r["on_demand_usd"] for r in rows] == sorted(r["on_demand_usd"] for r in rows)
    assert {r["recipe"] for r in rows} == {"full-24", "full-32", "full-40", "full-56", "full-88"}  # never full
    assert {r["instance"] for r in rows} == {f"g5.{size}" for size in
                                             ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge",
                                              "24xlarge", "48xlarge")}
    cheapest = min((r for r in rows if r["runs_as_configured"]), key=lambda r: r["on_demand_usd"])
    fastest = min((r for r in rows if r["runs_as_configured"]), key=lambda r: r["hours"])
    assert (cheapest["recipe"], cheapest["instance"]) == ("full-24", "g5.2xlarge")
    assert (fastest["recipe"], fastest["instance"], fastest["gpus"]) == ("full-24", "g5.48xlarge", 8)
    assert result["cheapest"] == {"recipe": "full-24", "instance": "g5.2xlarge", "gpus": 1}
    assert [r["mark"] for r in rows if r["mark"]] == ["cheapest", "fastest"]
    assert rows[0]["instance"] == "g5.xlarge" and not rows[0]["mark"]  # cheaper, but its page cache is too small


def test_a_spot_price_per_gpu_hour_prices_gpu_hours(results):
    rows = {(r["recipe"], r["instance"]): r for r in _targets(results, spot_price=0.5)["rows"]}
    row = rows["full-24", "g5.12xlarge"]  # 4 GPUs: 3.6x one GPU's rate at 90% efficiency
    first_read = 25.6e9 / (125 * 2**20) / 3600  # 192 GiB of RAM hold the betons: read once before epoch 0
    assert row["hours"] == pytest.approx((19 * 256_000 / 1440 + 5 * 256_000 / 1080) / 3600 + first_read)
    assert row["spot_usd"] == pytest.approx(row["hours"] * 4 * 0.5)
    with pytest.raises(PlanError, match="not both"):
        _targets(results, spot_price=0.5, spot_discount=0.6)


def test_the_command_lists_every_schedule_reaching_the_target(results):
    result = CliRunner().invoke(cli, ["plan", "--target", "75", "--family", "g6", "--results-dir", str(results),
                                      "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert {r["recipe"] for r in plan["rows"]} == {"full-24", "full-32", "full-40", "full-56", "full-88"}
    assert {r["gpu"] for r in plan["rows"]} == {"l4"} and {r["throughput"] for r in plan["rows"]} == {"derived"}
    table = CliRunner().invoke(cli, ["plan", "--target", "78", "--results-dir", str(results)])
    assert table.exit_code == 0 and "full-56" in table.output and "full-40" not in table.output
    assert "cheapest" in table.output and "fastest" in table.output
    for bad, message in ((["--target", "79"], "the highest is 78.4%"),
                         (["--target", "75", "--family", "g7"], "unknown instance family g7")):
        failed = CliRunner().invoke(cli, ["plan", *bad, "--results-dir", str(results)])
        assert failed.exit_code == 2 and message in failed.output
