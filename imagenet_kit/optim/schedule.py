"""LR schedules, all stepped once per iteration (batch), so a mid-epoch resume lands on the same value."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from imagenet_kit.config_checks import SCHEDULES
from imagenet_kit.errors import ConfigError
from imagenet_kit.optim.optimizers import create_optimizer


def create_scheduler(optimizer: torch.optim.Optimizer, name: str, max_lr: float, epochs: int,
                     steps_per_epoch: int, pct_start: float = 0.25, div_factor: float = 25.0,
                     final_div_factor: float = 1e4, base_momentum: float = 0.85, max_momentum: float = 0.95,
                     peak_epoch: float = 2.0, step_epochs: int = 30, step_gamma: float = 0.1,
                     flat_fraction: float = 0.75) -> LRScheduler:
    """Build the named schedule for ``epochs * steps_per_epoch`` optimizer steps.

    - ``onecycle``: torch's OneCycleLR (Smith 2018), cosine annealing, momentum cycled inversely.
    - ``linear``: FFCV's ImageNet schedule: linear from ``1e-4 * max_lr`` up to ``max_lr`` at
      ``peak_epoch``, then linear to 0 at the last step. Momentum is constant.
    - ``step``: ``max_lr * step_gamma ** (epoch // step_epochs)``.
    - ``flat_cos``: fastai's ``fit_flat_cos``: ``max_lr`` for the first ``flat_fraction`` of the steps,
      then half a cosine down to 0 at the last step. No warm-up: pair it with RAdam, whose rectified
      update is small while its variance estimate is young (fastai uses Ranger, RAdam + Lookahead).

    A param group with an ``lr_mult`` key (the head's, see ``model.param_groups``) follows the same curve
    scaled by it.
    """
    total = epochs * steps_per_epoch
    peaks = [max_lr * group.get("lr_mult", 1.0) for group in optimizer.param_groups]
    if name == "onecycle":
        if pct_start * total <= 1:  # OneCycleLR would divide by a warm-up of zero length
            raise ConfigError(f"onecycle's warm-up (optim.pct_start {pct_start} x {total} steps) is under one step; "
                             "train more steps (epochs, or a smaller batch) or raise optim.pct_start")
        return OneCycleLR(optimizer, max_lr=peaks, total_steps=total, pct_start=pct_start,
                          div_factor=div_factor, final_div_factor=final_div_factor,
                          base_momentum=base_momentum, max_momentum=max_momentum, cycle_momentum=True)
    for group, peak in zip(optimizer.param_groups, peaks, strict=False):
        group["lr"] = peak
        group["initial_lr"] = peak
    if name == "linear":
        xs = [0.0, peak_epoch * steps_per_epoch, float(total)]
        ys = [1e-4, 1.0, 0.0]
        return LambdaLR(optimizer, lambda step: float(np.interp(step, xs, ys)))
    if name == "flat_cos":
        flat = flat_fraction * total
        return LambdaLR(optimizer, lambda step: 1.0 if step < flat else
                        0.5 * (1 + math.cos(math.pi * (step - flat) / max(1.0, total - flat))))
    if name == "step":
        return LambdaLR(optimizer, lambda step: step_gamma ** ((step // steps_per_epoch) // step_epochs))
    raise ValueError(f"unknown schedule '{name}'; choose one of {', '.join(SCHEDULES)}")


def schedule_trace(name: str, max_lr: float, epochs: int, steps_per_epoch: int, *, optimizer_name: str = "sgd",
                   momentum: float = 0.9, **kwargs) -> dict:
    """LR and momentum (AdamW: beta1) at every step, from a throwaway optimizer (for plots and tests)."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = create_optimizer([{"params": [param]}], optimizer_name, max_lr, momentum)
    scheduler = create_scheduler(optimizer, name, max_lr, epochs, steps_per_epoch, **kwargs)
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
