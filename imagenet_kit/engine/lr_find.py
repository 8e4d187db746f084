"""The LR range test stage (Smith 2017, "Cyclical Learning Rates"), as fastai's ``lr_find`` runs it: the test, its
suggestions, the recipe's glue (``lr: auto``) and the ``lr-find`` command.

The LR grows exponentially from ``start_lr`` to ``end_lr`` over ``num_iter`` batches; the loss is
smoothed with a bias-corrected EMA and the test stops early once it exceeds ``diverge`` x its minimum.
The model (weights and BatchNorm statistics) is restored afterwards, so training starts from the same
initialisation it would have had without the test.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import click
import numpy as np
import torch
import torch.distributed as dist

from imagenet_kit.config import LRFindConfig, OptimConfig, RunConfig
from imagenet_kit.config.flags import build_config, recipe_options
from imagenet_kit.data.convert import read_classes
from imagenet_kit.data.loaders import create_train_loader, finish_epoch
from imagenet_kit.data.prepare import require_betons
from imagenet_kit.engine import plots
from imagenet_kit.engine.step import train_step
from imagenet_kit.environment import write_json
from imagenet_kit.errors import KitError
from imagenet_kit.models.factory import create_model, model_kwargs
from imagenet_kit.optim.optimizers import create_optimizer, param_groups, scaled_lr
from imagenet_kit.progress import console, results
from imagenet_kit.runtime import Runtime, init_runtime, resolve_precision, shutdown_runtime

# Like torch-lr-finder's defaults: the first points are dominated by the initial noise of the EMA and the
# last ones are the divergence itself; neither says anything about good LRs.
SKIP_START_FRACTION = 0.1
SKIP_END = 5


class LRFindError(KitError):
    """The range test could not produce a curve; the message says which setting to change."""


def suggest_valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``valley``: the longest stretch of decreasing loss, 2/3 of the way down it."""
    n = len(losses)
    run = [1] * n  # longest decreasing subsequence ending at i
    best_start = best_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[best_end] < run[i]:
            best_end, best_start = i, i - run[i]
    sections = (best_end - best_start) / 3
    return float(lrs[best_start + int(sections) + int(sections / 2)])


def suggest_steep(lrs: list[float], losses: list[float]) -> float:
    """Where the loss falls fastest per decade of LR, up to the lowest loss: past it the run has blown up,
    and a loss coming down from the blow-up (as a 10-class loss does when it saturates) is no good LR."""
    stop = max(int(np.argmin(losses)) + 1, min(2, len(losses)))
    slope = np.gradient(np.asarray(losses[:stop]), np.log10(np.asarray(lrs[:stop])))
    return float(lrs[int(np.argmin(slope))])


def suggest_min10(lrs: list[float], losses: list[float]) -> float:
    """One tenth of the LR with the lowest loss (the classic rule of thumb)."""
    return float(lrs[int(np.argmin(losses))] / 10)


def suggest_turn(lrs: list[float], losses: list[float]) -> float:
    """The kit's one-cycle peak: the LR where the smoothed loss stops falling and turns up, its lowest point
    before the blow-up (Smith's "largest LR at which the loss still falls").

    One-cycle starts at 1/div_factor of it and warms up over pct_start of the steps, so the peak can sit at the
    edge that the test reached from a cold start; the EMA's lag puts that point a little past the raw loss's own
    minimum, where the raw loss has just begun to rise."""
    return float(lrs[int(np.argmin(losses))])


TURN_FACTOR = 3  # measured by bench lr-sweep: the one multiple of turn within the sweep's best on every recipe


def suggest_turn_x3(lrs: list[float], losses: list[float]) -> float:
    """The kit's default one-cycle peak: three times ``turn``. The range test climbs from a cold start, 20-40% a
    step; one-cycle reaches its peak after warming up from 1/25 of it over a quarter of the run, with a
    trained network, and takes LRs past where the test's loss turned up (SGD ResNet-18, ``bench lr-sweep``:
    Imagenette trained best at 3-9 x turn, the embedded sample at 1-3 x turn)."""
    return TURN_FACTOR * suggest_turn(lrs, losses)


