"""`imagenet-kit plan --instance/--host`: beton size from a measured convert row, page cache and disk verdicts, and
whether CPU decoding or the GPU bounds each epoch, from a measured `bench data` row."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from imagenet_kit.cli import cli
from imagenet_kit.config import load_config
from imagenet_kit.plan.catalog import INSTANCES
from imagenet_kit.plan.estimate import VAL_IMAGES, estimate_plan
from imagenet_kit.plan.host_fit import check_fit
from tests.conftest import REPO

IMAGES = 1_281_167 + VAL_IMAGES


def _convert(max_res, compress_prob, bytes_per_image, writer="kit", date="2026-12-01T00:00:00+00:00"):
    return {"kind": "convert", "writer": writer, "max_res": max_res, "compress_prob": compress_prob,
            "jpeg_quality": 90, "bytes_per_image": bytes_per_image, "n_images": 400, "src": "/x/imagenet-samples",
            "date": date}


def _data(max_res, compress_prob, per_core):
    return {"kind": "data", "loader": "ffcv", "max_res": max_res, "compress_prob": compress_prob, "res": 176,
            "img_per_s_per_core": per_core, "n_images": 400, "src": "/x/imagenet-samples", "cpu": "Test CPU",
            "date": "2026-12-01T00:00:00+00:00"}


@pytest.fixture
def rows(tmp_path):
    """Sizes like the issue's measurements of real ImageNet originals; decode rates chosen for the verdicts."""
    results = tmp_path / "results"
    results.mkdir()
    lines = [_convert(500, 0.5, 315_000), _convert(500, 0.5, 999_999, writer="ffcv"), _convert(256, 1.0, 42_000),
             _convert(320, 1.0, 40_000, date="2026-11-01T00:00:00+00:00"), _convert(320, 1.0, 55_000),
             _data(320, 1.0, 400.0), _data(500, 0.5, 300.0)]
    (results / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return results


def _plan(*args):
    return CliRunner().invoke(cli, ["plan", *args])


def test_full_recipe_on_a_g4dn_xlarge_does_not_fit_and_says_what_to_change(rows):
    fit = check_fit(load_config("full"), INSTANCES["g4dn.xlarge"], 1, 1_281_167, VAL_IMAGES, rows)
    assert fit["beton_gb"] == pytest.approx(315_000 * IMAGES / 1e9)  # the kit's row, not FFCV's
    assert (fit["fits_disk"], fit["fits_ram"], fit["in_memory"]) == (False, False, False)
    assert fit["page_cache_gib"] == 16 - 4 - 4
    result = _plan("--recipe", "full", "--instance", "g4dn.xlarge", "--results-dir", str(rows))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "betons: 419.3 GB for 1,331,167 images at 315.0 kB each" in out
    assert "page cache: does NOT fit" in out and "data.in_memory=false" in out and "QUASI_RANDOM" in out
    assert "disk: does NOT fit (125 GB local NVMe (instance store))" in out
    assert "DOES NOT FIT as configured: the betons (419 GB) do not fit the 125 GB" in out
    # 256 and 320 px JPEG-only (56 and 73 GB) fit its disk, not its 8 GiB of page cache; no g4dn holds 419 GB
    assert ("what to change: measured settings that fit on disk only (in_memory: false): data.max_res=256 "
            "data.compress_prob=1 data.jpeg_quality=90 (56 GB; in RAM on a g4dn.4xlarge), data.max_res=320 "
            "data.compress_prob=1 data.jpeg_quality=90 (73 GB; in RAM on a g4dn.8xlarge)") in out
    assert "no t4 instance in the table holds these settings' betons in RAM" in out


def test_t4_recipe_on_a_g4dn_8xlarge_fits_and_is_gpu_bound(rows):
    cfg = load_config("g4dn-t4")
    fit = check_fit(cfg, INSTANCES["g4dn.8xlarge"], 1, 1_281_167, VAL_IMAGES, rows)
    assert fit["bytes_per_image"] == 55_000  # the newest row at 320:1:90
    assert (fit["fits_disk"], fit["fits_ram"], fit["in_memory"], fit["problems"]) == (True, True, True, [])
    assert fit["decode_cores"] == 31 and fit["decode_img_per_s"] == 400.0 * 31  # one core runs the training loop
    result = _plan("--recipe", "g4dn-t4", "--instance", "g4dn.8xlarge", "--json", "--results-dir", str(rows))
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["bottleneck"] == "GPU (every epoch)"
    bare = estimate_plan(cfg, "t4", 1, results_dir=rows)  # GPU-bound: the same hours as without a host, and the
    # betons' first read before epoch 0 from an EBS gp3 volume at its baseline 125 MiB/s
    assert plan["first_read_hours"] == pytest.approx(55_000 * IMAGES / (125 * 2**20) / 3600)
    assert plan["total_hours"] == pytest.approx(bare["total_hours"] + plan["first_read_hours"])
    assert plan["total_cost_usd"] == pytest.approx(plan["total_hours"] * 2.176)  # the whole instance's price
    assert plan["price_source"].startswith("g4dn.8xlarge $2.176/h for the whole instance")
    text = " ".join(_plan("--recipe", "g4dn-t4", "--instance", "g4dn.8xlarge", "--results-dir", str(rows))
                    .output.split())
    assert "page cache: fits" in text and "in_memory: true, random order" in text and "disk: fits" in text
    assert "bottleneck: GPU (every epoch)" in text and "DOES NOT FIT" not in text


def test_few_cores_make_cpu_decoding_the_bottleneck_and_set_the_hours(rows):
    cfg = load_config("g4dn-t4")
    plan = json.loads(_plan("--recipe", "g4dn-t4", "--instance", "g4dn.xlarge", "--json", "--val-images", "0",
                            "--results-dir", str(rows)).output)
    assert plan["host_fit"]["decode_img_per_s"] == 400.0 * 3
    # the derived T4 figure: 332 img/s at 224 px, 650 at 160 px, so 1,200 img/s of decoding never binds...
    assert plan["bottleneck"] == "GPU (every epoch)"
    slow = rows / "slow.jsonl"
    slow.write_text(json.dumps({**_data(320, 1.0, 200.0), "date": "2026-12-02T00:00:00+00:00"}) + "\n")
    plan = json.loads(_plan("--recipe", "g4dn-t4", "--instance", "g4dn.xlarge", "--json", "--val-images", "0",
                            "--results-dir", str(rows)).output)
    # ...but 3 cores at 200 img/s (600) bind at 160 px (650) and not at 192 px (452)
    assert plan["bottleneck"] == "CPU decoding in epochs 1-12, GPU in epochs 13-16"
    first = plan["epochs"][0]
    assert first["img_per_s"] == 600.0 and first["hours"] == pytest.approx(1_281_024 / 600 / 3600)
    assert plan["epochs"][-1]["img_per_s"] == pytest.approx(plan["epochs"][-1]["gpu_img_per_s"])
    assert cfg.train.epochs == len(plan["epochs"])


def test_without_measured_rows_the_verdicts_name_the_commands(tmp_path):
    result = _plan("--recipe", "g4dn-t4", "--instance", "g4dn.8xlarge", "--results-dir", str(tmp_path))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "beton size: no measured row at 320:1:90; measure it with `imagenet-kit bench convert --settings " \
           "320:1:90`" in out
    assert "`imagenet-kit bench data --max-res 320 --compress-prob 1`" in out
    assert "bottleneck: unknown (CPU decoding not measured)" in out


@pytest.mark.parametrize("args, message", [
    (["--instance", "g4dn.xlarge", "--host", "local"], "give --instance or --host, not both"),
    (["--instance", "g4dn.xlarge", "--gpu", "a100"], "g4dn.xlarge has t4 GPUs, not a100"),
    (["--instance", "g4dn.12xlarge", "--gpus", "8"], "g4dn.12xlarge has 4 GPU(s); --gpus 8 does not fit it"),
    ([], "give --gpu MODEL, --instance NAME or --host local"),
])
def test_contradictory_host_flags_are_errors(args, message, tmp_path):
    result = _plan("--recipe", "full", "--results-dir", str(tmp_path), *args)
    assert result.exit_code == 2 and message in result.output


def test_local_host_reads_this_machine(rows):
    result = _plan("--recipe", "g4dn-t4", "--host", "local", "--gpu", "t4", "--results-dir", str(rows))
    assert result.exit_code == 0, result.output
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert f"host: this machine: {os.cpu_count()} vCPUs, {ram_gib:,.0f} GiB RAM" in result.output


def test_plans_state_the_worker_count_they_assume(rows):
    """The full recipe's 12 workers per process, as the loaders will lower them on the host planned for."""
    from imagenet_kit.data.workers import host_cores

    result = _plan("--recipe", "full", "--instance", "g4dn.2xlarge", "--results-dir", str(rows))
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "workers: data.workers 12, lowered to 8 per training process (8 vCPUs, 1 training process)" in out
    result = _plan("--recipe", "full", "--instance", "p4d.24xlarge", "--results-dir", str(rows))
    assert "workers: data.workers 12 per training process (96 vCPUs, 8 training processes)" in " ".join(
        result.output.split())
    result = _plan("--recipe", "full", "--host", "local", "--gpu", "t4", "--results-dir", str(rows))
    assert result.exit_code == 0, result.output
    cores = host_cores()
    lowered = f", lowered to {cores}" if cores < 12 else ""
    assert f"workers: data.workers 12{lowered} per training process ({cores} vCPUs, 1 training process)" in " ".join(
        result.output.split())


def test_committed_rows_give_the_readme_verdicts():
    """docs/deploying.md's EC2 section: what the committed measurements say about the two recipes and instances."""
    results = str(REPO / "bench" / "results")
    full = " ".join(_plan("--recipe", "full", "--instance", "g4dn.xlarge", "--results-dir", results).output.split())
    assert "disk: does NOT fit" in full and "page cache: does NOT fit" in full and "what to change:" in full
    t4 = json.loads(_plan("--recipe", "g4dn-t4", "--instance", "g4dn.8xlarge", "--json", "--results-dir",
                          results).output)
    assert t4["host_fit"]["fits_ram"] and t4["host_fit"]["fits_disk"] and not t4["host_fit"]["problems"]
    assert t4["bottleneck"] in ("GPU (every epoch)", "CPU decoding (every epoch)")
    assert t4["total_hours"] > 0 and t4["total_cost_usd"] == pytest.approx(t4["total_hours"] * 2.176)


def test_several_gpus_are_never_advised_to_read_uncached_betons(rows):
    """data.in_memory false under torchrun is refused (each process would allocate the whole beton): a multi-GPU
    host whose RAM cannot cache the betons gets smaller betons, one process or a bigger instance instead."""
    fit = check_fit(load_config("full"), INSTANCES["g5.12xlarge"], 4, 1_281_167, VAL_IMAGES, rows)
    text = " ".join(fit["lines"])
    assert not fit["fits_ram"] and fit["problems"]
    assert "set data.in_memory=false" not in text and "fit on disk only" not in text
    assert "data.max_res=320 data.compress_prob=1" in text and "NPROC=1" in text and "g5.48xlarge" in text
