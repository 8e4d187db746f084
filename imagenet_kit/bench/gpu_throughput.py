"""Training throughput of ResNets on GPU models: measured ``bench train`` rows first, else a published figure.

Throughput comes from rows that ``imagenet-kit bench train`` measured on the same GPU model and network
(bench/results/*.jsonl) or, failing that, from a published ResNet-50 training figure named in the
output; for the T4, which has none, from a published figure of another GPU scaled by the two
datasheets, labelled "derived". A GPU with none of these is an error (``PlanError``).
"""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from imagenet_kit.bench.results import read_results
from imagenet_kit.config import ModelConfig
from imagenet_kit.errors import KitError
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS, architecture


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
PRICE_SOURCE = ("AWS EC2 on-demand list price, us-east-1, Linux (AWS price list published 2026-09-25); check "
                "aws.amazon.com/ec2/pricing/on-demand")


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
