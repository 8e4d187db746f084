import math

import pytest
import torch

from imagenet_kit.config import OptimConfig
from imagenet_kit.errors import ConfigError
from imagenet_kit.optim.schedule import create_scheduler, schedule_trace


def test_onecycle_pins_lr_and_momentum():
    # 10 epochs x 10 steps, peak 1.0, 25% warm-up: torch's OneCycleLR with cosine annealing.
    t = schedule_trace(OptimConfig(pct_start=0.25, div_factor=25, final_div_factor=1e4), 1.0, 10, 10)
    assert t["lr"][0] == pytest.approx(1.0 / 25)
    assert t["momentum"][0] == pytest.approx(0.95)
    peak = 24  # float(pct_start * total) - 1
    assert t["lr"][peak] == pytest.approx(1.0)
    assert t["momentum"][peak] == pytest.approx(0.85)
    assert t["lr"][-1] == pytest.approx(1.0 / 25 / 1e4, rel=1e-3)
    assert t["momentum"][-1] == pytest.approx(0.95, abs=1e-4)
    assert max(t["lr"]) == pytest.approx(1.0)


def test_onecycle_cycles_adamw_beta1_like_sgd_momentum():
    t = schedule_trace(OptimConfig(optimizer="adamw", momentum=0.9, pct_start=0.25), 4e-3, 10, 10)
    assert t["lr"][0] == pytest.approx(4e-3 / 25) and t["lr"][24] == pytest.approx(4e-3)
    assert (t["momentum"][0], t["momentum"][24]) == (pytest.approx(0.95), pytest.approx(0.85))


def test_linear_matches_ffcv_schedule():
    # FFCV: 1e-4*lr at epoch 0, lr at peak_epoch 2, 0 at the end; stepped per iteration.
    t = schedule_trace(OptimConfig(schedule="linear", peak_epoch=2), 1.7, 16, 100)
    assert t["lr"][0] == pytest.approx(1.7e-4)
    assert t["lr"][100] == pytest.approx(1.7 * (1e-4 + (1 - 1e-4) * 0.5))
    assert t["lr"][200] == pytest.approx(1.7)
    assert t["lr"][900] == pytest.approx(1.7 * 700 / 1400)
    assert t["lr"][-1] == pytest.approx(1.7 / 1400)
    assert set(t["momentum"]) == {0.9}


def test_step_schedule():
    t = schedule_trace(OptimConfig(schedule="step", step_epochs=3, step_gamma=0.1), 0.1, 9, 4)
    assert t["lr"][11] == pytest.approx(0.1)
    assert t["lr"][12] == pytest.approx(0.01)
    assert t["lr"][35] == pytest.approx(0.001)


def test_flat_cos_matches_fastai_fit_flat_cos():
    # 2 epochs x 10 steps, 75% flat: the peak through step 15, then half a cosine over the last 5 steps.
    t = schedule_trace(OptimConfig(schedule="flat_cos", optimizer="radam", momentum=0.95,
                                   flat_fraction=0.75), 0.01, 2, 10)
    assert t["lr"][:16] == [pytest.approx(0.01)] * 16
    assert t["lr"][17] == pytest.approx(0.01 * 0.5 * (1 + 0.30901699))  # cos(2/5 pi)
    assert t["lr"][19] == pytest.approx(0.01 * 0.5 * (1 - 0.80901699))  # cos(4/5 pi)
    assert set(t["momentum"]) == {0.95}  # RAdam's beta1 stays put


@pytest.mark.parametrize("name", ["onecycle", "linear", "step", "flat_cos"])
def test_resume_restores_schedule_position(name):
    def make():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.5, momentum=0.9)
        return opt, create_scheduler(opt, OptimConfig(schedule=name), 0.5, 5, 10)

    opt, sched = make()
    for _ in range(23):
        opt.step()
        sched.step()
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    expected = []
    for _ in range(10):
        opt.step()
        sched.step()
        expected.append((opt.param_groups[0]["lr"], opt.param_groups[0]["momentum"]))

    opt2, sched2 = make()
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    got = []
    for _ in range(10):
        opt2.step()
        sched2.step()
        got.append((opt2.param_groups[0]["lr"], opt2.param_groups[0]["momentum"]))
    assert [lr for lr, _ in got] == pytest.approx([lr for lr, _ in expected], rel=1e-12)
    assert [m for _, m in got] == pytest.approx([m for _, m in expected], rel=1e-12)
    if name == "linear":  # step 33 of 50: 13/30 of the way down from the peak (step 20) to 0
        assert got[-1][0] == pytest.approx(0.5 * (1 - 13 / 30))


def test_onecycle_with_a_warm_up_under_one_step_names_the_way_out():
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ConfigError, match=r"pct_start 0.25 x 4 steps\) is under one step"):  # one error line
        create_scheduler(torch.optim.SGD([p], lr=1), OptimConfig(), 1.0, 1, 4)
    create_scheduler(torch.optim.SGD([p], lr=1), OptimConfig(), 1.0, 1, 5)  # 1.25 steps of warm-up: fine


def _lrs(optim: OptimConfig, epochs: int, steps_per_epoch: int, epoch_changes, steps: int) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0, momentum=0.9)
    scheduler = create_scheduler(optimizer, optim, 1.0, epochs, steps_per_epoch, epoch_changes)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_more_epochs_stretch_the_rest_of_flat_cos_from_the_step_reached():
    # planned 3 x 4 = 12 steps (flat until step 9, cosine to 0 at 12), lengthened to 5 epochs at step 10
    lrs = _lrs(OptimConfig(schedule="flat_cos", flat_fraction=0.75), 5, 4, [(10, 12)], 20)
    planned = _lrs(OptimConfig(schedule="flat_cos", flat_fraction=0.75), 3, 4, [], 12)
    assert lrs[:10] == planned[:10]  # the steps already trained, unchanged
    # then the cosine's rest (steps 10 -> 12 of 3 - 0.75 x 12 = 3 cosine steps) over steps 10 -> 20
    for step in range(10, 20):
        x = 10 + (step - 10) * 2 / 10
        assert lrs[step] == pytest.approx(0.5 * (1 + math.cos(math.pi * (x - 9) / 3))), step
    assert lrs[10] == pytest.approx(planned[10])  # no jump where it changed
    assert lrs[10] == pytest.approx(0.75) and lrs[19] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2.8 / 3)))


def test_two_changes_compose_and_step_schedules_go_on_with_their_decay():
    # linear from 1 to 0 over 10 steps (peak at step 0), lengthened at step 4 to 16 steps, then at step 10 to 22
    lrs = _lrs(OptimConfig(schedule="linear", peak_epoch=0), 11, 2, [(4, 10), (10, 16)], 22)
    assert lrs[3] == pytest.approx(0.7)  # the first plan: 1 - 3/10
    assert lrs[7] == pytest.approx(1 - (4 + 3 * 6 / 12) / 10)  # the rest of it over 12 steps instead of 6
    assert lrs[10] == pytest.approx(0.3) and lrs[16] == pytest.approx(0.15)  # and that rest over 12 instead of 6
    assert lrs[21] == pytest.approx(1 - (4 + (10 + 11 * 0.5 - 4) * 0.5) / 10)
    step = _lrs(OptimConfig(schedule="step", step_epochs=2, step_gamma=0.1), 6, 5, [(20, 20)], 30)
    assert step[19] == pytest.approx(0.1) and step[20] == pytest.approx(0.01) and step[29] == pytest.approx(0.01)
