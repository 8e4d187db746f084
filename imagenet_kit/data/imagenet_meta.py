"""ImageNet-1K class metadata and readers for the two published validation label formats.

``imagenet_classes.json`` holds one record per class in sorted-WNID order, which is the order
torchvision's ``ImageFolder``/``ImageNet`` and every torchvision checkpoint use, so ``index`` is the
model's output index. ``ilsvrc2012_id`` is the 1-based ID from the ILSVRC2012 devkit (``meta.mat``),
which is *not* sorted by WNID; the devkit's validation ground truth is written in those IDs.
"""
from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

_CLASSES_JSON = Path(__file__).with_name("imagenet_classes.json")
NUM_CLASSES = 1000


@lru_cache(maxsize=1)
def _load() -> tuple[dict, ...]:
    with open(_CLASSES_JSON, encoding="utf-8") as f:
        return tuple(json.load(f))


def imagenet_classes() -> list[dict]:
    """All 1000 classes as ``{"index", "wnid", "name", "ilsvrc2012_id"}``, in index order.

    Returns fresh dicts so that a caller editing one cannot corrupt the cached table.
    """
    return [dict(c) for c in _load()]


@lru_cache(maxsize=1)
def wnid_to_index() -> dict[str, int]:
    """WNID -> 0-based class index (sorted-WNID order)."""
    return {c["wnid"]: c["index"] for c in _load()}


@lru_cache(maxsize=1)
def _names() -> dict[str, str]:
    return {c["wnid"]: c["name"] for c in _load()}


def wnid_to_name(wnid: str) -> str | None:
    """Short human-readable name of an ImageNet-1K WNID, or None for any other folder name."""
    return _names().get(wnid)


@lru_cache(maxsize=1)
def ilsvrc_id_to_wnid() -> dict[int, str]:
    """ILSVRC2012 devkit ID (1..1000) -> WNID."""
    return {c["ilsvrc2012_id"]: c["wnid"] for c in _load()}


def read_devkit_ground_truth(path: str | Path) -> list[str]:
    """Read the devkit's ``ILSVRC2012_validation_ground_truth.txt``.

    Line i (1-based) is the devkit ID of ``ILSVRC2012_val_%08d.JPEG`` % i. Returns the WNIDs in image
    order, so element 0 belongs to ``ILSVRC2012_val_00000001.JPEG``. Blank lines are tolerated only at
    the end of the file: one in the middle would shift every later label onto the wrong image.
    """
    path = Path(path)
    id_map = ilsvrc_id_to_wnid()
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    wnids = []
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        try:
            ilsvrc_id = int(text)
        except ValueError:
            raise ValueError(f"{path}:{lineno}: expected an ILSVRC2012 class ID, got {text!r}") from None
        if ilsvrc_id not in id_map:
            raise ValueError(f"{path}:{lineno}: class ID {ilsvrc_id} is outside 1..{NUM_CLASSES}")
        wnids.append(id_map[ilsvrc_id])
    return wnids


def read_kaggle_val_solution(path: str | Path, handle=None) -> dict[str, str]:
    """Read Kaggle's ``LOC_val_solution.csv`` into ``{image id: wnid}``; ``handle``: an open text stream of it
    (a member of Kaggle's zip), ``path`` then only names it in errors.

    Each PredictionString lists boxes as ``wnid x0 y0 x1 y1`` repeated; every box in a validation
    image carries the image's class, so the first token is the label.
    """
    if handle is None:
        with open(path, newline="", encoding="utf-8") as f:
            return read_kaggle_val_solution(path, f)
    known = wnid_to_index()
    out: dict[str, str] = {}
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
        raise ValueError(f"{path}: expected header 'ImageId,PredictionString', got {header!r}")
    for row in reader:
        if not row or not any(cell.strip() for cell in row):
            continue
        where = f"{path}:{reader.line_num}"
        if len(row) < 2 or not row[0].strip() or not row[1].split():
            raise ValueError(f"{where}: expected 'ImageId,PredictionString', got {row!r}")
        image_id, wnid = row[0].strip(), row[1].split()[0]
        if wnid not in known:
            raise ValueError(f"{where}: {wnid!r} is not an ImageNet-1K WNID")
        out[image_id] = wnid
    return out
