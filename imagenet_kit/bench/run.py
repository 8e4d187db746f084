"""``imagenet-kit bench run RUN``: record a finished training run's accuracy as a bench result line.

The line carries what a reader needs to trust the number: the recipe's key settings, the final and best
epoch metrics, training time, the hardware from the run's env.json and the command that made the run.
"""
from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from imagenet_kit.config import config_from_dict
from imagenet_kit.models.architecture import architecture
from imagenet_kit.progress import console
from imagenet_kit.result_rows import RESULTS_DIR, ResultsError, append_results, utc_now
from imagenet_kit.runs import RunFolder

# env.json's keys a row copies when the run has them: precision (since 2026-11-27); the peak LR used and how it
# was chosen, the CPU's speed flags and whether the tree was clean (since 2026-12-06).
RECORDED = ("precision", "peak_lr", "lr_rule", "cpu_flags", "git_clean")


def run_record(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    if not run.metrics.is_file():
        raise ResultsError(f"{run.metrics} not found: is {run_dir} a finished run folder?")
    epochs = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
    cfg = yaml.safe_load(run.config.read_text())
    env = json.loads(run.env.read_text())
    if len(epochs) < cfg["train"]["epochs"]:
        raise ResultsError(f"{run_dir}: {len(epochs)} of {cfg['train']['epochs']} epochs logged; "
                           "record finished runs only")
    last, best = epochs[-1], max(epochs, key=lambda m: m["top1"])
    return {
        "kind": "accuracy", "date": utc_now(), "run": run_dir.name, "data": cfg["data"]["name"],
        **architecture(config_from_dict(cfg).model),  # keys older config.yaml files lack take their defaults
        "epochs": cfg["train"]["epochs"], "batch": cfg["train"]["batch_size"],
        "train_res": sorted({m["res"] for m in epochs}), "crop": cfg["train"].get("crop", "random_resized"),
        "min_scale": cfg["train"]["min_scale"], "val_res": cfg["train"]["val_res"],
        "val_crop_ratio": cfg["train"].get("val_crop_ratio", 0.875),
        "flip_tta": cfg["train"]["flip_tta"], "lr": cfg["optim"]["lr"], "schedule": cfg["optim"]["schedule"],
        "optimizer": cfg["optim"].get("optimizer", "sgd"), "lookahead_k": cfg["optim"].get("lookahead_k", 0),
        "lr_batch": cfg["optim"]["lr_batch"],
        "top1": last["top1"], "top5": last["top5"], "best_top1": best["top1"], "best_epoch": best["epoch"] + 1,
        "train_minutes": sum(m["epoch_seconds"] for m in epochs) / 60,
        "device": env["device"], "world_size": env["world_size"], "torch_threads": env["torch_threads"],
        "git": env["git"], "command": env["command"], "per_epoch_top1": [m["top1"] for m in epochs],
        # what ran, as the run recorded it (env.json has each since the date given)
        **{key: env[key] for key in RECORDED if key in env},
    }


@click.command("run")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR)
def bench_run_command(run_dir: Path, results_dir: Path) -> None:
    """Append RUN_DIR's final accuracy (and settings, time, hardware) to bench/results/accuracy.jsonl."""
    record = run_record(run_dir)
    path = append_results(results_dir / "accuracy.jsonl", [record])
    console.print(f"{record['run']}: top-1 {100 * record['top1']:.2f}% after {record['epochs']} epochs "
                  f"({record['train_minutes']:.0f} min on {record['device']}) -> {path}")
