"""Lookahead: the exact update, schedulers acting through it, and an exact resume from its state_dict."""
from __future__ import annotations

import pytest
import torch

from imagenet_kit.config import OptimConfig, load_config
from imagenet_kit.errors import ConfigError
from imagenet_kit.optim.lookahead import Lookahead
from imagenet_kit.optim.optimizers import create_optimizer


def _param(value: float = 1.0) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.tensor([value]))


def _step(optimizer, param, grad: float = 1.0) -> None:
    optimizer.zero_grad()
    param.grad = torch.tensor([grad])
    optimizer.step()


def test_every_k_steps_the_weights_go_alpha_of_the_way_from_the_slow_weights():
    param = _param(1.0)
    optimizer = Lookahead(torch.optim.SGD([param], lr=0.1), k=3, alpha=0.5)
    trace = []
    for _ in range(6):
        _step(optimizer, param)  # plain SGD, constant gradient 1: -0.1 per step
        trace.append(round(param.item(), 6))
    # fast: 0.9, 0.8, 0.7 -> sync: slow 1 + 0.5 (0.7 - 1) = 0.85; then 0.75, 0.65, 0.55 -> 0.85 + 0.5 (0.55 - 0.85)
    assert trace == [0.9, 0.8, 0.85, 0.75, 0.65, 0.7]


def test_alpha_one_is_the_inner_optimizer():
    a, b = _param(), _param()
    plain = torch.optim.SGD([a], lr=0.1, momentum=0.9)
    wrapped = Lookahead(torch.optim.SGD([b], lr=0.1, momentum=0.9), k=2, alpha=1.0)
    for grad in (1.0, -2.0, 0.5, 3.0, 1.5):
        _step(plain, a, grad)
        _step(wrapped, b, grad)
    assert torch.equal(a, b)


def test_schedulers_set_the_inner_lr_also_after_load_state_dict():
    param = _param()
    optimizer = create_optimizer([{"params": [param]}], OptimConfig(optimizer="radam", lookahead_k=6), 0.01)
    assert isinstance(optimizer, Lookahead) and isinstance(optimizer.inner, torch.optim.RAdam)
    optimizer.load_state_dict(optimizer.state_dict())  # torch replaces the inner param_groups list here
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 ** step)
    _step(optimizer, param)
    scheduler.step()
    assert optimizer.inner.param_groups[0]["lr"] == pytest.approx(0.005)
    assert optimizer.inner.param_groups[0]["betas"] == (0.9, 0.99)
    torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, total_steps=10)  # cycles RAdam's beta1 ...
    assert optimizer.inner.param_groups[0]["betas"] == (0.95, 0.99)  # ... starting at max_momentum


def test_resume_from_state_dict_continues_exactly():
    torch.manual_seed(0)
    grads = torch.randn(10, 4)

    def fresh():
        param = torch.nn.Parameter(torch.ones(4))
        return param, create_optimizer([{"params": [param], "weight_decay": 0.01}],
                                       OptimConfig(optimizer="radam", momentum=0.95, lookahead_k=4,
                                                   lookahead_alpha=0.5), 0.01)

    def run(param, optimizer, steps):
        for g in steps:
            optimizer.zero_grad()
            param.grad = g.clone()
            optimizer.step()

    straight, straight_opt = fresh()
    run(straight, straight_opt, grads)
    first, first_opt = fresh()
    run(first, first_opt, grads[:6])  # stops between two synchronisations (k = 4)
    saved_weights, saved_state = first.detach().clone(), first_opt.state_dict()
    resumed, resumed_opt = fresh()
    with torch.no_grad():
        resumed.copy_(saved_weights)
    resumed_opt.load_state_dict(saved_state)
    run(resumed, resumed_opt, grads[6:])
    assert torch.equal(resumed, straight)
    assert resumed_opt.param_groups[0]["lookahead_step"] == 10


def test_frozen_parameters_are_left_alone_until_they_train():
    frozen, trained = _param(2.0), _param(1.0)
    optimizer = create_optimizer([{"params": [frozen, trained]}], OptimConfig(optimizer="radam", lookahead_k=2), 0.01)
    for _ in range(3):
        optimizer.zero_grad()
        trained.grad = torch.tensor([1.0])
        optimizer.step()
    assert frozen.item() == 2.0 and not optimizer.state.get(frozen)
    frozen.grad = torch.tensor([1.0])  # unfrozen: RAdam sets up its state, lookahead its slow weights
    optimizer.step()
    assert frozen.item() < 2.0 and set(optimizer.state[frozen]) >= {"step", "exp_avg", "lookahead_slow"}


@pytest.mark.parametrize("item, message", [
    ("optim.lookahead_k=-1", "optim.lookahead_k must be 0"),
    ("optim.lookahead_alpha=0", r"optim.lookahead_alpha must be in \(0, 1\]"),
])
def test_bad_lookahead_settings_name_the_key(item, message):
    with pytest.raises(ConfigError, match=message):
        load_config("sample", [item])
