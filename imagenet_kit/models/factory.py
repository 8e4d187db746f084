"""The kit's networks: torchvision's ResNets (and a pre-activation ResNet-50), with the optional add-ons of
``layers`` (BlurPool, ResNet-D, SE, self-attention, MaxBlurPool, Mish/SiLU) chosen by the ``model:`` config."""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn.utils import parametrize

from imagenet_kit.config import ModelConfig
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS, architecture
from imagenet_kit.models.layers import (
    ACTIVATION_MODULES,
    apply_blurpool,
    apply_maxblurpool,
    extend_residual_branches,
    swap_relu,
    to_resnet_d,
)
from imagenet_kit.models.resnet_v2 import resnet50v2

HEAD = "fc"  # every arch's classifier; fine-tuning replaces it, freezes all else around it, scales its LR


def create_model(arch: str = "resnet50", num_classes: int = 1000, zero_init_residual: bool = True,
                 blurpool: bool = False, activation: str = "relu", se_reduction: int = 0,
                 self_attention: bool = False, maxblurpool: bool = False) -> nn.Module:
    """A randomly initialised ResNet. Weights are never downloaded here.

    The arguments are trusted: ``config_checks.validate`` checked the arch, the activation and which add-ons an
    arch takes when the config was loaded."""
    if arch == "resnet50v2":
        model = resnet50v2(num_classes, zero_init_residual)
    elif arch in ("resnet50d", "resnext50d"):
        base = "resnet50" if arch == "resnet50d" else "resnext50_32x4d"
        model = getattr(torchvision.models, base)(weights=None, num_classes=num_classes,
                                                  zero_init_residual=zero_init_residual)
        to_resnet_d(model)
    else:
        model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes,
                                                  zero_init_residual=zero_init_residual)
    if se_reduction or self_attention:
        extend_residual_branches(model, se_reduction, self_attention)
    if maxblurpool:
        apply_maxblurpool(model)
    if blurpool:
        apply_blurpool(model)
    if activation != "relu":
        swap_relu(model, ACTIVATION_MODULES[activation])
    return model


def model_from_config(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """The run's model: ``create_model`` with the ``model:`` section of its config."""
    return create_model(num_classes=num_classes, zero_init_residual=cfg.zero_init_residual, **architecture(cfg))


def fold_parametrizations(model: nn.Module) -> nn.Module:
    """Turn ``model``'s parametrized weights (self-attention's spectral norm) into plain weights holding their
    current value, in place, and return it: ONNX has no operator for the norm's vdot, and a served graph
    need not recompute the norm on every call. Call it on an eval-mode model that nothing else shares:
    torch removes the parametrization from the module's class, which a deep copy would share."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name)
    return model


def model_config_from_export_info(info: dict) -> ModelConfig:
    """The architecture an export's model.json records; keys it lacks (exports from before they existed) take
    their defaults, which is what those models were."""
    return ModelConfig(**{key: info[key] for key in ARCHITECTURE_KEYS if key in info})


def model_from_export_info(info: dict) -> nn.Module:
    """The model an export's model.json describes."""
    return model_from_config(model_config_from_export_info(info), info["num_classes"])


def model_on_device(cfg: ModelConfig, num_classes: int, device: torch.device) -> nn.Module:
    """``model_from_config`` moved to ``device`` in the config's memory format (channels_last by default)."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return model_from_config(cfg, num_classes).to(device=device, memory_format=memory_format)
