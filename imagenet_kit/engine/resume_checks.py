"""What a resumed run may change, and what it may not.

A checkpoint resumes the run that wrote it: the same data, network, batch and schedule. A longer one-cycle run,
another LR or another batch is another run, and resuming into it broke in the middle (OneCycleLR: "Tried to step 22
times") or silently. Those keys are refused, each named with its old and new value, before anything in the run
folder changes; the rest (workers, logging, checkpoint cadence, evaluation settings) may change, and are listed.
"""
from __future__ import annotations

from dataclasses import fields

from imagenet_kit.config import SECTIONS, RunConfig, config_from_dict
from imagenet_kit.errors import ConfigError
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS
from imagenet_kit.progress import console

FIXED = {
    "data.name", "data.max_res", "subset.classes", "subset.per_class", "subset.seed",  # the data
    *(f"model.{key}" for key in ARCHITECTURE_KEYS),  # the network
    "train.batch_size", "train.epochs",  # the steps the schedule was built for
    "optim.lr", "optim.lr_batch", "optim.optimizer", "optim.schedule", "optim.pct_start", "optim.div_factor",
    "optim.final_div_factor", "optim.peak_epoch", "optim.step_epochs", "optim.step_gamma", "optim.flat_fraction",
}


def _settings(cfg: RunConfig) -> dict:
    return {f"{name}.{f.name}": getattr(getattr(cfg, name), f.name) for name in SECTIONS for f in fields(SECTIONS[name])}


def check_resumable(saved: dict, cfg: RunConfig, checkpoint: str) -> None:
    """Refuse a resume into ``cfg`` of a checkpoint whose run had other FIXED settings (``saved``: its config)."""
    old, new = _settings(config_from_dict(saved)), _settings(cfg)
    changed = {key: (old[key], new[key]) for key in new if old[key] != new[key]}
    refused = [f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items() if key in FIXED]
    if refused:
        raise ConfigError(f"{checkpoint} is of a run with other settings: {', '.join(refused)}. Resume with the "
                          f"run's own settings, or start a new run from its weights: --name NEW_NAME --set "
                          f"model.init={checkpoint}")
    if changed:
        console.print("resume: changed since the checkpoint: " + ", ".join(
            f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items()))
