"""The training loop: one function, read top to bottom.

Spot-safe: checkpoints every epoch and every ``train.checkpoint_minutes``, written atomically; SIGTERM
or SIGINT finishes the current step, writes a checkpoint and exits cleanly; ``resume="auto"`` continues
from the newest readable checkpoint at the exact batch it stopped at.
"""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from imagenet_kit import plots
from imagenet_kit.checkpoint import find_resume_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from imagenet_kit.config import ConfigError, RunConfig, dump_config
from imagenet_kit.data.convert import read_classes
from imagenet_kit.data.loaders import (create_train_loader, create_val_loader, default_workers, normalize,
                                       set_resolution)
from imagenet_kit.evaluate import evaluate
from imagenet_kit.init_weights import freeze_backbone, init_model
from imagenet_kit.lr_find import lr_range_test
from imagenet_kit.model import create_optimizer, model_from_config, optimizer_settings, param_groups
from imagenet_kit.progress import console, progress_bar
from imagenet_kit.runtime import Runtime, autocast, environment, precision_name, resolve_precision, write_json
from imagenet_kit.schedule import create_scheduler, resolution_for_epoch, schedule_trace


class DivergenceError(RuntimeError):
    pass


def beton_paths(cfg: RunConfig) -> tuple[Path, Path]:
    base = Path(cfg.data.beton_dir)
    return (base / f"{cfg.data.name}-train-{cfg.data.max_res}.beton",
            base / f"{cfg.data.name}-val-{cfg.data.max_res}.beton")


