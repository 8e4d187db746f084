"""What ``bench gpu-evidence`` measures besides step throughput: memory at each GPU profile's batch, and a short
training run stopped by SIGTERM mid-epoch, resumed, and resumed again in another precision.

Memory rows (kind "memory") hold what the GPU must have free, ``max_memory_reserved``, and what tensors used,
``max_memory_allocated``, for the full recipe's network at the profiles' largest training resolution and at their
evaluation (256 px, flip TTA): a T4's fp16 batch of 256 is measured on whatever GPU runs this, with the same
allocator and kernels, where before the kit only had NVIDIA's V100 figures to go by.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import torch

from imagenet_kit.bench.train_steps import NUM_CLASSES, free_memory, kit_step
from imagenet_kit.config import load_config
from imagenet_kit.config.recipes import profile_names
from imagenet_kit.data.pixels import normalize
from imagenet_kit.environment import device_name, environment
from imagenet_kit.errors import KitError
from imagenet_kit.models.factory import create_model
from imagenet_kit.result_rows import utc_now
from imagenet_kit.runtime import autocast, resolve_precision

FULL_NETWORK = {"blurpool": True}  # recipes/full.yaml's resnet50 add-on


def profile_settings() -> list[tuple[str, int, str, int]]:
    """(profile, batch per GPU, precision, eval batch) of every GPU profile over the full recipe."""
    settings = []
    for name in profile_names():
        cfg = load_config("full", [f"train.profile={name}"])
        settings.append((name, cfg.train.batch_size, cfg.train.precision, cfg.train.val_batch_size))
    return settings


def peaks(device: torch.device) -> dict:
    if device.type != "cuda":
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {"reserved_mb": round(rss, 1), "allocated_mb": round(rss, 1), "memory_kind": "process_max_rss"}
    return {"reserved_mb": round(torch.cuda.max_memory_reserved(device) / 2**20, 1),
            "allocated_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1),
            "device_total_mb": round(torch.cuda.get_device_properties(device).total_memory / 2**20, 1),
            "memory_kind": "cuda_max_reserved"}


def memory_rows(arch: str, profiles, train_res: int, eval_res: int, device: torch.device) -> list[dict]:
    """Peak memory of 3 training steps at ``train_res`` and of an evaluation at ``eval_res`` with flip TTA, per
    profile's (batch, precision); a batch that does not fit is a row saying so, not a failure."""
    env = environment()
    rows = []
    for profile, batch, precision, eval_batch in profiles:
        for phase, res, size in (("train", train_res, batch), ("eval", eval_res, eval_batch)):
            free_memory(device)
            try:
                (train_steps if phase == "train" else evaluation)(arch, FULL_NETWORK, res, size, precision, device)
                peak, fits = peaks(device), True
            except torch.OutOfMemoryError:
                peak, fits = peaks(device), False
            rows.append({"kind": "memory", "date": utc_now(), "device": device_name(device),
                         "device_type": device.type, "profile": profile, "phase": phase, "arch": arch,
                         **FULL_NETWORK, "res": res, "batch": size, "precision": precision, "flip_tta": phase == "eval",
                         "fits": fits, **peak, "versions": env, "command": env["command"]})
    return rows


