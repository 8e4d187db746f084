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

import importlib.util
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import click
import torch
from rich.table import Table

from imagenet_kit.bench.gpu_checks import memory_rows, profile_settings, stop_resume_check
from imagenet_kit.bench.report import RESULTS_DOC, update_results_doc
from imagenet_kit.bench.train import bench_train
from imagenet_kit.environment import command_line, cpu_model, environment
from imagenet_kit.errors import KitError
from imagenet_kit.progress import console, results
from imagenet_kit.result_rows import RESULTS_DIR, append_results, utc_now

# One H100/H200, bf16, channels_last, batch 256: img/s floors per resolution, and ratios between modes.
FLOORS_IMG_PER_S = {224: 3000, 160: 6000}
REAL_OVER_SYNTHETIC = 0.95
KIT_OVER_BARE = 0.98


@dataclass(frozen=True)
class Sizes:
    arch: str
    resolutions: tuple[int, ...]  # the kit's step and its plain-PyTorch twin
    compile_res: int | None  # None: no compiled rows
    batch: int
    steps: int
    warmup: int
    precisions: tuple[str, ...]
    full_resolutions: tuple[int, ...]  # the full recipe's network on the bundle's beton: the rows `plan` reads
    full_batches: tuple[int, ...]
    memory_res: tuple[int, int]  # (largest training, evaluation) resolution of the profiles
    profiles: tuple[tuple[str, int, str, int], ...]  # (profile, batch, precision, eval batch); () = every profile's
    check_res: tuple[int, int]  # the stop/resume check's progressive resizing


GPU = Sizes("resnet50", (160, 192, 224), 192, 256, 50, 10, ("bf16", "fp16"), (160, 192), (256, 512), (192, 256), (),
            (160, 192))
# Seconds on 2 CPU cores. fp16 runs on CPU but emulated (seconds per step), so a CPU smoke run times fp32 and bf16;
# its memory rows are the process's RSS and its check crosses fp32 -> bf16.
SMOKE_CPU = Sizes("resnet18", (32,), 32, 4, 2, 1, ("fp32", "bf16"), (32,), (4,), (32, 48),
                  (("t4", 2, "bf16", 2),), (32, 48))
SMOKE_GPU = Sizes("resnet18", (32,), 32, 4, 2, 1, ("bf16", "fp16"), (32,), (4,), (32, 48),
                  (("t4", 2, "fp16", 2),), (64, 64))


class EvidenceError(KitError):
    pass


@dataclass(frozen=True)
class Planned:
    """One measurement of the evidence: the rows it appends, in words (what ``--dry-run`` lists), and its code."""
    what: str
    rows: str  # "<n> <kind> rows -> <file>"
    measure: Callable[[], list[dict]]


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


def read_manifest(bundle: Path) -> dict:
    """A GPU bundle's manifest.json (tools/gpu_bundle.py writes it), with its ``path``."""
    bundle = Path(bundle).resolve()
    manifest = bundle / "manifest.json"
    if not manifest.is_file():
        raise EvidenceError(f"{bundle}: not a GPU bundle (no manifest.json); build one with make gpu-bundle")
    return {**json.loads(manifest.read_text()), "path": str(bundle)}


def _px(resolutions) -> str:
    return ", ".join(f"{r} px" for r in resolutions)


