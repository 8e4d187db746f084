"""Everything one training run trains with, built once before the first step: ``build_training``.

Resume state is read first, since it decides whether this is a fresh run (and its LR, if it was "auto"); the
model, loaders, optimizer, schedule and grad scaler follow, then a resumed run's state is loaded into them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from imagenet_kit.config import RunConfig, dump_config
from imagenet_kit.data.convert import check_same_classes, read_classes
from imagenet_kit.data.loaders import create_train_loader, create_val_loader
from imagenet_kit.data.prepare import require_betons
from imagenet_kit.engine import plots
from imagenet_kit.engine.checkpoint import rng_state, save_checkpoint, set_rng_state
from imagenet_kit.engine.init_weights import init_model
from imagenet_kit.engine.lr_find import auto_lr
from imagenet_kit.engine.mirror import Mirror
from imagenet_kit.engine.resume import resume_state, say_layout
from imagenet_kit.engine.resume_checks import check_resumable
from imagenet_kit.environment import environment, write_json
from imagenet_kit.models.factory import model_on_device
from imagenet_kit.optim.optimizers import create_optimizer, param_groups, scaled_lr
from imagenet_kit.optim.schedule import create_scheduler, schedule_trace
from imagenet_kit.progress import console
from imagenet_kit.runs import LAST
from imagenet_kit.runtime import Runtime, on_every_rank, precision_name, require_compiler, resolve_precision


@dataclass
class Position:
    """Where training stands: the epoch in progress, the batches of it already trained (a mid-epoch resume
    skips them), steps in total, the best top-1 so far, and an unfinished epoch's running loss."""
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    partial: dict | None = None  # {"loss_sum", "steps"} of the epoch a mid-epoch checkpoint cut


@dataclass(kw_only=True)
class Training:
    cfg: RunConfig
    runtime: Runtime
    classes: list[dict]
    model: torch.nn.Module  # the bare model: what checkpoints hold and evaluation runs
    step_model: torch.nn.Module  # what the step calls: ``model`` inside DDP and/or torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: torch.nn.Module
    train_loader: object
    val_loader: object
    amp_dtype: torch.dtype | None
    max_lr: float
    steps_per_epoch: int
    position: Position
    epoch_changes: list[tuple[int, int]]  # (step, total steps before) of each resume that changed train.epochs
    mirror: Mirror | None  # rank 0's copy of each checkpoint elsewhere (train.mirror)

    def save_checkpoint(self, epoch: int, step: int, metrics: dict | None, name: str = LAST,
                        partial: tuple[float, int] | None = None) -> None:
        """Rank 0 writes model, optimizer, scheduler, scaler, position, RNG, config and classes atomically."""
        if not self.runtime.is_main:
            return
        state = {
            # the running train loss of an unfinished epoch, so a resumed epoch reports the same mean
            "partial_epoch": {"loss_sum": partial[0], "steps": partial[1]} if partial else None,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": epoch, "step": step, "global_step": self.position.global_step,
            "rng": rng_state(self.runtime.device), "precision": precision_name(self.amp_dtype),
            "config": self.cfg.to_dict(), "classes": self.classes, "best_top1": self.position.best_top1,
            "metrics": metrics, "max_lr": self.max_lr, "world_size": self.runtime.world_size,
            "epoch_changes": self.epoch_changes,
        }
        path = self.cfg.run.checkpoint(name)
        if self.mirror is not None:
            self.mirror.before_writing(path)
        save_checkpoint(state, path, keep_previous=(name == LAST))
        if self.mirror is not None:
            self.mirror.push(path, state)


