"""The evaluation stage: top-1/top-5/loss over a loader, reduced across torchrun ranks, with per-class accuracy;
a checkpoint on a beton or an ImageFolder split; and the ``eval`` command."""
from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import click
import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.table import Table

from imagenet_kit.config import config_from_dict
from imagenet_kit.config.flags import output_dir_option
from imagenet_kit.data.convert import check_same_classes, convert
from imagenet_kit.data.loaders import create_val_loader
from imagenet_kit.data.pixels import normalize
from imagenet_kit.data.sources import scan_imagefolder
from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.environment import write_json
from imagenet_kit.models.factory import create_model, model_kwargs
from imagenet_kit.progress import console, results
from imagenet_kit.runs import BEST_IN_RUN, RunFolder, resolve_checkpoint
from imagenet_kit.runtime import autocast, local_runtime, resolve_precision


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, num_classes: int, device: torch.device,
             amp_dtype: torch.dtype | None = None, flip_tta: bool = False, channels_last: bool = True,
             distributed: bool = False) -> dict:
    """Returns top1/top5 (fractions), mean cross-entropy loss (no label smoothing), sample count and
    per-class correct/total counts. With ``flip_tta`` the logits of the image and its mirror are averaged."""
    model.eval()
    # Everything accumulates on the device: no host sync until the end (on a GPU a boolean mask, bincount or a
    # tensor built from a Python number would each wait for the queue to drain, several times per batch).
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, top1, top5
    correct = torch.zeros(num_classes, dtype=torch.float64, device=device)
    total = torch.zeros(num_classes, dtype=torch.float64, device=device)
    for images, labels in loader:
        x = normalize(images, channels_last)
        with autocast(device, amp_dtype):
            logits = model(x).float()
            if flip_tta:
                logits = (logits + model(torch.flip(x, dims=[3])).float()) / 2
        labels = labels.long().reshape(-1)
        top5 = logits.topk(min(5, num_classes), dim=1).indices
        hit1 = (top5[:, 0] == labels).double()
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(), hit1.sum(),
                             (top5 == labels[:, None]).any(1).double().sum()])
        total.index_add_(0, labels, torch.ones_like(hit1))
        correct.index_add_(0, labels, hit1)
    counts = torch.cat([sums, correct, total])
    if distributed:  # each rank evaluated its own shard (create_val_loader's rank/world_size): sum them
        dist.all_reduce(counts)
    counts = counts.tolist()
    (loss, top1, top5), correct, total = counts[:3], counts[3:3 + num_classes], counts[3 + num_classes:]
    count = sum(total)
    if count == 0:
        raise ValueError("evaluation saw no images: the validation data is empty")
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count),
            "per_class_correct": [int(c) for c in correct], "per_class_total": [int(c) for c in total]}


def evaluate_checkpoint(checkpoint: dict, beton: str, device: torch.device, res: int | None = None,
                        flip_tta: bool | None = None, batch_size: int = 128, workers: int = 0) -> dict:
    """Evaluate a kit checkpoint on a beton with the checkpoint's own model settings."""
    cfg = config_from_dict(checkpoint["config"])
    classes = checkpoint["classes"]
    model = create_model(**model_kwargs(cfg.model), num_classes=len(classes))
    model.load_state_dict(checkpoint["model"])
    model = model.to(device)
    res = res or cfg.train.val_res
    flip_tta = cfg.train.flip_tta if flip_tta is None else flip_tta
    amp_dtype, _ = resolve_precision(cfg.train.precision, device)
    loader = create_val_loader(beton, batch_size, res, device, workers,
                               crop_ratio=cfg.train.val_crop_ratio)
    result = evaluate(model, loader, len(classes), device, amp_dtype, flip_tta, cfg.model.channels_last)
    result.update({"res": res, "flip_tta": flip_tta, "arch": cfg.model.arch, "beton": str(beton)})
    return result


def per_class_rows(result: dict, classes: list[dict]) -> list[dict]:
    rows = []
    for c, correct, total in zip(classes, result["per_class_correct"], result["per_class_total"], strict=False):
        rows.append({"index": c["index"], "wnid": c["wnid"], "name": c["name"], "correct": correct,
                     "total": total, "top1": correct / total if total else float("nan")})
    return rows


def run_eval(checkpoint: Path, run: RunFolder, data_path: Path, *, res: int | None = None, tta: bool | None = None,
             batch_size: int = 128, out: Path | None = None) -> tuple[dict, Path]:
    """Evaluate ``checkpoint`` on a val beton or an ImageFolder split (converted to a temporary beton); write the
    summary JSON (default: the run's eval.json) and the per-class CSV beside it."""
    state = load_checkpoint(checkpoint)
    runtime = local_runtime()  # also after training under torchrun: rank 0 evaluates alone
    with tempfile.TemporaryDirectory() as tmp:
        beton = data_path
        if data_path.is_dir():  # an ImageFolder split: same decode path as training evaluation
            beton = Path(tmp) / "eval.beton"
            source = scan_imagefolder(data_path, [c["wnid"] for c in state["classes"]])
            convert(source, beton, max_res=512, compress_prob=0.0)
        check_same_classes(state["classes"], beton, f"checkpoint {checkpoint}")
        result = evaluate_checkpoint(state, str(beton), runtime.device, res, tta, batch_size)
    out_path = Path(out) if out else run.eval_json
    rows = per_class_rows(result, state["classes"])
    summary = {k: v for k, v in result.items() if not k.startswith("per_class")}
    summary.update({"checkpoint": str(checkpoint), "data": str(data_path), "per_class_csv":
                    str(out_path.with_suffix(".per_class.csv"))})
    write_json(out_path, summary)
    with open(out_path.with_suffix(".per_class.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return summary, out_path


@click.command("eval")
@click.option("--checkpoint", "checkpoint_path", default=None,
              help=f"a checkpoint, a run folder or a run name under --output-dir (uses {BEST_IN_RUN})  "
                   "[default: the newest run]")
@output_dir_option
@click.option("--data", "data_path", required=True, type=click.Path(exists=True, path_type=Path),
              help="a val beton, or an ImageFolder split (converted to a temporary beton)")
@click.option("--res", type=int, default=None, help="evaluation resolution (default: the recipe's val_res)")
@click.option("--tta/--no-tta", default=None, help="average with the horizontally flipped image")
@click.option("-b", "--batch-size", type=int, default=128)
@click.option("--out", type=click.Path(path_type=Path), default=None, help="JSON result (default: <run>/eval.json)")
def eval_command(checkpoint_path, output_dir, data_path, res, tta, batch_size, out):
    """Top-1, top-5, loss and per-class accuracy of a checkpoint; JSON + per-class CSV + a table."""
    checkpoint, run = resolve_checkpoint(checkpoint_path, output_dir)
    result, out_path = run_eval(checkpoint, run, data_path, res=res, tta=tta, batch_size=batch_size, out=out)
    table = Table(title=f"evaluation of {checkpoint}")
    for col in ("images", "res", "flip TTA", "top-1", "top-5", "loss"):
        table.add_column(col, justify="right")
    table.add_row(str(result["count"]), str(result["res"]), str(result["flip_tta"]), f"{100 * result['top1']:.2f}%",
                  f"{100 * result['top5']:.2f}%", f"{result['loss']:.4f}")
    console.print(table)
    results.out(f"val top-1 {100 * result['top1']:.2f}% -> {out_path}")
