import json
from pathlib import Path

import pytest
import torch

from imagenet_kit.config import LRFindConfig, OptimConfig
from imagenet_kit.data.pixels import normalize
from imagenet_kit.engine.lr_find import (
    lr_range_test,
    suggest_min10,
    suggest_steep,
    suggest_turn,
    suggest_valley,
    suggestions,
)

CPU = torch.device("cpu")
PLAIN_SGD = OptimConfig(weight_decay=0.0, label_smoothing=0.0)  # SGD, momentum 0.9, nothing else


def _range_test(model, batches, optim=PLAIN_SGD, amp_dtype=None, channels_last=True, **settings):
    return lr_range_test(model, batches, LRFindConfig(**settings), optim, CPU, amp_dtype, channels_last)


def _batches(n=2048):
    """A task with a known good LR range: is channel 0 brighter than channel 1 on average?"""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = (x[:, 0].float().mean((1, 2)) > x[:, 1].float().mean((1, 2))).long()
    return [(x[i:i + 64], y[i:i + 64]) for i in range(0, n, 64)]


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))


def _accuracy_after_training(lr: float, batches, steps: int = 150, one_cycle: bool = False) -> float:
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.25) if one_cycle else None
    for i in range(steps):
        x, y = batches[i % len(batches)]
        loss = torch.nn.functional.cross_entropy(model(normalize(x, False)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if schedule:
            schedule.step()
    with torch.no_grad():
        return sum((model(normalize(x, False)).argmax(1) == y).sum().item() for x, y in batches) / 2048


def test_known_good_range_of_the_synthetic_task():
    # The premise of the next test: 150 steps reach >= 95% at 5e-3..0.2 and fail outside it.
    batches = _batches()
    assert _accuracy_after_training(1e-3, batches) < 0.8
    assert _accuracy_after_training(5e-3, batches) < 0.95 < _accuracy_after_training(1e-2, batches)
    assert _accuracy_after_training(1.0, batches) < 0.8


@pytest.mark.parametrize("name", ["valley", "min10"])
def test_suggestion_lands_in_the_known_good_range(name):
    batches = _batches()
    result = _range_test(_mlp(), batches, start_lr=1e-6, end_lr=10, num_iter=100, suggestion=name,
                           channels_last=False)
    assert result["chosen"] == name
    assert 5e-3 < result["lr"] < 0.2
    assert _accuracy_after_training(result["lr"], batches) >= 0.95
    assert result["stopped_at"] < 100  # the 4x-minimum rule stopped it once the loss blew up


def test_turn_is_a_one_cycle_peak_that_trains_the_task():
    """turn picks the edge the test reached from a cold start; one-cycle (1/25 of it, warm-up) trains there."""
    batches = _batches()
    result = _range_test(_mlp(), batches, start_lr=1e-6, end_lr=10, num_iter=100, suggestion="turn",
                           channels_last=False)
    assert result["lr"] == pytest.approx(result["lrs"][result["losses"].index(min(result["losses"]))])
    assert _accuracy_after_training(result["lr"], batches, one_cycle=True) >= 0.95
    assert _accuracy_after_training(10 * result["lr"], batches, one_cycle=True) < 0.8  # past the edge it fails


def test_model_and_bn_stats_are_restored(tiny_data):
    from imagenet_kit.data.loaders import create_train_loader
    from imagenet_kit.models.factory import create_model
    model = create_model("resnet18", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = create_train_loader(str(tiny_data["beton_dir"] / "tiny-train-64.beton"), 8, 32, CPU, 1)
    result = _range_test(model, loader, start_lr=1e-4, end_lr=1.0, num_iter=8)
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:  # weights, BN running mean/var and num_batches_tracked
        assert torch.equal(before[key], after[key]), key
    assert len(result["lrs"]) == len(result["losses"]) > 2
    assert result["lrs"][0] == pytest.approx(1e-4)


def test_lrs_grow_exponentially_and_losses_are_bias_corrected():
    batches = _batches(256)
    result = _range_test(_mlp(), batches, start_lr=1e-5, end_lr=1e-3, num_iter=5, channels_last=False,
                           diverge=1e9)
    assert result["lrs"] == pytest.approx([1e-5 * 10 ** (0.5 * i) for i in range(5)])
    # with bias correction the first smoothed value is the first raw loss (about ln 2 for 2 classes)
    assert result["losses"][0] == pytest.approx(0.69, abs=0.05)


def test_suggestion_rules_on_a_hand_made_curve():
    lrs = [10 ** (-4 + i * 0.25) for i in range(17)]  # 1e-4 .. 1
    losses = [2.0, 2.0, 1.99, 1.95, 1.8, 1.5, 1.2, 1.0, 0.9, 0.85, 0.84, 0.9, 1.2, 2.0, 4.0, 8.0, 9.0]
    assert suggest_min10(lrs, losses) == pytest.approx(lrs[10] / 10)
    assert suggest_steep(lrs, losses) == pytest.approx(lrs[5])  # biggest drop per decade around index 5
    valley = suggest_valley(lrs, losses)
    assert lrs[3] <= valley <= lrs[8]
    assert suggest_turn(lrs, losses) == pytest.approx(lrs[10])  # the lowest point, before the rise
    found = suggestions(lrs, losses)
    assert set(found) == {"turn_x3", "turn", "valley", "steep", "min10"}
    assert found["turn_x3"] == pytest.approx(3 * lrs[10])


def test_steep_ignores_the_fall_after_a_blow_up():
    # ResNet-50 on Imagenette: flat, a dip, a blow-up to ~4.7, then the saturated loss drifts down steeply.
    lrs = [10 ** (-3 + i * 0.25) for i in range(17)]  # 1e-3 .. 10
    losses = [2.3, 2.3, 2.2, 1.9, 1.85, 1.84, 2.6, 3.5, 4.7, 4.7, 4.0, 3.0, 2.9, 2.9, 2.9, 2.9, 2.9]
    assert suggest_steep(lrs, losses) == pytest.approx(lrs[2])  # before the minimum (index 5), not at 10


def test_no_loader_thread_is_left_after_the_test(tiny_data):
    import threading

    from ffcv.loader.epoch_iterator import EpochIterator

    from imagenet_kit.data.loaders import create_train_loader
    from imagenet_kit.models.factory import create_model
    # batch 2: 16 batches per pass, the test stops after 5, with FFCV's thread blocked on a full queue
    loader = create_train_loader(str(tiny_data["beton_dir"] / "tiny-train-64.beton"), 2, 32, CPU, 1)
    earlier = set(threading.enumerate())  # other tests' loaders are theirs to close
    _range_test(create_model("resnet18", 4), loader, start_lr=1e-7, end_lr=1e-5, num_iter=5)
    left = [t for t in threading.enumerate() if isinstance(t, EpochIterator) and t not in earlier]
    for thread in left:
        thread.join(timeout=10)
    assert not [t for t in left if t.is_alive()]


def test_fp16_steps_go_through_a_grad_scaler(monkeypatch):
    calls = []
    for name in ("scale", "step", "update"):
        method = getattr(torch.amp.GradScaler, name)
        monkeypatch.setattr(torch.amp.GradScaler, name,
                            lambda self, *a, _m=method, _n=name, **k: calls.append((_n, self.is_enabled())) or
                            _m(self, *a, **k))
    _range_test(_mlp(), _batches(), amp_dtype=torch.float16, start_lr=1e-4, end_lr=1e-2, num_iter=6)
    assert calls == [("scale", True), ("step", True), ("update", True)] * 6
    calls.clear()
    _range_test(_mlp(), _batches(), amp_dtype=torch.bfloat16, start_lr=1e-4, end_lr=1e-2, num_iter=3)
    assert {enabled for _, enabled in calls} == {False}  # bf16 needs no loss scaling


def test_every_step_is_trainings_own_step(monkeypatch):
    """The test trains with ``engine.step.train_step``, so what it measures is what training will run."""
    import imagenet_kit.engine.lr_find as lr_find
    from imagenet_kit.engine.step import train_step
    seen = []

    def counted(model, images, labels, criterion, optimizer, *rest):
        seen.append((optimizer.param_groups[0]["lr"], criterion.label_smoothing))
        return train_step(model, images, labels, criterion, optimizer, *rest)

    monkeypatch.setattr(lr_find, "train_step", counted)
    result = _range_test(_mlp(), _batches(256), OptimConfig(label_smoothing=0.1), channels_last=False,
                         start_lr=1e-5, end_lr=1e-3, num_iter=5, diverge=1e9)
    assert [lr for lr, _ in seen] == pytest.approx(result["lrs"]) and len(seen) == 5
    assert {smoothing for _, smoothing in seen} == {0.1}  # the recipe's loss, not a plain one


def test_the_recipes_optimizer_runs_the_test():
    model = _mlp()
    seen = []
    model.register_forward_hook(lambda *_: seen.append(1))
    result = _range_test(model, _batches(256), OptimConfig(optimizer="adamw", weight_decay=0.0, label_smoothing=0.0),
                         channels_last=False, start_lr=1e-5, end_lr=1e-2, num_iter=6, diverge=1e9)
    assert len(seen) == result["stopped_at"] == 6


CURVES = Path(__file__).with_name("fixtures") / "lr_find"
# Recorded range tests (tests/fixtures/lr_find/*.json, each naming its command) and the LR of each rule there:
# the sweep rows in bench/results/accuracy.jsonl trained at these LRs.
PICKS = {
    "sample-s0": 0.1264, "sample-s1": 0.1264, "sample-s2": 0.1264,  # sweep: 36.7% mean at turn, 34.3% at 3x
    "sample-make-mini": 0.0677,  # the same seed on another run: FFCV's crops are not seeded
    "imagenette-resnet18-s0": 0.0792,  # sweep: 70.6% at turn, 75.8% at 3x, 76.7% at 9x
}


@pytest.mark.parametrize("name", sorted(PICKS))
def test_rules_on_recorded_curves(name):
    curve = json.loads((CURVES / f"{name}.json").read_text())
    found = suggestions(curve["lrs"], curve["losses"])
    assert found["turn"] == pytest.approx(PICKS[name], rel=1e-3)
    assert found["turn_x3"] == pytest.approx(3 * PICKS[name], rel=1e-3)
    for rule in ("turn", "valley", "steep", "min10"):  # what the test itself chose back then
        assert found[rule] == pytest.approx(curve["suggestions"][rule], rel=1e-9)
    # the default lies before the curve's blow-up ends: the test reached it, and more than 3x beyond is the blow-up
    assert found["turn_x3"] < curve["lrs"][-1]


def test_turn_x3_is_the_sweeps_good_region_on_imagenette():
    rows = [json.loads(line) for line in (Path(__file__).parent.parent / "bench" / "results" / "accuracy.jsonl")
            .read_text().splitlines()]
    sweep = {round(r["lr"], 4): r["top1"] for r in rows
             if r.get("sweep", {}).get("recipe") == "imagenette-resnet18" and r["top1"] is not None}
    curve = json.loads((CURVES / "imagenette-resnet18-s0.json").read_text())
    pick = round(suggestions(curve["lrs"], curve["losses"])["turn_x3"], 4)
    assert sweep[pick] >= max(sweep.values()) - 0.015, (pick, sweep)  # within 1.5 points of the best run
