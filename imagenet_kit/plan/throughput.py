"""Training throughput of ResNets on GPU models: measured ``bench train`` rows first, else the catalog's figure.

Throughput comes from rows that ``imagenet-kit bench train`` measured on the same GPU model and network
(bench/results/*.jsonl) or, failing that, from the GPU's published ResNet-50 training figure in ``catalog``, or one
derived from another GPU's by the datasheets, labelled "derived" wherever it is shown.
"""
from __future__ import annotations

import bisect
import re
from pathlib import Path

from imagenet_kit.config import ModelConfig
from imagenet_kit.errors import KitError
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS, architecture
from imagenet_kit.plan.catalog import GPUS, Throughput
from imagenet_kit.result_rows import newest_rows


class PlanError(KitError, ValueError):
    """No estimate possible: unknown GPU, no throughput figure, or a recipe that cannot run."""


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

    def same_setup(row: dict) -> bool:
        return (row.get("mode", "real") == "real" and row.get("precision") in wanted
                and {key: row.get(key, defaults[key]) for key in ARCHITECTURE_KEYS} == network
                and re.search(GPUS[gpu].device_pattern, str(row.get("device", ""))) is not None)

    def gpus_and_res(row: dict) -> tuple[int, int]:
        row["img_per_s"] = float(row["img_per_s"])
        return int(row.get("gpus", row.get("world_size", 1))), int(row["res"])

    newest = newest_rows(results_dir, "train", gpus_and_res, same_setup)
    points = [Throughput(g, r, row["img_per_s"]) for (g, r), (row, _) in sorted(newest.items())]
    label = "; ".join(f"{row['device']} x{g}, {r} px, {row['precision']}, {row.get('date', 'undated')} ({where})"
                      for (g, r), (row, where) in sorted(newest.items()))
    return points, label
