"""Checkpoints that survive a spot-instance kill: atomic writes, a previous copy, validated loads.

A checkpoint is a dict: model, optimizer, scheduler, scaler, epoch (in progress), step (batches of that
epoch already done), global_step, rng, config, classes, best_top1, metrics, max_lr.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from imagenet_kit.errors import KitError
from imagenet_kit.progress import console
from imagenet_kit.runs import BEST, CHECKPOINTS, LAST, LAST_PREVIOUS, RunFolder
from imagenet_kit.runtime import precision_name

REQUIRED_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "config", "classes")


class CheckpointError(KitError):
    pass


def save_checkpoint(state: dict, path: Path, keep_previous: bool = False) -> None:
    """torch.save to a temp file, fsync, then rename over ``path``: a kill at any moment leaves either
    the old file or the new one, never a torn one. ``keep_previous`` first renames the old file to
    ``last.prev.pt`` so that one bad write still leaves a good checkpoint to resume from."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name(LAST_PREVIOUS))
    os.replace(tmp, path)


def save_run_checkpoint(training, epoch: int, step: int, metrics: dict | None, name: str = LAST,
                        partial: tuple[float, int] | None = None) -> None:
    """Rank 0 writes the run's checkpoint ``name`` (``training``: engine/setup.py's Training): model, optimizer,
    scheduler, scaler, position, RNG, config and classes, atomically; then hands it to the mirror, if any."""
    if not training.runtime.is_main:
        return
    state = {
        # the running train loss of an unfinished epoch, so a resumed epoch reports the same mean
        "partial_epoch": {"loss_sum": partial[0], "steps": partial[1]} if partial else None,
        "model": training.model.state_dict(), "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(), "scaler": training.scaler.state_dict(),
        "epoch": epoch, "step": step, "global_step": training.position.global_step,
        "rng": rng_state(training.runtime.device), "precision": precision_name(training.amp_dtype),
        "config": training.cfg.to_dict(), "classes": training.classes, "best_top1": training.position.best_top1,
        "metrics": metrics, "max_lr": training.max_lr, "world_size": training.runtime.world_size,
        "epoch_changes": training.epoch_changes,
    }
    path = training.cfg.run.checkpoint(name)
    save_checkpoint(state, path, keep_previous=(name == LAST))
    if training.mirror is not None:
        training.mirror.push(path, state)


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks: what tells two copies of a checkpoint apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: Path) -> dict:
    """Load and check a checkpoint; raise CheckpointError naming the file if it is unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors...
        raise CheckpointError(f"{path}: unreadable checkpoint, not a file torch.save wrote or cut short by a kill "
                              f"({type(err).__name__}: {err}); give a run's {CHECKPOINTS}/{LAST} or {BEST}, or "
                              "resume with --resume auto, which takes the newest readable one") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training checkpoint of this kit (missing {', '.join(missing)})")
    return state


def find_resume_checkpoint(run_dir: Path) -> tuple[Path, dict] | None:
    """The newest readable checkpoint of a run (by training progress), warning about broken ones."""
    candidates = []
    for path in sorted(RunFolder(run_dir).checkpoints.glob("*.pt")):
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            console.print(f"[yellow]warning:[/] skipping {err}")
            continue
        candidates.append(((state["global_step"], path.name != BEST), path, state))
    if not candidates:
        return None
    _, path, state = max(candidates, key=lambda c: c[0])
    return path, state


def rng_state(device: torch.device | None = None) -> dict:
    """The generators a resumed run continues: Python's, numpy's, torch's CPU one and, on a GPU, this process's
    device's only. Every rank saves its own device's state under torchrun, and a host with fewer GPUs (8 resumed
    as 4, a g5.12xlarge's run on a g5.2xlarge) has nothing to index past its own."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device is not None and device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore ``rng_state``'s generators; a CUDA state goes to this process's device, if it has one. Checkpoints
    written before 2026-12-06 hold every visible device's state ("cuda"): this device's is taken when there is one
    at its index."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if device is None or device.type != "cuda":
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], device)
    elif device.index is not None and device.index < len(state.get("cuda", [])):
        torch.cuda.set_rng_state(state["cuda"][device.index], device)
