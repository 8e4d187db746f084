"""Hours and dollars for a recipe on a GPU model and count, epoch by epoch. Always an estimate.

GPU throughput comes from ``throughput`` (measured rows, else the catalog's published or derived figure). Given a host
(``--instance NAME`` or ``--host local``), ``host_fit`` also checks that the recipe's betons fit its page cache and
disk and how fast its CPUs decode; each epoch then runs at the slower of the GPU and CPU decoding, and the plan
names which one bounds it.
"""
from __future__ import annotations

import re
from dataclasses import asdict
from pathlib import Path

from imagenet_kit.config import RunConfig
from imagenet_kit.models.architecture import architecture, architecture_extras
from imagenet_kit.optim.schedule import resolution_for_epoch
from imagenet_kit.plan.catalog import GPUS, INSTANCES, PRICE_SOURCE, Host, default_instance, price_per_gpu_hour
from imagenet_kit.plan.host_fit import local_host
from imagenet_kit.plan.published import compare_to_published
from imagenet_kit.plan.throughput import PlanError, bench_command, measured_throughput, scale_to_gpus, seconds_per_image
from imagenet_kit.result_rows import RESULTS_DIR

TRAIN_IMAGES = 1_281_167  # ILSVRC2012 (ImageNet-1K) train split
VAL_IMAGES = 50_000  # ILSVRC2012 validation split
DEFAULT_EFFICIENCY = 0.9  # multi-GPU scaling assumed where no figure exists at the requested GPU count
FORWARD_SHARE = 1 / 3  # a forward pass costs ~1/3 of a training step (the backward pass ~2 forwards)


def gpu_throughput(cfg: RunConfig, gpu: str, gpus: int, efficiency: float, results_dir: Path) -> dict:
    """The throughput points for ``gpus`` GPUs of model ``gpu``, their kind, sources and assumptions."""
    points, source = measured_throughput(results_dir, gpu, cfg.model, cfg.train.precision)
    kind, assumptions = "measured", []
    if not points:
        if cfg.model.arch != "resnet50":
            raise PlanError(f"the published references are for resnet50, the recipe trains {cfg.model.arch}; "
                            f"measure it with `{bench_command(cfg.model)}`")
        reference = GPUS[gpu].reference
        kind, source, points = "derived" if reference.derived else "reference", reference.source, reference.points
        assumptions += _network_gap(architecture_extras(architecture(cfg.model)), reference.extras, cfg)
    points, scaling = scale_to_gpus(points, gpus, efficiency)
    return {"kind": kind, "source": source, "scaling": scaling, "points": points, "assumptions": assumptions}


def _network_gap(recipe: list[str], published: tuple[str, ...], cfg: RunConfig) -> list[str]:
    """What the published figure's network lacks or has beyond the recipe's (FFCV's A100 run had BlurPool, as the
    full recipe has; Lambda's ResNet-50 v1.5 is plain), as assumption lines naming the bench command."""
    missing, unused = [e for e in recipe if e not in published], [e for e in published if e not in recipe]
    measured = "a plain ResNet-50's" if not published else f"a ResNet-50 with {', '.join(published)}"
    lines = [f"the published figure is {measured}; the recipe's {', '.join(missing)} is not in it"] if missing else []
    lines += [f"the published figure is {measured}; the recipe has no {', '.join(unused)}"] if unused else []
    return [f"{line} (measure with `{bench_command(cfg.model)}`)" for line in lines]


def _bottleneck(epochs: list[dict]) -> str:
    spans: list[list] = []  # [bound, first epoch, last epoch]
    for e in epochs:
        if spans and spans[-1][0] == e["bound"]:
            spans[-1][2] = e["epoch"]
        else:
            spans.append([e["bound"], e["epoch"], e["epoch"]])
    if len(spans) == 1:
        return f"{spans[0][0]} (every epoch)"
    return ", ".join(f"{bound} in epoch{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''}" for bound, a, b in spans)


