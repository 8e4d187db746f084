"""`imagenet-kit plan`: estimates name their sources, measured rows beat published figures, and a GPU
without any figure is an error rather than a guess."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from imagenet_kit.cli import cli
from imagenet_kit.config import load_config
from imagenet_kit.plan.catalog import GPUS, Throughput
from imagenet_kit.plan.estimate import estimate_plan
from imagenet_kit.plan.throughput import seconds_per_image


def _plan(*args: str):
    return CliRunner().invoke(cli, ["plan", *args])


def _write_rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


# The full recipe's network: resnet50 with BlurPool.
T4_ROW = {"kind": "train", "device": "Tesla T4", "arch": "resnet50", "blurpool": True, "res": 160, "precision": "fp16",
          "img_per_s": 300.0, "gpus": 1, "date": "2026-11-01T10:00:00+00:00", "command": "imagenet-kit bench train"}


def test_h100_eight_gpus_is_an_estimate_naming_its_sources(tmp_path):
    result = _plan("--gpu", "h100", "--gpus", "8", "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "estimate" in result.output.lower()
    assert "Estimate — sources: reference:" in result.output
    assert "lambdal/deeplearning-benchmark" in result.output
    assert "p5.48xlarge" in result.output  # the price's source
    assert "figures taken at 8 GPU(s)" in result.output  # Lambda measured 8 GPUs: no scaling assumption


def test_t4_uses_a_measured_row_and_names_it(tmp_path):
    _write_rows(tmp_path / "results" / "bench.jsonl", [T4_ROW])
    result = _plan("--gpu", "t4", "--gpus", "1", "--results-dir", str(tmp_path / "results"))
    assert result.exit_code == 0, result.output
    assert "estimate" in result.output.lower()
    assert "sources: measured: Tesla T4 x1, 160 px, fp16" in result.output
    assert "bench.jsonl:1" in result.output
    assert "g4dn.xlarge" in result.output


def test_t4_without_a_measurement_is_a_derived_estimate_naming_its_sources(tmp_path):
    result = _plan("--gpu", "t4", "--gpus", "1", "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert "Estimate — sources: derived: not measured: Lambda's A10 figure" in result.output
    for words in ("lambdal/deeplearning-benchmark", "LambdaCloud A10", "datasheets", "likely optimistic",
                  "imagenet-kit bench train", "g4dn.xlarge"):
        assert words in result.output, words
    plan = estimate_plan(load_config("full"), "t4", 1, results_dir=tmp_path)
    assert plan["throughput"]["kind"] == "derived"
    assert plan["throughput"]["points"] == [{"gpus": 1, "res": 224, "img_per_s": pytest.approx(638 * 0.52)}]
    assert plan["epochs"][0]["img_per_s"] == pytest.approx(638 * 0.52 * (224 / 160) ** 2)  # full: 160 px first
    assert plan["assumptions"][-1] == ("the published figure is a plain ResNet-50's; the recipe's blurpool is not "
                                       "in it (measure with `imagenet-kit bench train --arch resnet50 "
                                       "--set model.blurpool=true`)")
    mini = estimate_plan(load_config("mini"), "t4", 1, results_dir=tmp_path)  # plain resnet50: nothing to add
    assert not any("published figure" in line for line in mini["assumptions"])


def test_ffcvs_a100_figure_is_a_blurpool_resnet50s(tmp_path):
    """FFCV's rn50 configs set use_blurpool: 1 (tests/fixtures/ffcv_rn50_configs.json), so the full recipe's
    BlurPool is in the A100 figure; a plain ResNet-50 recipe is the one that differs from it there."""
    full = estimate_plan(load_config("full"), "a100", 8, results_dir=tmp_path)
    assert full["throughput"]["kind"] == "reference"
    assert not any("published figure" in line for line in full["assumptions"])
    mini = estimate_plan(load_config("mini"), "a100", 8, results_dir=tmp_path)
    assert mini["assumptions"][-1] == ("the published figure is a ResNet-50 with blurpool; the recipe has no "
                                       "blurpool (measure with `imagenet-kit bench train --arch resnet50`)")


def test_a_plan_credits_the_published_top1_only_to_the_published_setup(tmp_path):
    """FFCV's 73.8%: 500 px half-raw betons, 8 x 512 = 4,096 per step at LR 1.7, fp16. The full recipe as written
    (256 per GPU, auto = bf16 on an A100) is another run; with FFCV's batch and fp16 it is FFCV's, and on T4s
    (auto = fp16 there) too."""
    plain = estimate_plan(load_config("full"), "a100", 8, results_dir=tmp_path)
    assert (plain["reference_match"], plain["accuracy"]) == (False, "not measured")
    assert plain["differences"] == ["2,048 images per step (LR 0.85 by the kit's linear rule), not 4,096 (LR 1.7)",
                                    "bf16, not fp16"]
    ffcv = ["train.batch_size=512"]
    same = estimate_plan(load_config("full", [*ffcv, "train.precision=fp16"]), "a100", 8, results_dir=tmp_path)
    assert (same["reference_match"], same["differences"], same["accuracy"]) == (True, [], "73.8% (FFCV's)")
    assert estimate_plan(load_config("full", ffcv), "t4", 8, results_dir=tmp_path)["reference_match"]
    lr = estimate_plan(load_config("full", [*ffcv, "train.precision=fp16", "optim.lr=0.5"]), "a100", 8,
                       results_dir=tmp_path)
    assert lr["differences"] == ["peak LR 2 (optim.lr by the kit's linear rule), not 1.7"]
    result = _plan("--recipe", "full", "--gpu", "a100", "--gpus", "8", "--results-dir", str(tmp_path))
    text = " ".join(result.output.split())
    assert ("accuracy: not measured. FFCV's published 73.8% is for its own run (500:0.5:90 betons, 4,096 images per "
            "step at LR 1.7, fp16;") in text
    assert "- bf16, not fp16 (effect not measured by the kit)" in text
    sample = json.loads(_plan("--recipe", "mini", "--gpu", "t4", "--json", "--results-dir", str(tmp_path)).output)
    assert (sample["reference_match"], sample["differences"]) == (False, ["recipe mini has no published top-1"])


def test_every_packaged_reference_names_a_published_run_plan_knows():
    from imagenet_kit.config.recipes import RECIPES_DIR
    from imagenet_kit.plan.published import published_run

    referenced = [load_config(p.stem) for p in sorted(RECIPES_DIR.glob("*.yaml")) if load_config(p.stem).reference.top1]
    assert len(referenced) == 7  # full and its five longer schedules, and g4dn-t4 (full with the t4 profile)
    assert {published_run(cfg).who for cfg in referenced} == {"FFCV"}


@pytest.mark.parametrize("instance, gpu, ratio, words", [
    ("g5.2xlarge", "a10g", 1.0, "AWS's variant of the A10"),
    ("g6.xlarge", "l4", 0.5, "300 vs 600 GB/s"),
    ("g6e.2xlarge", "l40s", 1.44, "864 vs 600 GB/s"),
])
def test_the_gpus_people_rent_get_a_derived_plan_that_says_so(tmp_path, instance, gpu, ratio, words):
    result = _plan("--recipe", "full", "--instance", instance, "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Estimate — sources: derived: not measured: Lambda's A10 figure, 638 img/s" in text
    assert words in text and f"x {ratio:.2f}" in text and f"`imagenet-kit bench train` on the {gpu.upper()}" in text
    assert f"{instance} $" in text  # priced by the instance itself
    plan = estimate_plan(load_config("full"), gpu, 1, results_dir=tmp_path)
    assert plan["throughput"]["kind"] == "derived"
    assert plan["throughput"]["points"] == [{"gpus": 1, "res": 224, "img_per_s": pytest.approx(638 * ratio)}]


def test_unknown_gpu_lists_the_valid_ones():
    result = _plan("--gpu", "v100")
    assert result.exit_code != 0
    for name in ("t4", "a10g", "l4", "l40s", "a100", "h100"):
        assert name in result.output


def test_measured_row_beats_the_published_reference(tmp_path):
    row = {**T4_ROW, "device": "NVIDIA H100 80GB HBM3", "res": 224, "img_per_s": 1000.0, "precision": "bf16"}
    _write_rows(tmp_path / "h100.jsonl", [row])
    plan = estimate_plan(load_config("full"), "h100", 1, results_dir=tmp_path)
    assert plan["throughput"]["kind"] == "measured"
    assert "NVIDIA H100 80GB HBM3" in plan["throughput"]["source"]
    assert plan["epochs"][-1]["img_per_s"] == pytest.approx(1000.0 * (224 / 192) ** 2)


def test_rows_of_other_gpus_archs_or_precisions_are_ignored(tmp_path):
    _write_rows(tmp_path / "other.jsonl", [
        {**T4_ROW, "device": "NVIDIA A100-SXM4-40GB"},
        {**T4_ROW, "arch": "resnet18"},
        {**T4_ROW, "blurpool": False},  # another network: the same arch without the recipe's BlurPool
        {key: value for key, value in T4_ROW.items() if key != "blurpool"},  # written before the key: plain
        {**T4_ROW, "se_reduction": 16},
        {**T4_ROW, "precision": "fp32"},
        {**T4_ROW, "kind": "data"},
    ])
    assert estimate_plan(load_config("full"), "t4", 1, results_dir=tmp_path)["throughput"]["kind"] == "derived"


def test_newest_row_wins_and_a_broken_line_is_named(tmp_path):
    _write_rows(tmp_path / "a.jsonl", [T4_ROW, {**T4_ROW, "img_per_s": 400.0, "date": "2026-12-01T00:00:00+00:00"}])
    plan = estimate_plan(load_config("full"), "t4", 1, results_dir=tmp_path)
    assert plan["epochs"][0]["img_per_s"] == pytest.approx(400.0)
    (tmp_path / "b.jsonl").write_text("{not json\n")
    result = _plan("--gpu", "t4", "--results-dir", str(tmp_path))
    assert result.exit_code != 0 and "b.jsonl:1" in result.output


def test_full_recipe_on_8_a100_reproduces_ffcv_epoch_times(tmp_path):
    """The A100 reference is FFCV's own run of the schedule recipes/full.yaml copies, so training
    time per epoch must come back as FFCV's measured 45.5 s (160 px) and 61.5 s (192 px)."""
    cfg = load_config("full")
    plan = estimate_plan(cfg, "a100", 8, results_dir=tmp_path, val_images=0)
    seconds = {e["res"]: e["hours"] * 3600 for e in plan["epochs"]}
    assert seconds[160] == pytest.approx(45.5, abs=0.2)
    assert seconds[192] == pytest.approx(61.5, abs=0.2)
    assert [e["res"] for e in plan["epochs"]].count(192) == 4  # epochs 13-16, as in FFCV's log


