"""From the loaders' uint8 pixels to the network's input: ImageNet's statistics and ``normalize``.

No FFCV here: the training step (``engine/step.py``) and the GPU benchmark run on hosts without it.
"""
from __future__ import annotations

import functools

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CENTER_CROP_RATIO = 224 / 256  # the standard ImageNet evaluation crop


@functools.cache
def normalize_constants(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std x 255 as 1x3x1x1 tensors on ``device``, made once: building them per call is a blocking copy
    from pageable host memory on CUDA, twice per training step."""
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    return mean, std


def normalize(images: torch.Tensor, channels_last: bool = True) -> torch.Tensor:
    """uint8 NCHW -> float32 normalised with ImageNet statistics, optionally channels_last."""
    mean, std = normalize_constants(images.device)
    out = (images.float() - mean) / std
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