def scaled_lr(lr: float, lr_batch: int, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): the recipe's LR is for ``lr_batch`` images per step."""
    return lr * global_batch / lr_batch


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checks it between steps (torchrun forwards signals to ranks)."""

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


def train(cfg: RunConfig, runtime: Runtime, resume: str | None = None) -> dict:
    """Train per ``cfg``; returns the last epoch's metrics (or {"interrupted": True, ...})."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(previous or cfg.train.deterministic)
    try:
        return _train(cfg, runtime, resume)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(cfg: RunConfig, runtime: Runtime, resume: str | None) -> dict:
    run_dir = cfg.run_dir
    device = runtime.device
    torch.manual_seed(cfg.train.seed + runtime.rank)
    np.random.seed(cfg.train.seed + runtime.rank)

    # Resume state first: it decides whether this is a fresh run (and its LR, if it was "auto").
    state = None
    if resume == "auto":
        found = find_resume_checkpoint(run_dir)
        if found:
            path, state = found
            console.print(f"resuming from {path} (epoch {state['epoch']}, step {state['step']})")
    elif resume:
        state = load_checkpoint(Path(resume))
    if runtime.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")

    train_beton, val_beton = beton_paths(cfg)
    for beton in (train_beton, val_beton):
        if not beton.is_file():
            raise FileNotFoundError(f"{beton} not found: run 'imagenet-kit run' or 'imagenet-kit convert' first")
    classes = read_classes(train_beton)
    workers = default_workers(cfg.data.workers)

    model = model_from_config(cfg.model, len(classes))
    if state is None and cfg.model.init:  # fine-tuning; a resumed run's weights come from its checkpoint
        message = init_model(model, cfg.model, classes)
        if runtime.is_main:
            console.print(message)
    memory_format = torch.channels_last if cfg.model.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    amp_dtype, use_scaler = resolve_precision(cfg.train.precision, device)

    global_batch = cfg.train.batch_size * runtime.world_size
    if state is not None:
        max_lr = state["max_lr"]
    elif cfg.optim.lr == "auto":
        max_lr = _auto_lr(cfg, runtime, model, train_beton, amp_dtype, workers)
    else:
        max_lr = scaled_lr(float(cfg.optim.lr), cfg.optim.lr_batch, global_batch)

    train_loader = create_train_loader(str(train_beton), cfg.train.batch_size, cfg.train.min_res, device, workers,
                                       seed=cfg.train.seed, distributed=runtime.distributed,
                                       in_memory=cfg.data.in_memory, deterministic=cfg.train.deterministic,
                                       min_scale=cfg.train.min_scale, crop=cfg.train.crop)
    val_loader = create_val_loader(str(val_beton), cfg.train.val_batch_size, cfg.train.val_res, device, workers,
                                   distributed=runtime.distributed, crop_ratio=cfg.train.val_crop_ratio)
    if runtime.is_main:  # after the loaders: FFCV sets torch's thread count when it builds one
        # the precision `auto` resolved to here: the same recipe runs bf16 on one CPU and fp32 on another
        write_json(run_dir / "env.json", {**environment(runtime), "precision": precision_name(amp_dtype)})
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{train_beton}: fewer images than one batch of {cfg.train.batch_size}; "
                         "lower train.batch_size")

    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.head_lr_mult)
    optimizer = create_optimizer(groups, lr=max_lr, **optimizer_settings(cfg.optim))
    schedule_args = dict(pct_start=cfg.optim.pct_start, div_factor=cfg.optim.div_factor,
                         final_div_factor=cfg.optim.final_div_factor, base_momentum=cfg.optim.base_momentum,
                         max_momentum=cfg.optim.max_momentum, peak_epoch=cfg.optim.peak_epoch,
                         step_epochs=cfg.optim.step_epochs, step_gamma=cfg.optim.step_gamma,
                         flat_fraction=cfg.optim.flat_fraction)
    scheduler = create_scheduler(optimizer, cfg.optim.schedule, max_lr, cfg.train.epochs, steps_per_epoch,
                                 **schedule_args)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=cfg.optim.label_smoothing)

    start_epoch, skip_steps, global_step, best_top1 = 0, 0, 0, -1.0
    resumed_partial = None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start_epoch, skip_steps, global_step = state["epoch"], state["step"], state["global_step"]
        best_top1 = state.get("best_top1", -1.0)
        resumed_partial = state.get("partial_epoch")
        if runtime.world_size == state.get("world_size", 1):
            set_rng_state(state["rng"])
    elif runtime.is_main:
        trace = schedule_trace(cfg.optim.schedule, max_lr, cfg.train.epochs, steps_per_epoch,
                               optimizer_name=cfg.optim.optimizer, momentum=cfg.optim.momentum,
                               **schedule_args)
        plots.plot_schedule(trace, run_dir / "schedule.png",
                            f"{cfg.optim.schedule} schedule, peak LR {max_lr:.3g} "
                            f"(global batch {global_batch}, {steps_per_epoch} steps/epoch)")

    ddp_model = model
    if runtime.distributed:
        # A frozen backbone yields no gradients; DDP must be told to expect parameters without any.
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.train.freeze_epochs > 0)
    step_model = torch.compile(ddp_model) if cfg.train.compile else ddp_model

    def checkpoint(epoch: int, step: int, metrics: dict | None, name: str = "last.pt",
                   partial: tuple | None = None) -> None:
        if not runtime.is_main:
            return
        save_checkpoint({
            # the running train loss of an unfinished epoch, so a resumed epoch reports the same mean
            "partial_epoch": {"loss_sum": partial[0], "steps": partial[1]} if partial else None,
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "step": step, "global_step": global_step,
            "rng": rng_state(), "config": cfg.to_dict(), "classes": classes, "best_top1": best_top1,
            "metrics": metrics, "max_lr": max_lr, "world_size": runtime.world_size,
        }, run_dir / "checkpoints" / name, keep_previous=(name == "last.pt"))

    metrics_path = run_dir / "metrics.jsonl"
    history = _read_history(metrics_path, start_epoch) if runtime.is_main else []
    last_metrics: dict = history[-1] if history else {}
    total_steps_cap = cfg.train.max_steps or math.inf
    with _StopFlag() as stop:
        for epoch in range(start_epoch, cfg.train.epochs):
            res = resolution_for_epoch(epoch, cfg.train.min_res, cfg.train.max_res, cfg.train.start_ramp,
                                       cfg.train.end_ramp)
            set_resolution(train_loader, res)
            train_loader.next_epoch = epoch  # FFCV's order is a function of (seed, epoch): resume-stable
            step_model.train()
            if cfg.train.freeze_epochs:
                freeze_backbone(model, frozen=epoch < cfg.train.freeze_epochs)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            steps_done, images_seen = 0, 0
            if resumed_partial and skip_steps:
                loss_sum += resumed_partial["loss_sum"]
                steps_done = resumed_partial["steps"]
            last_checkpoint = time.monotonic()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            epoch_start = time.perf_counter()
            with progress_bar(f"epoch {epoch + 1}/{cfg.train.epochs} @ {res}px",
                              steps_per_epoch * cfg.train.batch_size) as advance:
                for step, (images, labels) in enumerate(train_loader):
                    if step < skip_steps:  # mid-epoch resume: these batches were trained on already
                        advance(len(labels))
                        continue
                    loss = train_step(step_model, images, labels, criterion, optimizer, scaler, scheduler, amp_dtype,
                                      cfg.model.channels_last)
                    loss_sum += loss.detach().double()
                    steps_done += 1
                    global_step += 1
                    images_seen += len(labels)
                    advance(len(labels))
                    # One host sync every 20 steps keeps the GPU queue full yet catches divergence early.
                    if steps_done % 20 == 0 or step == steps_per_epoch - 1:
                        _check_finite(loss_sum, global_step, optimizer)
                    stop_now = _agree(stop.requested or global_step >= total_steps_cap, runtime)
                    timed = time.monotonic() - last_checkpoint > cfg.train.checkpoint_minutes * 60
                    if (stop_now or timed) and step < steps_per_epoch - 1:
                        _check_finite(loss_sum, global_step, optimizer)
                        checkpoint(epoch, step + 1, last_metrics, partial=(loss_sum.item(), steps_done))
                        last_checkpoint = time.monotonic()
                    if stop_now and step < steps_per_epoch - 1:
                        _say_stopped(stop.requested and runtime.is_main, epoch, step + 1)
                        return {**last_metrics, "interrupted": stop.requested, "epoch": epoch, "step": step + 1}
            skip_steps = 0
            epoch_seconds = time.perf_counter() - epoch_start
            train_loss = loss_sum.item() / max(1, steps_done)
            if runtime.distributed:
                train_loss = _mean_across_ranks(train_loss, device)

            val = evaluate(model, val_loader, len(classes), device, amp_dtype, cfg.train.flip_tta,
                           cfg.model.channels_last, runtime.distributed)
            last_metrics = {
                "epoch": epoch, "res": res, "train_loss": train_loss, "val_loss": val["loss"],
                "top1": val["top1"], "top5": val["top5"], "lr": optimizer.param_groups[0]["lr"],
                "img_per_s": images_seen * runtime.world_size / epoch_seconds, "epoch_seconds": epoch_seconds,
                "peak_mem_mb": _peak_memory_mb(device), "global_step": global_step,
            }
            best_is_new = val["top1"] > best_top1
            best_top1 = max(best_top1, val["top1"])
            if runtime.is_main:
                history.append(last_metrics)
                with open(metrics_path, "a") as handle:
                    handle.write(json.dumps(last_metrics) + "\n")
                plots.plot_curves(history, run_dir / "curves.png")
                if cfg.train.tensorboard:
                    _log_tensorboard(run_dir, last_metrics)
                console.print(f"epoch {epoch + 1}/{cfg.train.epochs}: train loss {train_loss:.4f}  "
                              f"val loss {val['loss']:.4f}  top-1 {100 * val['top1']:.2f}%  "
                              f"top-5 {100 * val['top5']:.2f}%  {last_metrics['img_per_s']:.1f} img/s")
            checkpoint(epoch + 1, 0, last_metrics)
            if best_is_new:
                checkpoint(epoch + 1, 0, last_metrics, name="best.pt")
            if _agree(stop.requested or global_step >= total_steps_cap, runtime) and epoch < cfg.train.epochs - 1:
                _say_stopped(stop.requested and runtime.is_main, epoch + 1, 0)
                return {**last_metrics, "interrupted": stop.requested}
    return last_metrics