def estimate_plan(cfg: RunConfig, gpu: str, gpus: int = 1, price_per_hour: float | None = None,
                  images: int = TRAIN_IMAGES, val_images: int = VAL_IMAGES,
                  efficiency: float = DEFAULT_EFFICIENCY, results_dir: Path = RESULTS_DIR,
                  decode_img_per_s: float | None = None, price_source: str | None = None,
                  cold: dict | None = None) -> dict:
    """Hours and cost of training ``cfg`` on ``gpus`` GPUs of model ``gpu``, epoch by epoch. With
    ``decode_img_per_s`` (the host's CPU decoding rate), each epoch runs at the slower of the two. ``cold``
    (``host_fit``'s verdict): the first read of the betons before epoch 0, or the disk's bound on every epoch."""
    if gpu not in GPUS:
        raise PlanError(f"unknown GPU '{gpu}'; choose one of {', '.join(GPUS)}")
    if gpus < 1 or images < 1 or not 0 < efficiency <= 1:
        raise PlanError("gpus and images must be at least 1 and efficiency in (0, 1]")
    throughput = gpu_throughput(cfg, gpu, gpus, efficiency, results_dir)
    points = throughput["points"]
    decode = decode_img_per_s or float("inf")
    disk = (cold or {}).get("disk_img_per_s") or float("inf")
    first_read_hours = ((cold or {}).get("first_read_s") or 0.0) / 3600

    global_batch = cfg.train.batch_size * gpus
    per_epoch = images // global_batch * global_batch  # the train loader drops the last partial batch
    if per_epoch == 0:
        raise PlanError(f"{images} images make no full batch of {global_batch} ({gpus} x {cfg.train.batch_size})")
    passes = 2 if cfg.train.flip_tta else 1
    # flip TTA runs the network twice on each image but decodes it once
    val_seconds = max(val_images * passes * FORWARD_SHARE * seconds_per_image(points, cfg.train.val_res),
                      val_images / decode)
    price = price_per_gpu_hour(gpu) if price_per_hour is None else price_per_hour
    epochs = []
    for epoch in range(cfg.train.epochs):
        res = resolution_for_epoch(epoch, cfg.train.min_res, cfg.train.max_res, cfg.train.start_ramp,
                                   cfg.train.end_ramp)
        gpu_rate = 1.0 / seconds_per_image(points, res)
        rate = min(gpu_rate, decode, disk)
        hours = (per_epoch / rate + val_seconds) / 3600
        known = decode_img_per_s is not None or disk < float("inf")
        epochs.append({"epoch": epoch + 1, "res": res, "img_per_s": rate, "gpu_img_per_s": gpu_rate,
                       "bound": None if not known else "disk" if disk == rate < gpu_rate
                       else "CPU decoding" if decode == rate < gpu_rate else "GPU",
                       "hours": hours,
                       "cost_usd": hours * gpus * price})
    total_hours = first_read_hours + sum(e["hours"] for e in epochs)
    return {
        "estimate": True,
        "recipe": cfg.name, "arch": cfg.model.arch, "gpu": gpu, "gpu_name": GPUS[gpu].name, "gpus": gpus,
        "batch_size": cfg.train.batch_size, "images_per_epoch": per_epoch, "epochs": epochs,
        "bottleneck": _bottleneck(epochs) if epochs[0]["bound"] else None,
        "first_read_hours": first_read_hours, "first_read_cost_usd": first_read_hours * gpus * price,
        "total_hours": total_hours, "gpu_hours": total_hours * gpus, "total_cost_usd": total_hours * gpus * price,
        "price_per_gpu_hour": price,
        "price_source": price_source or ("--price-per-hour" if price_per_hour is not None
                                         else _default_price_source(gpu)),
        "throughput": {**throughput, "points": [asdict(p) for p in points]},
        # whether this is the run the recipe's published top-1 was measured on, and what differs if not
        **compare_to_published(cfg, gpu, gpus, results_dir),
        "assumptions": [
            ("throughput at other resolutions: time per image linear in pixel count between measured "
             "resolutions, proportional to it with a single one"),
            (f"validation after every epoch: {val_images:,} images x{passes} (flip TTA) at {cfg.train.val_res} px, "
             f"a forward pass costed at {FORWARD_SHARE:.2f} of a training step"),
            "excludes data conversion, the LR range test, start-up and checkpoint writes",
            *throughput["assumptions"],
        ],
    }


def _default_price_source(gpu: str) -> str:
    host = default_instance(gpu)
    return f"{host.name} ${host.price_per_hour}/h / {host.gpus} GPU(s), {PRICE_SOURCE}"


def resolve_host(gpu: str | None, gpus: int | None, instance: str | None, host: str | None,
                 price_per_hour: float | None, beton_dir: str) -> tuple[str, int, Host | None]:
    """The GPU model and count to plan for, and the host to check (None: no host given)."""
    if instance and host:
        raise PlanError("give --instance or --host, not both")
    if instance:
        chosen = INSTANCES[instance]
        if gpu and gpu != chosen.gpu:
            raise PlanError(f"{instance} has {chosen.gpu} GPUs, not {gpu}; drop --gpu or pick another instance")
        if gpus and gpus > chosen.gpus:
            raise PlanError(f"{instance} has {chosen.gpus} GPU(s); --gpus {gpus} does not fit it")
        return chosen.gpu, gpus or chosen.gpus, chosen
    if host == "local":
        gpu = gpu or _local_gpu()
        return gpu, gpus or 1, local_host(Path(beton_dir), gpu, price_per_hour)
    if not gpu:
        raise PlanError("give --gpu MODEL, --instance NAME or --host local")
    return gpu, gpus or 1, None


def local_gpu_model() -> str | None:
    """The catalog's key for this machine's first GPU (by its device name), None without a GPU the catalog knows."""
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return next((key for key, model in GPUS.items() if name and re.search(model.device_pattern, name)), None)


def _local_gpu() -> str:
    import torch

    key = local_gpu_model()
    if key is None:
        name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        raise PlanError(f"this machine has {'a ' + name if name else 'no CUDA GPU'}, which the plan has no figures "
                        f"for; pass --gpu ({', '.join(GPUS)}) to plan this host's data with that GPU")
    return key
