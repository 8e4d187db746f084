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

from functools import partial
from pathlib import Path

import click
import torch
from rich.table import Table

from imagenet_kit.bench.train_steps import (
    NUM_CLASSES,
    free_memory,
    has_bare_reference,
    host_syncs_per_step,
    measure_bare,
    measure_real,
    measure_synthetic,
)
from imagenet_kit.config import ModelConfig, load_config
from imagenet_kit.config.recipes import PACKAGE_DIR
from imagenet_kit.config.schema import choices
from imagenet_kit.data.workers import torch_threads, usable_workers
from imagenet_kit.engine.logbook import peak_memory_mb
from imagenet_kit.environment import device_name, environment
from imagenet_kit.errors import ConfigError
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS, architecture_label
from imagenet_kit.progress import console
from imagenet_kit.result_rows import RESULTS_DIR, append_results, utc_now
from imagenet_kit.runtime import precision_name, resolve_precision

SAMPLE_TRAIN = PACKAGE_DIR / "sample_data" / "imagenette-sample" / "train"
DEFAULT_BETON = "betons/bench-sample-train-256.beton"
# A GPU run measures the full recipe's resolutions at its batch; a CPU run only has to finish in about a minute.
DEFAULTS = {"cuda": {"res": "160,192,224", "batch": 256, "steps": 50, "warmup": 10},
            "cpu": {"res": "128", "batch": 16, "steps": 5, "warmup": 2}}
MODES = ("synthetic", "real", "bare")
# The model keys `--set` may change: the ones that make a different network (the arch has its own flag).
MODEL_OPTIONS = tuple(key for key in ARCHITECTURE_KEYS if key != "arch")


def sample_beton(path=DEFAULT_BETON) -> Path:
    """The default real data: the embedded sample's train split at max side 256, converted once."""
    from imagenet_kit.data.convert import convert  # FFCV: only the real-data mode needs it
    from imagenet_kit.data.sources import scan_imagefolder

    path = Path(path)
    if not path.is_file():
        console.print(f"building {path} from {SAMPLE_TRAIN}")
        convert(scan_imagefolder(SAMPLE_TRAIN), path, max_res=256)
    return path


