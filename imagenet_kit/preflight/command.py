"""``imagenet-kit preflight`` (``make preflight``): a few minutes on the host just rented, with the long run's recipe,
GPU profile and flags, say whether the run will work and how long it will take, before its hours are spent.

The failures that cost most come late: an out-of-memory error at the first 192 px epoch hours into a run, betons
that do not fit the page cache, a CPU that decodes slower than the GPU trains, a resume that breaks. Each is
measured here (``measure``), the verdict is one line (go, or exit 2 naming what to change), and a ``preflight`` row
joins bench/results/ with the train rows `plan` reads for this GPU, so the next plan for this instance uses them.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import torch
from rich.table import Table

from imagenet_kit.config import RunConfig
from imagenet_kit.config.flags import build_config, recipe_options
from imagenet_kit.data.loaders import beton_num_samples
from imagenet_kit.data.prepare import prepare
from imagenet_kit.data.storage import meminfo
from imagenet_kit.environment import device_name, environment
from imagenet_kit.errors import KitError
from imagenet_kit.plan.catalog import INSTANCES, instance_price_per_gpu
from imagenet_kit.plan.estimate import estimate_plan, local_gpu_model
from imagenet_kit.preflight import measure
from imagenet_kit.progress import console, results
from imagenet_kit.result_rows import RESULTS_DIR, append_results, utc_now
from imagenet_kit.runtime import enable_autotuner

DATA_BOUND = 0.9  # real data below this share of synthetic: the loader, not the GPU, sets the pace


class PreflightFailed(KitError):
    """The verdict when the long run would fail: what will fail and what to change, in one line."""


def _limit_mb(device: torch.device, limit_mb: float | None) -> float:
    """The memory the run may use: the GPU's (capped by ``limit_mb`` where given, for real: torch refuses more) or,
    on a CPU, the machine's RAM (or ``limit_mb``)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        if limit_mb:
            torch.cuda.set_per_process_memory_fraction(min(1.0, limit_mb / total), device)
        return min(total, limit_mb or total)
    return limit_mb or meminfo().get("MemTotal", 0) / 2**20


def _timed(what: str, step, timings: dict):
    console.print(f"preflight: {what}")
    start = time.monotonic()
    value = step()
    timings[what] = round(time.monotonic() - start, 1)
    return value


def measure_all(cfg: RunConfig, device: torch.device, limit_mb: float | None, results_dir: Path,
                processes: int) -> dict:
    timings: dict = {}
    gpu = device.type == "cuda"
    found = {
        "memory": _timed("memory at the batch, largest training resolution and evaluation",
                         lambda: measure.memory(cfg, device, _limit_mb(device, limit_mb)), timings),
        "speed": _timed("training img/s, real betons vs synthetic batches",
                        lambda: measure.speed(cfg, device, results_dir, gpu), timings),
        "decoding": _timed("FFCV decoding per worker", lambda: measure.decoding(cfg), timings),
        "storage": _timed("page cache and disk read rates", lambda: measure.storage(cfg, processes), timings),
        "resume": _timed("a checkpoint written, read back and resumed", lambda: measure.resume(cfg), timings),
    }
    return {**found, "seconds": timings}


def failures(found: dict, cfg: RunConfig) -> list[str]:
    """What will fail, each with what to change."""
    out, m, s = [], found["memory"], found["storage"]
    where = "GPU memory" if m["kind"] == "cuda_max_reserved" else "memory"
    if not m["train_fits"]:
        need = "more than" if m["train_mb"] is None else f"{m['train_mb']:,.0f} MB,"
        fix = f"-b {m['batch_that_fits']} fits" if m["batch_that_fits"] else "not even half the batch fits"
        out.append(f"batch {m['batch']} at {m['train_res']} px needs {need} over the {m['limit_mb']:,.0f} MB of "
                   f"{where}: {fix} (the LR follows by the linear rule), or a GPU profile with more memory")
    if not m["eval_fits"]:
        out.append(f"evaluation at {m['eval_res']} px, batch {m['eval_batch']}, flip TTA does not fit the "
                   f"{m['limit_mb']:,.0f} MB: lower it, e.g. --set train.val_batch_size={max(1, m['eval_batch'] // 2)}")
    if cfg.data.in_memory and not s["fits_page_cache"]:
        out.append(f"the betons ({s['betons_gb']:,.1f} GB) do not fit the page cache (~{s['page_cache_gb']:,.1f} GB): "
                   "every epoch would read them from disk at random; an instance with more RAM (imagenet-kit plan "
                   "--recipe RECIPE --instance NAME), smaller betons (another --gpu profile's), or "
                   "data.in_memory=false with one training process")
    if not found["resume"]["passed"]:
        out.append(f"the resume check failed (stopped at {found['resume']['stopped_at']}, resumed to global step "
                   f"{found['resume']['resumed_to_global_step']} instead of 4): report it with its row")
    return out


