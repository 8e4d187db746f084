"""``imagenet-kit preflight``, the pre-read before epoch 0, and cold data in ``plan``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from imagenet_kit.cli import cli
from imagenet_kit.config import load_config
from imagenet_kit.data import storage
from imagenet_kit.engine.train import train
from imagenet_kit.preflight import command as preflight
from imagenet_kit.preflight.measure import _batch_that_fits
from imagenet_kit.runtime import Runtime
from tests.conftest import REPO

GIB = 2**30


# ---- the verdict ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("half_mb, full_mb, limit, fits", [
    (1000.0, 1800.0, 1500.0, 24),  # on the line: 16 + (1500 - 1000) / 50 = 26, down to a multiple of 8
    (1000.0, None, 1500.0, 16),  # the full batch ran out of memory, the half fits
    (1000.0, 1800.0, 1020.0, 16),  # just above the half batch's peak: nothing between
    (1200.0, 1800.0, 600.0, 4),  # not even the half: its share of the limit, halved
])
def test_the_batch_that_fits_is_read_off_the_two_peaks(half_mb, full_mb, limit, fits):
    assert _batch_that_fits(16, half_mb, 32, full_mb, limit) == fits


def _found(train_mb, limit=1000.0, fits_cache=True, resumed=True) -> dict:
    return {"memory": {"limit_mb": limit, "train_res": 128, "batch": 32, "train_mb": train_mb, "half_batch": 16,
                       "half_batch_mb": 800.0, "train_fits": train_mb is not None and train_mb <= limit,
                       "batch_that_fits": _batch_that_fits(16, 800.0, 32, train_mb, limit), "eval_res": 128,
                       "eval_batch": 100, "eval_mb": 500.0, "eval_fits": True, "kind": "process_max_rss"},
            "speed": {"img_per_s": {"128": {"real": 10.0, "synthetic": 12.0}}, "real_over_synthetic": 0.83},
            "decoding": {"workers": 2, "img_per_s": 100.0, "img_per_s_per_worker": 50.0, "res": 96, "images": 96},
            "storage": {"betons_gb": 40.0, "page_cache_gb": 20.0 if not fits_cache else 60.0,
                        "fits_page_cache": fits_cache, "sequential_mb_s": 500.0, "random_mb_s": 100.0,
                        "random_read_kib": 256},
            "resume": {"stopped_at": [0, 3], "resumed_to_global_step": 4 if resumed else 3, "passed": resumed},
            "seconds": {}}


def test_a_batch_over_the_memory_limit_is_exit_2_and_one_line_naming_the_batch_that_fits(monkeypatch, tmp_path):
    monkeypatch.setattr(preflight, "prepare", lambda cfg: None)
    monkeypatch.setattr(preflight, "measure_all", lambda *args: _found(1400.0))
    run = CliRunner().invoke(cli, ["preflight", "--recipe", "sample", "--memory-limit-mb", "1000",
                                   "--results-dir", str(tmp_path)])
    assert run.exit_code == 2, run.output
    errors = [line for line in run.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NO GO: batch 32 at 128 px needs 1,400 MB, over the 1,000 MB of memory: -b 16 fits" \
        in errors[0], run.output
    (row,) = [json.loads(line) for line in (tmp_path / "preflight.jsonl").read_text().splitlines()]
    assert row["go"] is False and row["memory"]["batch_that_fits"] == 16 and "-b 16" in row["failures"][0]


def test_betons_that_do_not_fit_the_page_cache_and_a_failed_resume_are_named():
    cfg = load_config("sample")
    problems = preflight.failures(_found(900.0, fits_cache=False, resumed=False), cfg)
    assert len(problems) == 2
    assert problems[0].startswith("the betons (40.0 GB) do not fit the page cache (~20.0 GB)") and \
        "an instance with more RAM" in problems[0]
    assert problems[1].startswith("the resume check failed")


@pytest.mark.slow  # the CLI in a process of its own: conversion, FFCV's pipelines, two short trainings
def test_preflight_of_the_sample_on_this_cpu_says_go_and_writes_its_row(tmp_path):
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "imagenet_kit", "preflight", "--recipe", "sample", "--results-dir",
                          str(tmp_path / "results"), "-j", "1"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert time.monotonic() - start < 300  # the promise is five minutes; this catches a hang
    assert "preflight: GO: sample fits this CPU" in run.stdout
    assert "estimate: GPU-only" in run.stderr and "CPU: process memory, not a GPU's" in run.stdout
    (row,) = [json.loads(line) for line in (tmp_path / "results" / "preflight.jsonl").read_text().splitlines()]
    assert row["go"] and row["failures"] == [] and row["memory"]["train_mb"] > 0
    assert set(row["speed"]["img_per_s"]) == {"96", "128"}  # the sample's first and largest training resolution
    assert all(r["real"] > 0 and r["synthetic"] > 0 for r in row["speed"]["img_per_s"].values())
    assert row["decoding"]["img_per_s_per_worker"] > 0 and row["decoding"]["workers"] == 1
    assert row["storage"]["fits_page_cache"] and row["storage"]["sequential_mb_s"] > 0
    assert row["storage"]["random_mb_s"] > 0
    assert row["resume"] == {"stopped_at": [0, 3], "resumed_to_global_step": 4, "passed": True}
    train_rows = [json.loads(line) for line in (tmp_path / "results" / "train.jsonl").read_text().splitlines()]
    assert {(r["mode"], r["res"]) for r in train_rows} == {("synthetic", 96), ("real", 96), ("synthetic", 128),
                                                           ("real", 128)}


# ---- the pre-read ---------------------------------------------------------------------------------------------

def test_the_pre_read_reads_each_beton_once_in_order_with_its_progress(tmp_path, capsys, monkeypatch):
    betons = [tmp_path / "a.beton", tmp_path / "b.beton"]
    for i, path in enumerate(betons):
        path.write_bytes(bytes([i]) * (40 * 2**20 + 5))
    offsets = []
    real_open = open

    def watched(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        read = handle.read

        def read_in_order(n=-1):
            offsets.append((str(path), handle.tell()))
            return read(n)
        handle.read = read_in_order
        return handle

    monkeypatch.setattr("builtins.open", watched)
    monkeypatch.setattr(storage, "meminfo", lambda: {"MemTotal": 64 * GIB})
    assert storage.preread(betons) is not None
    for path in betons:
        positions = [offset for name, offset in offsets if name == str(path)]
        assert positions == sorted(positions) and positions[:2] == [0, storage.CHUNK]  # in order, once
        assert len(positions) == 4  # 16 + 16 + 8 MiB, then the empty read at the end of the file
    err = capsys.readouterr().err
    assert "pre-read betons into the page cache" in err and "MiB/s" in err and "pre-read 0.08 GB" in err
    # 2 × (40 MiB + 5 bytes): the bar ends at 81 MiB, 100%, not each beton's part-MiB counted again
    assert "81/81" in err and "(100%)" in err and "(101%)" not in err


def test_the_pre_read_is_skipped_with_one_line_when_the_betons_do_not_fit(tmp_path, capsys, monkeypatch):
    beton = tmp_path / "big.beton"
    beton.write_bytes(b"x" * 2**20)
    monkeypatch.setattr(storage, "meminfo", lambda: {"MemTotal": 8 * GIB})  # all of it kept back
    assert storage.preread([beton]) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pre-read skipped: the betons (0.0 GB) do not fit this machine's page "
                                               "cache (~0.0 GB)")


def test_a_run_pre_reads_its_betons_before_epoch_0_unless_told_not_to(tiny_config, capsys):
    tiny_config.train.epochs, tiny_config.train.max_steps = 1, 1  # the pre-read is before the first step
    train(tiny_config, Runtime(torch.device("cpu")))
    err = capsys.readouterr().err
    assert err.index("pre-read") < err.index("epoch 1/1")
    tiny_config.name, tiny_config.data.preread = "no-preread", False
    train(tiny_config, Runtime(torch.device("cpu")))
    assert "pre-read" not in capsys.readouterr().err


def test_read_rates_measure_both_ways(tmp_path):
    path = tmp_path / "file.beton"
    path.write_bytes(os.urandom(8 * 2**20))
    rates = storage.read_rates(path, seconds=1.0)
    assert rates["sequential_mb_s"] > 0 and rates["random_mb_s"] > 0 and rates["random_reads"] >= 1
    assert rates["sequential_read_mb"] == pytest.approx(8 * 2**20 / 1e6, abs=0.1)


# ---- cold data in plan ----------------------------------------------------------------------------------------

def _plan(*args) -> dict:
    run = CliRunner().invoke(cli, ["plan", *args, "--json"])
    assert run.exit_code == 0, run.output
    return json.loads(run.output)


def test_plan_prices_the_first_read_and_every_uncached_epoch_at_the_disk(tmp_path):
    cached = _plan("--recipe", "g4dn-t4", "--instance", "g4dn.4xlarge")  # ~35 GB of betons, 64 GiB of RAM
    fit = cached["host_fit"]
    assert fit["fits_ram"] and fit["first_read_s"] == pytest.approx(fit["beton_gb"] * 1e9 / (125 * 2**20))
    assert cached["first_read_hours"] == pytest.approx(fit["first_read_s"] / 3600)
    epochs_hours = sum(e["hours"] for e in cached["epochs"])
    assert cached["total_hours"] == pytest.approx(cached["first_read_hours"] + epochs_hours)
    uncached = _plan("--recipe", "full-24", "--instance", "g5.xlarge", "--ebs-mib-s", "125")  # 16 GiB RAM
    fit = uncached["host_fit"]
    assert not fit["fits_ram"] and fit["first_read_s"] is None
    assert fit["disk_img_per_s"] == pytest.approx(125 * 2**20 / fit["bytes_per_image"])
    assert all(e["img_per_s"] <= fit["disk_img_per_s"] + 1e-6 for e in uncached["epochs"])


def test_a_preflight_row_of_the_instance_replaces_gp3s_rates(tmp_path):
    row = {"kind": "preflight", "date": "2026-12-06T00:00:00+00:00", "instance": "g5.4xlarge", "device": "NVIDIA A10G",
           "storage": {"sequential_mb_s": 1000.0, "random_mb_s": 400.0}}
    results = tmp_path / "results"
    results.mkdir()
    for name in ("convert.jsonl", "data.jsonl"):
        (results / name).write_text((REPO / "bench" / "results" / name).read_text())
    (results / "preflight.jsonl").write_text(json.dumps(row) + "\n")
    plan = _plan("--recipe", "g4dn-t4", "--instance", "g5.4xlarge", "--results-dir", str(results))
    fit = plan["host_fit"]
    assert fit["storage"]["name"] == "the disk preflight measured on g5.4xlarge"
    assert fit["first_read_s"] == pytest.approx(fit["beton_gb"] * 1e9 / 1e9)


def test_plan_targets_show_the_first_read_or_uncached_on_every_row():
    result = _plan("--target", "75")
    for row in result["rows"]:
        assert (row["first_read_min"] is not None) != (row["disk_img_per_s"] is not None) or \
            row["fits_page_cache"] is None, row
        if row["fits_page_cache"] is False:
            assert not row["mark"] or row["runs_as_configured"]
