"""Folder or archive of images -> FFCV ``.beton``, with every input file accounted for.

Each image is decoded once, by FFCV's writer processes (``beton_writer``). A file that cannot be read there is
written as a 1-pixel stand-in and listed with its reason; once the writer is done, ``beton_file.drop_samples``
removes those slots. The beton's size is estimated first and refused when the disk clearly cannot hold it
(``disk_space``). It is written to a temporary name and renamed on success, so a conversion that fails or is
interrupted (a full disk, a writer process killed, SIGTERM, Ctrl-C) never leaves a file at ``out``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import click
import numpy as np

from imagenet_kit.data.archives import scan_train_tar, scan_val_tar
from imagenet_kit.data.beton_file import drop_samples
from imagenet_kit.data.beton_writer import Interrupted, WriterDied, write_beton
from imagenet_kit.data.disk_space import disk_full_error, estimate_beton_bytes, require_space
from imagenet_kit.data.gzip_shards import scan_gzip_shards
from imagenet_kit.data.imagenet_meta import wnid_to_name
from imagenet_kit.data.sources import ConvertError, Source, read_val_labels, scan_imagefolder, scan_labelled_flat
from imagenet_kit.data.workers import usable_workers
from imagenet_kit.errors import KitError
from imagenet_kit.progress import console, progress_bar, results

# FFCV's published ImageNet write settings (ffcv-imagenet, write_imagenet.sh: 500 px, 50% JPEG, quality 90).
DEFAULT_MAX_RES = 500
DEFAULT_COMPRESS_PROB = 0.5
DEFAULT_JPEG_QUALITY = 90


def class_table(classes: list[str]) -> list[dict]:
    """index, wnid and human-readable name (ImageNet-1K's where the folder is an ImageNet wnid)."""
    return [{"index": i, "wnid": c, "name": wnid_to_name(c) or c} for i, c in enumerate(classes)]


def convert(source: Source, out: Path, max_res: int = DEFAULT_MAX_RES, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
            compress_prob: float = DEFAULT_COMPRESS_PROB, workers: int = 0, force: bool = False,
            page_size: int = 8 << 20) -> dict:
    """Write ``out`` (a .beton), ``out.classes.json`` and ``out.report.json``; return the report.

    ``page_size``: FFCV's allocation unit (a power of 2 from 2 MiB; its default, 8 MiB). Each writer process
    leaves its last page part-empty, so a small beton is smaller with small pages."""
    out = Path(out)
    if out.exists() and not force:
        raise ConvertError(f"{out} exists; pass --force to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(out.name + ".tmp-*"):  # left by a killed earlier run
        stale.unlink()
    workers = usable_workers(workers, "convert")

    if not source.items:
        first = f" (the first: {source.skipped[0][0]}: {source.skipped[0][1]})" if source.skipped else ""
        raise ConvertError(f"{source.root}: no image files to convert; {len(source.skipped)} files skipped{first}")
    estimate = estimate_beton_bytes(source.items, max_res, compress_prob, workers, page_size)
    free = require_space(out.parent, estimate, len(source.items), max_res)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        with progress_bar(f"convert {out.name}: decode and write", len(source.items), "img") as advance:
            unreadable = write_beton(source.items, tmp, max_res, jpeg_quality, compress_prob, workers, page_size,
                                     advance)
        if len(unreadable) == len(source.items):
            raise ConvertError(f"{source.root}: none of {len(source.items)} files could be read (the first: "
                               f"{source.items[0][0]}: {unreadable[0]})")
        if unreadable:
            drop_samples(tmp, sorted(unreadable))
        os.replace(tmp, out)
    except WriterDied as died:
        raise (disk_full_error(out.parent, estimate, free) if died.no_space else ConvertError(str(died))) from None
    except (Interrupted, KeyboardInterrupt) as stop:
        signal_name = str(stop) or "Ctrl-C"
        raise ConvertError(f"conversion to {out} interrupted ({signal_name}); nothing was written there: run the "
                           "same command again to convert from the start") from None
    finally:
        tmp.unlink(missing_ok=True)
    good = [item for i, item in enumerate(source.items) if i not in unreadable]
    skipped = list(source.skipped) + [(source.items[i][0], reason) for i, reason in sorted(unreadable.items())]

    classes = class_table(source.classes)
    Path(f"{out}.classes.json").write_text(json.dumps(classes, indent=1))
    seen = len(source.items) + len(source.skipped)
    report = {
        "source": str(source.root), "out": str(out),
        "settings": {"max_res": max_res, "jpeg_quality": jpeg_quality, "compress_prob": compress_prob},
        "counts": {"seen": seen, "written": len(good), "skipped": len(skipped), "ignored": len(source.ignored),
                   "classes": len(source.classes)},
        "per_class_written": np.bincount([l for _, l in good], minlength=len(source.classes)).tolist(),
        "empty_classes": source.empty_classes,
        "split": source.split,
        "subset": source.subset,
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
        "ignored": [str(p) for p in source.ignored],
    }
    Path(f"{out}.report.json").write_text(json.dumps(report, indent=1))
    return report


def read_classes(beton: Path | str) -> list[dict]:
    """The class table written next to ``beton`` (``<beton>.classes.json``), or the table at a ``.json`` path."""
    path = Path(beton) if str(beton).endswith(".json") else Path(f"{beton}.classes.json")
    if not path.is_file():
        raise ConvertError(f"{path} is missing; it is written by 'imagenet-kit convert' next to the beton")
    return json.loads(path.read_text())


class ClassMismatch(KitError):
    """A model and a beton whose classes (WNIDs, in order) are not the same: the scores would mean nothing."""


def check_same_classes(model_classes: list[dict], beton: Path, model_side: str) -> None:
    """Refuse ``beton`` unless it holds the classes of ``model_side`` by WNID, in the same order."""
    ours, theirs = [c["wnid"] for c in model_classes], [c["wnid"] for c in read_classes(beton)]
    if ours == theirs:
        return
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b]
    first = ", ".join(f"#{i} {a} vs {b}" for i, a, b in differ[:3])
    raise ClassMismatch(
        f"{model_side} has {len(ours)} classes and {beton} {len(theirs)}: {len(differ)} of the first "
        f"{min(len(ours), len(theirs))} differ by WNID{f' ({first})' if first else ''}. Use data converted with "
        f"the model's classes (imagenet-kit convert SRC OUT --classes-from THE_RUNS_TRAIN_BETON)")


def print_summary(report: dict) -> None:
    """The first skipped files with their reasons, empty class folders, and one line of counts."""
    c = report["counts"]
    for item in report["skipped"][:10]:
        console.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}")
    if len(report["skipped"]) > 10:
        console.print(f"... and {len(report['skipped']) - 10} more in {report['out']}.report.json")
    for name in report["empty_classes"]:
        console.print(f"[yellow]empty class folder[/] {name}")
    results.out(f"{report['out']}: seen {c['seen']}, written {c['written']}, skipped {c['skipped']}, "
               f"ignored {c['ignored']} system files, {c['classes']} classes")


