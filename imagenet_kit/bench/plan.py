"""``imagenet-kit plan``: hours and dollars for a recipe on a GPU model and count. Always an estimate.

Throughput comes from rows that ``imagenet-kit bench train`` measured on the same GPU model and network
(bench/results/*.jsonl) or, failing that, from a published ResNet-50 training figure named in the
output; for the T4, which has none, from a published figure of another GPU scaled by the two
datasheets, labelled "derived". A GPU with none of these is an error.
"""
from __future__ import annotations

import bisect
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from imagenet_kit.bench.results import RESULTS_DIR, read_results
from imagenet_kit.config import ModelConfig, RunConfig, load_config
from imagenet_kit.errors import KitError
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS, architecture, architecture_extras
from imagenet_kit.optim.schedule import resolution_for_epoch

TRAIN_IMAGES = 1_281_167  # ILSVRC2012 (ImageNet-1K) train split
VAL_IMAGES = 50_000  # ILSVRC2012 validation split
DEFAULT_EFFICIENCY = 0.9  # multi-GPU scaling assumed where no figure exists at the requested GPU count
FORWARD_SHARE = 1 / 3  # a forward pass costs ~1/3 of a training step (the backward pass ~2 forwards)


class PlanError(KitError, ValueError):
    """No estimate possible: unknown GPU, no throughput figure, or a recipe that cannot run."""


@dataclass(frozen=True)
class Gpu:
    name: str
    device_pattern: str  # matched against the "device" field of bench rows (torch's device name)
    instance: str  # the AWS instance whose list price is the default price
    gpus_per_instance: int
    instance_price: float  # USD per hour, on demand

    @property
    def price_per_gpu_hour(self) -> float:
        return self.instance_price / self.gpus_per_instance


GPUS = {
    "t4": Gpu("NVIDIA T4", r"\bT4\b", "g4dn.xlarge", 1, 0.526),
    "a10g": Gpu("NVIDIA A10G", r"\bA10G\b", "g5.xlarge", 1, 1.006),
    "a100": Gpu("NVIDIA A100 40GB", r"\bA100\b", "p4d.24xlarge", 8, 21.957642),
    "h100": Gpu("NVIDIA H100 80GB", r"\bH100\b", "p5.48xlarge", 8, 55.04),
}
PRICE_SOURCE = ("AWS EC2 on-demand list price, us-east-1, Linux (AWS price list published 2026-09-25), "
                "instance price / GPUs per instance; check aws.amazon.com/ec2/pricing/on-demand")


@dataclass(frozen=True)
class Throughput:
    """Training images per second summed over ``gpus`` GPUs at ``res`` px."""
    gpus: int
    res: int
    img_per_s: float


# Published ResNet-50 training figures, each traceable to a file.
# A100: libffcv/ffcv-imagenet assets/agg.csv, run 1330f71e (rn50, 16 epochs, 8x A100 on a
# p4d.24xlarge, batch 512 per GPU, the schedule recipes/full.yaml copies). Its log's relative_time
# minus val_time gives each epoch's training seconds; 1,277,952 images per epoch (312 steps of 4096)
# over the median of epochs 1-11 (160 px, 45.52 s) and 13-15 (192 px, 61.52 s). Epoch 0 (first pass
# over the data) and epoch 12 (first at 192 px, 75 s) carry one-off costs and are left out.
# H100: lambdal/deeplearning-benchmark pytorch/pytorch-train-throughput-fp16.csv (commit 0551cb70),
# column resnet50 of rows "H100 80GB SXM5" and "8x H100 80GB SXM5": NVIDIA DeepLearningExamples'
# ResNet-50 v1.5 with AMP at 224 px.
# T4: no ResNet-50 training figure is published (NVIDIA's DeepLearningExamples list T4 inference only;
# Lambda's CSVs have no T4 row). Derived from the same Lambda CSV's row "LambdaCloud A10" (resnet50
# 638 img/s, AMP, 224 px) x 0.52, the smaller of the T4/A10 datasheet ratios: FP16 tensor-core peak
# 65 / 125 TFLOPS = 0.52 and memory bandwidth 320 / 600 GB/s = 0.53 (NVIDIA T4 and A10 datasheets).
T4_FROM_A10 = 65 / 125
REFERENCES = {
    "t4": (("not measured: Lambda's A10 figure, 638 img/s (lambdal/deeplearning-benchmark "
            "pytorch/pytorch-train-throughput-fp16.csv, row 'LambdaCloud A10': NVIDIA DeepLearningExamples "
            "ResNet-50 v1.5, AMP, 224 px) x 0.52, the T4/A10 ratio of FP16 tensor-core peak (65 vs 125 TFLOPS) "
            "and memory bandwidth (320 vs 600 GB/s) in NVIDIA's T4 and A10 datasheets. The 70 W T4 often runs "
            "below its peak clocks, so this is likely optimistic: measure with `imagenet-kit bench train`"),
           (Throughput(1, 224, 638.0 * T4_FROM_A10),)),
    "a100": (("FFCV's 16-epoch ResNet-50 run on 8x A100 (libffcv/ffcv-imagenet assets/agg.csv, "
              "fp16 AMP, FFCV loader)"),
             (Throughput(8, 160, 28074.0), Throughput(8, 192, 20774.0))),
    "h100": (("Lambda's PyTorch benchmark on H100 80GB SXM5, 1 and 8 GPUs (lambdal/deeplearning-benchmark "
              "pytorch/pytorch-train-throughput-fp16.csv: NVIDIA DeepLearningExamples ResNet-50 v1.5, AMP, 224 px)"),
             (Throughput(1, 224, 2616.0), Throughput(8, 224, 20728.0))),
}
DERIVED = {"t4"}  # references computed from another GPU's figure, labelled "derived" in every output
NO_REFERENCE = {
    "a10g": "the published figures found are for the A10, a different board",
}


