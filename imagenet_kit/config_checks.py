"""What each config key may hold: the choices of the named settings and the ranges of the numeric ones.

``validate`` runs after every recipe and override is applied, so a bad value is reported before any work.
"""
from __future__ import annotations

import difflib

from imagenet_kit.errors import ConfigError

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet50v2", "resnet50d", "resnext50d")
ACTIVATIONS = ("relu", "mish", "silu")
OPTIMIZERS = ("sgd", "adamw", "radam")
SCHEDULES = ("onecycle", "linear", "step", "flat_cos")
TRAIN_CROPS = ("random_resized", "random_square")
LR_SUGGESTIONS = ("turn_x3", "turn", "valley", "steep", "min10")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

# Numeric keys with a range: (key, test, what the value must be).
RANGES = (
    ("model.se_reduction", lambda v: v >= 0, "0 (off) or a channel divisor such as 16"),
    ("optim.lookahead_k", lambda v: v >= 0, "0 (off) or a step count"),
    ("optim.lookahead_alpha", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("optim.head_lr_mult", lambda v: v > 0, "positive"),
    ("train.val_crop_ratio", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("train.batch_size", lambda v: v >= 1, "at least 1"),
    ("train.freeze_epochs", lambda v: v >= 0, "0 or more"),
    ("train.dist_timeout_minutes", lambda v: v > 0, "positive"),
    ("optim.lr", lambda v: v == "auto" or v > 0, "positive or auto (e.g. --lr 0.1 or --lr auto)"),
    ("optim.lr_batch", lambda v: v >= 1, "at least 1"),
    ("optim.weight_decay", lambda v: v >= 0, "0 or more"),
    ("optim.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.pct_start", lambda v: 0 < v < 1, "in (0, 1)"),
    ("optim.div_factor", lambda v: v > 0, "positive"),
    ("optim.final_div_factor", lambda v: v > 0, "positive"),
    ("train.epochs", lambda v: v >= 1, "at least 1 (e.g. --epochs 5)"),
    ("train.val_batch_size", lambda v: v >= 1, "at least 1"),
    ("train.min_res", lambda v: v >= 16, "at least 16 (pixels)"),
    ("train.val_res", lambda v: v >= 16, "at least 16 (pixels)"),
    ("train.min_scale", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("train.checkpoint_minutes", lambda v: v >= 0, "0 (at every check) or more"),
    ("train.max_steps", lambda v: v >= 0, "0 (no limit) or more"),
    ("data.max_res", lambda v: v >= 16, "at least 16 (pixels)"),
    ("data.jpeg_quality", lambda v: 1 <= v <= 100, "in 1..100"),
    ("data.compress_prob", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("data.workers", lambda v: v >= 0, "0 (one per core) or more"),
    ("data.holdout_fraction", lambda v: 0 < v < 1, "in (0, 1)"),
    ("lr_find.num_iter", lambda v: v >= 2, "at least 2"),
    ("lr_find.start_lr", lambda v: v > 0, "positive"),
    ("lr_find.batch_size", lambda v: v >= 0, "0 (the training batch) or more"),
    ("reference.top1", lambda v: 0 <= v <= 100, "a percentage, 0 (none) to 100"),
)


def check_choice(key: str, value, allowed: tuple[str, ...]) -> None:
    """A value outside ``allowed`` is one error line naming the key, the valid values and the closest one."""
    if value in allowed:
        return
    close = difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}{hint}")


def validate(cfg) -> None:
    """Raise ConfigError naming the first key whose value is out of its choices or range."""
    choices = {
        "model.arch": (cfg.model.arch, ARCHS),
        "train.precision": (cfg.train.precision, PRECISIONS),
        "optim.schedule": (cfg.optim.schedule, SCHEDULES),
        "optim.optimizer": (cfg.optim.optimizer, OPTIMIZERS),
        "model.activation": (cfg.model.activation, ACTIVATIONS),
        "train.crop": (cfg.train.crop, TRAIN_CROPS),
        "lr_find.suggestion": (cfg.lr_find.suggestion, LR_SUGGESTIONS),
    }
    for key, (value, allowed) in choices.items():
        check_choice(key, value, allowed)
    if cfg.lr_find.end_lr <= cfg.lr_find.start_lr:
        raise ConfigError(f"lr_find.end_lr ({cfg.lr_find.end_lr:g}) must exceed lr_find.start_lr "
                          f"({cfg.lr_find.start_lr:g})")
    if cfg.train.min_res > cfg.train.max_res:
        raise ConfigError(f"train.min_res ({cfg.train.min_res}) must not exceed train.max_res ({cfg.train.max_res})")
    for key, allowed, what in RANGES:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not allowed(value):
            raise ConfigError(f"{key} must be {what}, got {value}")
    if cfg.model.arch == "resnet50v2" and (cfg.model.se_reduction or cfg.model.self_attention
                                           or cfg.model.maxblurpool):
        raise ConfigError("model.se_reduction, model.self_attention and model.maxblurpool need torchvision's "
                          "ResNet layout; model.arch resnet50v2 has its own")
