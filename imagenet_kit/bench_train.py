"""Training-step throughput (issue 8): the kit's step on synthetic and on real data, against plain PyTorch.

Three modes per resolution, each with a fresh model, ``warmup`` untimed steps, then ``steps`` timed ones:

- ``synthetic``: the kit's ``train_step`` (normalize, autocast forward, label-smoothed loss, GradScaler,
  SGD over the kit's parameter groups, one-cycle scheduler) on uint8 batches already on the device;
- ``real``: the same step fed by the kit's FFCV train loader from a beton, so decoding and copying count;
- ``bare``: ``torchvision.models.<arch>()`` + ``torch.optim.SGD`` + ``torch.autocast`` on float tensors
  already on the device, no kit code: what the step costs without the kit around it. Only for a model
  torchvision has as it is: the kit's own archs (resnet50d, ...) and add-ons (``--set model.se_reduction=16``)
  have no plain-PyTorch twin, so their lines are the two kit modes, and the add-ons' cost shows against a
  line of the plain arch.

``data_overhead_pct`` = 1 - real/synthetic and ``kit_overhead_pct`` = 1 - synthetic/bare, in percent.
The bare loop shares the memory format and ``torch.compile`` setting, so the overhead is the kit's code
and not a layout choice. Every mode uses 1000 classes, ImageNet's head; the real beton's labels fit in it.
"""
from __future__ import annotations

import gc
import resource
import time
from functools import partial
from pathlib import Path

import click
import torch
import torchvision
from rich.table import Table

from imagenet_kit.bench_results import RESULTS_DIR, append_results, utc_now
from imagenet_kit.config import (ARCHITECTURE_KEYS, RECIPES_DIR, ConfigError, ModelConfig, OptimConfig,
                                 architecture_label, load_config)
from imagenet_kit.data.convert import convert, scan_imagefolder
from imagenet_kit.data.loaders import beton_num_samples, create_train_loader, default_workers
from imagenet_kit.model import ARCHS, create_model, create_optimizer, optimizer_settings, param_groups
from imagenet_kit.progress import console
from imagenet_kit.runtime import device_name, environment, precision_name, resolve_precision
from imagenet_kit.schedule import create_scheduler
from imagenet_kit.train import scaled_lr, train_step

NUM_CLASSES = 1000
SAMPLE_TRAIN = RECIPES_DIR.parent / "sample_data" / "imagenette-sample" / "train"
DEFAULT_BETON = "betons/bench-sample-train-256.beton"
# A GPU run measures the full recipe's resolutions at its batch; a CPU run only has to finish in about a minute.
DEFAULTS = {"cuda": {"res": "160,192,224", "batch": 256, "steps": 50, "warmup": 10},
            "cpu": {"res": "128", "batch": 16, "steps": 5, "warmup": 2}}
