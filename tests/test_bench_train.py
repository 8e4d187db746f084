"""`imagenet-kit bench train` on a tiny beton: three modes per resolution, overheads from the measured img/s."""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from imagenet_kit.bench.train import bench_train_command

KEYS = {"kind", "date", "host", "device", "device_type", "gpus", "arch", "res", "batch", "precision",
        "channels_last", "compile", "mode", "img_per_s", "peak_mem_mb", "data_overhead_pct", "kit_overhead_pct",
        "versions", "command"}


def test_bench_train_writes_three_modes_per_resolution(tiny_data, tmp_path):
    results = tmp_path / "results"
    run = CliRunner().invoke(bench_train_command, [
        "--arch", "resnet18", "--res", "32", "--batch", "4", "--steps", "3", "--warmup", "1", "--precision", "fp32",
        "--beton", str(tiny_data["beton_dir"] / "tiny-train-64.beton"), "-j", "1", "--results-dir", str(results)])
    # 4 steps in all: one-cycle's 25% warm-up on exactly those would be one step, which torch divides by zero
    assert run.exit_code == 0, run.output
    assert "kit" in run.output and "data path" in run.output  # the table's overhead column

    rows = [json.loads(line) for line in (results / "train.jsonl").read_text().splitlines()]
    assert [(r["res"], r["mode"]) for r in rows] == [(32, "synthetic"), (32, "real"), (32, "bare")]
    rate = {r["mode"]: r["img_per_s"] for r in rows}
    for r in rows:
        assert KEYS <= r.keys(), KEYS - r.keys()
        assert (r["kind"], r["arch"], r["batch"], r["precision"], r["gpus"]) == ("train", "resnet18", 4, "fp32", 1)
        assert r["img_per_s"] > 0 and r["peak_mem_mb"] > 0 and r["versions"]["torch"]
        # overheads are rounded to 0.1 % from the img/s values as stored
        assert r["data_overhead_pct"] == pytest.approx(100 * (1 - rate["real"] / rate["synthetic"]), abs=0.051)
        assert r["kit_overhead_pct"] == pytest.approx(100 * (1 - rate["synthetic"] / rate["bare"]), abs=0.051)
    real = rows[1]
    assert (real["beton_images"], real["workers"]) == (32, 1)


def test_fp16_on_cpu_runs_with_a_cpu_scaler_and_says_it_is_slow(capsys):
    """fp16 is accepted on CPU (torch's CPU autocast, GradScaler("cpu")), so the T4's path runs in the tests."""
    from imagenet_kit.runtime import _warn_cpu_fp16, resolve_precision

    _warn_cpu_fp16.cache_clear()
    assert resolve_precision("fp16", torch.device("cpu")) == (torch.float16, True)
    assert resolve_precision("fp16", torch.device("cpu")) == (torch.float16, True)
    err = capsys.readouterr().err
    assert err.count("fp16 on CPU") == 1 and "slow" in err  # said once per process


def test_the_kits_own_models_are_timed_without_a_bare_twin(tiny_data, tmp_path):
    results = tmp_path / "results"
    run = CliRunner().invoke(bench_train_command, [
        "--arch", "resnet50d", "--set", "model.se_reduction=16", "--set", "model.maxblurpool=true", "--res", "32",
        "--batch", "4", "--steps", "1", "--warmup", "0", "--precision", "fp32",
        "--beton", str(tiny_data["beton_dir"] / "tiny-train-64.beton"), "-j", "1", "--results-dir", str(results)])
    assert run.exit_code == 0, run.output
    assert "resnet50d (SE 1/16, maxblurpool)" in run.output and "no plain-PyTorch twin" in run.output
    rows = [json.loads(line) for line in (results / "train.jsonl").read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["synthetic", "real"]  # torchvision has no resnet50d to time bare
    for r in rows:
        assert (r["arch"], r["se_reduction"], r["maxblurpool"], r["self_attention"], r["activation"],
                r["blurpool"]) == ("resnet50d", 16, True, False, "relu", False)
        assert r["kit_overhead_pct"] is None and r["img_per_s"] > 0


@pytest.mark.parametrize("option, message", [
    ("train.epochs=3", "'train.epochs' cannot be benchmarked; choose from model.blurpool"),
    ("model.arch=resnet18", "'model.arch' cannot be benchmarked; choose from model.blurpool, model.activation, "
                            "model.se_reduction, model.self_attention, model.maxblurpool (the arch has --arch)"),
    ("model.activation=gelu", "model.activation: 'gelu' is not one of relu, mish, silu"),
])
def test_only_model_add_ons_can_be_set(tmp_path, option, message):
    run = CliRunner().invoke(bench_train_command, ["--set", option, "--results-dir", str(tmp_path)])
    assert run.exit_code == 2 and message in " ".join(run.output.split()), run.output
    assert not (tmp_path / "train.jsonl").exists()


def test_real_mode_needs_a_beton_holding_every_timed_batch(tiny_data, tmp_path):
    beton = tiny_data["beton_dir"] / "tiny-train-64.beton"  # 32 images < (2 + 10) x 4
    from imagenet_kit.cli import cli
    run = CliRunner().invoke(cli, [
        "bench", "train", "--arch", "resnet18", "--res", "32", "--batch", "4", "--steps", "10", "--warmup", "2",
        "--precision", "fp32", "--beton", str(beton), "-j", "1", "--results-dir", str(tmp_path)])
    assert run.exit_code == 2, run.output
    message = " ".join(run.output.split())
    assert f"{beton}: 32 images, fewer than the 48" in message and "imagenette2" in message
    assert not (tmp_path / "train.jsonl").exists()