def train_step(model, images: torch.Tensor, labels: torch.Tensor, criterion, optimizer, scaler, scheduler,
               amp_dtype: torch.dtype | None, channels_last: bool) -> torch.Tensor:
    """One optimiser step on a loader batch (uint8 images on the device); returns the loss, unsynchronised.

    Its own function so that ``imagenet-kit bench train`` times exactly the step that training runs."""
    x = normalize(images, channels_last)
    with autocast(images.device, amp_dtype):
        loss = criterion(model(x), labels.long())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss


def _auto_lr(cfg: RunConfig, runtime: Runtime, model, train_beton: Path, amp_dtype, workers: int) -> float:
    """Rank 0 runs the LR range test at the training batch size; every rank gets its choice."""
    lr = torch.zeros(1, dtype=torch.float64, device=runtime.device)
    if runtime.is_main:
        loader = lr_find_loader(cfg, train_beton, runtime.device, workers, seed=cfg.train.seed + 1)
        result = run_lr_find(cfg, model, loader, runtime.device, amp_dtype)
        lr[0] = result["lr"]
    if runtime.distributed:
        dist.broadcast(lr, src=0)
    return float(lr[0])


def lr_find_loader(cfg: RunConfig, train_beton: Path, device: torch.device, workers: int, seed: int = 0):
    """The range test's batches: the run's training crops at its first resolution and the test's batch size."""
    return create_train_loader(str(train_beton), cfg.lr_find.batch_size or cfg.train.batch_size, cfg.train.min_res,
                               device, workers, seed=seed, min_scale=cfg.train.min_scale, crop=cfg.train.crop)


