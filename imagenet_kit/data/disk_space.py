"""Will a beton fit where it is written? Its size estimated from a sample of the source, before any writing.

A conversion of ImageNet writes for hours; a disk that fills at 90% wastes them. The estimate reads the headers
and sizes of a few sampled files (no decoding): each image shrunk to ``max_res`` keeps its source's bytes per
pixel when stored as JPEG, and takes 3 bytes per pixel when stored raw, mixed by ``compress_prob``; each writer
process adds up to one page. It is refused only when the free space is clearly short (below
``REFUSE_BELOW`` x the estimate), since the estimate is approximate either way.
"""
from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

from PIL import Image

from imagenet_kit.data.sources import ConvertError

SAMPLED = 24
REFUSE_BELOW = 0.75


def _estimated_bytes(item, max_res: int, compress_prob: float) -> float | None:
    try:
        data = item.read_bytes()
        with Image.open(io.BytesIO(data)) as image:  # the header only
            width, height = image.size
    except Exception:  # noqa: BLE001 - an unreadable file is conversion's to report, not the estimate's
        return None
    shrink = min(1.0, max_res / max(width, height)) ** 2
    pixels = width * height * shrink
    return compress_prob * len(data) * shrink + (1 - compress_prob) * 3 * pixels


def estimate_beton_bytes(items: list, max_res: int, compress_prob: float, workers: int, page_size: int) -> dict:
    """``{"bytes", "per_image", "sampled"}``: the beton's approximate size from ``SAMPLED`` files (a fixed
    seed: the same estimate every time)."""
    sample = random.Random(0).sample(items, min(SAMPLED, len(items)))
    sizes = [s for s in (_estimated_bytes(path, max_res, compress_prob) for path, _ in sample) if s is not None]
    per_image = sum(sizes) / len(sizes) if sizes else 0.0
    return {"bytes": int(per_image * len(items) + workers * page_size), "per_image": per_image,
            "sampled": len(sizes)}


def size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def require_space(folder: Path, estimate: dict, images: int, max_res: int) -> int:
    """Refuse when ``folder`` clearly cannot hold the beton; return the free bytes it has."""
    free = free_bytes(folder)
    if free < REFUSE_BELOW * estimate["bytes"]:
        raise ConvertError(f"{folder} has {size_text(free)} free, but the beton needs about "
                           f"{size_text(estimate['bytes'])} ({images} images at about "
                           f"{size_text(estimate['per_image'])} each at max_res {max_res}, estimated from "
                           f"{estimate['sampled']} of them): free some space or write it elsewhere "
                           f"(data.beton_dir, or convert's OUT)")
    return free


def disk_full_error(folder: Path, estimate: dict, free_at_start: int) -> ConvertError:
    return ConvertError(f"{folder} ran out of space: the beton needs about {size_text(estimate['bytes'])} and "
                        f"{size_text(free_at_start)} was free at the start; nothing was written. Free some space "
                        f"or write it elsewhere (data.beton_dir, or convert's OUT)")
