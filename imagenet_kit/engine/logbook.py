"""What a run records per epoch: a metrics.jsonl line, curves.png, TensorBoard scalars and one console line."""
from __future__ import annotations

import json

import torch

from imagenet_kit.engine import plots
from imagenet_kit.errors import ConfigError
from imagenet_kit.progress import console
from imagenet_kit.runs import RunFolder

TENSORBOARD_KEYS = ("train_loss", "val_loss", "top1", "top5", "lr", "img_per_s", "res")


class Logbook:
    """The run's epoch history. On rank 0 it reads metrics.jsonl, dropping epochs from ``start_epoch`` on (a
    resumed run redoes them), and appends one line per finished epoch; other ranks keep nothing."""

    def __init__(self, run: RunFolder, start_epoch: int, writes: bool, tensorboard: bool, epochs: int):
        self.run, self.writes, self.tensorboard, self.epochs = run, writes, tensorboard, epochs
        self.history = read_history(run, start_epoch) if writes else []

    @property
    def last(self) -> dict:
        return self.history[-1] if self.history else {}

    def record(self, metrics: dict) -> None:
        if not self.writes:
            return
        self.history.append(metrics)
        with open(self.run.metrics, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        plots.plot_curves(self.history, self.run.curves_png, self.run.root.name)
        if self.tensorboard:
            log_tensorboard(self.run, metrics)
        console.print(f"epoch {metrics['epoch'] + 1}/{self.epochs}: train loss {metrics['train_loss']:.4f}  "
                      f"val loss {metrics['val_loss']:.4f}  top-1 {100 * metrics['top1']:.2f}%  "
                      f"top-5 {100 * metrics['top5']:.2f}%  {metrics['img_per_s']:.1f} img/s")


def read_history(run: RunFolder, start_epoch: int) -> list[dict]:
    """metrics.jsonl lines of epochs before ``start_epoch``; the file is rewritten without the others."""
    if not run.metrics.is_file():
        return []
    rows = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["epoch"] < start_epoch]
    run.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def log_tensorboard(run: RunFolder, metrics: dict) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
    # One short-lived writer per epoch: nothing stays open across a kill, and resumed runs append.
    with SummaryWriter(str(run.tensorboard)) as writer:
        for key in TENSORBOARD_KEYS:
            writer.add_scalar(key, metrics[key], metrics["epoch"] + 1)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the epoch's reset. CPU: the process's peak resident set (Linux: KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_reserved_mb(device: torch.device) -> float:
    """CUDA: peak memory the caching allocator held since the epoch's reset, what the GPU must have free (allocated
    understates it by the allocator's cached blocks and fragmentation). CPU: the peak resident set, as above."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**20
    return peak_memory_mb(device)


def say_stopped(epoch: int, step: int) -> None:
    console.print(f"stopped by signal at epoch {epoch + 1}, step {step}; checkpoint written. Resume with the "
                  "same command plus --resume auto (imagenet-kit run resumes by itself)")
