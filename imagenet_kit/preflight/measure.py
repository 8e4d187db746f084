"""What ``imagenet-kit preflight`` measures, each on the long run's own settings (recipe, GPU profile, flags): memory
at its batch, training speed on its betons against synthetic batches, decoding per worker, the disk under the betons
and a checkpoint resumed. Each returns a plain dict for the preflight row."""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from imagenet_kit.bench.gpu_checks import evaluation, peaks, train_steps
from imagenet_kit.bench.train import bench_train
from imagenet_kit.bench.train_steps import free_memory
from imagenet_kit.config import RunConfig
from imagenet_kit.data.storage import betons_fit, read_rates
from imagenet_kit.data.workers import usable_workers
from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.models.architecture import architecture


def network(cfg: RunConfig) -> tuple[str, dict]:
    """The run's arch and its add-ons, as ``create_model`` takes them."""
    options = architecture(cfg.model)
    return options.pop("arch"), options


def _peak_mb(step, device: torch.device) -> float | None:
    """The peak of ``step`` in MB (reserved on a GPU, the process's resident set on a CPU); None if out of memory."""
    free_memory(device)
    try:
        step()
    except torch.OutOfMemoryError:
        return None
    return peaks(device)["reserved_mb"]


def memory(cfg: RunConfig, device: torch.device, limit_mb: float) -> dict:
    """Peak memory of training at the largest training resolution at the configured batch and at half of it (the
    line through the two gives the batch that fits ``limit_mb``), and of evaluation at val_res with flip TTA.

    On a CPU the peak is the process's resident set, which only grows: the half batch is measured first."""
    arch, options = network(cfg)
    t, precision = cfg.train, cfg.train.precision
    half = max(1, t.batch_size // 2)
    train = {b: _peak_mb(lambda b=b: train_steps(arch, options, t.max_res, b, precision, device), device)
             for b in (half, t.batch_size)}
    eval_mb = _peak_mb(lambda: evaluation(arch, options, t.val_res, t.val_batch_size, precision, device), device)
    full, halved = train[t.batch_size], train[half]
    fits = full is not None and full <= limit_mb
    return {"limit_mb": round(limit_mb, 1), "train_res": t.max_res, "batch": t.batch_size, "train_mb": full,
            "half_batch": half, "half_batch_mb": halved, "train_fits": fits,
            "batch_that_fits": t.batch_size if fits else _batch_that_fits(half, halved, t.batch_size, full, limit_mb),
            "eval_res": t.val_res, "eval_batch": t.val_batch_size, "eval_mb": eval_mb,
            "eval_fits": eval_mb is not None and eval_mb <= limit_mb, "kind": peaks(device)["memory_kind"]}


def _batch_that_fits(half: int, half_mb: float | None, batch: int, batch_mb: float | None, limit_mb: float) -> int:
    """The largest batch under ``limit_mb`` on the line through the two measured peaks (a multiple of 8 when that
    is at least 8), or the half batch's share of the limit when only it was measured; 0 when not even it fits."""
    if half_mb is None or half_mb > limit_mb:
        return 0 if half_mb is None or half <= 1 else max(1, int(half * limit_mb / half_mb) // 2)
    if batch_mb is None or batch_mb <= half_mb:
        return half
    per_image = (batch_mb - half_mb) / (batch - half)
    fitting = min(batch - 1, half + int((limit_mb - half_mb) / per_image))
    return fitting // 8 * 8 if fitting >= 8 else fitting


def speed(cfg: RunConfig, device: torch.device, results_dir: Path, gpu: bool) -> dict:
    """Training img/s fed by FFCV from the train beton against synthetic batches on the device, at the first and
    the largest training resolution: rows of train.jsonl, which `plan` reads for this GPU next time."""
    arch, options = network(cfg)
    steps, warmup = (30, 10) if gpu else (3, 1)
    rows = bench_train(arch, sorted({cfg.train.min_res, cfg.train.max_res}), cfg.train.batch_size,
                       cfg.train.precision, beton=cfg.betons[0], steps=steps, warmup=warmup,
                       workers=cfg.data.workers, results_dir=results_dir, device=device, model_options=options,
                       modes=("synthetic", "real"))
    by_res = {}
    for row in rows:
        by_res.setdefault(row["res"], {})[row["mode"]] = row["img_per_s"]
    worst = min(by_res.values(), key=lambda r: r["real"] / r["synthetic"])
    return {"img_per_s": {str(res): rates for res, rates in by_res.items()},
            "real_over_synthetic": round(worst["real"] / worst["synthetic"], 3), "steps": steps, "warmup": warmup}


def decoding(cfg: RunConfig, seconds: float = 10.0) -> dict:
    """FFCV's train loader alone on the train beton, into host memory, with the run's workers: img/s per worker."""
    from imagenet_kit.data.loaders import create_train_loader, finish_epoch

    workers = usable_workers(cfg.data.workers, "preflight")
    loader = create_train_loader(str(cfg.betons[0]), cfg.train.batch_size, cfg.train.min_res, torch.device("cpu"),
                                 workers, in_memory=cfg.data.in_memory, crop=cfg.train.crop,
                                 min_scale=cfg.train.min_scale)
    batches, images = iter(loader), 0
    try:
        next(batches)  # the first batch compiles FFCV's pipeline: not timed
        start = time.perf_counter()
        for _, labels in batches:
            images += len(labels)
            if time.perf_counter() - start > seconds:
                break
        elapsed = time.perf_counter() - start
    finally:
        finish_epoch(batches)
    rate = images / elapsed if elapsed > 0 else 0.0
    return {"workers": workers, "img_per_s": round(rate, 1), "img_per_s_per_worker": round(rate / workers, 1),
            "res": cfg.train.min_res, "images": images}


def storage(cfg: RunConfig, processes: int) -> dict:
    """Whether the betons fit the page cache with ``processes`` training processes, and the disk's read rates."""
    fits, size, room = betons_fit(list(cfg.betons), processes)
    return {"betons_gb": round(size / 1e9, 2), "page_cache_gb": round(room / 1e9, 1), "fits_page_cache": fits,
            **read_rates(cfg.betons[0])}


def resume(cfg: RunConfig) -> dict:
    """Three steps, a checkpoint, then a resume that must start at step 3 and make step 4: the run's own model,
    optimizer, schedule, scaler and betons, in a folder of its own that is removed afterwards."""
    from imagenet_kit.engine.train import train
    from imagenet_kit.runtime import local_runtime

    with tempfile.TemporaryDirectory(prefix="preflight-") as tmp:
        lr = 0.01 if cfg.optim.lr == "auto" else cfg.optim.lr  # the LR range test is not what is checked
        check = replace(cfg, name="preflight", output_dir=tmp, optim=replace(cfg.optim, lr=lr),
                        data=replace(cfg.data, preread=False), train=replace(cfg.train, max_steps=3, mirror=""))
        train(check, local_runtime())
        stopped = load_checkpoint(check.run.last)
        check.train.max_steps = 4
        train(check, local_runtime(), resume="auto")
        resumed = load_checkpoint(check.run.last)
    passed = (stopped["step"], stopped["global_step"], resumed["global_step"]) == (3, 3, 4)
    return {"stopped_at": [stopped["epoch"], stopped["step"]], "resumed_to_global_step": resumed["global_step"],
            "passed": passed}
