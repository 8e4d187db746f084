"""LR schedules, all stepped once per iteration (batch), so a mid-epoch resume lands on the same value."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from imagenet_kit.config import OptimConfig
from imagenet_kit.errors import ConfigError
from imagenet_kit.optim.optimizers import create_optimizer


def create_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, max_lr: float, epochs: int,
                     steps_per_epoch: int, epoch_changes: list[tuple[int, int]] = ()) -> LRScheduler:
    """``optim.schedule`` over ``epochs * steps_per_epoch`` optimizer steps, peaking at ``max_lr``.

    - ``onecycle``: torch's OneCycleLR (Smith 2018), cosine annealing, momentum cycled inversely.
    - ``linear``: FFCV's ImageNet schedule: linear from ``1e-4 * max_lr`` up to ``max_lr`` at
      ``peak_epoch``, then linear to 0 at the last step. Momentum is constant.
    - ``step``: ``max_lr * step_gamma ** (epoch // step_epochs)``.
    - ``flat_cos``: fastai's ``fit_flat_cos``: ``max_lr`` for the first ``flat_fraction`` of the steps,
      then half a cosine down to 0 at the last step. No warm-up: pair it with RAdam, whose rectified
      update is small while its variance estimate is young (fastai uses Ranger, RAdam + Lookahead).

    ``epoch_changes``: (step, total steps before) for each resume that changed ``train.epochs`` (not onecycle:
    ``engine.resume`` refuses it there); see ``changed_epochs``.

    A param group with an ``lr_mult`` key (the head's, see ``optimizers.param_groups``) follows the same curve
    scaled by it. The schedule's name was checked against the declaration of ``optim.schedule`` when the config loaded.
    """
    total = epochs * steps_per_epoch
    peaks = [max_lr * group.get("lr_mult", 1.0) for group in optimizer.param_groups]
    if optim.schedule == "onecycle":
        if optim.pct_start * total <= 1:  # OneCycleLR would divide by a warm-up of zero length
            raise ConfigError(f"onecycle's warm-up (optim.pct_start {optim.pct_start} x {total} steps) is under "
                              "one step; train more steps (epochs, or a smaller batch) or raise optim.pct_start")
        return OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=optim.pct_start,
                          div_factor=optim.div_factor, final_div_factor=optim.final_div_factor,
                          base_momentum=optim.base_momentum, max_momentum=optim.max_momentum, cycle_momentum=True)
    for group, peak in zip(optimizer.param_groups, peaks, strict=False):
        group["lr"] = peak
        group["initial_lr"] = peak
    return LambdaLR(optimizer, _lr_factor(optim, total, steps_per_epoch, list(epoch_changes)))


# The schedules a resumed run may lengthen or shorten (``train.epochs``): their curve is a function of the step
# that can go on continuously. OneCycleLR's total is fixed once it is built.
CHANGEABLE_EPOCHS = ("linear", "flat_cos", "step")


def _lr_factor(optim: OptimConfig, total: int, steps_per_epoch: int, epoch_changes: list[tuple[int, int]]):
    """LambdaLR's factor at each step, with each change of the epoch count applied in turn (``changed_epochs``)."""
    totals = [before for _, before in epoch_changes] + [total]
    factor = _LR_FACTORS[optim.schedule](optim, totals[0], steps_per_epoch)
    if optim.schedule == "step":  # a function of the step alone: more epochs go on with its decay
        return factor
    for (start, before), after in zip(epoch_changes, totals[1:], strict=True):
        factor = changed_epochs(factor, start, before, after)
    return factor


def changed_epochs(factor, start: int, before: int, after: int):
    """A curve planned for ``before`` steps, changed at step ``start`` to end at step ``after``: the same up to
    ``start``, then the rest of it (``start`` to ``before``) stretched over ``start`` to ``after``. The LR thus
    goes on from where it was, with no jump, and still ends where the schedule ends (0 for linear and flat_cos)."""
    ratio = (before - start) / (after - start)
    return lambda step: factor(step) if step < start else factor(start + (step - start) * ratio)


def _linear(optim: OptimConfig, total: int, steps_per_epoch: int):
    xs, ys = [0.0, optim.peak_epoch * steps_per_epoch, float(total)], [1e-4, 1.0, 0.0]
    return lambda step: float(np.interp(step, xs, ys))


def _flat_cos(optim: OptimConfig, total: int, _steps_per_epoch: int):
    flat = optim.flat_fraction * total
    return lambda step: 1.0 if step < flat else 0.5 * (1 + math.cos(math.pi * (step - flat) / max(1.0, total - flat)))


def _step(optim: OptimConfig, _total: int, steps_per_epoch: int):
    return lambda step: optim.step_gamma ** ((step // steps_per_epoch) // optim.step_epochs)


# The schedules other than onecycle: each gives LambdaLR's factor of the peak at every step.
_LR_FACTORS = {"linear": _linear, "flat_cos": _flat_cos, "step": _step}


def schedule_trace(optim: OptimConfig, max_lr: float, epochs: int, steps_per_epoch: int) -> dict:
    """LR and momentum (AdamW: beta1) at every step, from a throwaway optimizer (for plots and tests)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = create_optimizer([{"params": [param]}], optim, max_lr)
    scheduler = create_scheduler(optimizer, optim, max_lr, epochs, steps_per_epoch)
    lrs, moms = [], []
    for _ in range(epochs * steps_per_epoch):
        group = optimizer.param_groups[0]
        lrs.append(group["lr"])
        moms.append(group["betas"][0] if "betas" in group else group["momentum"])
        optimizer.step()
        scheduler.step()
    return {"lr": lrs, "momentum": moms, "steps_per_epoch": steps_per_epoch}


def resolution_for_epoch(epoch: int, min_res: int, max_res: int, start_ramp: int, end_ramp: int) -> int:
    """FFCV's progressive resizing: min_res until start_ramp, then linear to max_res at end_ramp, in
    steps of 32 px (so cuDNN sees few distinct shapes)."""
    if epoch <= start_ramp:
        return min_res
    if epoch >= end_ramp:
        return max_res
    res = np.interp(epoch, [start_ramp, end_ramp], [min_res, max_res])
    return int(round(res / 32)) * 32
