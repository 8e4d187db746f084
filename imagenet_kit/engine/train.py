"""Training: ``train`` assembles the run (``setup``), reads its betons into the page cache, then trains each epoch
(``train_one_epoch``) and ends it (``end_epoch``: evaluate, log, checkpoint); plus the ``train`` command.

Spot-safe: checkpoints every epoch and every ``train.checkpoint_minutes``, written atomically; SIGTERM or SIGINT
finishes the current step, writes a checkpoint and returns; ``resume="auto"`` continues from the newest readable
checkpoint at the exact batch it stopped at.
"""
from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass

import click
import torch

from imagenet_kit.config import RunConfig
from imagenet_kit.config.flags import build_config, recipe_options
from imagenet_kit.data.loaders import epoch_batches, finish_epoch, set_resolution
from imagenet_kit.data.storage import preread
from imagenet_kit.engine.checkpoint import save_run_checkpoint
from imagenet_kit.engine.evaluate import evaluate
from imagenet_kit.engine.init_weights import freeze_backbone
from imagenet_kit.engine.logbook import Logbook, peak_memory_mb, peak_reserved_mb, say_stopped
from imagenet_kit.engine.setup import Training, build_training
from imagenet_kit.engine.step import train_step
from imagenet_kit.errors import KitError
from imagenet_kit.optim.schedule import resolution_for_epoch
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
class TrainResult:
    """How a call of ``train`` ended: the last finished epoch's metrics, and where a stop left the run."""
    metrics: dict  # the last finished epoch's metrics.jsonl line ({} when none has finished)
    stopped: bool = False  # a stop signal ended it early, with a checkpoint to resume from
    epoch: int | None = None  # where it ended early (a stop or train.max_steps): the epoch in progress ...
    step: int | None = None  # ... and the batches of it done


@dataclass
class EpochStats:
    res: int
    train_loss: float
    images: int  # trained on by this rank in this run (a resumed epoch's skipped batches do not count)
    seconds: float
    img_per_s: float | None  # every rank's images per second from the epoch's first batch (``ProgressLine.rate``)
    stopped_at: int | None = None  # the step a stop (signal or train.max_steps) ended the epoch at


@dataclass
class Check:
    """What the ranks agreed on at a check, in one all-reduce and one host sync."""
    stop: bool  # a stop signal on some rank
    timed: bool  # train.checkpoint_minutes have passed on some rank
    diverged: bool  # a non-finite loss on some rank
    loss_sum: float  # this rank's running loss sum of the epoch