def _measure_all(arch, model_options, resolutions, batch, precision, compile_, channels_last, beton, beton_images,
                 steps, warmup, workers, device, modes) -> list[dict]:
    resolved = precision_name(resolve_precision(precision, device)[0])
    env = environment()
    common = {"kind": "train", "host": env["host"], "device": device_name(device), "device_type": device.type,
              "gpus": 1, "arch": arch, **model_options, "batch": batch, "precision": resolved,
              "channels_last": channels_last, "compile": compile_, "steps": steps, "warmup": warmup,
              "num_classes": NUM_CLASSES, "cudnn_benchmark": torch.backends.cudnn.benchmark,
              "peak_mem_kind": "cuda_max_allocated" if device.type == "cuda" else "process_max_rss",
              "versions": env, "command": env["command"]}
    args = dict(batch=batch, device=device, precision=precision, channels_last=channels_last, compile_=compile_,
                steps=steps, warmup=warmup)
    measures = {"synthetic": measure_synthetic, "real": partial(measure_real, beton=beton, workers=workers),
                "bare": measure_bare}
    modes = [mode for mode in modes if mode != "bare" or has_bare_reference(arch, model_options)]
    rows = []
    for res in resolutions:
        measured = {}
        for mode in modes:
            free_memory(device)
            torch.manual_seed(0)
            seconds = measures[mode](arch, model_options, res, **args)
            measured[mode] = (round(steps * batch / seconds, 1), round(peak_memory_mb(device), 1))
        rate = {mode: img_per_s for mode, (img_per_s, _) in measured.items()}
        overheads = {"data_overhead_pct": round(100 * (1 - rate["real"] / rate["synthetic"]), 1) if "real" in rate
                     else None,
                     "kit_overhead_pct": round(100 * (1 - rate["synthetic"] / rate["bare"]), 1) if "bare" in rate
                     else None}
        syncs = (host_syncs_per_step(arch, model_options, res, batch, device, precision, channels_last)
                 if "synthetic" in measured else None)
        for mode, (img_per_s, peak) in measured.items():
            rows.append({**common, "date": utc_now(), "res": res, "mode": mode, "img_per_s": img_per_s,
                         "peak_mem_mb": peak, **overheads,
                         **({"host_syncs_per_step": syncs} if mode == "synthetic" else {}),
                         **({"beton": str(beton), "beton_images": beton_images, "workers": workers,
                             "beton_passes": -(-(warmup + steps) * batch // beton_images)} if mode == "real" else {})})
    return rows


def bench_train(arch: str = "resnet50", resolutions=(128,), batch: int = 16, precision: str = "auto",
                compile_: bool = False, channels_last: bool = True, beton=None, steps: int = 5, warmup: int = 2,
                workers: int = 0, results_dir=RESULTS_DIR, device: torch.device | None = None,
                model_options: dict | None = None, modes=MODES, autotune: bool = True,
                passes: int = 1) -> list[dict]:
    """Measure every (resolution, mode), append one JSON line each to RESULTS_DIR/train.jsonl, return them.
    ``model_options``: ``create_model`` keywords among MODEL_OPTIONS; every line records all of them.
    Without "real" among ``modes`` no beton is read and FFCV is never imported. ``autotune``: cuDNN's autotuner,
    on as training has it (off: what it buys). ``passes``: how many epochs of the beton the real mode may read."""
    defaults = ModelConfig()
    model_options = {key: getattr(defaults, key) for key in MODEL_OPTIONS} | (model_options or {})
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = usable_workers(workers, "bench train")  # what the loaders would use
    beton_images = None
    if "real" in modes and beton is None and not _sample_is_enough(batch, steps, warmup):
        modes = tuple(mode for mode in modes if mode != "real")
    if "real" in modes:
        beton = sample_beton() if beton is None else beton
        beton_images = _check_beton(beton, batch, steps, warmup, passes)
    threads, tuned = torch.get_num_threads(), torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = autotune
    # Every mode computes with training's torch threads (ffcv_compat keeps FFCV from changing them), so on CPU
    # the modes differ only in what they time.
    torch.set_num_threads(torch_threads())
    try:
        rows = _measure_all(arch, model_options, resolutions, batch, precision, compile_, channels_last, beton,
                            beton_images, steps, warmup, workers, device, modes)
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = tuned
    append_results(Path(results_dir) / "train.jsonl", rows)
    return rows


def _sample_is_enough(batch: int, steps: int, warmup: int) -> bool:
    """Whether the embedded sample (the default real data) holds every batch the real-data mode reads; if not, the
    other modes run alone and a line says how to time the real one (a GPU's batch 256 reads 15,360 images)."""
    images = sum(1 for path in SAMPLE_TRAIN.rglob("*") if path.is_file())
    needed = (warmup + steps) * batch
    if images >= needed:
        return True
    console.print(f"bench train: real-data mode skipped: the embedded sample has {images} training images, fewer "
                  f"than the {needed:,} that (warm-up {warmup} + {steps} steps) x batch {batch} read. To time the step "
                  "fed by FFCV, give --beton a larger train beton, e.g. imagenet-kit convert imagenette2/train "
                  "betons/imagenette2-train-256.beton --max-res 256 (9,469 images)")
    return False


def _check_beton(beton, batch: int, steps: int, warmup: int, passes: int = 1) -> int:
    """The real-data mode times ``passes`` epochs at most: by default one, since on a beton that runs out first
    FFCV's epoch restarts would weigh more than in training."""
    from imagenet_kit.data.loaders import beton_num_samples

    images, needed = beton_num_samples(str(beton)), (warmup + steps) * batch
    if images * passes < needed:
        raise ConfigError(f"{beton}: {images} images, fewer than the {needed} the real-data mode reads "
                          f"((warm-up {warmup} + {steps} steps) x batch {batch}), so FFCV would restart its epoch "
                          "while timed. Build a larger one, e.g. imagenet-kit convert imagenette2/train "
                          "betons/imagenette2-train-256.beton --max-res 256 (9,469 images), and pass --beton, or "
                          "lower --steps, --warmup or --batch")
    return images


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
@click.option("--arch", type=click.Choice(choices("model.arch")), default="resnet50")
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
