"""Lookahead (Zhang et al. 2019, "Lookahead Optimizer: k steps forward, 1 step back"), which torch lacks.

The inner optimizer takes ``k`` steps ("fast" weights); then the "slow" weights move ``alpha`` of the way
towards them and the fast weights restart from there. fastai's Ranger, the Imagenette leaderboard's optimizer,
is Lookahead(RAdam) with k=6, alpha=0.5.
"""
from __future__ import annotations

import torch

SLOW = "lookahead_slow"  # per-parameter state key of the slow weights
STEP = "lookahead_step"  # per-group count of inner steps


class Lookahead(torch.optim.Optimizer):
    """Wraps an optimizer; everything but ``step`` is the inner optimizer's.

    ``param_groups``, ``state`` and ``defaults`` are the inner optimizer's own objects (properties, so they stay
    right after ``load_state_dict`` replaces them): LR schedulers and momentum cycling act on the inner optimizer,
    and the slow weights and step counts travel in its ``state_dict``, so a checkpoint resumes exactly.
    """

    def __init__(self, inner: torch.optim.Optimizer, k: int = 6, alpha: float = 0.5):
        # torch.optim.Optimizer.__init__ would build param groups of its own, so it is not called.
        if k < 1:
            raise ValueError(f"lookahead k must be at least 1, got {k}")
        if not 0 < alpha <= 1:
            raise ValueError(f"lookahead alpha must be in (0, 1], got {alpha}")
        self.inner, self.k, self.alpha = inner, k, alpha
        for group in inner.param_groups:
            group.setdefault(STEP, 0)

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    @property
    def state(self):
        return self.inner.state

    @property
    def defaults(self) -> dict:
        return self.inner.defaults

    def __repr__(self) -> str:
        return f"Lookahead(k={self.k}, alpha={self.alpha}, {self.inner!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure=None):
        # The slow weights start where the parameter starts training (a frozen one has no gradient and is
        # left alone). They join its state only after the inner step: torch's optimizers initialise a
        # parameter's state when they find it empty.
        start = {p: p.detach().clone() for group in self.param_groups for p in group["params"]
                 if p.grad is not None and SLOW not in self.state.get(p, {})}
        loss = self.inner.step(closure)
        for p, weights in start.items():
            self.state[p][SLOW] = weights
        for group in self.param_groups:
            group[STEP] += 1
            if group[STEP] % self.k:
                continue
            for p in group["params"]:
                if SLOW not in self.state.get(p, {}):
                    continue
                slow = self.state[p][SLOW]
                slow.add_(p - slow, alpha=self.alpha)
                p.copy_(slow)
        return loss