def test_scaling_assumption_is_applied_and_labelled(tmp_path):
    one = estimate_plan(load_config("full"), "h100", 1, results_dir=tmp_path)
    four = estimate_plan(load_config("full"), "h100", 4, results_dir=tmp_path, efficiency=0.9)
    assert four["epochs"][0]["img_per_s"] == pytest.approx(one["epochs"][0]["img_per_s"] * 4 * 0.9)
    assert "assuming 90% multi-GPU efficiency" in four["throughput"]["scaling"]


def test_cost_is_hours_times_gpus_times_price(tmp_path):
    plan = estimate_plan(load_config("full"), "a100", 8, price_per_hour=2.0, results_dir=tmp_path)
    assert plan["total_cost_usd"] == pytest.approx(plan["total_hours"] * 8 * 2.0)
    assert plan["price_source"] == "--price-per-hour"


def test_json_output_is_labelled_an_estimate(tmp_path):
    result = _plan("--gpu", "a100", "--gpus", "8", "--json", "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["estimate"] is True and len(plan["epochs"]) == 16
    assert "libffcv/ffcv-imagenet" in plan["throughput"]["source"]


def test_seconds_per_image_interpolates_in_pixels():
    two = [Throughput(1, 160, 100.0), Throughput(1, 192, 50.0)]
    assert seconds_per_image(two, 160) == pytest.approx(1 / 100)
    assert seconds_per_image(two, 176) == pytest.approx(1 / 100 + (1 / 50 - 1 / 100) * (176**2 - 160**2)
                                                        / (192**2 - 160**2))
    one = [Throughput(1, 224, 2000.0)]
    assert seconds_per_image(one, 112) == pytest.approx(1 / 2000 / 4)


def test_every_reference_names_a_source_file():
    for gpu in GPUS.values():
        assert ".csv" in gpu.reference.source and gpu.reference.points
        assert gpu.reference.derived == gpu.reference.source.startswith("not measured")
