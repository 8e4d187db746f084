"""Optimizers over the kit's parameter groups (no weight decay on norms and biases), and the LR scaling rule."""
from __future__ import annotations

import torch
from torch import nn

from imagenet_kit.config import OptimConfig
from imagenet_kit.models.factory import HEAD
from imagenet_kit.optim.lookahead import Lookahead


def scaled_lr(lr: float, lr_batch: int, global_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017): the recipe's LR is for ``lr_batch`` images per step."""
    return lr * global_batch / lr_batch


def create_optimizer(groups: list[dict], optim: OptimConfig, lr: float,
                     fused: bool | None = None) -> torch.optim.Optimizer:
    """torch's SGD (heavy-ball momentum), AdamW or RAdam (``optim.optimizer``) over ``groups`` (from
    ``param_groups``) at ``lr``, inside a ``Lookahead`` when ``optim.lookahead_k`` > 0.

    For the Adams ``optim.momentum`` is beta1, so OneCycleLR's momentum cycling moves it the same way it moves
    SGD's momentum, and the weight decay in the groups is decoupled (scaled by the LR, as torch does).
    The optimizer's name was checked against the declaration of ``optim.optimizer`` when the config loaded.

    ``fused`` (default: when the parameters are on a GPU): torch's fused SGD and AdamW kernels, one launch for
    every parameter, and under fp16 the GradScaler hands them its scale instead of checking the gradients for
    infs on the host, which costs a GPU sync every step (``GradScaler.step``'s ``.item()``). RAdam has none.
    """
    if fused is None:
        fused = all(p.is_cuda for group in groups for p in group["params"])
    fused = fused and optim.optimizer in ("sgd", "adamw")
    betas = (optim.momentum, optim.beta2)
    optimizer = {
        "sgd": lambda: torch.optim.SGD(groups, lr=lr, momentum=optim.momentum, fused=fused or None),
        "adamw": lambda: torch.optim.AdamW(groups, lr=lr, betas=betas, eps=optim.eps, fused=fused or None),
        "radam": lambda: torch.optim.RAdam(groups, lr=lr, betas=betas, eps=optim.eps, decoupled_weight_decay=True),
    }[optim.optimizer]()
    return Lookahead(optimizer, optim.lookahead_k, optim.lookahead_alpha) if optim.lookahead_k else optimizer


def param_groups(model: nn.Module, weight_decay: float, head_lr_mult: float = 1.0) -> list[dict]:
    """SGD groups: weight decay on conv/linear weights only; with ``head_lr_mult`` != 1 the head gets two
    groups of its own, marked ``lr_mult`` (the schedules scale their LR by it: discriminative fine-tuning).

    Chosen by module type, not by parameter name: FFCV's ``'bn' in name`` filter misses the BatchNorm
    inside each ``downsample`` branch (``layer1.0.downsample.1.weight``) and decays it. Without a head
    multiplier there are exactly two groups, as in checkpoints written before it existed.
    """
    split_head = head_lr_mult != 1.0
    groups = {(head, no_decay): [] for head in (False, True) for no_decay in (False, True)}
    for module_name, module in model.named_modules():
        in_head = split_head and module_name.partition(".")[0] == HEAD
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_norm = isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm))
            groups[in_head, is_norm or name == "bias"].append(param)
    result = [{"params": groups[False, False], "weight_decay": weight_decay},
              {"params": groups[False, True], "weight_decay": 0.0}]
    if split_head:
        result += [{"params": groups[True, False], "weight_decay": weight_decay, "lr_mult": head_lr_mult},
                   {"params": groups[True, True], "weight_decay": 0.0, "lr_mult": head_lr_mult}]
    return result
