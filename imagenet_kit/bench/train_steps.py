"""The three training steps ``bench train`` times (see ``bench/train.py``): the kit's step on synthetic batches,
the same step fed by the kit's FFCV loader, and a plain-PyTorch twin with no kit code."""
from __future__ import annotations

import gc
import time

import torch
import torchvision

from imagenet_kit.config import ModelConfig, OptimConfig
from imagenet_kit.engine.step import train_step
from imagenet_kit.models.factory import create_model
from imagenet_kit.optim.optimizers import create_optimizer, param_groups, scaled_lr
from imagenet_kit.optim.schedule import create_scheduler
from imagenet_kit.runtime import resolve_precision

NUM_CLASSES = 1000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``steps`` calls of ``step`` after ``warmup`` untimed ones (kernel selection, compilation,
    the loader's first batches); the device queue is drained before the clock starts and stops."""
    for _ in range(warmup):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return time.perf_counter() - start


def has_bare_reference(arch: str, model_options: dict) -> bool:
    """Whether ``torchvision.models.<arch>()`` is the kit's model: a torchvision arch with no add-ons."""
    defaults = ModelConfig()
    return hasattr(torchvision.models, arch) and all(value == getattr(defaults, key)
                                                      for key, value in model_options.items())


def kit_step(arch: str, model_options: dict, batch: int, total_steps: int, device: torch.device, precision: str,
              channels_last: bool, compile_: bool):
    """What ``train`` builds around its step, with the kit's default model and optimiser settings."""
    amp_dtype, use_scaler = resolve_precision(precision, device)
    model = create_model(arch, NUM_CLASSES, **model_options, device=device, channels_last=channels_last)
    optim = OptimConfig()
    max_lr = scaled_lr(optim.lr, optim.lr_batch, batch)
    optimizer = create_optimizer(param_groups(model, optim.weight_decay), optim, max_lr)
    # One "epoch" a few steps longer than the steps run: OneCycleLR refuses to step past its total and needs a
    # warm-up of more than one step, which `--warmup 1 --steps 3` alone would not give it.
    scheduler = create_scheduler(optimizer, optim, max_lr, 1, total_steps + 8)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=optim.label_smoothing)
    step_model = torch.compile(model, dynamic=False) if compile_ else model  # as training compiles it
    step_model.train()
    return lambda images, labels: train_step(step_model, images, labels, criterion, optimizer, scaler, scheduler,
                                             amp_dtype, channels_last)


def measure_synthetic(arch, model_options, res, batch, device, precision, channels_last, compile_, steps,
                      warmup) -> float:
    step = kit_step(arch, model_options, batch, warmup + steps, device, precision, channels_last, compile_)
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    return _timed(lambda: step(images, labels), steps, warmup, device)


def measure_real(arch, model_options, res, batch, device, precision, channels_last, compile_, steps, warmup,
                 beton, workers) -> float:
    step = kit_step(arch, model_options, batch, warmup + steps, device, precision, channels_last, compile_)
    from imagenet_kit.data.loaders import create_train_loader  # FFCV: only this mode needs it

    # As many passes as the steps take (bench_train allowed them): each epoch restart is timed, as training's are.
    batches = _passes(create_train_loader(str(beton), batch, res, device, workers))
    try:
        return _timed(lambda: step(*next(batches)), steps, warmup, device)
    finally:
        batches.close()  # stops FFCV's loader thread mid-epoch


def _passes(loader):
    """The loader's batches, epoch after epoch."""
    from imagenet_kit.data.loaders import finish_epoch

    while True:
        batches = iter(loader)
        try:
            yield from batches
        finally:
            finish_epoch(batches)


def host_syncs_per_step(arch, model_options, res, batch, device, precision, channels_last) -> float | None:
    """How often the kit's step waits for the GPU, counted by torch's sync debug mode over 3 steps after 2: with
    fp16 an unfused optimizer makes ``GradScaler.step`` read its inf check on the host every step. None on CPU."""
    if device.type != "cuda":
        return None
    import warnings

    step = kit_step(arch, model_options, batch, 8, device, precision, channels_last, False)
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    for _ in range(2):
        step(images, labels)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(3):
                step(images, labels)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in seen) / 3


def measure_bare(arch, model_options, res, batch, device, precision, channels_last, compile_, steps,
                 warmup) -> float:
    """Plain PyTorch, as a tutorial writes it; only the autocast dtype is the kit's choice, so both match."""
    amp_dtype, _ = resolve_precision(precision, device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = getattr(torchvision.models, arch)(num_classes=NUM_CLASSES).to(device=device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step_model = torch.compile(model, dynamic=False) if compile_ else model
    step_model.train()
    x = torch.randn(batch, 3, res, res, device=device).contiguous(memory_format=memory_format)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)

    def step():
        # No GradScaler even in fp16: loss scaling is one of the things the kit's step adds.
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = torch.nn.functional.cross_entropy(step_model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return _timed(step, steps, warmup, device)


def free_memory(device: torch.device) -> None:
    """Drop the finished mode's model and optimiser state before the next one allocates its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