def train(cfg: RunConfig, runtime: Runtime, resume: str | None = None) -> TrainResult:
    """Train per ``cfg``, resuming from ``resume`` (None, "auto" or a checkpoint's path)."""
    with algorithm_choice(cfg.train.deterministic):
        training = build_training(cfg, runtime, resume)
        try:
            if runtime.local_rank == 0:  # one read per node; the other ranks wait for it at their first collective
                preread(list(cfg.betons), processes=max(1, runtime.world_size // runtime.nodes),
                        enabled=cfg.data.preread and cfg.data.in_memory)
            return _epochs(training)
        finally:
            if training.mirror is not None:  # a stop or the end: the newest checkpoint's copy must be complete
                training.mirror.wait()


def _epochs(training: Training) -> TrainResult:
    cfg, position = training.cfg, training.position
    logbook = Logbook(cfg.run, position.epoch, training.runtime.is_main, cfg.train.tensorboard, cfg.train.epochs)
    metrics = logbook.last
    with StopFlag() as stop:
        for epoch in range(position.epoch, cfg.train.epochs):
            # The epoch's steps, from the batch a resumed epoch stopped at.
            stats = train_one_epoch(training, epoch, stop, metrics)
            if stats.stopped_at is not None:  # a stop or train.max_steps ended it, with a checkpoint
                return _ended_early(training, stop, metrics, epoch, stats.stopped_at)
            # Its end: evaluate, log, checkpoint.
            metrics = end_epoch(training, epoch, stats, logbook)
            # A stop that arrived during the evaluation, before the next epoch starts.
            if _stop_after_epoch(training, stop) and epoch < cfg.train.epochs - 1:
                return _ended_early(training, stop, metrics, epoch + 1, 0)
    return TrainResult(metrics)


def _ended_early(training: Training, stop: StopFlag, metrics: dict, epoch: int, step: int) -> TrainResult:
    if stop.requested and training.runtime.is_main:
        say_stopped(epoch, step)
    return TrainResult(metrics, stopped=stop.requested, epoch=epoch, step=step)


def train_one_epoch(training: Training, epoch: int, stop: StopFlag, last_metrics: dict) -> EpochStats:
    """One pass over the train loader from ``training.position.step``; stops early, with a checkpoint, on request."""
    res = _start_epoch(training, epoch)
    batches = epoch_batches(training.train_loader, skip=training.position.step)
    try:
        return _train_batches(training, epoch, res, batches, stop, last_metrics)
    finally:  # a stop mid-epoch would otherwise leave FFCV's loader thread and its pinned batches behind
        finish_epoch(batches)


def _train_batches(training: Training, epoch: int, res: int, batches, stop: StopFlag,
                   last_metrics: dict) -> EpochStats:
    cfg, position = training.cfg, training.position
    loss_sum, steps_done = _running_loss(training)
    images = 0
    first_step = position.step
    last_step = training.steps_per_epoch - 1
    cap = cfg.train.max_steps or math.inf
    last_checkpoint = time.monotonic()
    start = time.perf_counter()
    with _epoch_bar(training, epoch, res) as bar:
        bar.skip(first_step * cfg.train.batch_size, steps=first_step)  # a resumed epoch's batches done before
        for step, (batch, labels) in enumerate(batches, start=first_step):
            # The step: queued on the device, no host sync.
            loss = train_step(training.step_model, batch, labels, training.criterion, training.optimizer,
                              training.scaler, training.scheduler, training.amp_dtype, cfg.model.channels_last)
            # Bookkeeping, still without a sync (but for a log line that is due).
            loss_sum += loss.detach().double()
            steps_done += 1
            images += len(labels)
            position.global_step += 1
            if bar.line_due(len(labels)):
                bar.set_loss(loss_sum.item() / steps_done)
            bar.advance(len(labels))
            # Every CHECK_EVERY steps, at the epoch's last step and at train.max_steps: the ranks agree on a stop,
            # a timed checkpoint and the loss's finiteness, in one sync.
            capped = position.global_step >= cap  # the same step on every rank: nothing to agree on
            if position.global_step % CHECK_EVERY and step < last_step and not capped:
                continue
            check = _agree(training, stop, last_checkpoint, loss_sum)
            bar.set_loss(check.loss_sum / steps_done)
            # Divergence: every rank raises at the same step.
            if check.diverged:
                raise divergence_error(position.global_step, training.optimizer)
            # A checkpoint mid-epoch (the epoch's end has its own, after evaluation).
            ends = check.stop or capped
            if (ends or check.timed) and step < last_step:
                save_run_checkpoint(training, epoch, step + 1, last_metrics, partial=(check.loss_sum, steps_done))
                last_checkpoint = time.monotonic()
            # The stop.
            if ends and step < last_step:
                return EpochStats(res, math.nan, images, time.perf_counter() - start, bar.rate, stopped_at=step + 1)
    position.step = 0
    position.partial = None
    train_loss = mean_across_ranks(loss_sum.item() / max(1, steps_done), training.runtime)
    return EpochStats(res, train_loss, images, time.perf_counter() - start, bar.rate)


def _running_loss(training: Training) -> tuple[torch.Tensor, int]:
    """The epoch's loss sum on the device and its step count, from a mid-epoch checkpoint's when resumed."""
    partial = training.position.partial or {"loss_sum": 0.0, "steps": 0}
    loss_sum = torch.full((), partial["loss_sum"], dtype=torch.float64, device=training.runtime.device)
    return loss_sum, partial["steps"]


def _start_epoch(training: Training, epoch: int) -> int:
    """Resolution, loader order, train mode and frozen layers of ``epoch``; returns the resolution."""
    cfg = training.cfg
    training.step_model.train()
    if cfg.train.freeze_epochs:
        freeze_backbone(training.model, frozen=epoch < cfg.train.freeze_epochs)
    res = resolution_for_epoch(epoch, cfg.train.min_res, cfg.train.max_res, cfg.train.start_ramp,
                               cfg.train.end_ramp)
    set_resolution(training.train_loader, res)
    training.train_loader.next_epoch = epoch  # FFCV's order is a function of (seed, epoch): resume-stable
    if training.runtime.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(training.runtime.device)
    return res


def _epoch_bar(training: Training, epoch: int, res: int) -> ProgressLine:
    """Rank 0's progress of the epoch; its img/s counts every rank's images (metrics.jsonl's figure). The first
    epoch this process trains says why its first batch takes a while."""
    steps, batch = training.steps_per_epoch, training.cfg.train.batch_size
    return ProgressLine(f"epoch {epoch + 1}/{training.cfg.train.epochs} @ {res}px", steps * batch, steps=steps,
                        waiting=WAITING if epoch == training.position.epoch else "",
                        rate_scale=training.runtime.world_size, enabled=training.runtime.is_main)


def end_epoch(training: Training, epoch: int, stats: EpochStats, logbook: Logbook) -> dict:
    """Validate, log the epoch, and checkpoint it (``best.pt`` too when its top-1 is the best so far)."""
    cfg, runtime, position = training.cfg, training.runtime, training.position
    val = evaluate(training.model, training.val_loader, len(training.classes), runtime.device, training.amp_dtype,
                   cfg.train.flip_tta, cfg.model.channels_last, runtime.distributed)
    metrics = {
        "epoch": epoch, "res": stats.res, "train_loss": stats.train_loss, "val_loss": val["loss"],
        "top1": val["top1"], "top5": val["top5"], "lr": training.optimizer.param_groups[0]["lr"],
        # a one-step epoch has no rate after its first step: then the whole epoch's
        "img_per_s": stats.img_per_s or stats.images * runtime.world_size / stats.seconds,
        "epoch_seconds": stats.seconds,
        "peak_mem_mb": peak_memory_mb(runtime.device), "peak_reserved_mb": peak_reserved_mb(runtime.device),
        "global_step": position.global_step,
    }
    best_is_new = val["top1"] > position.best_top1
    position.best_top1 = max(position.best_top1, val["top1"])
    logbook.record(metrics)
    save_run_checkpoint(training, epoch + 1, 0, metrics)
    if best_is_new:
        save_run_checkpoint(training, epoch + 1, 0, metrics, name=BEST)
    return metrics


def _agree(training: Training, stop: StopFlag, last_checkpoint: float, loss_sum: torch.Tensor) -> Check:
    """A stop signal, a timed checkpoint due and a non-finite loss, each true on every rank if on any, and this
    rank's loss sum: one all-reduce, one host sync. Every rank thus takes the same decision at the same step,
    instead of the others waiting in their next collective for a rank that stopped alone."""
    timed = time.monotonic() - last_checkpoint > training.cfg.train.checkpoint_minutes * 60
    flags = torch.tensor([stop.requested, timed], dtype=torch.float64, device=training.runtime.device)
    flags = torch.cat([flags, (~torch.isfinite(loss_sum)).double().reshape(1)])
    (stopped, timed, diverged), (loss,) = any_rank(flags, training.runtime, also=loss_sum.reshape(1))
    return Check(stop=stopped, timed=timed, diverged=diverged, loss_sum=loss)


def _stop_after_epoch(training: Training, stop: StopFlag) -> bool:
    """A signal on any rank, or train.max_steps reached (smoke tests)."""
    flags = torch.tensor([stop.requested], dtype=torch.float64, device=training.runtime.device)
    capped = training.position.global_step >= (training.cfg.train.max_steps or math.inf)
    return any_rank(flags, training.runtime)[0] or capped


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
    if runtime.is_main and not result.stopped and "top1" in result.metrics:
        results.out(f"val top-1 {100 * result.metrics['top1']:.2f}%  top-5 {100 * result.metrics['top5']:.2f}%  "
                    f"-> {cfg.run_dir}")
