"""`imagenet-kit bench report`: one README row per result line, hardware and command on each; only the
marked README block changes, and a second run changes nothing."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from imagenet_kit.bench.report import BEGIN, END, GPU_PENDING, ReportError, load_rows, replace_block, results_markdown
from imagenet_kit.cli import cli
from imagenet_kit.result_rows import ResultsError

TRAIN = {"kind": "train", "date": "2026-12-01T10:00:00+00:00", "arch": "resnet50", "res": 160, "batch": 256,
         "precision": "bf16", "channels_last": True, "compile": False, "gpus": 1, "img_per_s": 2890.4,
         "peak_mem_mb": 21000.0, "data_overhead_pct": 3.2, "kit_overhead_pct": 1.5, "mode": "real",
         "beton": "betons/bench-sample-train-256.beton", "versions": {"torch_threads": 16}}
GPU_ROW = {**TRAIN, "device": "NVIDIA H100 80GB HBM3", "device_type": "cuda",
           "command": "imagenet-kit bench train --res 160"}
CPU_ROW = {**TRAIN, "date": "2026-11-30T09:00:00+00:00", "device": "AMD EPYC 9R14", "device_type": "cpu",
           "res": 128, "batch": 16, "mode": "bare", "img_per_s": 21.7, "versions": {"torch_threads": 2},
           "command": "imagenet-kit bench train --arch resnet50 --res 128 --batch 16 --precision bf16"}
DEMO_ROW = {"kind": "demo", "date": "2026-11-26T02:30:27+00:00", "arch": "resnet18", "res": 128,
            "backend": "torchscript", "p50_ms": 20.75, "p95_ms": 21.24, "cpu": "AMD EPYC", "torch_threads": 1,
            "command": "imagenet-kit bench demo"}


def _write(results, name, rows):
    results.mkdir(exist_ok=True)
    (results / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def _table_rows(markdown: str) -> list[list[str]]:
    rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in rows[1:]]  # without the header


def test_a_row_per_measurement_with_hardware_and_command(tmp_path):
    _write(tmp_path, "train.jsonl", [GPU_ROW, CPU_ROW])
    _write(tmp_path, "demo.jsonl", [DEMO_ROW])
    markdown = results_markdown(load_rows(tmp_path))
    rows = _table_rows(markdown)
    assert len(rows) == 3
    gpu, cpu, demo = rows  # training rows first, then file order
    assert "2,890.4 img/s" in gpu[1] and "data-path overhead +3.2%" in gpu[1] and "peak GPU memory" in gpu[1]
    assert gpu[2:] == ["NVIDIA H100 80GB HBM3", f"`{GPU_ROW['command']}`", "2026-12-01"]
    assert "plain PyTorch" in cpu[0] and "128 px, batch 16, bf16" in cpu[0] and "peak process RSS" in cpu[1]
    assert cpu[2:] == ["AMD EPYC 9R14, 2 threads", f"`{CPU_ROW['command']}`", "2026-11-30"]
    assert demo[1] == "p50 20.8 ms, p95 21.2 ms" and demo[2] == "AMD EPYC, 1 thread"
    assert GPU_PENDING not in markdown  # one row ran on a CUDA device


def test_a_train_row_names_the_models_add_ons_and_that_it_has_no_bare_twin(tmp_path):
    row = {**CPU_ROW, "mode": "synthetic", "arch": "resnet50d", "se_reduction": 16, "maxblurpool": True,
           "kit_overhead_pct": None}
    _write(tmp_path, "train.jsonl", [row, CPU_ROW])
    kit, bare = _table_rows(results_markdown(load_rows(tmp_path)))
    assert "synthetic batches on the device: resnet50d (SE 1/16, maxblurpool), 128 px" in kit[0]
    assert "no plain-PyTorch reference (not a torchvision model)" in kit[1]
    assert "plain PyTorch reference (torchvision model, SGD, autocast): resnet50, 128 px" in bare[0]  # older lines


ACCURACY = {"kind": "accuracy", "date": "2026-11-26T08:00:00+00:00", "run": "r", "data": "imagenette2",
            "arch": "resnet50d", "epochs": 5, "batch": 64, "train_res": [128], "val_res": 160, "flip_tta": True,
            "lr": 0.008, "schedule": "flat_cos", "optimizer": "radam", "lr_batch": 64, "top1": 0.8, "top5": 0.98,
            "best_top1": 0.8, "best_epoch": 5, "train_minutes": 25.0, "device": "AMD EPYC", "world_size": 1,
            "torch_threads": 2, "command": "imagenet-kit run --recipe imagenette"}


@pytest.mark.parametrize("extra, arch, at", [
    ({}, "resnet50d on", ""),
    ({"activation": "relu", "git": "0123456789abcdef"}, "resnet50d on", " at 0123456"),
    ({"activation": "mish", "git": "0123456789abcdef-dirty"}, "resnet50d (mish) on",
     " at 0123456 + uncommitted changes"),
    ({"arch": "resnext50d", "se_reduction": 16, "self_attention": True, "blurpool": True},
     "resnext50d (SE 1/16, self-attention, blurpool) on", ""),
])
def test_accuracy_rows_name_the_architecture_and_the_commit(tmp_path, extra, arch, at):
    _write(tmp_path, "accuracy.jsonl", [{**ACCURACY, **extra}])
    (what, value, hardware, command, date), = _table_rows(results_markdown(load_rows(tmp_path)))
    assert what == (f"val top-1 / top-5 after 5 epochs: {arch} imagenette2, 128 px train, 160 px eval + flip TTA, "
                    "batch 64, radam flat_cos LR 0.008 per 64 images")
    assert value.startswith("80.00% / 98.00%") and hardware == "AMD EPYC, 2 threads"
    assert command == "`imagenet-kit run --recipe imagenette`" + at


@pytest.mark.parametrize("ratio, shown", [(1.0, " (whole shorter side)"), (0.8, " (0.8 of the shorter side)"),
                                           (0.875, "")])
def test_accuracy_rows_name_random_square_crops_and_a_non_standard_eval_crop(tmp_path, ratio, shown):
    _write(tmp_path, "accuracy.jsonl", [{**ACCURACY, "crop": "random_square", "val_crop_ratio": ratio, "val_res": 128,
                                         "lookahead_k": 6}])
    (what, *_), = _table_rows(results_markdown(load_rows(tmp_path)))
    assert f"128 px train, random-square crops, 128 px eval{shown} + flip TTA, batch 64" in what
    assert what.endswith("radam + lookahead k=6 flat_cos LR 0.008 per 64 images")


def test_an_image_row_names_base_builder_size_and_whether_it_was_built_from_scratch(tmp_path):
    image = {"kind": "image", "date": "2026-12-05T21:00:00+00:00", "base": "localhost/debian:bookworm",
             "builder": "podman version 4.3.1", "size_bytes": 7_376_118_521, "build_s": 612.0, "cached_steps": 0,
             "checks": "1-4 passed", "cpu": "Intel Xeon", "cpu_count": 2, "git": "a" * 40,
             "command": "make image-check"}
    _write(tmp_path, "image.jsonl", [image, {**image, "build_s": 44.1, "cached_steps": 21}])
    scratch, cached = _table_rows(results_markdown(load_rows(tmp_path)))
    assert scratch[:3] == ["container image from the Dockerfile on localhost/debian:bookworm (podman version 4.3.1), "
                           "steps 1-4 passed", "7.38 GB, built in 10.2 min (from scratch)", "Intel Xeon, 2 cores"]
    assert cached[1] == "7.38 GB, built in 0.7 min (21 steps cached)"
    assert scratch[3] == f"`make image-check` at {'a' * 7}"


def test_gpu_pending_only_without_a_gpu_row(tmp_path):
    _write(tmp_path, "train.jsonl", [CPU_ROW])
    markdown = results_markdown(load_rows(tmp_path))
    assert len(_table_rows(markdown)) == 1 and markdown.rstrip().endswith(GPU_PENDING)


def test_unreadable_unknown_or_incomplete_lines_are_errors_naming_the_line(tmp_path):
    _write(tmp_path, "a.jsonl", [CPU_ROW, {**CPU_ROW, "kind": "mystery"}])
    with pytest.raises(ResultsError, match="a.jsonl:2: no results-table format for kind 'mystery'"):
        load_rows(tmp_path)
    _write(tmp_path, "a.jsonl", [{k: v for k, v in CPU_ROW.items() if k != "img_per_s"}])
    with pytest.raises(ReportError, match="a.jsonl:1: a train row needs the field 'img_per_s'"):
        results_markdown(load_rows(tmp_path))
    (tmp_path / "a.jsonl").write_text("{not json\n")
    with pytest.raises(ResultsError, match="a.jsonl:1: not a JSON line"):
        load_rows(tmp_path)


def test_readme_rewrite_touches_only_the_block_and_is_idempotent(tmp_path):
    results = tmp_path / "results"
    _write(results, "train.jsonl", [CPU_ROW])
    readme = tmp_path / "README.md"
    before, after = "# Kit\n\n## Results\n\nhand-written | table\n\n", "\nReference numbers from others\n"
    readme.write_text(f"{before}{BEGIN}\nstale table\n{END}{after}")
    args = ["--results-dir", str(results), "--doc", str(readme)]

    run = CliRunner().invoke(cli, ["bench", "report", *args])
    assert run.exit_code == 0 and "tables rewritten" in run.output, run.output
    text = readme.read_text()
    assert text.startswith(f"{before}{BEGIN}\n") and text.endswith(f"\n{END}{after}")
    assert "stale table" not in text and CPU_ROW["command"] in text and GPU_PENDING in text

    run = CliRunner().invoke(cli, ["bench", "report", *args])
    assert run.exit_code == 0 and "already up to date" in run.output
    assert readme.read_text() == text


def test_missing_markers_are_refused(tmp_path):
    with pytest.raises(ReportError, match="results:begin"):
        replace_block("# no markers\n", "table")
    with pytest.raises(ReportError):
        replace_block(f"{END}\n{BEGIN}\n", "table")
