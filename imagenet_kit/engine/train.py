"""Training: ``train`` builds the run (``setup``), then each epoch is ``train_one_epoch``, ``evaluate`` and a
logbook line; plus the ``train`` command.

Spot-safe: checkpoints every epoch and every ``train.checkpoint_minutes``, written atomically; SIGTERM
or SIGINT finishes the current step, writes a checkpoint and exits cleanly; ``resume="auto"`` continues
from the newest readable checkpoint at the exact batch it stopped at.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass

import click
import torch

from imagenet_kit.config import RunConfig
from imagenet_kit.data.loaders import epoch_batches, finish_epoch, set_resolution
from imagenet_kit.data.storage import preread
from imagenet_kit.engine.evaluate import evaluate
from imagenet_kit.engine.init_weights import freeze_backbone
from imagenet_kit.engine.logbook import Logbook, peak_memory_mb, peak_reserved_mb, say_stopped
from imagenet_kit.engine.setup import Training, build_training
from imagenet_kit.engine.step import train_step
from imagenet_kit.errors import KitError
from imagenet_kit.optim.schedule import resolution_for_epoch
from imagenet_kit.options import build_config, recipe_options
from imagenet_kit.progress import ProgressLine, results
from imagenet_kit.runs import BEST
from imagenet_kit.runtime import Runtime, algorithm_choice, any_rank, init_runtime, mean_across_ranks, shutdown_runtime

# Steps between the loop's only host syncs (and, under torchrun, its only all-reduce besides DDP's gradients):
# the loss's finiteness, a stop signal and the timed checkpoint are agreed on there, so the GPU queue stays
# full in between. A SIGTERM is acted on within this many steps, seconds inside a spot instance's notice.
CHECK_EVERY = 20
WAITING = "waiting for the first batch (FFCV compiles its data pipeline in the first epoch)"


class DivergenceError(KitError):
    pass


class StopFlag:
    """Set by SIGTERM/SIGINT; the loop looks at it every CHECK_EVERY steps (torchrun forwards signals to ranks)."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class EpochStats:
    res: int
    train_loss: float
    images: int  # trained on by this rank in this run (a resumed epoch's skipped batches do not count)
    seconds: float
    img_per_s: float | None  # every rank's images per second from the epoch's first batch (``ProgressLine.rate``)
    stopped_at: int | None = None  # the step a stop (signal or train.max_steps) ended the epoch at


def train(cfg: RunConfig, runtime: Runtime, resume: str | None = None) -> dict:
    """Train per ``cfg``; returns the last epoch's metrics (or {"interrupted": True, ...})."""
    with algorithm_choice(cfg.train.deterministic):
        return _train(cfg, runtime, resume)


