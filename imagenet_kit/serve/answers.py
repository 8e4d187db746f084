"""What the demo answers, without Gradio: one photo's top-k above a minimum confidence with the server's time for
it, and several photos' rows from one batched forward pass, with their JSON and CSV downloads.

Inference-only (``errors``, ``images``, ``serve.predict`` and the standard library): the Hugging Face Space folder
ships a byte-identical copy of this file.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from imagenet_kit.errors import KitError
from imagenet_kit.images import UnreadableImage, load_rgb
from imagenet_kit.serve.predict import Predictor, Timing

TOP_K_MAX, TOP_K_DEFAULT = 10, 5
MAX_FILES = 32  # one forward pass over at most this many photos: a few hundred MB of activations at 224 px
BATCH_TOP_K = 5  # classes per photo in the downloads
COLUMNS = ("file", "top-1", "confidence (%)", "time (ms)", "error")
DOWNLOAD_STEM = "imagenet-kit-predictions"


class DemoRequestError(KitError):
    """A request the demo cannot answer as asked (a top-k or threshold out of range, too many files)."""


def controls(k, threshold) -> tuple[int, float]:
    """The top-k and the minimum confidence in percent, as the page's sliders or an API caller gave them."""
    try:
        k, threshold = float(k), float(threshold)
    except (TypeError, ValueError):
        raise DemoRequestError(f"k and threshold must be numbers; got k={k!r}, threshold={threshold!r}") from None
    if k != int(k) or not 1 <= k <= TOP_K_MAX:
        raise DemoRequestError(f"k must be a whole number from 1 to {TOP_K_MAX}, not {k:g}")
    if not 0 <= threshold <= 100:
        raise DemoRequestError(f"threshold is a confidence in percent, from 0 to 100, not {threshold:g}")
    return int(k), threshold


def classify_photo(predictor: Predictor, path: Path, k=TOP_K_DEFAULT, threshold=0) -> tuple[dict[str, float], str]:
    """({class: confidence} of the top ``k`` at ``threshold`` percent or more, a line saying the server's time).
    Raises ``DemoRequestError`` for bad controls and ``UnreadableImage`` with the reason for a bad file."""
    k, threshold = controls(k, threshold)
    (top,), timing = predictor.predict_batch([load_rgb(path)], k)
    shown = {name: p for name, p in top if 100 * p >= threshold}
    note = (f"**{timing.total_ms:.1f} ms** on the server for this photo: preprocessing "
            f"{1000 * timing.preprocess:.1f} ms + model {1000 * timing.model:.1f} ms (decoding the upload not "
            "included).")
    if not shown:
        note += f" No class reaches {threshold:g}%; the most likely is {top[0][0]} at {100 * top[0][1]:.1f}%."
    elif len(shown) < len(top):
        note += f" {len(shown)} of the top {k} reach {threshold:g}%."
    return shown, note


def classify_files(predictor: Predictor, files: list[tuple[str, Path]]) -> tuple[list[dict], Timing | None]:
    """A row per (name, path), in their order: the top-1, its confidence, the top-5 and the time per photo, from
    one forward pass over every readable photo; a file that is not one gets its row with the reason instead."""
    if len(files) > MAX_FILES:
        raise DemoRequestError(f"{len(files)} files: the batch takes at most {MAX_FILES} at once; "
                               "split them into several batches")
    rows = [{"file": name, "top1": None, "confidence": None, "top5": [], "time_ms": None, "error": None}
            for name, _ in files]
    answers, timing = predictor.predict_batch(_readable(files, rows), BATCH_TOP_K)
    for row, top in zip([row for row in rows if row["error"] is None], answers, strict=True):
        row.update(top1=top[0][0], confidence=top[0][1], top5=[{"label": n, "confidence": p} for n, p in top],
                   time_ms=timing.per_image_ms)
    return rows, timing


def _readable(files: list[tuple[str, Path]], rows: list[dict]) -> Iterator[Image.Image]:
    """The photos that decode, one at a time (32 phone photos decoded at once would take a GB or more); each file
    that does not gets its reason in its row."""
    for (_, path), row in zip(files, rows, strict=True):
        try:
            yield load_rgb(path)
        except UnreadableImage as err:
            row["error"] = str(err)


def table(rows: list[dict]) -> list[list]:
    """The rows as the page's table shows them (COLUMNS): confidence in percent, time in ms, both rounded."""
    return [[row["file"], row["top1"] or "", None if row["confidence"] is None else round(100 * row["confidence"], 1),
             None if row["time_ms"] is None else round(row["time_ms"], 1), row["error"] or ""] for row in rows]


def timing_line(rows: list[dict], timing: Timing | None) -> str:
    """How long the batch took, and how the per-photo time in the table is made."""
    bad = sum(row["error"] is not None for row in rows)
    skipped = f"; {bad} of {len(rows)} files could not be read (their reason is in the table)" if bad else ""
    if timing is None:
        return f"None of the {len(rows)} files is a photo the model can read{skipped}."
    return (f"One batched forward pass over {timing.images} photos: **{timing.total_ms:.1f} ms** on the server "
            f"(preprocessing {1000 * timing.preprocess:.1f} ms + model {1000 * timing.model:.1f} ms; decoding the "
            f"files not included). The time per photo is that batch time / {timing.images}{skipped}.")


def write_downloads(rows: list[dict], timing: Timing | None, info: dict, folder: Path) -> tuple[Path, Path]:
    """``rows`` as ``folder``/imagenet-kit-predictions.json (with the model and the timing) and .csv."""
    folder.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = folder / f"{DOWNLOAD_STEM}.json", folder / f"{DOWNLOAD_STEM}.csv"
    record = {
        "model": {key: info.get(key) for key in ("arch", "num_classes", "res", "run", "data")},
        "files": len(rows), "classified": sum(row["error"] is None for row in rows),
        "timing": None if timing is None else {
            "batch_ms": timing.total_ms, "preprocess_ms": 1000 * timing.preprocess, "model_ms": 1000 * timing.model,
            "per_image_ms": timing.per_image_ms, "note": timing_line(rows, timing).replace("**", "")},
        "rows": rows,
    }
    json_path.write_text(json.dumps(record, indent=1))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "top1", "confidence", "time_ms", "error"])
        writer.writerows([row["file"], row["top1"] or "",
                          "" if row["confidence"] is None else f"{row['confidence']:.4f}",
                          "" if row["time_ms"] is None else f"{row['time_ms']:.1f}", row["error"] or ""]
                         for row in rows)
    return json_path, csv_path
