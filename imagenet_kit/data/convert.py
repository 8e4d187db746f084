"""Folder or archive of images -> FFCV ``.beton``, with every input file accounted for.

Each image is decoded once, by FFCV's writer processes (``_ImageDataset``). A file that cannot be read there is
logged with its reason and written as a 1-pixel stand-in, because the writer has already given it a slot and a
worker that raised would hang the writer; once the writer is done, ``beton_file.drop_samples`` removes those
slots. The beton is written to a temporary name and renamed on success, so an interrupted conversion never
leaves a file at ``out``.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import click
import numpy as np

from imagenet_kit.data.archives import scan_train_tar, scan_val_tar
from imagenet_kit.data.beton_file import drop_samples
from imagenet_kit.data.gzip_shards import scan_gzip_shards
from imagenet_kit.data.imagenet_meta import wnid_to_name
from imagenet_kit.data.sources import ConvertError, Source, read_val_labels, scan_imagefolder, scan_labelled_flat
from imagenet_kit.images import UnreadableImage, load_rgb
from imagenet_kit.progress import console, progress_bar

# FFCV's published ImageNet write settings (ffcv-imagenet, write_imagenet.sh: 500 px, 50% JPEG, quality 90).
DEFAULT_MAX_RES = 500
DEFAULT_COMPRESS_PROB = 0.5
DEFAULT_JPEG_QUALITY = 90


STAND_IN = np.zeros((1, 1, 3), dtype=np.uint8)  # what an unreadable file's slot holds until it is dropped


class _ImageDataset:
    """What FFCV's writer reads: (HxWx3 uint8 array, label) per index. Runs in the writer's (forked) processes;
    a file that cannot be read is appended to ``failures`` (one JSON line: index, reason) and stood in for."""

    def __init__(self, items: list[tuple[Path, int]], max_res: int, failures: Path):
        self.items, self.max_res, self.failures = items, max_res, failures

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        try:
            return np.asarray(load_rgb(path, self.max_res)), label
        except Exception as err:  # noqa: BLE001 - any error here would kill the worker and hang FFCV's writer
            reason = str(err) if isinstance(err, UnreadableImage) else f"unexpected {type(err).__name__}: {err}"
            with open(self.failures, "a") as log:  # O_APPEND: one short line per write, whole from every process
                log.write(json.dumps({"index": int(i), "reason": reason}) + "\n")
            return STAND_IN, label


@contextlib.contextmanager
def _ffcv_writer(advance):
    """FFCV's writer, watched. Its tqdm bar (unlabelled, in it/s) gives its updates to the kit's bar instead; and
    since its main loop waits forever (``sleep(0.1)`` until every sample is counted) for a writer process that died
    (killed for memory, say), the kit's ``sleep`` there checks the processes and raises, naming the exit code."""
    import time

    import ffcv.writer

    class KitBar:
        def __init__(self, total=None, **_):
            pass

        def update(self, n=1):
            advance(n)

        def close(self):
            pass

    started = []

    class WatchedProcess(ffcv.writer.Process):
        def start(self):
            super().start()
            started.append(self)

    def watched_sleep(seconds):
        time.sleep(seconds)
        codes = [p.exitcode for p in started if p.exitcode not in (None, 0)]
        if codes:
            raise ConvertError(f"a writer process died (exit code {codes[0]}; -9 is usually the kernel's "
                               "out-of-memory killer): convert with fewer workers (-j / data.workers)")

    originals = ffcv.writer.tqdm, ffcv.writer.Process, ffcv.writer.sleep
    ffcv.writer.tqdm, ffcv.writer.Process, ffcv.writer.sleep = KitBar, WatchedProcess, watched_sleep
    try:
        yield
    finally:
        for process in started:
            if process.is_alive():
                process.terminate()
        ffcv.writer.tqdm, ffcv.writer.Process, ffcv.writer.sleep = originals


