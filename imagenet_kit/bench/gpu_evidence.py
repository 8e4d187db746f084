"""``imagenet-kit bench gpu-evidence``: what one GPU shows about the kit, in one command that fits a short lease.

On a GPU: the kit's training step (``bench train``'s synthetic mode) and its plain-PyTorch twin at 160, 192 and
224 px, bf16 and fp16, channels_last, batch 256; both compiled at 192 px; peak GPU memory. With ``--bundle`` (a
folder from ``bench gpu-bundle``) also FFCV's loader alone on all cores and the kit's step fed by it at 160 and
192 px. Rows go to ``bench/results/`` (each names the GPU, driver, torch, CUDA, command and commit) and the
docs/results.md table is regenerated. The floors it checks are the ones the kit promises for an H100/H200-class GPU.

FFCV is imported only for the bundle's rows, so the command runs on a host with torch alone. ``--smoke`` runs the
same code at tiny sizes on whatever device is there: the test suite's guard against it rotting.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click
import torch
from rich.table import Table

from imagenet_kit.bench.report import RESULTS_DOC, update_results_doc
from imagenet_kit.bench.results import RESULTS_DIR, append_results, utc_now
from imagenet_kit.bench.train import bench_train
from imagenet_kit.environment import command_line, cpu_model, environment
from imagenet_kit.errors import KitError
from imagenet_kit.progress import console

# One H100/H200, bf16, channels_last, batch 256: img/s floors per resolution, and ratios between modes.
FLOORS_IMG_PER_S = {224: 3000, 160: 6000}
REAL_OVER_SYNTHETIC = 0.95
KIT_OVER_BARE = 0.98


@dataclass(frozen=True)
class Sizes:
    arch: str
    resolutions: tuple[int, ...]
    real_resolutions: tuple[int, ...]
    compile_res: int | None  # None: no compiled rows
    batch: int
    steps: int
    warmup: int
    precisions: tuple[str, ...]


GPU = Sizes("resnet50", (160, 192, 224), (160, 192), 192, 256, 50, 10, ("bf16", "fp16"))
# Seconds on 2 CPU cores; fp16 autocast needs CUDA, so a CPU smoke run times fp32 and bf16.
SMOKE_CPU = Sizes("resnet18", (32,), (32,), 32, 4, 2, 1, ("fp32", "bf16"))
SMOKE_GPU = Sizes("resnet18", (32,), (32,), 32, 4, 2, 1, ("bf16", "fp16"))


class EvidenceError(KitError):
    pass


def loader_rows(beton: Path, resolutions, batch: int, workers: int, manifest: dict) -> list[dict]:
    """FFCV's train loader alone, decoding on ``workers`` cores into host memory: one warm-up pass, one timed."""
    from imagenet_kit.bench.data import measure_ffcv

    rows = []
    for res in resolutions:
        images, wall, cpu_seconds = measure_ffcv(beton, res, workers, batch, epochs=1)
        rows.append({"kind": "data", "date": utc_now(), "loader": "ffcv", "src": manifest["src"],
                     "beton": str(beton), "max_res": manifest["max_res"], "compress_prob": 1.0,
                     "jpeg_quality": manifest["jpeg_quality"], "n_images": manifest["images"], "res": res,
                     "batch_size": batch, "epochs": 1, "workers": workers, "img_per_s": round(images / wall, 1),
                     "img_per_s_per_core": round(images / wall / workers, 1),
                     "cpu_cores_used": round(cpu_seconds / wall, 2), "ratio_vs_baseline": None,
                     "cpu": cpu_model(), "host": environment()["host"], "versions": environment(),
                     "command": command_line()})
    return rows