SUGGESTERS = {"turn_x3": suggest_turn_x3, "turn": suggest_turn, "valley": suggest_valley, "steep": suggest_steep,
              "min10": suggest_min10}


def suggestions(lrs: list[float], losses: list[float]) -> dict[str, float]:
    start = int(len(lrs) * SKIP_START_FRACTION)
    end = len(lrs) - SKIP_END if len(lrs) - SKIP_END - start >= 3 else len(lrs)
    return {name: fn(lrs[start:end], losses[start:end]) for name, fn in SUGGESTERS.items()}


class _FixedLR:
    """The scheduler ``train_step`` steps during the test: it sets each step's LR itself, so this does nothing."""

    def step(self) -> None:
        pass


def lr_range_test(model: torch.nn.Module, batches, settings: LRFindConfig, optim: OptimConfig,
                  device: torch.device, amp_dtype: torch.dtype | None = None, channels_last: bool = True) -> dict:
    """Run the test on ``batches`` (an iterable of (uint8 images, labels), re-iterated if short), each step
    training's own ``train_step`` with ``optim``'s optimizer, weight decay and label smoothing.

    Returns lrs, smoothed losses, the suggestions, the chosen one's name and its LR.
    """
    saved = copy.deepcopy(model.state_dict())  # includes BatchNorm running stats
    groups = param_groups(model, optim.weight_decay)
    optimizer = create_optimizer(groups, optim, settings.start_lr)
    # fp16 (T4/V100) needs loss scaling here as in training: small gradients underflow to 0 without it, and an
    # overflowing step is skipped (its loss still counts) instead of ending the curve on NaN.
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    gamma = (settings.end_lr / settings.start_lr) ** (1 / (settings.num_iter - 1))
    smooth = settings.smooth
    lrs, losses, raw = [], [], []
    avg, best = 0.0, math.inf
    model.train()
    stream = _cycle(batches)
    try:
        for i in range(settings.num_iter):
            lr = settings.start_lr * gamma**i
            for group in optimizer.param_groups:
                group["lr"] = lr
            images, labels = next(stream)
            value = train_step(model, images, labels, criterion, optimizer, scaler, _FixedLR(), amp_dtype,
                               channels_last).item()
            if not math.isfinite(value):
                break
            avg = smooth * avg + (1 - smooth) * value
            smoothed = avg / (1 - smooth ** (i + 1))  # bias correction: early values are not pulled to 0
            lrs.append(lr)
            losses.append(smoothed)
            raw.append(value)
            best = min(best, smoothed)
            if smoothed > settings.diverge * best:
                break
    finally:
        stream.close()  # stops FFCV's loader thread and frees its pinned batches now, not at exit
        model.load_state_dict(saved)
    if len(lrs) < 3:
        raise LRFindError(f"LR range test diverged after {len(lrs)} steps from start_lr={settings.start_lr:g}; "
                           "lower lr_find.start_lr")
    found = suggestions(lrs, losses)
    return {"lrs": lrs, "losses": losses, "raw_losses": raw, "suggestions": found, "chosen": settings.suggestion,
            "lr": found[settings.suggestion], "num_iter": settings.num_iter, "stopped_at": len(lrs)}


def _cycle(batches):
    """``batches`` over and over. Closing the generator closes the pass in progress: an FFCV epoch iterator is a
    thread that otherwise keeps waiting, with its pinned memory, for a consumer that never comes back."""
    while True:
        iterator, empty = iter(batches), True
        try:
            for batch in iterator:
                empty = False
                yield batch
        finally:
            finish_epoch(iterator)
        if empty:
            raise LRFindError("LR range test: the training data yielded no batch")


