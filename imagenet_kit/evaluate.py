"""Top-1/top-5/loss over a loader, reduced across torchrun ranks, with per-class accuracy."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from imagenet_kit.data.loaders import normalize
from imagenet_kit.runtime import autocast


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, num_classes: int, device: torch.device,
             amp_dtype: torch.dtype | None = None, flip_tta: bool = False, channels_last: bool = True,
             distributed: bool = False) -> dict:
    """Returns top1/top5 (fractions), mean cross-entropy loss (no label smoothing), sample count and
    per-class correct/total counts. With ``flip_tta`` the logits of the image and its mirror are averaged."""
    model.eval()
    # Sums kept on the device so there is one host sync at the end, not one per batch.
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
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
        hit1 = top5[:, 0] == labels
        sums += torch.stack([F.cross_entropy(logits, labels, reduction="sum").double(),
                             hit1.sum().double(), (top5 == labels[:, None]).any(1).sum().double(),
                             torch.tensor(float(len(labels)), dtype=torch.float64, device=device)])
        total += torch.bincount(labels, minlength=num_classes).double()
        correct += torch.bincount(labels[hit1], minlength=num_classes).double()
    if distributed:
        for tensor in (sums, correct, total):
            dist.all_reduce(tensor)
    loss, top1, top5, count = sums.tolist()
    if count == 0:
        raise ValueError("evaluation saw no images: the validation data is empty")
    return {"loss": loss / count, "top1": top1 / count, "top5": top5 / count, "count": int(count),
            "per_class_correct": correct.long().tolist(), "per_class_total": total.long().tolist()}


def evaluate_checkpoint(checkpoint: dict, beton: str, device: torch.device, res: int | None = None,
                        flip_tta: bool | None = None, batch_size: int = 128, workers: int = 0) -> dict:
    """Evaluate a kit checkpoint on a beton with the checkpoint's own model settings."""
    from imagenet_kit.config import config_from_dict
    from imagenet_kit.data.loaders import create_val_loader, default_workers
    from imagenet_kit.model import model_from_config
    from imagenet_kit.runtime import resolve_precision

    cfg = config_from_dict(checkpoint["config"])
    classes = checkpoint["classes"]
    model = model_from_config(cfg.model, len(classes))
    model.load_state_dict(checkpoint["model"])
    model = model.to(device=device, memory_format=torch.channels_last)
    res = res or cfg.train.val_res
    flip_tta = cfg.train.flip_tta if flip_tta is None else flip_tta
    amp_dtype, _ = resolve_precision(cfg.train.precision, device)
    loader = create_val_loader(beton, batch_size, res, device, default_workers(workers),
                               crop_ratio=cfg.train.val_crop_ratio)
    result = evaluate(model, loader, len(classes), device, amp_dtype, flip_tta)
    result.update({"res": res, "flip_tta": flip_tta, "arch": cfg.model.arch, "beton": str(beton)})
    return result


def per_class_rows(result: dict, classes: list[dict]) -> list[dict]:
    rows = []
    for c, correct, total in zip(classes, result["per_class_correct"], result["per_class_total"]):
        rows.append({"index": c["index"], "wnid": c["wnid"], "name": c["name"], "correct": correct,
                     "total": total, "top1": correct / total if total else float("nan")})
    return rows