def seconds_per_image(points: list[Throughput], res: int) -> float:
    """Time per image at ``res``: linear in pixel count through the two nearest measured resolutions
    (a fixed cost plus a cost per pixel); with a single resolution, proportional to pixel count."""
    by_pixels = sorted({p.res ** 2: 1.0 / p.img_per_s for p in points}.items())
    proportional = by_pixels[0][1] * res ** 2 / by_pixels[0][0]
    if len(by_pixels) == 1:
        return proportional
    i = min(max(bisect.bisect_left([x for x, _ in by_pixels], res ** 2), 1), len(by_pixels) - 1)
    (x0, y0), (x1, y1) = by_pixels[i - 1], by_pixels[i]
    seconds = y0 + (y1 - y0) * (res ** 2 - x0) / (x1 - x0)
    return seconds if seconds > 0 else proportional  # far below the measured range the line can cross 0


def scale_to_gpus(points: list[Throughput], gpus: int, efficiency: float) -> tuple[list[Throughput], str]:
    """Figures at exactly ``gpus`` GPUs when there are some; else the nearest smaller count scaled
    linearly, every multi-GPU run taken to reach ``efficiency`` of its GPUs' single-GPU speed."""
    counts = sorted({p.gpus for p in points})
    if gpus in counts:
        return [p for p in points if p.gpus == gpus], f"figures taken at {gpus} GPU(s)"
    base = max((c for c in counts if c <= gpus), default=counts[0])
    factor = (gpus * (efficiency if gpus > 1 else 1.0)) / (base * (efficiency if base > 1 else 1.0))
    scaled = [Throughput(gpus, p.res, p.img_per_s * factor) for p in points if p.gpus == base]
    return scaled, f"scaled from {base} to {gpus} GPU(s) assuming {efficiency:.0%} multi-GPU efficiency (assumption)"


def bench_command(model: ModelConfig) -> str:
    """The ``bench train`` command that measures this network (its arch and add-ons)."""
    defaults = ModelConfig()
    options = "".join(f" --set model.{key}={str(value).lower() if isinstance(value, bool) else value}"
                      for key, value in architecture(model).items()
                      if key != "arch" and value != getattr(defaults, key))
    return f"imagenet-kit bench train --arch {model.arch}{options}"


