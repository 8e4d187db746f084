"""Fine-tuning: a fresh run's starting weights (``model.init``) and the head-only epochs (``train.freeze_epochs``).

A source is torchvision's published ImageNet-1K weights for the arch, a kit checkpoint (.pt) or an export
folder (model.safetensors with its model.json and classes.json). Everything but the head is copied bit for
bit and must fit the model exactly (every one of ``models.architecture.ARCHITECTURE_KEYS`` the same). The head starts
from its fresh initialisation, and each class the source also knows, matched by WNID and not by index, gets
the source's row (weight and bias): a checkpoint of the same classes gives back its whole head, one trained on
other classes of ImageNet gives the shared ones a head start whatever their order.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from imagenet_kit.config import ModelConfig, config_from_dict
from imagenet_kit.data.imagenet_meta import imagenet_classes
from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.errors import ConfigError
from imagenet_kit.models.architecture import architecture, architecture_of, describe_architecture
from imagenet_kit.models.factory import HEAD
from imagenet_kit.runs import ExportFolder, torch_hub_weights


class InitError(ConfigError):
    """``model.init`` names weights that cannot be had or do not fit; the message says which and why."""


def init_model(model: nn.Module, cfg: ModelConfig, classes: list[dict]) -> str:
    """Load ``cfg.init`` into ``model`` (built for ``classes``) as described above; returns a summary line."""
    state, source_classes = _load_source(cfg)
    prefix = f"{HEAD}."
    backbone = {k: v for k, v in state.items() if not k.startswith(prefix)}
    what = f"model.init={cfg.init}: does not fit {describe_architecture(architecture(cfg))}"
    try:
        result = model.load_state_dict(backbone, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise InitError(f"{what}: {err}") from None
    # strict=False only to leave the head out; any other gap is an error.
    missing = [k for k in result.missing_keys if not k.startswith(prefix)]
    if missing or result.unexpected_keys:
        raise InitError(f"{what}: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")

    head = getattr(model, HEAD)
    source_rows = {c["wnid"]: i for i, c in enumerate(source_classes)}
    copied = 0
    with torch.no_grad():
        for row, c in enumerate(classes):
            if c["wnid"] in source_rows:
                head.weight[row] = state[f"{prefix}weight"][source_rows[c["wnid"]]]
                head.bias[row] = state[f"{prefix}bias"][source_rows[c["wnid"]]]
                copied += 1
    return (f"model.init: {len(backbone)} backbone tensors from {cfg.init}; head rows of {copied} of "
            f"{len(classes)} classes copied by WNID, {len(classes) - copied} fresh")


def _load_source(cfg: ModelConfig) -> tuple[dict, list[dict]]:
    """(state dict, classes in output order) of ``cfg.init``, checked to be for ``cfg``'s model."""
    if cfg.init == "torchvision":
        return _torchvision_weights(cfg), imagenet_classes()
    path = Path(cfg.init)
    if path.is_dir():
        export = ExportFolder(path)
        if not export.finished or not export.model_file("safetensors").is_file():
            raise InitError(f"model.init={cfg.init}: not a finished export with model.safetensors "
                            "(imagenet-kit export --format safetensors writes one)")
        from safetensors.torch import load_file
        info = json.loads(export.model_info.read_text())
        state, classes = load_file(export.model_file("safetensors")), json.loads(export.classes.read_text())
        source = architecture_of(info)
    elif path.is_file():
        checkpoint = load_checkpoint(path)
        state, classes = checkpoint["model"], checkpoint["classes"]
        source = architecture(config_from_dict(checkpoint["config"]).model)  # fills keys older checkpoints lack
    else:
        raise InitError(f"model.init={cfg.init}: no such file or folder; give '' (random), 'torchvision', "
                        "a kit checkpoint (.pt) or an export folder")
    if source != architecture(cfg):
        raise InitError(f"model.init={cfg.init}: holds {describe_architecture(source)} weights, "
                        f"this run trains {describe_architecture(architecture(cfg))}")
    return state, classes


def _torchvision_weights(cfg: ModelConfig) -> dict:
    import torchvision

    # The blur changes what every strided conv sees, another activation what every layer gets, and SE or
    # attention modules would start untrained inside trained blocks: those weights would not mean the same.
    plain = architecture(ModelConfig(arch=cfg.arch))
    changed = [f"model.{key}={str(value).lower()}" for key, value in plain.items() if getattr(cfg, key) != value]
    if changed:
        raise InitError(f"model.init=torchvision: torchvision's weights are for a plain {cfg.arch}; set "
                        f"{', '.join(changed)}")
    try:
        weights = torchvision.models.get_model_weights(cfg.arch).DEFAULT
    except ValueError:
        raise InitError(f"model.init=torchvision: torchvision publishes no weights for {cfg.arch}; train it "
                        "with the kit and give that checkpoint instead") from None
    try:
        return weights.get_state_dict(progress=False, weights_only=True)
    except OSError as err:  # URLError, DNS failure, timeout: no internet here
        cached = torch_hub_weights(torch.hub.get_dir(), weights.url)
        raise InitError(f"model.init=torchvision: cannot download {weights} from {weights.url} ({err}). "
                        f"Offline: fetch that file elsewhere and place it at {cached}") from None


def freeze_backbone(model: nn.Module, frozen: bool) -> None:
    """Stop (or restart) training everything but the head. Frozen BatchNorms also run in eval mode: the
    head then trains on fixed features, and the backbone, running statistics included, stays bit for bit
    what it was. Call after ``model.train()``, which puts them back in training mode."""
    for name, module in model.named_modules():
        if name.partition(".")[0] == HEAD:
            continue
        for param in module.parameters(recurse=False):
            param.requires_grad_(not frozen)
        if frozen and isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