def measure(sizes: Sizes, device: torch.device, results_dir: Path, bundle: dict | None) -> list[dict]:
    """Every row of the evidence, appended to ``results_dir`` as it is measured (a later failure keeps them)."""
    common = dict(arch=sizes.arch, batch=sizes.batch, channels_last=True, results_dir=results_dir, device=device)
    rows = []
    for precision in sizes.precisions:
        rows += bench_train(resolutions=sizes.resolutions, precision=precision, steps=sizes.steps,
                            warmup=sizes.warmup, modes=("synthetic", "bare"), **common)
    if sizes.compile_res:
        rows += bench_train(resolutions=(sizes.compile_res,), precision=sizes.precisions[0], compile_=True,
                            steps=sizes.steps, warmup=sizes.warmup, modes=("synthetic", "bare"), **common)
    if bundle:
        beton = Path(bundle["path"]) / bundle["beton"]
        workers = os.cpu_count() or 1
        data = loader_rows(beton, sizes.real_resolutions, sizes.batch, workers, bundle)
        append_results(Path(results_dir) / "data.jsonl", data)
        # One pass of the bundle's beton: as many timed steps as it holds batches after the warm-up.
        batches = bundle["images"] // sizes.batch
        warmup = min(sizes.warmup, max(1, batches // 4))
        if batches - warmup < 1:
            raise EvidenceError(f"{beton}: {bundle['images']} images, too few for batch {sizes.batch}; rebuild the "
                                "bundle with more --images")
        rows += data + bench_train(resolutions=sizes.real_resolutions, precision=sizes.precisions[0],
                                   beton=beton, steps=min(sizes.steps, batches - warmup), warmup=warmup,
                                   workers=workers, modes=("synthetic", "real"), **common)
    return rows


def verdicts(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """(what, measured, met) for each floor the rows can be held to."""
    out = []
    for r in rows:
        if r["kind"] != "train" or r["precision"] != "bf16" or r["compile"]:
            continue
        if r["mode"] == "synthetic" and r["res"] in FLOORS_IMG_PER_S:
            floor = FLOORS_IMG_PER_S[r["res"]]
            out.append((f"kit step {r['res']} px >= {floor:,} img/s", f"{r['img_per_s']:,.0f}", r["img_per_s"] >= floor))
        if r["mode"] == "synthetic" and r["kit_overhead_pct"] is not None:
            ratio = 1 - r["kit_overhead_pct"] / 100
            out.append((f"kit >= {KIT_OVER_BARE:.0%} of plain PyTorch, {r['res']} px", f"{ratio:.1%}",
                        ratio >= KIT_OVER_BARE))
        if r["mode"] == "real":
            ratio = 1 - r["data_overhead_pct"] / 100
            out.append((f"real data >= {REAL_OVER_SYNTHETIC:.0%} of synthetic, {r['res']} px", f"{ratio:.1%}",
                        ratio >= REAL_OVER_SYNTHETIC))
    return out


def print_verdicts(rows: list[dict], device: torch.device) -> None:
    table = Table(title=f"GPU evidence on {rows[0]['device']}: floors for one H100/H200 (bf16, channels_last)")
    for col in ("floor", "measured", ""):
        table.add_column(col, justify="right")
    for what, value, met in verdicts(rows):
        table.add_row(what, value, "met" if met else "[red]missed[/]")
    console.print(table)
    if device.type != "cuda":
        console.print("smoke run on CPU: the floors are for a GPU and say nothing here")


@click.command("gpu-evidence")
@click.option("--bundle", type=click.Path(path_type=Path), default=None,
              help="a folder from `bench gpu-bundle`: adds FFCV's loader and the step on real data")
@click.option("--smoke", is_flag=True, help="tiny sizes on whatever device is here (resnet18, 32 px, batch 4)")
@click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR)
@click.option("--doc", type=click.Path(path_type=Path), default=RESULTS_DOC, show_default=True,
              help="regenerated from the results afterwards (the table between its results markers)")
def gpu_evidence_command(bundle, smoke, results_dir, doc):
    """The GPU rows the results need, in about 5 minutes on one GPU; --smoke: the same at tiny sizes anywhere."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not smoke:
        raise EvidenceError("no CUDA GPU here: gpu-evidence measures a GPU (add --smoke for a tiny run on this CPU)")
    if bundle is not None:
        from imagenet_kit.bench.gpu_bundle import activate

        bundle = activate(bundle)
        console.print(f"bundle {bundle['path']}: {bundle['images']} images at max side {bundle['max_res']}")
    sizes = GPU if not smoke else SMOKE_GPU if device.type == "cuda" else SMOKE_CPU
    rows = measure(sizes, device, results_dir, bundle)
    print_verdicts(rows, device)
    changed, count = update_results_doc(doc, results_dir)
    console.print(f"{len(rows)} rows appended under {results_dir}; {doc} {'updated' if changed else 'unchanged'} "
                  f"({count} rows in its table)")
