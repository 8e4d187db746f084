"""The training step: one function, so that ``imagenet-kit bench train`` times exactly the step training runs.

No FFCV here (batches come in as uint8 tensors on the device): the GPU benchmark imports it on hosts without it.
"""
from __future__ import annotations

import torch

from imagenet_kit.data.pixels import normalize
from imagenet_kit.runtime import autocast


def train_step(model, images: torch.Tensor, labels: torch.Tensor, criterion, optimizer, scaler, scheduler,
               amp_dtype: torch.dtype | None, channels_last: bool) -> torch.Tensor:
    """One optimiser step on a loader batch (uint8 images on the device); returns the loss, unsynchronised."""
    x = normalize(images, channels_last)
    with autocast(images.device, amp_dtype):
        loss = criterion(model(x), labels.long().reshape(-1))  # FFCV squeezes a batch of one to a 0-d label
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss
