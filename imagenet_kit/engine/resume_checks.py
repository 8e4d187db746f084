"""What a resumed run may change, and what it may not.

A checkpoint resumes the run that wrote it: the same data, network, batch and schedule. A longer one-cycle run,
another LR or another batch is another run, and resuming into it broke in the middle (OneCycleLR: "Tried to step 22
times") or silently. Those keys are refused, each named with its old and new value, before anything in the run
folder changes; the rest (workers, logging, checkpoint cadence, evaluation settings) may change, and are listed.
The epoch count may change under the schedules that can go on continuously (``schedule.CHANGEABLE_EPOCHS``).
"""
from __future__ import annotations

from dataclasses import fields

from imagenet_kit.config import SECTIONS, RunConfig, config_from_dict
from imagenet_kit.errors import ConfigError
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS
from imagenet_kit.optim.schedule import CHANGEABLE_EPOCHS

FIXED = {
    "data.name", "data.max_res", "subset.classes", "subset.per_class", "subset.seed",  # the data
    *(f"model.{key}" for key in ARCHITECTURE_KEYS),  # the network
    "train.batch_size", "train.epochs",  # the steps the schedule was built for
    "optim.lr", "optim.lr_batch", "optim.optimizer", "optim.schedule", "optim.pct_start", "optim.div_factor",
    "optim.final_div_factor", "optim.peak_epoch", "optim.step_epochs", "optim.step_gamma", "optim.flat_fraction",
}


def _settings(cfg: RunConfig) -> dict:
    return {f"{name}.{f.name}": getattr(getattr(cfg, name), f.name) for name in SECTIONS for f in fields(SECTIONS[name])}


def check_resumable(state: dict, cfg: RunConfig, checkpoint: str) -> str:
    """Refuse a resume into ``cfg`` of checkpoint ``state`` when its run had other FIXED settings; returns the
    changes it accepts, for the log ("" for none)."""
    old, new = _settings(config_from_dict(state["config"])), _settings(cfg)
    changed = {key: (old[key], new[key]) for key in new if old[key] != new[key]}
    epochs_may_change = cfg.optim.schedule in CHANGEABLE_EPOCHS
    fixed = FIXED - {"train.epochs"} if epochs_may_change else FIXED
    refused = [f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items() if key in fixed]
    if "train.epochs" in changed and epochs_may_change:
        _check_epochs_change(state, cfg, checkpoint)
    if refused:
        extend = (f"; more epochs need a schedule that can go on ({', '.join(CHANGEABLE_EPOCHS)}), not "
                  f"{cfg.optim.schedule}" if "train.epochs" in changed else "")
        raise ConfigError(f"{checkpoint} is of a run with other settings: {', '.join(refused)}. Resume with the "
                          f"run's own settings, or start a new run from its weights: --name NEW_NAME --set "
                          f"model.init={checkpoint}{extend}")
    return ", ".join(f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items())


def _check_epochs_change(state: dict, cfg: RunConfig, checkpoint: str) -> None:
    """Another epoch count is the rest of the schedule stretched (``schedule.changed_epochs``): the run must still
    have steps left under the new count, and, for the curves that end at 0, under the old one."""
    done, before, after = state["epoch"], state["config"]["train"]["epochs"], cfg.train.epochs
    if after <= done:
        raise ConfigError(f"train.epochs {after}: {checkpoint} has trained {done} epochs already; give more than "
                          f"{done} to go on")
    if done >= before and cfg.optim.schedule != "step":
        raise ConfigError(f"train.epochs {before} -> {after}: {checkpoint} has finished its {cfg.optim.schedule} "
                          "schedule, whose LR ends at 0, so there is nothing left to stretch. Start a new run from "
                          f"its weights: --name NEW_NAME --set model.init={checkpoint}")