@click.command("convert")
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--max-res", type=int, default=DEFAULT_MAX_RES, help="longest side stored (FFCV ImageNet: 500)")
@click.option("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
@click.option("--compress-prob", type=float, default=DEFAULT_COMPRESS_PROB,
              help="share of images stored as JPEG, the rest as raw pixels (FFCV ImageNet: 0.5)")
@click.option("-j", "--workers", type=int, default=0, help="processes (0 = all cores)")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="flat ILSVRC2012 val folder: the devkit's ILSVRC2012_validation_ground_truth.txt "
                   "or Kaggle's LOC_val_solution.csv")
@click.option("--classes-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a train beton (or its .classes.json) whose class indices this split must share")
@click.option("--force", is_flag=True, help="overwrite OUT if it exists")
def convert_command(src, out, max_res, jpeg_quality, compress_prob, workers, labels, classes_from, force):
    """Convert an ImageFolder split (SRC/<class>/*), a flat ILSVRC2012 val folder, an official ILSVRC2012 tar
    (train: a tar of class tars; val: flat, with --labels) or a Hugging Face imagenet-1k .tar.gz shard, read in
    place, to an FFCV beton.

    Writes OUT, OUT.classes.json and OUT.report.json (every file: written, or skipped with its reason)."""
    classes = None
    if classes_from:
        classes = [c["wnid"] for c in read_classes(classes_from)]
    print_summary(convert(scan_source(Path(src), labels, classes), Path(out), max_res, jpeg_quality, compress_prob,
                          workers, force))


def scan_source(src: Path, labels: Path | None = None, classes: list[str] | None = None) -> Source:
    """What ``convert SRC`` reads (see its help); ``labels``: a flat val split's label file."""
    if src.name.endswith(".tar.gz"):  # a Hugging Face imagenet-1k shard: the class is in each file's name
        return scan_gzip_shards([src], classes)
    if src.suffix == ".tar":  # the official archives, read in place: val is the flat one, and needs --labels
        return scan_val_tar(src, read_val_labels(Path(labels)), classes) if labels else scan_train_tar(src, classes)
    if labels:
        return scan_labelled_flat(src, read_val_labels(Path(labels)), classes)
    return scan_imagefolder(src, classes)