def class_table(classes: list[str]) -> list[dict]:
    """index, wnid and human-readable name (ImageNet-1K's where the folder is an ImageNet wnid)."""
    return [{"index": i, "wnid": c, "name": wnid_to_name(c) or c} for i, c in enumerate(classes)]


def _write_beton(items: list, tmp: Path, max_res: int, jpeg_quality: int, compress_prob: float, workers: int,
                 page_size: int, advance) -> dict[int, str]:
    """FFCV's writer over every item, decoding each once (``advance(n)`` as they are done); returns the unreadable
    ones (index -> reason), whose slots hold stand-ins."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    failures = tmp.with_name(tmp.name + ".failures")
    try:
        writer = DatasetWriter(str(tmp), {
            "image": RGBImageField(write_mode="proportion", max_resolution=max_res,
                                   compress_probability=compress_prob, jpeg_quality=jpeg_quality),
            "label": IntField(),
        }, num_workers=workers, page_size=page_size)
        with _ffcv_writer(advance):
            writer.from_indexed_dataset(_ImageDataset(items, max_res, failures))
        if not failures.is_file():
            return {}
        return {row["index"]: row["reason"] for row in map(json.loads, failures.read_text().splitlines())}
    finally:
        failures.unlink(missing_ok=True)


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
    workers = workers or os.cpu_count() or 1

    if not source.items:
        first = f" (the first: {source.skipped[0][0]}: {source.skipped[0][1]})" if source.skipped else ""
        raise ConvertError(f"{source.root}: no image files to convert; {len(source.skipped)} files skipped{first}")
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    try:
        with progress_bar(f"convert {out.name}: decode and write", len(source.items), "img") as advance:
            unreadable = _write_beton(source.items, tmp, max_res, jpeg_quality, compress_prob, workers, page_size,
                                      advance)
        if len(unreadable) == len(source.items):
            raise ConvertError(f"{source.root}: none of {len(source.items)} files could be read (the first: "
                               f"{source.items[0][0]}: {unreadable[0]})")
        if unreadable:
            drop_samples(tmp, sorted(unreadable))
        os.replace(tmp, out)
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
        "skipped": [{"path": str(p), "reason": r} for p, r in skipped],
        "ignored": [str(p) for p in source.ignored],
    }
    Path(f"{out}.report.json").write_text(json.dumps(report, indent=1))
    return report


def read_classes(beton: Path) -> list[dict]:
    path = Path(f"{beton}.classes.json")
    if not path.is_file():
        raise ConvertError(f"{path} is missing; it is written by 'imagenet-kit convert' next to the beton")
    return json.loads(path.read_text())


def print_summary(report: dict) -> None:
    """The first skipped files with their reasons, empty class folders, and one line of counts."""
    c = report["counts"]
    for item in report["skipped"][:10]:
        console.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}")
    if len(report["skipped"]) > 10:
        console.print(f"... and {len(report['skipped']) - 10} more in {report['out']}.report.json")
    for name in report["empty_classes"]:
        console.print(f"[yellow]empty class folder[/] {name}")
    click.echo(f"{report['out']}: seen {c['seen']}, written {c['written']}, skipped {c['skipped']}, "
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
        table_path = classes_from if classes_from.endswith(".json") else f"{classes_from}.classes.json"
        classes = [c["wnid"] for c in json.loads(Path(table_path).read_text())]
    src = Path(src)
    if src.name.endswith(".tar.gz"):  # a Hugging Face imagenet-1k shard: the class is in each file's name
        source = scan_gzip_shards([src], classes)
    elif src.suffix == ".tar":  # the official archives, read in place: val is the flat one, and needs --labels
        source = scan_val_tar(src, read_val_labels(Path(labels)), classes) if labels else scan_train_tar(src, classes)
    elif labels:
        source = scan_labelled_flat(src, read_val_labels(Path(labels)), classes)
    else:
        source = scan_imagefolder(src, classes)
    print_summary(convert(source, Path(out), max_res, jpeg_quality, compress_prob, workers, force))
