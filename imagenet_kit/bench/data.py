"""Data-loading benchmark (issue 3): the kit's FFCV train loader against PIL + torchvision on the same JPEGs.

Both sides produce the same batches: uint8 3x176x176 random-resized crops (scale 0.08-1, ratio 3/4-4/3),
randomly flipped, shuffled, ``batch_size`` per batch with the last partial batch dropped. The baseline
reads the original JPEGs; the kit reads betons written by ``convert`` at each ``max_res`` with its
defaults (FFCV's ImageNet settings: half the images stored as quality-90 JPEG, half as raw pixels).
Each loader gets one untimed warm-up pass (FFCV compiles its pipeline, workers start, the page cache
fills), then ``epochs`` timed passes. Throughput per core is images/s divided by ``workers``, the cores
each side is given; ``cpu_cores_used`` records how many it really kept busy.
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import socket
import time
from pathlib import Path

import click
import torch
from PIL import Image
from rich.table import Table

from imagenet_kit.data.convert import DEFAULT_COMPRESS_PROB, DEFAULT_JPEG_QUALITY, convert
from imagenet_kit.data.sources import Source, scan_imagefolder, scan_labelled_flat
from imagenet_kit.data.workers import usable_workers
from imagenet_kit.environment import command_line, cpu_model, environment
from imagenet_kit.progress import console
from imagenet_kit.result_rows import RESULTS_DIR, append_results, utc_now

PSEUDO_CLASS = "images"  # a flat folder's one class: labels play no part in throughput


def scan_any(src: Path) -> Source:
    """ImageFolder if SRC has sub-folders, else every file of the flat folder under one pseudo-class."""
    if any(p.is_dir() and not p.name.startswith(".") for p in src.iterdir()):
        return scan_imagefolder(src)
    return scan_labelled_flat(src, {p.stem: PSEUDO_CLASS for p in src.iterdir() if p.is_file()})


class _JpegFiles(torch.utils.data.Dataset):
    """The baseline input: what torchvision's ImageFolder does per item (PIL open, convert to RGB)."""

    def __init__(self, items: list[tuple[Path, int]], transform):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        return self.transform(image), label


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its live child processes (DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    for child in multiprocessing.active_children():
        fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def _timed_passes(loader, epochs: int) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds) over ``epochs`` passes, after one untimed warm-up pass."""
    for _ in loader:
        pass
    cpu0, t0, images = _cpu_seconds(), time.perf_counter(), 0
    for _ in range(epochs):
        for batch in loader:
            images += len(batch[0])
    wall = time.perf_counter() - t0
    return images, wall, _cpu_seconds() - cpu0


def measure_baseline(items: list[tuple[Path, int]], res: int, workers: int, batch_size: int,
                     epochs: int) -> tuple[int, float, float]:
    from torchvision import transforms

    transform = transforms.Compose([transforms.RandomResizedCrop(res), transforms.RandomHorizontalFlip(),
                                    transforms.PILToTensor()])
    # Persistent workers: started once, during the warm-up, and not again each epoch (the baseline's best case).
    loader = torch.utils.data.DataLoader(_JpegFiles(items, transform), batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=True)
    return _timed_passes(loader, epochs)


def measure_ffcv(beton: Path, res: int, workers: int, batch_size: int, epochs: int) -> tuple[int, float, float]:
    from imagenet_kit.data.loaders import create_train_loader

    # The warm-up pass also compiles FFCV's pipeline.
    return _timed_passes(create_train_loader(str(beton), batch_size, res, torch.device("cpu"), workers), epochs)


def bench_data(src, out_dir, res: int = 176, workers: int = 1, batch_size: int = 64,
               max_res_list=(256, 512), epochs: int = 2, results_dir=RESULTS_DIR,
               compress_prob: float = DEFAULT_COMPRESS_PROB) -> dict:
    """Convert SRC at each max-res, time both loaders, append one JSON line each to RESULTS_DIR/data.jsonl.

    Returns ``{"baseline": record, "ffcv": [record per max-res], "results": path}``."""
    src, out_dir, results = Path(src), Path(out_dir), Path(results_dir) / "data.jsonl"
    workers = usable_workers(workers, "bench data")  # the row records the count that was timed
    source = scan_any(src)
    betons, unreadable = {}, set()
    for max_res in max_res_list:
        betons[max_res] = out_dir / f"{src.name}-{max_res}-{compress_prob:g}.beton"
        # all cores: conversion is not what is measured
        report = convert(source, betons[max_res], max_res, DEFAULT_JPEG_QUALITY, compress_prob, workers=0,
                         force=True)
        unreadable |= {s["path"] for s in report["skipped"]}
    items = [(p, label) for p, label in source.items if str(p) not in unreadable]  # the betons' images
    if len(items) < batch_size:  # both loaders drop the last partial batch: nothing would be timed
        raise ValueError(f"{src}: {len(items)} readable images, fewer than one batch of {batch_size}")

    # torch's intra-op threads would let either side's main process use more cores than it is given.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # Baseline first: its DataLoader forks workers, best done before any FFCV loader thread exists.
        measured = {None: measure_baseline(items, res, workers, batch_size, epochs)}
        for max_res in max_res_list:
            measured[max_res] = measure_ffcv(betons[max_res], res, workers, batch_size, epochs)
    finally:
        torch.set_num_threads(threads)

    common = {"kind": "data", "date": utc_now(),
              "host": socket.gethostname(), "cpu": cpu_model(), "versions": environment(),
              "command": command_line(), "src": str(src.resolve()), "n_images": len(items), "res": res,
              "workers": workers, "batch_size": batch_size, "epochs": epochs}
    rates = {m: images / wall for m, (images, wall, _) in measured.items()}
    lines = [{**common, "max_res": m, "loader": "pil-torchvision" if m is None else "ffcv",
              "compress_prob": None if m is None else compress_prob,
              "jpeg_quality": None if m is None else DEFAULT_JPEG_QUALITY,
              "img_per_s": round(rates[m], 1), "img_per_s_per_core": round(rates[m] / workers, 1),
              "cpu_cores_used": round(cpu / wall, 2), "ratio_vs_baseline": round(rates[m] / rates[None], 3)}
             for m, (_, wall, cpu) in measured.items()]
    append_results(results, lines)
    return {"baseline": lines[0], "ffcv": lines[1:], "results": str(results)}


def print_table(result: dict) -> None:
    first = result["baseline"]
    table = Table(title=f"data loading, {first['n_images']} images, crop {first['res']}, "
                        f"{first['workers']} worker(s), {first['cpu']}")
    for col in ("loader", "max res", "img/s", "img/s/core", "cores used", "vs baseline"):
        table.add_column(col, justify="right")
    for r in [first, *result["ffcv"]]:
        table.add_row(r["loader"], str(r["max_res"] or "original"), f"{r['img_per_s']:,.0f}",
                      f"{r['img_per_s_per_core']:,.0f}", f"{r['cpu_cores_used']:.2f}",
                      f"{r['ratio_vs_baseline']:.2f}x")
    console.print(table)
    console.print(f"appended {1 + len(result['ffcv'])} lines to {result['results']}")


@click.command("data")
@click.option("--src", type=click.Path(exists=True, file_okay=False), required=True,
              help="ImageFolder split or flat folder of JPEGs")
@click.option("--res", type=int, default=176, show_default=True, help="random-resized-crop output size")
@click.option("-j", "--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="FFCV threads / DataLoader worker processes (the cores each side gets)")
@click.option("-b", "--batch-size", type=int, default=64, show_default=True)
@click.option("--max-res", default="256,512", show_default=True, help="comma list: one beton per longest side")
@click.option("--compress-prob", type=click.FloatRange(0, 1), default=DEFAULT_COMPRESS_PROB, show_default=True,
              help="the betons' share of JPEG-stored images (1: JPEG only; the rest raw pixels)")
@click.option("--epochs", type=int, default=2, show_default=True, help="timed passes after one warm-up pass")
@click.option("--out", default="betons/bench", show_default=True, help="where the betons go")
@click.option("--results-dir", default=str(RESULTS_DIR), show_default=True)
def bench_data_command(src, res, workers, batch_size, max_res, compress_prob, epochs, out, results_dir):
    """Images/s per core: the kit's FFCV train loader vs PIL + torchvision on the original JPEGs."""
    max_res_list = [int(m) for m in max_res.split(",") if m.strip()]
    print_table(bench_data(src, out, res, workers, batch_size, max_res_list, epochs, results_dir, compress_prob))