def build_training(cfg: RunConfig, runtime: Runtime, resume: str | None) -> Training:
    torch.manual_seed(cfg.train.seed + runtime.rank)
    np.random.seed(cfg.train.seed + runtime.rank)
    on_every_rank(lambda: require_betons(cfg), runtime)  # and that a batch fits them: before the run folder exists
    if cfg.train.compile:
        on_every_rank(lambda: require_compiler(runtime.device), runtime)
    mirror = on_every_rank(lambda: Mirror(cfg.train.mirror, cfg.run) if cfg.train.mirror and runtime.is_main
                           else None, runtime)  # a bad URL stops every rank, not rank 0 alone
    resumed_from, state = resume_state(cfg.run, runtime, resume, mirror)
    train_beton, val_beton = cfg.betons
    if state is not None:  # before anything in the run folder changes
        changes = on_every_rank(lambda: _check_resumable(state, cfg, train_beton, resumed_from), runtime)
        if changes and runtime.is_main:
            console.print(f"resume: changed since the checkpoint: {changes}")
    if runtime.is_main:
        cfg.run.checkpoints.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, cfg.run.config)
    say_layout(cfg.run, runtime)
    classes = read_classes(train_beton)
    workers = cfg.data.workers
    model = _model(cfg, runtime, classes, fresh=state is None)
    amp_dtype, use_scaler = resolve_precision(cfg.train.precision, runtime.device)
    global_batch = cfg.train.batch_size * runtime.world_size
    if state is not None:
        max_lr = state["max_lr"]
    elif cfg.optim.lr == "auto":
        max_lr = auto_lr(cfg, runtime, model, train_beton, amp_dtype, workers)
    else:
        max_lr = scaled_lr(float(cfg.optim.lr), cfg.optim.lr_batch, global_batch)
    train_loader, val_loader = _loaders(cfg, runtime, train_beton, val_beton, workers)
    if runtime.is_main:  # after the loaders: FFCV sets torch's thread count when it builds one
        # the precision `auto` resolved to here: the same recipe runs bf16 on one CPU and fp32 on another
        write_json(cfg.run.env, {**environment(runtime.device, runtime.world_size),
                                  "precision": precision_name(amp_dtype), "peak_lr": max_lr,
                                  "lr_rule": lr_rule(cfg, global_batch)})
    steps_per_epoch = len(train_loader)  # at least 1: require_betons checked that a batch fits
    epoch_changes = _epoch_changes(state, cfg, steps_per_epoch)
    optimizer = create_optimizer(param_groups(model, cfg.optim.weight_decay, cfg.optim.head_lr_mult), cfg.optim,
                                 max_lr)
    scheduler = create_scheduler(optimizer, cfg.optim, max_lr, cfg.train.epochs, steps_per_epoch, epoch_changes)
    t = Training(cfg=cfg, runtime=runtime, classes=classes, model=model,
                 step_model=_step_model(cfg, runtime, model), optimizer=optimizer, scheduler=scheduler,
                 scaler=torch.amp.GradScaler(runtime.device.type, enabled=use_scaler),
                 criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                 train_loader=train_loader, val_loader=val_loader, amp_dtype=amp_dtype, max_lr=max_lr,
                 steps_per_epoch=steps_per_epoch, position=Position(), epoch_changes=epoch_changes, mirror=mirror)
    if state is not None:
        _restore(t, state)
    elif runtime.is_main:
        _plot_schedule(t, global_batch)
    return t


def lr_rule(cfg: RunConfig, global_batch: int) -> str:
    """How the peak LR was chosen, in words a results row can carry beside the number."""
    if cfg.optim.lr == "auto":
        return f"LR range test, rule {cfg.lr_find.suggestion}"
    return f"{cfg.optim.lr:g} per {cfg.optim.lr_batch} images x global batch {global_batch} (linear scaling)"


def _check_resumable(state: dict, cfg: RunConfig, train_beton: Path, checkpoint: str) -> str:
    check_same_classes(state["classes"], train_beton, "the checkpoint resumed from")
    return check_resumable(state, cfg, checkpoint)


