"""The kit's networks: torchvision's ResNets (and a pre-activation ResNet-50), with the optional add-ons of
``layers`` (BlurPool, ResNet-D, SE, self-attention, MaxBlurPool, Mish/SiLU) chosen by the ``model:`` config."""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn.utils import parametrize

from imagenet_kit.config import ModelConfig
from imagenet_kit.models.architecture import architecture
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


def create_model(arch: str = "resnet50", num_classes: int = 1000, *, zero_init_residual: bool = True,
                 blurpool: bool = False, activation: str = "relu", se_reduction: int = 0,
                 self_attention: bool = False, maxblurpool: bool = False, device: torch.device | str = "cpu",
                 channels_last: bool = False) -> nn.Module:
    """The one way the kit makes a network: a randomly initialised ResNet (weights are never downloaded here) with
    its add-ons, on ``device`` in channels_last when asked. A run's model is ``create_model(**model_kwargs(cfg.model),
    num_classes=...)``; an export's, ``create_model(**architecture_of(info), num_classes=...)``.

    The arguments are trusted: the config's checks (config/checks.py) checked the arch, the activation and which
    add-ons an arch takes when the config was loaded."""
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
    return model.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def model_kwargs(cfg: ModelConfig) -> dict:
    """``create_model``'s keywords for a run's ``model:`` section: its network, its init and its memory format."""
    return {**architecture(cfg), "zero_init_residual": cfg.zero_init_residual, "channels_last": cfg.channels_last}


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