def run_lr_find(cfg: RunConfig, model, loader, device, amp_dtype) -> dict:
    """The range test with the recipe's settings; writes lr_find.json and lr_find.png in the run folder."""
    f = cfg.lr_find
    result = lr_range_test(model, loader, device, amp_dtype=amp_dtype, label_smoothing=cfg.optim.label_smoothing,
                           optimizer=optimizer_settings(cfg.optim),
                           weight_decay=cfg.optim.weight_decay, start_lr=f.start_lr,
                           end_lr=f.end_lr, num_iter=f.num_iter, smooth=f.smooth, diverge=f.diverge,
                           suggestion=f.suggestion, channels_last=cfg.model.channels_last)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg.run_dir / "lr_find.json", result)
    plots.plot_lr_find(result, cfg.run_dir / "lr_find.png")
    console.print(f"LR range test: {', '.join(f'{k} {v:.3g}' for k, v in result['suggestions'].items())}; "
                  f"using {result['chosen']} = {result['lr']:.3g} as the peak LR")
    return result


def _log_tensorboard(run_dir: Path, metrics: dict) -> None:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
    # One short-lived writer per epoch: nothing stays open across a kill, and resumed runs append.
    with SummaryWriter(str(run_dir / "tensorboard")) as writer:
        for key in ("train_loss", "val_loss", "top1", "top5", "lr", "img_per_s", "res"):
            writer.add_scalar(key, metrics[key], metrics["epoch"] + 1)


def _say_stopped(say: bool, epoch: int, step: int) -> None:
    if say:
        console.print(f"stopped by signal at epoch {epoch + 1}, step {step}; checkpoint written. Resume with the "
                      "same command plus --resume auto (imagenet-kit run resumes by itself)")


def _check_finite(loss_sum: torch.Tensor, global_step: int, optimizer) -> None:
    if not math.isfinite(loss_sum.item()):
        lr = optimizer.param_groups[0]["lr"]
        raise DivergenceError(f"loss became non-finite by step {global_step} (lr {lr:.4g}). The last good "
                              f"checkpoint is kept; lower optim.lr (e.g. --lr {lr / 3:.3g}) or use --lr auto.")


def _agree(flag: bool, runtime: Runtime) -> bool:
    """All ranks stop at the same step (else the next all-reduce would hang): any rank's flag wins."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=runtime.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _mean_across_ranks(value: float, device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def _peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_history(path: Path, start_epoch: int) -> list[dict]:
    """metrics.jsonl lines of epochs before ``start_epoch`` (a resumed run drops any it will redo)."""
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["epoch"] < start_epoch]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows
