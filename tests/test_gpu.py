"""On a CUDA GPU only: the training step and evaluation leave the host free to queue work (no per-batch sync)."""
from __future__ import annotations

import warnings

import pytest
import torch

from imagenet_kit.config import OptimConfig
from imagenet_kit.engine.evaluate import evaluate
from imagenet_kit.engine.step import train_step
from imagenet_kit.models.factory import create_model
from imagenet_kit.optim.optimizers import create_optimizer, param_groups
from imagenet_kit.optim.schedule import create_scheduler

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _syncs(fn) -> int:
    """How many times ``fn`` made the host wait for the GPU (torch's sync debug mode warns on each)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def _batches(n: int, device) -> list:
    g = torch.Generator(device=device).manual_seed(0)
    return [(torch.randint(0, 256, (8, 3, 64, 64), generator=g, device=device, dtype=torch.uint8),
             torch.randint(0, 10, (8,), generator=g, device=device)) for _ in range(n)]


def test_evaluate_syncs_once_whatever_the_number_of_batches():
    device = torch.device("cuda")
    model = create_model("resnet18", 10).to(device)
    evaluate(model, _batches(1, device), 10, device, torch.bfloat16)  # the normalize constants reach the GPU once
    few, many = (_syncs(lambda n=n: evaluate(model, _batches(n, device), 10, device, torch.bfloat16))
                 for n in (2, 12))
    assert few == many <= 2


def test_bf16_train_step_does_not_sync():
    device = torch.device("cuda")
    model = create_model("resnet18", 10).to(device, memory_format=torch.channels_last)
    optimizer = create_optimizer(param_groups(model, 5e-5), OptimConfig(), 0.1)
    scheduler = create_scheduler(optimizer, OptimConfig(), 0.1, 1, 20)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    batches = _batches(6, device)
    train_step(model, *batches[0], criterion, optimizer, scaler, scheduler, torch.bfloat16, True)  # warm-up
    assert _syncs(lambda: [train_step(model, x, y, criterion, optimizer, scaler, scheduler, torch.bfloat16, True)
                           for x, y in batches[1:]]) == 0