def _epoch_changes(state: dict | None, cfg: RunConfig, steps_per_epoch: int) -> list[tuple[int, int]]:
    """The checkpoint's changes of the epoch count, and this resume's if it changes it (``check_resumable``
    allowed it): the schedule goes on from the step it had reached."""
    if state is None:
        return []
    changes = [tuple(change) for change in state.get("epoch_changes", [])]
    before = state["config"]["train"]["epochs"]
    if before != cfg.train.epochs:
        changes.append((state["global_step"], before * steps_per_epoch))
    return changes


def _model(cfg: RunConfig, runtime: Runtime, classes: list[dict], fresh: bool) -> torch.nn.Module:
    model = model_on_device(cfg.model, len(classes), torch.device("cpu"))
    if fresh and cfg.model.init:  # fine-tuning; a resumed run's weights come from its checkpoint
        message = init_model(model, cfg.model, classes)
        if runtime.is_main:
            console.print(message)
    return model.to(runtime.device)


def _loaders(cfg: RunConfig, runtime: Runtime, train_beton: Path, val_beton: Path, workers: int):
    t, device = cfg.train, runtime.device
    train_loader = create_train_loader(str(train_beton), t.batch_size, t.min_res, device, workers, seed=t.seed,
                                       distributed=runtime.distributed, in_memory=cfg.data.in_memory,
                                       deterministic=t.deterministic, min_scale=t.min_scale, crop=t.crop)
    val_loader = create_val_loader(str(val_beton), t.val_batch_size, t.val_res, device, workers, runtime.rank,
                                   runtime.world_size, crop_ratio=t.val_crop_ratio)
    return train_loader, val_loader


def _step_model(cfg: RunConfig, runtime: Runtime, model: torch.nn.Module) -> torch.nn.Module:
    if runtime.distributed:
        # A frozen backbone yields no gradients; DDP must be told to expect parameters without any.
        device = runtime.device
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.train.freeze_epochs > 0)
    # dynamic=False: the progressive-resizing switch (160 -> 192 px) compiles one more graph instead of a
    # slower shape-generic one.
    return torch.compile(model, dynamic=False) if cfg.train.compile else model


def _restore(t: Training, state: dict) -> None:
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scheduler.load_state_dict(state["scheduler"])
    _restore_scaler(t, state)
    t.position = Position(state["epoch"], state["step"], state["global_step"], state.get("best_top1", -1.0),
                          state.get("partial_epoch") if state["step"] else None)
    if t.runtime.world_size == state.get("world_size", 1):
        set_rng_state(state["rng"], t.runtime.device)


def _restore_scaler(t: Training, state: dict) -> None:
    """fp16's loss scale goes on from the checkpoint's. A resume into another precision (a g5's bf16 run resumed
    on a g4dn's T4 in fp16, or back) starts a fresh scaler instead, said once: a bf16 or fp32 run saved a disabled
    scaler, whose empty state torch refuses to load ("The source state dict is empty")."""
    saved = state.get("scaler") or {}
    if bool(saved) == t.scaler.is_enabled():
        if saved:
            t.scaler.load_state_dict(saved)
        return
    if t.runtime.is_main:
        before, now = state.get("precision", "fp16" if saved else "bf16 or fp32"), precision_name(t.amp_dtype)
        what = (f"fp16 starts a fresh loss scale ({t.scaler.get_scale():g}, adjusted within the first steps)"
                if t.scaler.is_enabled() else f"{now} needs no loss scaling, the checkpoint's scale is dropped")
        console.print(f"resume: precision {before} -> {now}: {what}")


def _plot_schedule(t: Training, global_batch: int) -> None:
    cfg = t.cfg
    trace = schedule_trace(cfg.optim, t.max_lr, cfg.train.epochs, t.steps_per_epoch)
    plots.plot_schedule(trace, cfg.run.schedule_png,
                        f"{cfg.optim.schedule} schedule, peak LR {t.max_lr:.3g} "
                        f"(global batch {global_batch}, {t.steps_per_epoch} steps/epoch)")
