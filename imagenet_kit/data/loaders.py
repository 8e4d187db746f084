"""FFCV loaders for training and evaluation.

Both yield ``(images, labels)`` with images as uint8 NCHW tensors on the target device; ``pixels.normalize``
turns them into float, channels_last tensors there. Doing the float conversion on the device keeps the
host-to-device copy at one byte per pixel.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time

import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.fields.rgb_image import (
    CenterCropRGBImageDecoder,
    RandomResizedCropRGBImageDecoder,
    ResizedCropRGBImageDecoder,
)
from ffcv.loader import Loader, OrderOption
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

import imagenet_kit.data.ffcv_compat  # noqa: F401  (before any Loader: FFCV's reader corrupts numba's types)
from imagenet_kit.data.pixels import CENTER_CROP_RATIO
from imagenet_kit.data.workers import usable_workers


def random_square_crop(height: int, width: int, _scale, ratio: float) -> tuple[int, int, int, int]:
    """A square of side ``ratio`` x the shorter side at a uniformly random position: (top, left, h, w).

    FFCV compiles it with numba inside the decoder, so ``np.random`` here is numba's per-thread generator,
    the one FFCV's own random crops draw from."""
    side = int(ratio * min(height, width))
    top = np.random.randint(0, height - side + 1)
    left = np.random.randint(0, width - side + 1)
    return top, left, side, side


class RandomSquareCropRGBImageDecoder(ResizedCropRGBImageDecoder):
    """fastai's ``Resize(size)`` on training images: the whole shorter side, randomly placed, no zoom."""

    def __init__(self, output_size: tuple[int, int], ratio: float = 1.0):
        super().__init__(output_size)
        self.scale = None
        self.ratio = ratio

    @property
    def get_crop_generator(self):
        return random_square_crop


# train.crop's declared choices, each a decoder for (resolution, min_scale).
TRAIN_DECODERS = {
    "random_resized": lambda res, min_scale: RandomResizedCropRGBImageDecoder((res, res), scale=(min_scale, 1.0),
                                                                              ratio=(3 / 4, 4 / 3)),
    "random_square": lambda res, _min_scale: RandomSquareCropRGBImageDecoder((res, res)),
}


def finish_epoch(batches) -> None:
    """End an epoch's batches early: close FFCV's epoch iterator and wait for its thread. A pipeline thread still
    running (numba code that calls torch) while the process exits can abort it ("terminate called without an active
    exception", seen once in `make image-check` right after a stop mid-epoch). Other iterables are just closed.

    Closing alone does not end a thread that has made its last batch: it then blocks, with no timeout, putting the
    end-of-epoch marker into a queue the consumer left full (ffcv/loader/epoch_iterator.py). Taking batches out of
    the queue lets that put through."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    if not isinstance(batches, threading.Thread):
        return
    deadline = time.monotonic() + 60
    while batches.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            batches.output_queue.get_nowait()
        batches.join(timeout=0.05)


def _label_pipeline(device: torch.device) -> list:
    # Squeeze after ToDevice: FFCV's ToDevice indexes shape[0], which a squeezed batch of one (the last
    # val batch when count % batch == 1) lacks; its loader thread then dies and the main thread waits
    # forever. A batch of one thus yields a 0-d label tensor: consumers reshape(-1).
    return [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=True), Squeeze()]


def create_train_loader(beton: str, batch_size: int, res: int, device: torch.device, workers: int,
                        seed: int = 0, distributed: bool = False, in_memory: bool = True,
                        drop_last: bool = True, deterministic: bool = False, min_scale: float = 0.08,
                        crop: str = "random_resized", kind: str = "train loader") -> Loader:
    """Random crops (``crop``: see TrainConfig.crop) + flip, decoded by FFCV's JIT pipeline.

    The resolution can be changed between epochs with ``set_resolution`` (progressive resizing).
    Under torchrun (``distributed=True``) each rank reads a disjoint shard of every epoch's order.
    ``deterministic``: center crops, no flip, sequential order (rank r of W reads samples r, r+W, ...), so
    a run replays exactly and W ranks see the same samples per step as one process with W times the batch.
    ``workers``: 0 = this process's share of the cores; more than that is lowered to it (``usable_workers``,
    which names ``kind`` when it does). They are numba's threads; torch's stay ``workers.torch_threads()``
    (``ffcv_compat``: FFCV itself would set torch's to the worker count).
    """
    if deterministic:
        augment = [CenterCropRGBImageDecoder((res, res), ratio=CENTER_CROP_RATIO)]
        order = OrderOption.SEQUENTIAL
    else:
        augment = [TRAIN_DECODERS[crop](res, min_scale), RandomHorizontalFlip()]
        # QUASI_RANDOM saves memory when the beton is not in RAM, but FFCV does not support it distributed.
        order = OrderOption.RANDOM if (distributed or in_memory) else OrderOption.QUASI_RANDOM
    pipelines = {
        "image": [*augment, ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage()],
        "label": _label_pipeline(device),
    }
    return Loader(beton, batch_size=batch_size, num_workers=usable_workers(workers, kind), order=order,
                  os_cache=in_memory, drop_last=drop_last, pipelines=pipelines, distributed=distributed, seed=seed)


def create_val_loader(beton: str, batch_size: int, res: int, device: torch.device, workers: int,
                      rank: int = 0, world_size: int = 1, crop_ratio: float = CENTER_CROP_RATIO) -> Loader:
    """Center crop keeping ``crop_ratio`` of the shorter side, resized to ``res``; sequential order.

    Under torchrun rank r of W reads samples r, r+W, ...: every image once over all ranks. (FFCV's own
    ``distributed=True`` pads the order to a multiple of W with repeats, as DistributedSampler does, and those
    repeats would be counted twice.)"""
    pipelines = {
        "image": [CenterCropRGBImageDecoder((res, res), ratio=crop_ratio), ToTensor(),
                  ToDevice(device, non_blocking=True), ToTorchImage()],
        "label": _label_pipeline(device),
    }
    indices = np.arange(rank, beton_num_samples(beton), world_size) if world_size > 1 else None
    return Loader(beton, batch_size=batch_size, num_workers=usable_workers(workers, "val loader"),
                  order=OrderOption.SEQUENTIAL,
                  drop_last=False, pipelines=pipelines, indices=indices)


def epoch_batches(loader: Loader, skip: int = 0):
    """The next epoch's batches from batch ``skip`` on, the ones before it never read or decoded: a mid-epoch
    resume starts where the checkpoint stopped instead of decoding up to an epoch of batches it throws away.

    FFCV 1.0.2's ``Loader.__iter__`` with the order cut: the epoch's order is a function of (seed, epoch), so
    batch ``skip`` and every one after it are those an uninterrupted epoch would have made."""
    if skip == 0:
        return iter(loader)
    Compiler.set_num_threads(loader.num_workers)
    order = loader.next_traversal_order()
    selected = order[skip * loader.batch_size:len(loader) * loader.batch_size]
    loader.next_epoch += 1
    if loader.code is None or loader.recompile:
        loader.generate_code()
    return EpochIterator(loader, selected)


def set_resolution(loader: Loader, res: int) -> None:
    """Change the train crop size for the next epoch without rebuilding the loader."""
    decoder = loader.pipeline_specs["image"].decoder
    decoder.output_size = (res, res)


def beton_num_samples(beton: str) -> int:
    from ffcv.reader import Reader
    return int(Reader(beton).num_samples)