def lr_find_loader(cfg: RunConfig, train_beton: Path, device: torch.device, workers: int, seed: int):
    """The range test's batches: the run's training crops at its first resolution and the test's batch size."""
    return create_train_loader(str(train_beton), cfg.lr_find.batch_size or cfg.train.batch_size, cfg.train.min_res,
                               device, workers, seed=seed, min_scale=cfg.train.min_scale, crop=cfg.train.crop,
                               kind="LR range test loader")


def run_lr_find(cfg: RunConfig, model, loader, device, amp_dtype, world_size: int = 1) -> dict:
    """The range test with the recipe's settings; writes lr_find.json and lr_find.png in the run folder.

    ``lr`` is the pick at the test's batch; ``peak_lr`` is it scaled to the training's global batch."""
    f = cfg.lr_find
    result = lr_range_test(model, loader, f, cfg.optim, device, amp_dtype, cfg.model.channels_last)
    test_batch, global_batch = f.batch_size or cfg.train.batch_size, cfg.train.batch_size * world_size
    result.update(test_batch=test_batch, global_batch=global_batch,
                  peak_lr=scaled_lr(result["lr"], test_batch, global_batch))
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(cfg.run.lr_find_json, result)
    plots.plot_lr_find(result, cfg.run.lr_find_png)
    scaled = (f" at batch {test_batch}, {result['peak_lr']:.3g} for the global batch {global_batch}"
              if global_batch != test_batch else "")
    console.print(f"LR range test: {', '.join(f'{k} {v:.3g}' for k, v in result['suggestions'].items())}; "
                  f"using {result['chosen']} = {result['lr']:.3g}{scaled} as the peak LR")
    return result


def auto_lr(cfg: RunConfig, runtime: Runtime, model, train_beton: Path, amp_dtype, workers: int) -> float:
    """``lr: auto``: rank 0 runs the LR range test at one process's batch; its pick, scaled by the linear
    rule (as ``optim.lr_batch`` scales a set LR) from that batch to the global one, is every rank's peak LR.
    The other ranks wait in the broadcast, within ``train.dist_timeout_minutes``."""
    lr = torch.zeros(1, dtype=torch.float64, device=runtime.device)
    if runtime.is_main:
        loader = lr_find_loader(cfg, train_beton, runtime.device, workers, seed=cfg.train.seed + 1)
        result = run_lr_find(cfg, model, loader, runtime.device, amp_dtype, runtime.world_size)
        lr[0] = result["peak_lr"]
    if runtime.distributed:
        dist.broadcast(lr, src=0)
    return float(lr[0])


def range_test(cfg: RunConfig, runtime: Runtime) -> float:
    """The test ``lr: auto`` runs before training, on its own: the same seeds, model, batches and precision."""
    torch.manual_seed(cfg.train.seed + runtime.rank)  # as training seeds its model
    train_beton = cfg.betons[0]
    model = create_model(**model_kwargs(cfg.model), num_classes=len(read_classes(train_beton)), device=runtime.device)
    amp_dtype, _ = resolve_precision(cfg.train.precision, runtime.device)
    return auto_lr(cfg, runtime, model, train_beton, amp_dtype, cfg.data.workers)


@click.command("lr-find")
@recipe_options
def lr_find_command(**flags):
    """LR range test on the recipe's training data; writes lr_find.json and lr_find.png in the run folder.

    The same test as ``lr: auto`` runs before training: the same seeds, model, batches and precision."""
    cfg = build_config(**flags)
    require_betons(cfg)
    runtime = init_runtime(cfg.train.dist_timeout_minutes)
    try:
        lr = range_test(cfg, runtime)
    finally:
        shutdown_runtime(runtime)
    if runtime.is_main:
        results.out(f"suggested LR ({cfg.lr_find.suggestion}): {lr:.4g} -> {cfg.run.lr_find_png}")