def evidence_plan(sizes: Sizes, device: torch.device, results_dir: Path, bundle: dict | None) -> list[Planned]:
    """Every measurement, in the order it runs; each appends its rows under ``results_dir`` as it ends."""
    common = dict(arch=sizes.arch, batch=sizes.batch, channels_last=True, results_dir=results_dir, device=device,
                  steps=sizes.steps, warmup=sizes.warmup)
    plan = [Planned(f"kit step (synthetic, with its host syncs per step) and plain PyTorch, {sizes.arch}, batch "
                    f"{sizes.batch}, {precision}, {_px(sizes.resolutions)}",
                    f"{2 * len(sizes.resolutions)} train rows -> train.jsonl",
                    partial(bench_train, resolutions=sizes.resolutions, precision=precision,
                            modes=("synthetic", "bare"), **common))
            for precision in sizes.precisions]
    if sizes.compile_res:
        plan.append(Planned(f"both compiled (torch.compile), {sizes.compile_res} px, {sizes.precisions[0]}",
                            "2 train rows -> train.jsonl",
                            partial(bench_train, resolutions=(sizes.compile_res,), precision=sizes.precisions[0],
                                    compile_=True, modes=("synthetic", "bare"), **common)))
    profiles = sizes.profiles or tuple(profile_settings())
    train_res, eval_res = sizes.memory_res
    plan.append(Planned(f"kit step with cuDNN's autotuner off, {train_res} px, {sizes.precisions[0]}",
                        "1 train row -> train.jsonl",
                        partial(bench_train, resolutions=(train_res,), precision=sizes.precisions[0],
                                modes=("synthetic",), autotune=False, **common)))
    plan.append(Planned(f"peak reserved and allocated memory, {sizes.arch} + BlurPool, {train_res} px training and "
                        f"{eval_res} px evaluation with flip TTA, at each profile's batch and precision: "
                        + ", ".join(f"{p} {b} {prec}" for p, b, prec, _ in profiles),
                        f"{2 * len(profiles)} memory rows -> memory.jsonl",
                        partial(_appended, "memory.jsonl", results_dir,
                                partial(memory_rows, sizes.arch, profiles, train_res, eval_res, device))))
    if bundle:
        plan += _bundle_plan(sizes, device, results_dir, bundle)
    return plan


def _bundle_plan(sizes: Sizes, device: torch.device, results_dir: Path, bundle: dict) -> list[Planned]:
    """What needs FFCV and real images: the loader alone, the full recipe's network fed by it, and the check."""
    beton = Path(bundle["path"]) / bundle["beton"]
    workers = os.cpu_count() or 1
    resolutions, precision = sizes.full_resolutions, sizes.precisions[0]
    plan = [Planned(f"FFCV's loader alone on {workers} cores, {bundle['images']} images, {_px(resolutions)}",
                    f"{len(resolutions)} data rows -> data.jsonl",
                    partial(_appended, "data.jsonl", results_dir,
                            partial(loader_rows, beton, resolutions, sizes.batch, workers, bundle)))]
    for batch in sizes.full_batches:
        passes = -(-(sizes.warmup + sizes.steps) * batch // bundle["images"])
        plan.append(Planned(f"the full recipe's network ({sizes.arch} + BlurPool) fed by FFCV from "
                            f"{bundle['beton']} ({passes} passes) and on synthetic batches, batch {batch}, "
                            f"{precision}, {_px(resolutions)}: the rows `plan` reads",
                            f"{2 * len(resolutions)} train rows -> train.jsonl",
                            partial(bench_train, arch=sizes.arch, resolutions=resolutions, batch=batch,
                                    precision=precision, beton=beton, steps=sizes.steps, warmup=sizes.warmup,
                                    workers=workers, results_dir=results_dir, device=device,
                                    model_options={"blurpool": True}, modes=("synthetic", "real"), passes=passes)))
    low, high = sizes.check_res
    plan.append(Planned(f"3 short epochs at {low} -> {high} px: SIGTERM in epoch 1, resume, SIGTERM in epoch 2, "
                        f"resume in {sizes.precisions[1]} after {sizes.precisions[0]}", "1 check row -> checks.jsonl",
                        partial(_appended, "checks.jsonl", results_dir,
                                lambda: [stop_resume_check(bundle, sizes.arch, sizes.check_res,
                                                           sizes.precisions[:2], device)])))
    return plan


def _appended(name: str, results_dir: Path, measure: Callable[[], list[dict]]) -> list[dict]:
    rows = measure()
    append_results(Path(results_dir) / name, rows)
    return rows


def verdicts(rows: list[dict]) -> list[tuple[str, str, bool]]:
    """(what, measured, met) for each floor the rows can be held to."""
    out = []
    for r in rows:
        if r["kind"] == "memory":
            out.append((f"{r['profile']} {r['phase']}, batch {r['batch']} {r['precision']} at {r['res']} px fits",
                        f"{r['reserved_mb']:,.0f} MB reserved", r["fits"]))
        elif r["kind"] == "check":
            out.append(("SIGTERM mid-epoch, resume, resume in another precision", f"stopped at {r['stopped_at']}",
                        r["passed"]))
        elif r["kind"] == "train" and not r["compile"]:
            out += _train_verdicts(r)
    return out


def _train_verdicts(r: dict) -> list[tuple[str, str, bool]]:
    out = []
    if r["mode"] == "synthetic" and r["precision"] == "fp16" and r.get("host_syncs_per_step") is not None:
        out.append((f"fp16 step waits for the GPU 0 times (fused SGD), {r['res']} px", f"{r['host_syncs_per_step']:g}",
                    r["host_syncs_per_step"] == 0))
    if r["mode"] == "real":
        ratio = 1 - r["data_overhead_pct"] / 100
        out.append((f"real data >= {REAL_OVER_SYNTHETIC:.0%} of synthetic, batch {r['batch']}, {r['res']} px",
                    f"{ratio:.1%}", ratio >= REAL_OVER_SYNTHETIC))
    if r["precision"] != "bf16" or r.get("blurpool"):
        return out
    if r["mode"] == "synthetic" and r["res"] in FLOORS_IMG_PER_S and r.get("cudnn_benchmark", True):
        floor = FLOORS_IMG_PER_S[r["res"]]
        out.append((f"kit step {r['res']} px >= {floor:,} img/s", f"{r['img_per_s']:,.0f}", r["img_per_s"] >= floor))
    if r["mode"] == "synthetic" and r["kit_overhead_pct"] is not None:
        ratio = 1 - r["kit_overhead_pct"] / 100
        out.append((f"kit >= {KIT_OVER_BARE:.0%} of plain PyTorch, {r['res']} px", f"{ratio:.1%}",
                    ratio >= KIT_OVER_BARE))
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
              help="a folder from `make gpu-bundle`: adds FFCV's loader, the full recipe's network on real data and "
                   "the stop/resume check")