def _train(cfg: RunConfig, runtime: Runtime, resume: str | None) -> dict:
    t = build_training(cfg, runtime, resume)
    if runtime.local_rank == 0:  # one read per node; the other ranks wait for it at their first collective
        preread(list(cfg.betons), processes=max(1, runtime.world_size // runtime.nodes),
                enabled=cfg.data.preread and cfg.data.in_memory)
    logbook = Logbook(cfg.run, t.position.epoch, runtime.is_main, cfg.train.tensorboard, cfg.train.epochs)
    metrics = logbook.last
    try:
        return _epochs(t, logbook, metrics)
    finally:
        if t.mirror is not None:  # a stop or the end: the newest checkpoint's copy must be complete first
            t.mirror.wait()


def _epochs(t: Training, logbook: Logbook, metrics: dict) -> dict:
    cfg, runtime = t.cfg, t.runtime
    with StopFlag() as stop:
        for epoch in range(t.position.epoch, cfg.train.epochs):
            stats = train_one_epoch(t, epoch, stop, metrics)
            if stats.stopped_at is not None:
                if stop.requested and runtime.is_main:
                    say_stopped(epoch, stats.stopped_at)
                return {**metrics, "interrupted": stop.requested, "epoch": epoch, "step": stats.stopped_at}
            metrics = end_epoch(t, epoch, stats, logbook)
            if _stop_after_epoch(t, stop) and epoch < cfg.train.epochs - 1:
                if stop.requested and runtime.is_main:
                    say_stopped(epoch + 1, 0)
                return {**metrics, "interrupted": stop.requested}
    return metrics


def train_one_epoch(t: Training, epoch: int, stop: StopFlag, last_metrics: dict) -> EpochStats:
    """One pass over the train loader from ``t.position.step``; stops early, with a checkpoint, on request."""
    res = _start_epoch(t, epoch)
    batches = epoch_batches(t.train_loader, skip=t.position.step)
    try:
        return _train_batches(t, epoch, res, batches, stop, last_metrics)
    finally:  # a stop mid-epoch would otherwise leave FFCV's loader thread and its pinned batches behind
        finish_epoch(batches)


def _train_batches(t: Training, epoch: int, res: int, batches, stop: StopFlag, last_metrics: dict) -> EpochStats:
    cfg, pos = t.cfg, t.position
    loss_sum = torch.zeros((), dtype=torch.float64, device=t.runtime.device)
    steps_done, images, skip = 0, 0, pos.step
    if pos.partial:
        loss_sum += pos.partial["loss_sum"]
        steps_done = pos.partial["steps"]
    last_step, last_checkpoint, start = t.steps_per_epoch - 1, time.monotonic(), time.perf_counter()
    cap = cfg.train.max_steps or math.inf
    with _epoch_bar(t, epoch, res) as bar:
        if skip:  # mid-epoch resume: the loader starts at batch `skip`; the bar counts those as done
            bar.skip(skip * cfg.train.batch_size, steps=skip)
        for step, (batch, labels) in enumerate(batches, start=skip):
            loss = train_step(t.step_model, batch, labels, t.criterion, t.optimizer, t.scaler, t.scheduler,
                              t.amp_dtype, cfg.model.channels_last)
            loss_sum += loss.detach().double()
            steps_done, images, pos.global_step = steps_done + 1, images + len(labels), pos.global_step + 1
            if bar.line_due(len(labels)):  # a log line is due (every 10% or 60 s): worth one host sync
                bar.set_loss(loss_sum.item() / steps_done)
            bar.advance(len(labels))
            capped = pos.global_step >= cap  # the same step on every rank: nothing to agree on
            if pos.global_step % CHECK_EVERY and step < last_step and not capped:
                continue
            timed = time.monotonic() - last_checkpoint > cfg.train.checkpoint_minutes * 60
            (signalled, timed, diverged), running = _agree(t, stop.requested, timed, loss_sum)
            if diverged:
                raise divergence_error(pos.global_step, t.optimizer)
            bar.set_loss(running / steps_done)
            if (signalled or capped or timed) and step < last_step:
                t.save_checkpoint(epoch, step + 1, last_metrics, partial=(running, steps_done))
                last_checkpoint = time.monotonic()
            if (signalled or capped) and step < last_step:
                return EpochStats(res, math.nan, images, time.perf_counter() - start, bar.rate, stopped_at=step + 1)
    pos.step, pos.partial = 0, None
    train_loss = mean_across_ranks(loss_sum.item() / max(1, steps_done), t.runtime)
    return EpochStats(res, train_loss, images, time.perf_counter() - start, bar.rate)


def _start_epoch(t: Training, epoch: int) -> int:
    """Resolution, loader order, train mode and frozen layers of ``epoch``; returns the resolution."""
    cfg = t.cfg
    res = resolution_for_epoch(epoch, cfg.train.min_res, cfg.train.max_res, cfg.train.start_ramp,
                               cfg.train.end_ramp)
    set_resolution(t.train_loader, res)
    t.train_loader.next_epoch = epoch  # FFCV's order is a function of (seed, epoch): resume-stable
    t.step_model.train()
    if cfg.train.freeze_epochs:
        freeze_backbone(t.model, frozen=epoch < cfg.train.freeze_epochs)
    if t.runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(t.runtime.device)
    return res


def _epoch_bar(t: Training, epoch: int, res: int) -> ProgressLine:
    """Rank 0's progress of the epoch; its img/s counts every rank's images (metrics.jsonl's figure). The first
    epoch this process trains says why its first batch takes a while."""
    return ProgressLine(f"epoch {epoch + 1}/{t.cfg.train.epochs} @ {res}px",
                        t.steps_per_epoch * t.cfg.train.batch_size, steps=t.steps_per_epoch,
                        waiting=WAITING if epoch == t.position.epoch else "",
                        rate_scale=t.runtime.world_size, enabled=t.runtime.is_main)


def end_epoch(t: Training, epoch: int, stats: EpochStats, logbook: Logbook) -> dict:
    """Validate, log the epoch, and checkpoint it (``best.pt`` too when its top-1 is the best so far)."""
    cfg, runtime = t.cfg, t.runtime
    val = evaluate(t.model, t.val_loader, len(t.classes), runtime.device, t.amp_dtype, cfg.train.flip_tta,
                   cfg.model.channels_last, runtime.distributed)
    metrics = {
        "epoch": epoch, "res": stats.res, "train_loss": stats.train_loss, "val_loss": val["loss"],
        "top1": val["top1"], "top5": val["top5"], "lr": t.optimizer.param_groups[0]["lr"],
        # a one-step epoch has no rate after its first step: then the whole epoch's
        "img_per_s": stats.img_per_s or stats.images * runtime.world_size / stats.seconds,
        "epoch_seconds": stats.seconds,
        "peak_mem_mb": peak_memory_mb(runtime.device), "peak_reserved_mb": peak_reserved_mb(runtime.device),
        "global_step": t.position.global_step,
    }
    best_is_new = val["top1"] > t.position.best_top1
    t.position.best_top1 = max(t.position.best_top1, val["top1"])
    logbook.record(metrics)
    t.save_checkpoint(epoch + 1, 0, metrics)
    if best_is_new:
        t.save_checkpoint(epoch + 1, 0, metrics, name=BEST)
    return metrics


def _agree(t: Training, signalled: bool, timed: bool, loss_sum: torch.Tensor) -> tuple[list[bool], float]:
    """(a stop signal, a timed checkpoint due, a non-finite loss) on any rank, and this rank's loss sum: one
    all-reduce, one host sync. Every rank thus raises the divergence error at the same step instead of the
    others waiting for it."""
    flags = torch.tensor([signalled, timed], dtype=torch.float64, device=t.runtime.device)
    flags = torch.cat([flags, (~torch.isfinite(loss_sum)).double().reshape(1)])
    agreed, (loss,) = any_rank(flags, t.runtime, also=loss_sum.reshape(1))
    return agreed, loss


def _stop_after_epoch(t: Training, stop: StopFlag) -> bool:
    """A signal on any rank, or train.max_steps reached (smoke tests)."""
    flags = torch.tensor([stop.requested], dtype=torch.float64, device=t.runtime.device)
    return any_rank(flags, t.runtime)[0] or t.position.global_step >= (t.cfg.train.max_steps or math.inf)


def divergence_error(global_step: int, optimizer) -> DivergenceError:
    lr = optimizer.param_groups[0]["lr"]
    return DivergenceError(f"loss became non-finite by step {global_step} (lr {lr:.4g}). The last good "
                           f"checkpoint is kept; lower optim.lr (e.g. --lr {lr / 3:.3g}) or use --lr auto.")


@click.command("train")
@recipe_options
@click.option("--resume", default=None, help="'auto' (newest valid checkpoint of the run) or a checkpoint path")
def train_command(resume, **flags):
    """Train (one-cycle, mixed precision). Multi-GPU: torchrun --nproc_per_node=N -m imagenet_kit train ..."""
    cfg = build_config(**flags)  # build_training checks the betons, before the run folder exists
    runtime = init_runtime(cfg.train.dist_timeout_minutes)
    try:
        result = train(cfg, runtime, resume)
    finally:
        shutdown_runtime(runtime)
    if runtime.is_main and not result.get("interrupted") and "top1" in result:
        results.out(f"val top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
                   f"-> {cfg.run_dir}")