def measured_throughput(results_dir: Path, gpu: str, model: ModelConfig,
                        precision: str) -> tuple[list[Throughput], str]:
    """Newest bench row per (GPU count, resolution) for this GPU model, network and precision family.
    The network is ``architecture(model)``: a row of the same arch with other add-ons (BlurPool, SE, ...) is a
    different network; a row lacking an add-on key (written before it existed) had it off.

    A row: {"kind": "train", "device", "arch", "res", "precision", "img_per_s" (summed over
    the GPUs), "gpus" (or "world_size"; default 1), "date", ...}. Of ``bench train``'s three modes only
    "real" counts (the kit's step fed by its loader, as training runs); its "synthetic" and "bare" rows
    are upper bounds and a no-kit reference."""
    wanted = {"fp32"} if precision == "fp32" else {"bf16", "fp16", "amp"}
    network, defaults = architecture(model), architecture(ModelConfig())
    newest: dict[tuple[int, int], dict] = {}
    for path, number, row in read_results(results_dir):
        if (row["kind"] != "train" or row.get("mode", "real") != "real"
                or {key: row.get(key, defaults[key]) for key in ARCHITECTURE_KEYS} != network
                or row.get("precision") not in wanted
                or not re.search(GPUS[gpu].device_pattern, str(row.get("device", "")))):
            continue
        try:
            key = (int(row.get("gpus", row.get("world_size", 1))), int(row["res"]))
            row["img_per_s"] = float(row["img_per_s"])
        except (KeyError, TypeError, ValueError):
            raise PlanError(f"{path}:{number}: a train row needs numeric res and img_per_s") from None
        if key not in newest or str(row.get("date", "")) >= str(newest[key].get("date", "")):
            newest[key] = {**row, "_where": f"{path.name}:{number}"}
    points = [Throughput(g, r, row["img_per_s"]) for (g, r), row in sorted(newest.items())]
    label = "; ".join(f"{row['device']} x{g}, {r} px, {row['precision']}, {row.get('date', 'undated')} "
                      f"({row['_where']})" for (g, r), row in sorted(newest.items()))
    return points, label


def estimate_plan(cfg: RunConfig, gpu: str, gpus: int = 1, price_per_hour: float | None = None,
                  images: int = TRAIN_IMAGES, val_images: int = VAL_IMAGES,
                  efficiency: float = DEFAULT_EFFICIENCY, results_dir: Path = RESULTS_DIR) -> dict:
    """Hours and cost of training ``cfg`` on ``gpus`` GPUs of model ``gpu``, epoch by epoch."""
    if gpu not in GPUS:
        raise PlanError(f"unknown GPU '{gpu}'; choose one of {', '.join(GPUS)}")
    if gpus < 1 or images < 1 or not 0 < efficiency <= 1:
        raise PlanError("gpus and images must be at least 1 and efficiency in (0, 1]")
    points, source = measured_throughput(results_dir, gpu, cfg.model, cfg.train.precision)
    assumptions = []
    kind = "measured"
    if not points:
        if gpu not in REFERENCES:
            raise PlanError(f"no ResNet-50 training throughput for {gpu} ({NO_REFERENCE[gpu]}). Measure one on "
                            f"that GPU with `{bench_command(cfg.model)}` (rows land in {results_dir}), then plan "
                            f"again. Published references exist for: {', '.join(REFERENCES)}")
        if cfg.model.arch != "resnet50":
            raise PlanError(f"the published references are for resnet50, the recipe trains {cfg.model.arch}; "
                            f"measure it with `{bench_command(cfg.model)}`")
        kind, (source, points) = "derived" if gpu in DERIVED else "reference", REFERENCES[gpu]
        extras = architecture_extras(architecture(cfg.model))
        if extras:
            assumptions.append(f"the published figure is a plain ResNet-50's; the recipe's {', '.join(extras)} "
                               f"is not in it (measure with `{bench_command(cfg.model)}`)")
    points, scaling = scale_to_gpus(points, gpus, efficiency)

    global_batch = cfg.train.batch_size * gpus
    per_epoch = images // global_batch * global_batch  # the train loader drops the last partial batch
    if per_epoch == 0:
        raise PlanError(f"{images} images make no full batch of {global_batch} ({gpus} x {cfg.train.batch_size})")
    passes = 2 if cfg.train.flip_tta else 1
    val_hours = val_images * passes * FORWARD_SHARE * seconds_per_image(points, cfg.train.val_res) / 3600
    price = GPUS[gpu].price_per_gpu_hour if price_per_hour is None else price_per_hour
    epochs = []
    for epoch in range(cfg.train.epochs):
        res = resolution_for_epoch(epoch, cfg.train.min_res, cfg.train.max_res, cfg.train.start_ramp,
                                   cfg.train.end_ramp)
        rate = 1.0 / seconds_per_image(points, res)
        hours = per_epoch / rate / 3600 + val_hours
        epochs.append({"epoch": epoch + 1, "res": res, "img_per_s": rate, "hours": hours,
                       "cost_usd": hours * gpus * price})
    total_hours = sum(e["hours"] for e in epochs)
    return {
        "estimate": True,
        "recipe": cfg.name, "arch": cfg.model.arch, "gpu": gpu, "gpu_name": GPUS[gpu].name, "gpus": gpus,
        "batch_size": cfg.train.batch_size, "images_per_epoch": per_epoch, "epochs": epochs,
        "total_hours": total_hours, "gpu_hours": total_hours * gpus, "total_cost_usd": total_hours * gpus * price,
        "price_per_gpu_hour": price,
        "price_source": "--price-per-hour" if price_per_hour is not None
        else f"{GPUS[gpu].instance} ${GPUS[gpu].instance_price}/h, {PRICE_SOURCE}",
        "throughput": {"kind": kind, "source": source, "scaling": scaling,
                       "points": [asdict(p) for p in points]},
        "assumptions": [
            ("throughput at other resolutions: time per image linear in pixel count between measured "
             "resolutions, proportional to it with a single one"),
            (f"validation after every epoch: {val_images:,} images x{passes} (flip TTA) at {cfg.train.val_res} px, "
             f"a forward pass costed at {FORWARD_SHARE:.2f} of a training step"),
            "excludes data conversion, the LR range test, start-up and checkpoint writes",
            *assumptions,
        ],
    }


