"""``imagenet-kit bench convert``: the kit's converter against FFCV's writer as ffcv-imagenet drives it.

ffcv-imagenet's ``write_imagenet.py`` reads torchvision's ``ImageFolder`` (PIL, full-size decode) and hands it to
``DatasetWriter(path, {"image": RGBImageField(write_mode, max_resolution, compress_probability, jpeg_quality),
"label": IntField()}, num_workers)`` with ``from_indexed_dataset(dataset, chunksize=100)``; its
``write_imagenet.sh`` uses ``write_mode=proportion``. The kit's side is ``data.convert.convert`` on the same files
(the same folder of links), the same settings and workers. Each setting is timed ``--repeats`` times per writer, the
two writers alternating, and the fastest of each is kept (the others are noise from the rest of the machine).

Bytes per image is the data a beton holds per image (its allocations and metadata row), not the file size over the
image count: each writer process leaves its last page part-empty, a constant that only a small beton notices.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import click
from rich.table import Table

from imagenet_kit.bench.data import scan_any
from imagenet_kit.data.convert import convert
from imagenet_kit.environment import command_line, cpu_model, environment
from imagenet_kit.errors import ConfigError
from imagenet_kit.progress import console
from imagenet_kit.result_rows import RESULTS_DIR, append_results, utc_now

DEFAULT_SETTINGS = "500:0.5:90,256:1:90"  # the full recipe's (FFCV's ImageNet) and JPEG-only at 256 px


def parse_settings(text: str) -> list[tuple[int, float, int]]:
    """'500:0.5:90,256:1:90' -> [(max_res, compress_prob, jpeg_quality), ...]."""
    settings = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        try:
            max_res, compress_prob, quality = item.split(":")
            settings.append((int(max_res), float(compress_prob), int(quality)))
        except ValueError:
            raise ConfigError(f"--settings {item!r}: expected MAX_RES:COMPRESS_PROB:JPEG_QUALITY, "
                              "e.g. 256:1:90") from None
        if not (16 <= settings[-1][0] and 0 <= settings[-1][1] <= 1 and 1 <= settings[-1][2] <= 100):
            raise ConfigError(f"--settings {item!r}: max_res >= 16, compress_prob in [0, 1], quality in [1, 100]")
    if not settings:
        raise ConfigError("--settings: give at least one MAX_RES:COMPRESS_PROB:JPEG_QUALITY")
    return settings


def link_imagefolder(src: Path, folder: Path, copies: int = 1) -> Path:
    """SRC's readable layout as an ImageFolder of links (``folder/<class>/<file>``), which both writers read,
    each file ``copies`` times. A flat folder of ``<wnid>_<name>.JPEG`` files gets its class from the name's first
    ``_`` field."""
    source = scan_any(src)
    for path, label in source.items:
        wnid = source.classes[label] if len(source.classes) > 1 else path.stem.split("_")[0]
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        for copy in range(copies):
            name = path.name if copy == 0 else f"{path.stem}-{copy}{path.suffix}"
            (folder / wnid / name).symlink_to(path.resolve())
    return folder


def ffcv_write(folder: Path, out: Path, max_res: int, compress_prob: float, quality: int, workers: int) -> None:
    """write_imagenet.py's conversion, as published."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter
    from torchvision.datasets import ImageFolder

    writer = DatasetWriter(str(out), {
        "image": RGBImageField(write_mode="proportion", max_resolution=max_res, compress_probability=compress_prob,
                               jpeg_quality=quality),
        "label": IntField(),
    }, num_workers=workers)
    writer.from_indexed_dataset(ImageFolder(root=str(folder)), chunksize=100)


def data_bytes_per_image(beton: Path) -> float:
    from ffcv.reader import Reader

    reader = Reader(str(beton))
    return (int(reader.alloc_table["size"].sum()) + reader.metadata.nbytes) / reader.num_samples


def _seconds(write, *args, **kwargs) -> float:
    start = time.perf_counter()
    write(*args, **kwargs)
    return time.perf_counter() - start


def bench_convert(src: Path, settings: list[tuple[int, float, int]], workers: int, repeats: int,
                  results_dir: Path = RESULTS_DIR, copies: int = 1) -> list[dict]:
    """Time both writers on SRC at each setting; append one row per writer and setting to convert.jsonl."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        folder = link_imagefolder(Path(src), Path(tmp) / "train", copies)
        source = scan_any(folder)
        n_images = len(source.items)
        for max_res, compress_prob, quality in settings:
            kit_out, ffcv_out = Path(tmp) / "kit.beton", Path(tmp) / "ffcv.beton"
            seconds = {"kit": [], "ffcv": []}
            for _ in range(repeats):  # alternating, so that both see the same machine
                seconds["ffcv"].append(_seconds(ffcv_write, folder, ffcv_out, max_res, compress_prob, quality,
                                                workers))
                seconds["kit"].append(_seconds(convert, source, kit_out, max_res, quality, compress_prob, workers,
                                               force=True))
            common = {"kind": "convert", "date": utc_now(), "cpu": cpu_model(), "versions": environment(),
                      "command": command_line(), "src": str(Path(src).resolve()), "n_images": n_images,
                      "copies": copies,
                      "max_res": max_res, "compress_prob": compress_prob, "jpeg_quality": quality,
                      "workers": workers, "repeats": repeats}
            best = {name: min(times) for name, times in seconds.items()}
            for name, beton in (("ffcv", ffcv_out), ("kit", kit_out)):
                rows.append({**common, "writer": name, "seconds": round(best[name], 3),
                             "img_per_s": round(n_images / best[name], 1),
                             "bytes_per_image": round(data_bytes_per_image(beton)),
                             "time_vs_ffcv": round(best[name] / best["ffcv"], 3)})
    append_results(Path(results_dir) / "convert.jsonl", rows)
    return rows


@click.command("convert")
@click.option("--src", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="ImageFolder split, or flat folder of <wnid>_*.JPEG files")
@click.option("--settings", default=DEFAULT_SETTINGS, show_default=True,
              help="comma list of MAX_RES:COMPRESS_PROB:JPEG_QUALITY")
@click.option("-j", "--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1, show_default=True,
              help="writer processes, the same for both")
@click.option("--repeats", type=click.IntRange(min=1), default=3, show_default=True, help="fastest of N each")
@click.option("--copies", type=click.IntRange(min=1), default=1, show_default=True,
              help="convert each file N times (as N links): a few hundred files take seconds, and the writers' "
                   "fixed start-up cost and the machine's noise weigh less on more")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True)
def bench_convert_command(src, settings, workers, repeats, copies, results_dir):
    """The kit's convert vs FFCV's writer as write_imagenet.py drives it: time and bytes per image."""
    rows = bench_convert(src, parse_settings(settings), workers, repeats, results_dir, copies)
    table = Table(title=f"conversion, {rows[0]['n_images']} images, {workers} worker(s), {rows[0]['cpu']}")
    for column in ("settings", "writer", "img/s", "time vs FFCV", "kB per image"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(f"{r['max_res']} px, {r['compress_prob']:g} JPEG, q{r['jpeg_quality']}", r["writer"],
                      f"{r['img_per_s']:,.0f}", f"{r['time_vs_ffcv']:.2f}x", f"{r['bytes_per_image'] / 1e3:,.1f}")
    console.print(table)
    console.print(f"appended {len(rows)} lines to {Path(results_dir) / 'convert.jsonl'}")