def train_steps(arch: str, model_options: dict, res: int, batch: int, precision: str, device: torch.device) -> None:
    """Three of training's steps (the kit's step, optimizer and scaler) on synthetic batches."""
    step = kit_step(arch, model_options, batch, 3, device, precision, channels_last=True, compile_=False)
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    labels = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    for _ in range(3):
        step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def evaluation(arch: str, model_options: dict, res: int, batch: int, precision: str, device: torch.device) -> None:
    """Evaluation's memory: a batch and its mirror through the network under autocast, as ``engine.evaluate``
    runs them with flip TTA (that module imports FFCV, which this bench must not need without a bundle)."""
    model = create_model(arch, NUM_CLASSES, **model_options, device=device, channels_last=True)
    model.eval()
    images = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    x = normalize(images, channels_last=True)
    with autocast(device, resolve_precision(precision, device)[0]):
        for _ in range(2):
            logits = (model(x).float() + model(torch.flip(x, dims=[3])).float()) / 2
    logits.topk(5, dim=1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sigterm_at(step_number: int):
    """A train_step that sends this process SIGTERM after its ``step_number``-th call, as a spot reclaim would."""
    from imagenet_kit.engine import train as train_module

    step, calls = train_module.train_step, [0]

    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step_number:
            os.kill(os.getpid(), signal.SIGTERM)
        return step(*args, **kwargs)

    return counted


def _linked_betons(bundle: dict, folder: Path) -> None:
    """The bundle's beton as both the train and the val beton of a run named "evidence"."""
    beton = Path(bundle["path"]) / bundle["beton"]
    for split in ("train", "val"):
        for suffix in ("", ".classes.json", ".report.json"):
            if Path(f"{beton}{suffix}").is_file():
                shutil.copy(f"{beton}{suffix}", folder / f"evidence-{split}-{bundle['max_res']}.beton{suffix}")


# A stop is acted on at the loop's next check (every 20 steps, engine/train.py's CHECK_EVERY): with 21 to 39 steps
# per epoch, a SIGTERM at step 2 stops epoch 1 at step 20, and one 2 steps into epoch 2 of the resumed run stops it
# at global step 40.
CHECK_STEPS_PER_EPOCH = 27


def check_batch(images: int) -> int:
    """The batch that gives the bundle's beton about CHECK_STEPS_PER_EPOCH steps per epoch (at least 2 images: one
    image per batch leaves BatchNorm a single value per channel at the network's end)."""
    batch = max(2, images // CHECK_STEPS_PER_EPOCH)
    if not 20 < images // batch < 40:
        raise KitError(f"the stop/resume check needs 21 to 39 steps per epoch of the bundle's beton, and its "
                       f"{images} images make {images // batch} at batch {batch}: rebuild the bundle with --images "
                       f"{2 * CHECK_STEPS_PER_EPOCH} or more")
    return batch


def stop_resume_check(bundle: dict, arch: str, resolutions: tuple[int, int], precisions: tuple[str, str],
                      device: torch.device) -> dict:
    """Three short epochs at ``resolutions`` (the first two at the lower one): stopped by SIGTERM in epoch 1,
    resumed and stopped again in epoch 2, then resumed in the other precision to the end. One "check" row."""
    from imagenet_kit.engine import train as train_module
    from imagenet_kit.runtime import local_runtime

    batch, (low, high) = check_batch(bundle["images"]), resolutions
    with tempfile.TemporaryDirectory() as tmp:
        _linked_betons(bundle, Path(tmp))
        base = [f"data.beton_dir={tmp}", "data.name=evidence", f"data.max_res={bundle['max_res']}",
                f"output_dir={tmp}/runs", "name=evidence", f"model.arch={arch}", "model.blurpool=true",
                f"train.batch_size={batch}", f"train.val_batch_size={batch}", "train.epochs=3",
                f"train.min_res={low}", f"train.max_res={high}", "train.start_ramp=1", "train.end_ramp=2",
                f"train.val_res={high}", "train.checkpoint_minutes=0", "data.workers=0"]
        stages, original = [], train_module.train_step
        try:
            steps = bundle["images"] // batch
            for precision, stop_after in ((precisions[0], 2), (precisions[0], steps - 20 + 2), (precisions[1], 0)):
                cfg = load_config("full", base + [f"train.precision={precision}"])
                train_module.train_step = _sigterm_at(stop_after) if stop_after else original
                result = train_module.train(cfg, local_runtime(), resume="auto")
                stages.append({"precision": precision, "stopped": result.stopped, "epoch": result.epoch,
                               "step": result.step})
        finally:
            train_module.train_step = original
        epochs = (Path(tmp) / "runs" / "evidence" / "metrics.jsonl").read_text().splitlines()
    expected = [(0, 20), (1, 40 - steps)]
    stopped_at = [(s["epoch"], s["step"]) for s in stages[:2]]
    passed = stopped_at == expected and not stages[2]["stopped"] and len(epochs) == 3
    env = environment()
    return {"kind": "check", "date": utc_now(), "check": "sigterm-resume-precision", "device": device_name(device),
            "device_type": device.type, "arch": arch, **FULL_NETWORK, "batch": batch, "resolutions": list(resolutions),
            "precisions": list(precisions), "stages": stages, "stopped_at": stopped_at, "expected": expected,
            "epochs_logged": len(epochs), "passed": passed, "versions": env, "command": env["command"]}