@click.option("--smoke", is_flag=True, help="tiny sizes on whatever device is here (resnet18, 32 px, batch 4)")
@click.option("--dry-run", is_flag=True, help="list every row it would write, measuring nothing (runs anywhere)")
@click.option("--results-dir", type=click.Path(path_type=Path), default=RESULTS_DIR)
@click.option("--doc", type=click.Path(path_type=Path), default=RESULTS_DOC, show_default=True,
              help="regenerated from the results afterwards (the table between its results markers)")
def gpu_evidence_command(bundle, smoke, dry_run, results_dir, doc):
    """The GPU rows the results and `plan` need, in under ten minutes on one GPU; --smoke: the same at tiny sizes
    anywhere; --dry-run: what it would write."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not (smoke or dry_run):
        raise EvidenceError("no CUDA GPU here: gpu-evidence measures a GPU (add --smoke for a tiny run on this CPU, "
                            "or --dry-run for what it would write)")
    if bundle is not None:
        bundle = read_manifest(bundle)
        if not dry_run and importlib.util.find_spec("ffcv") is None:
            raise EvidenceError(f"--bundle {bundle['path']}: FFCV is not importable here; on a host without it run "
                                "make gpu-evidence, which puts the bundle's FFCV first (tools/gpu_bundle.py run)")
        console.print(f"bundle {bundle['path']}: {bundle['images']} images at max side {bundle['max_res']}")
    sizes = GPU if not smoke else SMOKE_GPU if device.type == "cuda" else SMOKE_CPU
    plan = evidence_plan(sizes, device, results_dir, bundle)
    if dry_run:
        for planned in plan:
            results.out(f"{planned.rows}: {planned.what}")
        if bundle is None:
            console.print("without --bundle (make gpu-bundle), FFCV's loader, the full recipe's real-data rows and "
                          "the stop/resume check are left out")
        return
    rows = []
    for number, planned in enumerate(plan, 1):
        start = time.monotonic()
        console.print(f"gpu-evidence {number}/{len(plan)}: {planned.what}")
        rows += planned.measure()
        console.print(f"gpu-evidence {number}/{len(plan)}: {time.monotonic() - start:.0f} s")
    print_verdicts(rows, device)
    changed, count = update_results_doc(doc, results_dir)
    console.print(f"{len(rows)} rows appended under {results_dir}; {doc} {'updated' if changed else 'unchanged'} "
                  f"({count} rows in its table)")
