"""Everything one training run trains with, assembled once before the first step: ``build_training``.

Where the run starts is decided first (``resume.resume_point``), since it decides whether this is a fresh run (and
its LR, if it was "auto"); the model, loaders, optimizer, schedule and grad scaler follow, then a resumed run is put
where its checkpoint left it (``resume.restore``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from imagenet_kit.config import RunConfig, dump_config
from imagenet_kit.data.convert import read_classes
from imagenet_kit.data.loaders import create_train_loader, create_val_loader
from imagenet_kit.data.prepare import require_betons
from imagenet_kit.engine import plots
from imagenet_kit.engine.init_weights import init_model
from imagenet_kit.engine.lr_find import auto_lr
from imagenet_kit.engine.mirror import Mirror
from imagenet_kit.engine.resume import Position, ResumePoint, restore, resume_point, say_layout
from imagenet_kit.environment import environment, write_json
from imagenet_kit.models.factory import create_model, model_kwargs
from imagenet_kit.optim.optimizers import create_optimizer, param_groups, scaled_lr
from imagenet_kit.optim.schedule import create_scheduler, schedule_trace
from imagenet_kit.progress import console
from imagenet_kit.runtime import Runtime, on_every_rank, precision_name, require_compiler, resolve_precision


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


def build_training(cfg: RunConfig, runtime: Runtime, resume: str | None) -> Training:
    """The run's model, data, optimizer, schedule and scaler, put where a resumed run left off."""
    torch.manual_seed(cfg.train.seed + runtime.rank)
    np.random.seed(cfg.train.seed + runtime.rank)
    mirror = _checked_before_the_run_folder(cfg, runtime)
    train_loader, val_loader = _loaders(cfg, runtime)
    steps_per_epoch = len(train_loader)  # at least 1: require_betons checked that a batch fits
    point = resume_point(cfg, runtime, resume, mirror, steps_per_epoch)  # before anything in the run folder changes
    if runtime.is_main:
        cfg.run.checkpoints.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, cfg.run.config)
    say_layout(cfg.run, runtime)
    classes = read_classes(cfg.betons[0])
    model = _model(cfg, runtime, classes, fresh=point is None)
    amp_dtype, use_scaler = resolve_precision(cfg.train.precision, runtime.device)
    max_lr = _peak_lr(cfg, runtime, point, model, amp_dtype)
    if runtime.is_main:  # after the loaders: FFCV sets torch's thread count when it builds one
        _write_environment(cfg, runtime, amp_dtype, max_lr)
    step_model = _step_model(cfg, runtime, model)  # after the LR range test, which trains the bare model
    epoch_changes = point.epoch_changes if point else []
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.head_lr_mult)
    optimizer = create_optimizer(groups, cfg.optim, max_lr)
    scheduler = create_scheduler(optimizer, cfg.optim, max_lr, cfg.train.epochs, steps_per_epoch, epoch_changes)
    training = Training(cfg=cfg, runtime=runtime, classes=classes, model=model,
                        step_model=step_model, optimizer=optimizer, scheduler=scheduler,
                        scaler=torch.amp.GradScaler(runtime.device.type, enabled=use_scaler),
                        criterion=torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing),
                        train_loader=train_loader, val_loader=val_loader, amp_dtype=amp_dtype, max_lr=max_lr,
                        steps_per_epoch=steps_per_epoch, position=Position(), epoch_changes=epoch_changes,
                        mirror=mirror)
    if point is not None:
        training.position = restore(training, point)
    elif runtime.is_main:
        _plot_schedule(training)
    return training


def _checked_before_the_run_folder(cfg: RunConfig, runtime: Runtime) -> Mirror | None:
    """The betons (and that a batch fits them), the compiler and the mirror's URL, on every rank: one rank's
    failure stops them all before the run folder exists. Returns rank 0's mirror."""
    on_every_rank(lambda: require_betons(cfg), runtime)
    if cfg.train.compile:
        on_every_rank(lambda: require_compiler(runtime.device), runtime)
    return on_every_rank(lambda: Mirror(cfg.train.mirror, cfg.run) if cfg.train.mirror and runtime.is_main
                         else None, runtime)


def _peak_lr(cfg: RunConfig, runtime: Runtime, point: ResumePoint | None, model, amp_dtype) -> float:
    """A resumed run's own; the LR range test's pick for ``lr: auto``; else the recipe's LR scaled to the batch."""
    if point is not None:
        return point.state["max_lr"]
    if cfg.optim.lr == "auto":
        return auto_lr(cfg, runtime, model, cfg.betons[0], amp_dtype, cfg.data.workers)
    return scaled_lr(float(cfg.optim.lr), cfg.optim.lr_batch, cfg.train.batch_size * runtime.world_size)


def lr_rule(cfg: RunConfig, global_batch: int) -> str:
    """How the peak LR was chosen, in words a results row can carry beside the number."""
    if cfg.optim.lr == "auto":
        return f"LR range test, rule {cfg.lr_find.suggestion}"
    return f"{cfg.optim.lr:g} per {cfg.optim.lr_batch} images x global batch {global_batch} (linear scaling)"


def _write_environment(cfg: RunConfig, runtime: Runtime, amp_dtype, max_lr: float) -> None:
    """env.json: the host and versions, and what the run resolved: the precision `auto` chose here (the same recipe
    runs bf16 on one CPU and fp32 on another) and the peak LR with how it was chosen."""
    write_json(cfg.run.env, {**environment(runtime.device, runtime.world_size), "precision": precision_name(amp_dtype),
                             "peak_lr": max_lr, "lr_rule": lr_rule(cfg, cfg.train.batch_size * runtime.world_size)})


def _model(cfg: RunConfig, runtime: Runtime, classes: list[dict], fresh: bool) -> torch.nn.Module:
    model = create_model(**model_kwargs(cfg.model), num_classes=len(classes))
    if fresh and cfg.model.init:  # fine-tuning; a resumed run's weights come from its checkpoint
        message = init_model(model, cfg.model, classes)
        if runtime.is_main:
            console.print(message)
    return model.to(runtime.device)


def _loaders(cfg: RunConfig, runtime: Runtime):
    settings, device, workers = cfg.train, runtime.device, cfg.data.workers
    train_beton, val_beton = cfg.betons
    train_loader = create_train_loader(str(train_beton), settings.batch_size, settings.min_res, device, workers,
                                       seed=settings.seed, distributed=runtime.distributed,
                                       in_memory=cfg.data.in_memory, deterministic=settings.deterministic,
                                       min_scale=settings.min_scale, crop=settings.crop)
    val_loader = create_val_loader(str(val_beton), settings.val_batch_size, settings.val_res, device, workers,
                                   runtime.rank, runtime.world_size, crop_ratio=settings.val_crop_ratio)
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


def _plot_schedule(training: Training) -> None:
    cfg = training.cfg
    trace = schedule_trace(cfg.optim, training.max_lr, cfg.train.epochs, training.steps_per_epoch)
    global_batch = cfg.train.batch_size * training.runtime.world_size
    plots.plot_schedule(trace, cfg.run.schedule_png,
                        f"{cfg.optim.schedule} schedule, peak LR {training.max_lr:.3g} "
                        f"(global batch {global_batch}, {training.steps_per_epoch} steps/epoch)")