MODES = ("synthetic", "real", "bare")
# The model keys `--set` may change: the ones that make a different network (the arch has its own flag).
MODEL_OPTIONS = tuple(key for key in ARCHITECTURE_KEYS if key != "arch")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones (kernel selection, compilation,
    the loader's first batches); the device queue is drained before the clock starts and stops."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def has_bare_reference(arch: str, model_options: dict) -> bool:
    """Whether ``torchvision.models.<arch>()`` is the kit's model: a torchvision arch with no add-ons."""
    defaults = ModelConfig()
    return hasattr(torchvision.models, arch) and all(value == getattr(defaults, key)
                                                      for key, value in model_options.items())


def _kit_step(arch: str, model_options: dict, batch: int, total_steps: int, device: torch.device, precision: str,
              channels_last: bool, compile_: bool):
    """What ``train`` builds around its step, with the kit's default model and optimiser settings."""
    amp_dtype, use_scaler = resolve_precision(precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(arch, NUM_CLASSES, **model_options).to(device=device, memory_format=memory_format)
    optim = OptimConfig()
    max_lr = scaled_lr(optim.lr, optim.lr_batch, batch)
    optimizer = create_optimizer(param_groups(model, optim.weight_decay), lr=max_lr, **optimizer_settings(optim))
    # One "epoch" a few steps longer than the steps run: OneCycleLR refuses to step past its total and needs a
    # warm-up of more than one step, which `--warmup 1 --steps 3` alone would not give it.
    scheduler = create_scheduler(optimizer, optim.schedule, max_lr, 1, total_steps + 8)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    step_model = torch.compile(model) if compile_ else model
    step_model.train()
    return lambda images, labels: train_step(step_model, images, labels, criterion, optimizer, scaler, scheduler,
                                             amp_dtype, channels_last)


def _endless(loader):
    """Batches across epoch ends: a small beton holds fewer batches than the steps to time."""
    while True:
        yield from loader


def measure_synthetic(arch, model_options, res, batch, device, precision, channels_last, compile_, steps,
                      warmup) -> float:
    step = _kit_step(arch, model_options, batch, warmup + steps, device, precision, channels_last, compile_)
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return _timed(lambda: step(images, labels), steps, warmup, device)


def measure_real(arch, model_options, res, batch, device, precision, channels_last, compile_, steps, warmup,
                 beton, workers) -> float:
    step = _kit_step(arch, model_options, batch, warmup + steps, device, precision, channels_last, compile_)
    batches = _endless(create_train_loader(str(beton), batch, res, device, workers))
    try:
        return _timed(lambda: step(*next(batches)), steps, warmup, device)
    finally:
        batches.close()  # stops FFCV's loader thread mid-epoch


def measure_bare(arch, model_options, res, batch, device, precision, channels_last, compile_, steps,
                 warmup) -> float:
    """Plain PyTorch, as a tutorial writes it; only the autocast dtype is the kit's choice, so both match."""
    amp_dtype, _ = resolve_precision(precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES).to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step_model = torch.compile(model) if compile_ else model
    step_model.train()
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def step():
        # No GradScaler even in fp16: loss scaling is one of the things the kit's step adds.
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(step_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed(step, steps, warmup, device)


def _peak_memory_mb(device: torch.device) -> float:
    """CUDA: this mode's peak of allocated tensors. CPU: the process's peak resident set so far, which
    includes every earlier mode (Linux reports ru_maxrss in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _free(device: torch.device) -> None:
    """Drop the finished mode's model and optimiser state before the next one allocates its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def sample_beton(path=DEFAULT_BETON) -> Path:
    """The default real data: the embedded sample's train split at max side 256, converted once."""
    path = Path(path)
    if not path.is_file():
        console.print(f"building {path} from {SAMPLE_TRAIN}")
        convert(scan_imagefolder(SAMPLE_TRAIN), path, max_res=256)
    return path


def _measure_all(arch, model_options, resolutions, batch, precision, compile_, channels_last, beton, beton_images,
                 steps, warmup, workers, device) -> list[dict]:
    resolved = precision_name(resolve_precision(precision, device)[0])
    env = environment()
    common = {"kind": "train", "host": env["host"], "device": device_name(device), "device_type": device.type,
              "gpus": 1, "arch": arch, **model_options, "batch": batch, "precision": resolved,
              "channels_last": channels_last, "compile": compile_, "steps": steps, "warmup": warmup, "num_classes": NUM_CLASSES,
              "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
              "versions": env, "command": env["command"]}
    args = dict(batch=batch, device=device, precision=precision, channels_last=channels_last, compile_=compile_,
                steps=steps, warmup=warmup)
    measures = {"synthetic": measure_synthetic, "real": partial(measure_real, beton=beton, workers=workers),
                "bare": measure_bare}
    modes = MODES if has_bare_reference(arch, model_options) else MODES[:2]
    rows = []
    for res in resolutions:
        measured = {}
        for mode in modes:
            _free(device)
            torch.manual_seed(0)
            seconds = measures[mode](arch, model_options, res, **args)
            measured[mode] = (round(steps * batch / seconds, 1), round(_peak_memory_mb(device), 1))
        rate = {mode: img_per_s for mode, (img_per_s, _) in measured.items()}
        overheads = {"data_overhead_pct": round(100 * (1 - rate["real"] / rate["synthetic"]), 1),
                     "kit_overhead_pct": round(100 * (1 - rate["synthetic"] / rate["bare"]), 1) if "bare" in rate
                     else None}
        for mode, (img_per_s, peak) in measured.items():
            rows.append({**common, "date": utc_now(), "res": res, "mode": mode, "img_per_s": img_per_s,
                         "peak_mem_mb": peak, **overheads,
                         **({"beton": str(beton), "beton_images": beton_images,
                             "workers": workers} if mode == "real" else {})})
    return rows


def bench_train(arch: str = "resnet50", resolutions=(128,), batch: int = 16, precision: str = "auto",
                compile_: bool = False, channels_last: bool = True, beton=None, steps: int = 5, warmup: int = 2,
                workers: int = 0, results_dir=RESULTS_DIR, device: torch.device | None = None,
                model_options: dict | None = None) -> list[dict]:
    """Measure every (resolution, mode), append one JSON line each to RESULTS_DIR/train.jsonl, return them.
    ``model_options``: ``create_model`` keywords among MODEL_OPTIONS; every line records all of them."""
    defaults = ModelConfig()
    model_options = {key: getattr(defaults, key) for key in MODEL_OPTIONS} | (model_options or {})
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    beton = sample_beton() if beton is None else beton
    beton_images = beton_num_samples(str(beton))
    if beton_images < batch:  # the loader drops the partial batch: the real-data mode would wait forever
        raise click.ClickException(f"{beton}: {beton_images} images, fewer than one batch of {batch}; lower --batch")
    if beton_images < (warmup + steps) * batch:
        console.print(f"[yellow]note:[/] {beton} holds {beton_images} images, fewer than the {(warmup + steps) * batch}"
                      f" the real-data mode reads: its figure includes an FFCV epoch restart every "
                      f"{beton_images // batch} step(s)")
    workers = default_workers(workers)
    threads = torch.get_num_threads()
    # Training computes with as many torch threads as loader workers (FFCV sets them on every epoch, and
    # importing FFCV sets 1): every mode gets that many, so on CPU the modes differ only in what they time.
    torch.set_num_threads(workers)
    try:
        rows = _measure_all(arch, model_options, resolutions, batch, precision, compile_, channels_last, beton,
                            beton_images, steps, warmup, workers, device)
    finally:
        torch.set_num_threads(threads)
    append_results(Path(results_dir) / "train.jsonl", rows)
    return rows


NO_BARE = "no plain-PyTorch twin"


def model_options_from_overrides(overrides) -> dict:
    """``--set model.KEY=VALUE`` pairs as ``create_model`` keywords, typed and checked as ``run --set`` does;
    any key but MODEL_OPTIONS is a usage error naming it."""
    allowed = [f"model.{key}" for key in MODEL_OPTIONS]
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key not in allowed:
            raise click.BadParameter(f"{key!r} cannot be benchmarked; choose from {', '.join(allowed)}"
                                     f"{' (the arch has --arch)' if key == 'model.arch' else ''}",
                                     param_hint="--set")
    try:
        model = load_config(None, overrides).model
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--set") from None
    return {key: getattr(model, key) for key in MODEL_OPTIONS}


def print_table(rows: list[dict]) -> None:
    first = rows[0]
    table = Table(title=f"training step, {architecture_label(first)}, batch {first['batch']}, {first['precision']}"
                        f"{', channels_last' if first['channels_last'] else ''}"
                        f"{', compiled' if first['compile'] else ''}, {first['device']}")
    for col in ("res", "mode", "img/s", "peak MB", "overhead"):
        table.add_column(col, justify="right")
    for r in rows:
        kit = NO_BARE if r["kit_overhead_pct"] is None else f"kit {r['kit_overhead_pct']:+.1f}% vs bare"
        overhead = {"synthetic": kit,
                    "real": f"data path {r['data_overhead_pct']:+.1f}% vs synthetic", "bare": ""}[r["mode"]]
        table.add_row(str(r["res"]), r["mode"], f"{r['img_per_s']:,.1f}", f"{r['peak_mem_mb']:,.0f}", overhead)
    console.print(table)
    if first["peak_mem_kind"] == "process_max_rss":
        console.print("peak MB on CPU: the process's peak resident memory so far, earlier modes included")


@click.command("train")
@click.option("--arch", type=click.Choice(ARCHS), default="resnet50")
@click.option("--res", default=None, help="comma list of resolutions  [default: 160,192,224 on a GPU, 128 on CPU]")
@click.option("-b", "--batch", type=click.IntRange(min=1), default=None,
              help="images per step  [default: 256 on a GPU, 16 on CPU]")
@click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default="auto")
@click.option("--compile/--no-compile", "compile_", default=False, help="torch.compile the model (every mode)")
@click.option("--channels-last/--no-channels-last", default=True, help="memory format (every mode)")
@click.option("--beton", type=click.Path(exists=True, dir_okay=False), default=None,
              help=f"train beton for the real-data mode  [default: {DEFAULT_BETON}, built from the embedded "
                   "sample if missing]")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="timed steps  [default: 50 on a GPU, 5 on CPU]")
@click.option("--warmup", type=click.IntRange(min=0), default=None,
              help="untimed steps first  [default: 10 on a GPU, 2 on CPU]")
@click.option("-j", "--workers", type=click.IntRange(min=0), default=0, help="loader threads (0 = all cores)")
@click.option("--set", "overrides", multiple=True, metavar="model.KEY=VALUE",
              help=f"a model add-on, e.g. --set model.se_reduction=16 (repeatable; keys: {', '.join(MODEL_OPTIONS)})")
@click.option("--results-dir", default=str(RESULTS_DIR))
def bench_train_command(arch, res, batch, precision, compile_, channels_last, beton, steps, warmup, workers,
                        overrides, results_dir):
    """Training img/s: the kit's step on synthetic and real data vs a bare PyTorch loop; peak memory."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolve_precision(precision, device)
    except ValueError as err:  # fp16 on CPU
        raise click.BadParameter(str(err), param_hint="--precision") from None
    model_options = model_options_from_overrides(overrides)
    defaults = DEFAULTS[device.type]
    resolutions = [int(r) for r in (res or defaults["res"]).split(",") if r.strip()]
    rows = bench_train(arch, resolutions, batch or defaults["batch"], precision, compile_, channels_last, beton,
                       steps or defaults["steps"], defaults["warmup"] if warmup is None else warmup, workers,
                       results_dir, device, model_options)
    print_table(rows)
    console.print(f"appended {len(rows)} lines to {Path(results_dir) / 'train.jsonl'}")