@click.command("plan")
@click.option("--recipe", default="full", show_default=True, help="recipe name in imagenet_kit/recipes/ or a YAML path")
@click.option("--gpu", required=True, type=click.Choice(list(GPUS)), help="GPU model")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True, help="GPUs in the run")
@click.option("--price-per-hour", type=click.FloatRange(min=0), default=None,
              help="USD per GPU-hour  [default: AWS on-demand list price of the GPU's instance]")
@click.option("--images", type=click.IntRange(min=1), default=TRAIN_IMAGES, show_default=True,
              help="training images (ImageNet-1K train split by default)")
@click.option("--val-images", type=click.IntRange(min=0), default=VAL_IMAGES, show_default=True)
@click.option("--efficiency", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_EFFICIENCY,
              show_default=True, help="assumed multi-GPU scaling efficiency where no figure exists")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True, help="where `imagenet-kit bench train` writes its JSON lines")
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
def plan_command(recipe, gpu, gpus, price_per_hour, images, val_images, efficiency, results_dir, as_json):
    """Estimate hours and cost of a recipe on GPUs, from measured or published throughput."""
    plan = estimate_plan(load_config(recipe), gpu, gpus, price_per_hour, images, val_images, efficiency, results_dir)
    if as_json:
        click.echo(json.dumps(plan, indent=2))
        return
    console = Console(highlight=False)
    table = Table(title=f"Estimate: recipe '{plan['recipe']}' ({plan['arch']}) on {gpus} x {plan['gpu_name']}")
    for column in ("epoch", "res (px)", "img/s", "minutes", "cost (USD)"):
        table.add_column(column, justify="right")
    for e in plan["epochs"]:
        table.add_row(str(e["epoch"]), str(e["res"]), f"{e['img_per_s']:,.0f}", f"{60 * e['hours']:.1f}",
                      f"{e['cost_usd']:,.2f}")
    table.add_row("total", "", "", f"{60 * plan['total_hours']:.1f}", f"{plan['total_cost_usd']:,.2f}",
                  style="bold")
    console.print(table)
    throughput = plan["throughput"]
    lines = [(f"{plan['total_hours']:.2f} hours on {gpus} GPU(s) = {plan['gpu_hours']:.1f} GPU-hours at "
              f"${plan['price_per_gpu_hour']:.4g} per GPU-hour ({plan['price_source']})"),
             (f"{plan['images_per_epoch']:,} training images per epoch (--images {images:,}, whole batches of "
              f"{gpus} x {plan['batch_size']})"),
             f"throughput ({throughput['kind']}): {throughput['scaling']}",
             *plan["assumptions"],
             f"Estimate — sources: {throughput['kind']}: {throughput['source']}; price: {plan['price_source']}"]
    for line in lines:
        console.print(line, markup=False, soft_wrap=True)
