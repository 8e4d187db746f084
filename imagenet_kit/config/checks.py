"""What each key may hold, checked once every recipe, profile and flag is applied: each key's declared choices
and range (``schema.key``), then the rules that tie keys together. A bad value is reported before any work."""
from __future__ import annotations

from dataclasses import fields

from imagenet_kit.config.choice import check_choice
from imagenet_kit.config.schema import SECTIONS, choices
from imagenet_kit.errors import ConfigError


def validate(cfg) -> None:
    """Raise ConfigError naming the first key whose value is out of its choices or range, or breaks a rule."""
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            name, value = f"{section}.{f.name}", getattr(getattr(cfg, section), f.name)
            allowed = choices(name)
            if allowed:
                check_choice(name, value, allowed)
            valid = f.metadata["valid"]
            if valid and not valid[0](value):
                raise ConfigError(f"{name} must be {valid[1]}, got {value}")
    for rule in RULES:
        rule(cfg)


def _lr_range(cfg) -> None:
    if cfg.lr_find.end_lr <= cfg.lr_find.start_lr:
        raise ConfigError(f"lr_find.end_lr ({cfg.lr_find.end_lr:g}) must exceed lr_find.start_lr "
                          f"({cfg.lr_find.start_lr:g})")


def _resolutions(cfg) -> None:
    if cfg.train.min_res > cfg.train.max_res:
        raise ConfigError(f"train.min_res ({cfg.train.min_res}) must not exceed train.max_res ({cfg.train.max_res})")


def _add_ons_need_torchvisions_layout(cfg) -> None:
    if cfg.model.arch == "resnet50v2" and (cfg.model.se_reduction or cfg.model.self_attention
                                           or cfg.model.maxblurpool):
        raise ConfigError("model.se_reduction, model.self_attention and model.maxblurpool need torchvision's "
                          "ResNet layout; model.arch resnet50v2 has its own")


RULES = (_lr_range, _resolutions, _add_ons_need_torchvisions_layout)