def print_found(found: dict, device: torch.device) -> None:
    gpu_only = "" if device.type == "cuda" else " (CPU: process memory, not a GPU's)"
    m, sp, d, s = found["memory"], found["speed"], found["decoding"], found["storage"]
    table = Table(title=f"preflight on {device_name(device)}")
    for column in ("what", "measured"):
        table.add_column(column)
    table.add_row(f"training, batch {m['batch']} at {m['train_res']} px{gpu_only}",
                  "out of memory" if m["train_mb"] is None else f"{m['train_mb']:,.0f} MB of {m['limit_mb']:,.0f}")
    table.add_row(f"evaluation, batch {m['eval_batch']} at {m['eval_res']} px + flip",
                  "out of memory" if m["eval_mb"] is None else f"{m['eval_mb']:,.0f} MB")
    for res, rates in sp["img_per_s"].items():
        table.add_row(f"training at {res} px", f"{rates['real']:,.1f} img/s on the betons, {rates['synthetic']:,.1f} "
                                               "synthetic")
    table.add_row(f"decoding, {d['workers']} workers", f"{d['img_per_s_per_worker']:,.1f} img/s per worker")
    table.add_row("betons / page cache", f"{s['betons_gb']:,.2f} GB / ~{s['page_cache_gb']:,.1f} GB: "
                                         f"{'fit' if s['fits_page_cache'] else 'do NOT fit'}")
    table.add_row("disk under the betons", f"{s['sequential_mb_s']:,.0f} MB/s in order, {s['random_mb_s']:,.0f} MB/s "
                                           f"in {s['random_read_kib']} KiB random reads")
    r = found["resume"]
    table.add_row("checkpoint and resume",
                  f"{'resumed' if r['passed'] else 'FAILED'} at (epoch, step) {r['stopped_at']}")
    results.print(table)


def plan_estimate(cfg: RunConfig, device: torch.device, processes: int, instance: str | None,
                  results_dir: Path, decode_img_per_s: float) -> dict | None:
    """`plan`'s hours and dollars for the whole run on this GPU, with the rows just measured; None without a GPU."""
    gpu = local_gpu_model() if device.type == "cuda" else None
    if gpu is None:
        return None
    price = instance_price_per_gpu(INSTANCES[instance], processes) if instance else None
    plan = estimate_plan(cfg, gpu, processes, price, beton_num_samples(str(cfg.betons[0])),
                         beton_num_samples(str(cfg.betons[1])), results_dir=results_dir,
                         decode_img_per_s=decode_img_per_s)
    return {"hours": round(plan["total_hours"], 2), "usd": round(plan["total_cost_usd"], 2),
            "throughput": plan["throughput"]["kind"], "bottleneck": plan["bottleneck"]}


@click.command("preflight")
@recipe_options
@click.option("--instance", type=click.Choice(list(INSTANCES)), default=None,
              help="the instance this is (its price for the estimate; `plan --instance` uses this row next time)")
@click.option("--nproc", type=click.IntRange(min=1), default=1, help="training processes the long run will have")
@click.option("--memory-limit-mb", type=click.FloatRange(min=1), default=None,
              help="memory the run may use (default: the GPU's, or the machine's RAM on a CPU)")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True)
def preflight_command(instance, nproc, memory_limit_mb, results_dir, **flags):
    """A few minutes on this host with the long run's settings: memory, data speed, page cache, disk, resume and
    the estimate; go, or exit 2 with what to change."""
    cfg = build_config(**flags)
    prepare(cfg)  # the betons the long run reads (converted once, as `run` and `make full` do)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enable_autotuner()
    found = measure_all(cfg, device, memory_limit_mb, results_dir, nproc)
    print_found(found, device)
    per_worker = found["decoding"]["img_per_s_per_worker"] * found["decoding"]["workers"] * nproc
    estimate = plan_estimate(cfg, device, nproc, instance, results_dir, per_worker)
    problems = failures(found, cfg)
    env = environment(device)
    append_results(Path(results_dir) / "preflight.jsonl", [{
        "kind": "preflight", "date": utc_now(), "device": device_name(device), "device_type": device.type,
        "instance": instance, "recipe": cfg.name, "profile": cfg.train.profile, "arch": cfg.model.arch,
        "precision": cfg.train.precision, "processes": nproc, **found, "estimate": estimate,
        "go": not problems, "failures": problems, "versions": env, "command": env["command"]}])
    _say_estimate(estimate, found)
    if problems:
        raise PreflightFailed("preflight: NO GO: " + "; ".join(problems))
    results.out(f"preflight: GO: {cfg.name} fits this {'GPU' if device.type == 'cuda' else 'CPU'}, its data and disk, "
                f"and resumes{_estimate_words(estimate)}")


def _say_estimate(estimate: dict | None, found: dict) -> None:
    ratio = found["speed"]["real_over_synthetic"]
    if ratio < DATA_BOUND:
        console.print(f"[yellow]data-bound:[/] on the betons training runs at {ratio:.0%} of its synthetic speed: "
                      "the loader sets the pace (more CPU cores per GPU, smaller betons, or fewer processes per host)")
    if estimate is None:
        console.print("estimate: GPU-only (plan prices GPU hours); this CPU's figures above are at test size")


def _estimate_words(estimate: dict | None) -> str:
    if estimate is None:
        return ""
    return (f"; the whole run: ~{estimate['hours']:,.1f} h, ~${estimate['usd']:,.0f} "
            f"({estimate['throughput']} throughput)")
