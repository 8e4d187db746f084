import json
import shutil
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch
import yaml

from imagenet_kit.engine.checkpoint import find_resume_checkpoint, load_checkpoint
from imagenet_kit.engine.train import DivergenceError, train
from imagenet_kit.environment import command_line
from imagenet_kit.optim.optimizers import scaled_lr
from imagenet_kit.optim.schedule import resolution_for_epoch
from imagenet_kit.runtime import Runtime

CPU = Runtime(torch.device("cpu"))


def test_short_run_writes_the_run_folder(tiny_config):
    result = train(tiny_config, CPU)
    run = tiny_config.run_dir
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("train_loss", "val_loss", "top1", "top5", "lr", "img_per_s", "epoch_seconds", "peak_mem_mb"):
        assert key in rows[-1]
    assert 0.0 <= rows[-1]["top1"] <= rows[-1]["top5"] <= 1.0
    assert result.metrics["top1"] == rows[-1]["top1"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    env = json.loads((run / "env.json").read_text())
    assert {"torch", "ffcv", "device", "git", "command"} <= set(env)
    assert env["precision"] == "fp32"  # what the recipe's precision resolved to, not just what it asked for
    for name in ("schedule.png", "curves.png", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).stat().st_size > 0, name
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert (last["epoch"], last["step"], last["global_step"]) == (2, 0, 8)
    assert {"optimizer", "scheduler", "scaler", "rng", "config", "classes"} <= set(last)
    assert [c["wnid"] for c in last["classes"]][:1] == ["n01440764"]


@pytest.mark.parametrize("argv, command", [
    (["/work/.venv/bin/imagenet-kit", "run", "--recipe", "mini"], "imagenet-kit run --recipe mini"),
    (["/work/imagenet_kit/__main__.py", "train", "--epochs", "2"], "python -m imagenet_kit train --epochs 2"),
])
def test_env_command_is_what_a_user_would_retype(argv, command):
    assert command_line(argv) == command


def test_resume_auto_continues_from_last_checkpoint(tiny_config):
    tiny_config.train.epochs = 1
    train(tiny_config, CPU)
    tiny_config.train.epochs = 2  # a longer run would rebuild the schedule; resume keeps the saved one
    state = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    assert state["epoch"] == 1
    tiny_config.train.epochs = 1
    result = train(tiny_config, CPU, resume="auto")  # nothing left to do: returns the saved metrics
    assert result.metrics["epoch"] == 0 and not result.stopped


def test_corrupt_checkpoint_is_skipped_with_warning(tiny_config, capsys):
    train(tiny_config, CPU)
    ckpts = tiny_config.run_dir / "checkpoints"
    # Whether best.pt is epoch 1 or 2 depends on the validation numbers; pin it to epoch 2 (the same
    # progress as last.pt) so the test checks both fallbacks deterministically.
    shutil.copyfile(ckpts / "last.pt", ckpts / "best.pt")
    data = (ckpts / "last.pt").read_bytes()
    (ckpts / "last.pt").write_bytes(data[: len(data) // 2])  # a torn copy
    path, state = find_resume_checkpoint(tiny_config.run_dir)
    assert path.name == "best.pt"  # the newest readable checkpoint (epoch 2)
    assert state["epoch"] == 2
    assert "last.pt" in capsys.readouterr().err
    (ckpts / "best.pt").unlink()
    path, state = find_resume_checkpoint(tiny_config.run_dir)
    assert path.name == "last.prev.pt"  # the previous good checkpoint (epoch 1)
    assert state["epoch"] == 1


def test_divergence_stops_with_step_and_lr(tiny_config):
    tiny_config.optim.lr = 1e8
    with pytest.raises(DivergenceError, match=r"step \d+ \(lr [0-9.e+]+\).*lower optim.lr"):
        train(tiny_config, CPU)


def test_max_steps_stops_mid_epoch_and_resume_finishes_at_same_step_count(tiny_config):
    tiny_config.train.max_steps = 3
    result = train(tiny_config, CPU)
    assert (result.epoch, result.step, result.stopped) == (0, 3, False)  # max_steps, not a signal
    state = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    assert (state["epoch"], state["step"], state["global_step"]) == (0, 3, 3)
    tiny_config.train.max_steps = 0
    train(tiny_config, CPU, resume="auto")
    final = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    assert (final["epoch"], final["global_step"]) == (2, 8)
    # the resumed run redid no step: 8 = 2 epochs x 4 steps, and the schedule ended where it should
    assert final["scheduler"]["last_epoch"] == 8


@pytest.mark.slow
def test_sigterm_writes_checkpoint_and_exits_zero(tiny_config):
    cmd = [sys.executable, "-m", "imagenet_kit", "train", "--recipe", "sample",
           *sum((["--set", f"{k}={v}"] for k, v in _flags(tiny_config).items()), []),
           "--set", "train.epochs=200"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tiny_config.run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() and time.monotonic() < deadline:  # wait until it is really training
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "--resume auto" in out
    state = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    assert state["global_step"] >= 4


def _flags(cfg) -> dict:
    return {"output_dir": cfg.output_dir, "name": cfg.name, "data.root": cfg.data.root,
            "data.beton_dir": cfg.data.beton_dir,
            "data.name": cfg.data.name, "data.max_res": cfg.data.max_res, "data.workers": 1,
            "model.arch": "resnet18", "optim.lr": 0.05, "optim.lr_batch": 8, "train.batch_size": 8,
            "train.min_res": 32, "train.max_res": 32, "train.val_res": 32, "train.precision": "fp32"}


@pytest.mark.parametrize("epoch, res", [(0, 160), (11, 160), (12, 192), (13, 192), (15, 192), (14, 192)])
def test_progressive_resizing_matches_ffcv(epoch, res):
    # FFCV rounds 176/32 = 5.5 half-to-even, so its 11 -> 13 ramp jumps straight to 192 at epoch 12
    assert resolution_for_epoch(epoch, 160, 192, 11, 13) == res
    assert resolution_for_epoch(5, 128, 192, 3, 7) == 160


def test_linear_scaling_rule():
    assert scaled_lr(0.425, 1024, 4096) == pytest.approx(1.7)  # FFCV rn50: 1.7 at 8 x 512
    assert scaled_lr(0.1, 256, 64) == pytest.approx(0.025)


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, None)])
def test_auto_precision_on_cpu_is_bf16_only_where_the_cpu_computes_it(monkeypatch, native_bf16, expected):
    import imagenet_kit.runtime as runtime
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native_bf16)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == (expected, False)


def test_explicit_bf16_on_a_cpu_without_it_warns_and_names_the_way_out(monkeypatch):
    import imagenet_kit.runtime as runtime
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    runtime._warn_emulated_bf16.cache_clear()  # it warns once per process
    with pytest.warns(UserWarning, match=r"no native bf16.*--precision fp32"):
        assert runtime.resolve_precision("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runtime.resolve_precision("bf16", torch.device("cpu"))


def test_cpu_model_names_the_instruction_set(monkeypatch):
    import imagenet_kit.environment as environment
    monkeypatch.setattr(environment.torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: True)
    assert environment.cpu_model().endswith(" (AVX512 + BF16)")
    monkeypatch.setattr(environment.torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(environment, "cpu_has_native_bf16", lambda: False)
    assert environment.cpu_model().endswith(" (AVX2)")


def test_one_real_resnet50_step_bf16_is_exactly_sgds_update():
    """The kit's train_step (normalisation, bf16 autocast, the scaler, the optimizer, the scheduler) on a real
    ResNet-50: every weight moves by exactly SGD's first step on this batch's gradient, lr x (gradient + weight
    decay x weight) (momentum has no history yet), with no decay on BatchNorm weights and biases. A step that skips
    the optimizer, or steps on another batch's gradient, moves them by something else."""
    from imagenet_kit.config import OptimConfig
    from imagenet_kit.engine.step import train_step
    from imagenet_kit.models.factory import create_model
    from imagenet_kit.optim.optimizers import create_optimizer, param_groups

    torch.manual_seed(0)
    model = create_model("resnet50", 10).to(memory_format=torch.channels_last)
    lr, decay = 0.1, 1e-4
    optimizer = create_optimizer(param_groups(model, decay), OptimConfig(optimizer="sgd", momentum=0.9), lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = train_step(model, images, torch.tensor([0, 1, 2, 3]), torch.nn.CrossEntropyLoss(), optimizer,
                      torch.amp.GradScaler("cpu", enabled=False), scheduler, torch.bfloat16, True)
    assert torch.isfinite(loss) and scheduler.last_epoch == 1
    params = dict(model.named_parameters())
    # zero_init_residual: each block's last BatchNorm starts at 0, so inside a block only that BatchNorm has a
    # gradient on the first step; the stem, the downsample shortcuts and the head have theirs
    for name, weight_decay in (("conv1.weight", decay), ("layer3.0.downsample.0.weight", decay), ("fc.weight", decay),
                               ("bn1.weight", 0.0), ("layer4.2.bn3.weight", 0.0), ("fc.bias", 0.0)):
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
        torch.testing.assert_close(params[name].detach(), before[name] - lr * (grad + weight_decay * before[name]),
                                   msg=name)


def test_tensorboard_logs_every_epoch(tiny_config):
    pytest.importorskip("tensorboard", reason="tensorboard is a dev extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    tiny_config.train.tensorboard = True
    train(tiny_config, CPU)
    events = EventAccumulator(str(tiny_config.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("top1")] == [1, 2]
    assert {"train_loss", "val_loss", "lr", "img_per_s"} <= set(events.Tags()["scalars"])


def test_adamw_run_checkpoints_adam_state_and_resumes(tiny_config):
    tiny_config.optim.optimizer, tiny_config.optim.lr, tiny_config.optim.weight_decay = "adamw", 3e-3, 0.01
    tiny_config.train.max_steps = 3
    train(tiny_config, CPU)
    state = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    assert state["config"]["optim"]["optimizer"] == "adamw"
    adam_state = next(iter(state["optimizer"]["state"].values()))
    assert {"exp_avg", "exp_avg_sq"} <= set(adam_state) and int(adam_state["step"]) == 3
    tiny_config.train.max_steps = 0
    result = train(tiny_config, CPU, resume="auto")
    assert result.metrics["epoch"] == 1  # 0-based: the second and last epoch, finished from step 3
    final = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    assert int(next(iter(final["optimizer"]["state"].values()))["step"]) == 8  # 2 epochs x 4 steps


def test_deterministic_mode_sets_what_cuda_needs_and_restores_the_rest(monkeypatch):
    from imagenet_kit.runtime import algorithm_choice
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cudnn = torch.backends.cudnn
    before = (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic)
    with algorithm_choice(deterministic=True):
        assert torch.are_deterministic_algorithms_enabled()
        # warn, not fail, on kernels without a deterministic CUDA version (adaptive_avg_pool2d's backward)
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert __import__("os").environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert (cudnn.benchmark, cudnn.deterministic) == (False, True)
    with algorithm_choice(deterministic=False):
        assert (cudnn.benchmark, cudnn.deterministic) == (True, False)  # cuDNN picks the fastest kernels
        assert torch.are_deterministic_algorithms_enabled() == before[0]
    assert (torch.are_deterministic_algorithms_enabled(), cudnn.benchmark, cudnn.deterministic) == before


def test_compiled_model_is_shape_specialised(tiny_config, monkeypatch):
    from imagenet_kit.engine.setup import _step_model
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.append(kwargs) or model)
    tiny_config.train.compile = True
    _step_model(tiny_config, CPU, torch.nn.Linear(2, 2))
    assert seen == [{"dynamic": False}]  # 160 -> 192 px recompiles once instead of going shape-generic


def test_eval_after_training_makes_no_process_group_under_torchrun(tiny_config, monkeypatch):
    import torch.distributed as dist

    from imagenet_kit.engine.evaluate import run_eval
    tiny_config.train.epochs = 1
    train(tiny_config, CPU)
    # rank 0 after `run`'s training: torchrun's variables are still set, the other ranks have exited
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("a process group for one rank"))
    summary, _ = run_eval(tiny_config.run.best, tiny_config.run, tiny_config.betons[1])
    assert summary["count"] == 16


def test_a_stop_mid_epoch_leaves_no_loader_thread(tiny_config):
    import threading

    from ffcv.loader.epoch_iterator import EpochIterator
    earlier = set(threading.enumerate())
    tiny_config.train.batch_size, tiny_config.train.max_steps = 2, 3  # 16 batches per epoch, stopped at 3
    assert train(tiny_config, CPU).step == 3
    left = [t for t in threading.enumerate() if isinstance(t, EpochIterator) and t not in earlier]
    for thread in left:
        thread.join(timeout=10)
    assert not [t for t in left if t.is_alive()]


def test_curves_are_titled_with_the_run_and_mark_the_exported_epoch(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from imagenet_kit.engine.plots import plot_curves
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    metrics = [{"epoch": e, "train_loss": 2 - e / 4, "val_loss": 2 - e / 5, "top1": top1, "top5": 0.9}
               for e, top1 in enumerate([0.30, 0.52, 0.48])]
    plot_curves(metrics, tmp_path / "curves.png", "imagenette-r18")
    assert (tmp_path / "curves.png").stat().st_size > 0
    fig = figures[0]
    assert fig._suptitle.get_text() == "run imagenette-r18: 3 epochs"
    accuracy = fig.axes[1]
    assert "exported (best.pt): epoch 2, 52.0%" in [t.get_text() for t in accuracy.get_legend().get_texts()]
    assert [line.get_xdata()[0] for line in accuracy.get_lines() if line.get_linestyle() == "--"] == [2]


def test_resume_on_a_beton_of_other_classes_is_refused_before_the_run_folder_changes(tiny_config, tmp_path):
    from imagenet_kit.data.convert import ClassMismatch

    betons = tmp_path / "other-betons"
    shutil.copytree(tiny_config.data.beton_dir, betons)
    tiny_config.data.beton_dir = str(betons)
    tiny_config.train.epochs = 1
    train(tiny_config, CPU)
    table = betons / "tiny-train-64.beton.classes.json"
    classes = json.loads(table.read_text())
    classes[0]["wnid"], classes[1]["wnid"] = classes[1]["wnid"], classes[0]["wnid"]
    table.write_text(json.dumps(classes))
    before = {p: p.stat().st_mtime_ns for p in tiny_config.run_dir.rglob("*")}
    tiny_config.train.epochs = 2
    with pytest.raises(ClassMismatch, match="the checkpoint resumed from has 4 classes and .* 4: 2 of the first 4"):
        train(tiny_config, CPU, resume="auto")
    assert {p: p.stat().st_mtime_ns for p in tiny_config.run_dir.rglob("*")} == before


def _folder(run_dir) -> dict:
    return {str(p): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_resume_into_other_settings_is_one_error_and_changes_nothing(tiny_config, capsys):
    """More epochs under one-cycle was OneCycleLR's traceback ("Tried to step 9 times") half-way into the run."""
    from imagenet_kit.errors import ConfigError

    tiny_config.train.epochs = 1
    train(tiny_config, CPU)
    before = _folder(tiny_config.run_dir)
    tiny_config.train.epochs, tiny_config.train.batch_size = 2, 4
    with pytest.raises(ConfigError) as refused:
        train(tiny_config, CPU, resume="auto")
    message = str(refused.value)
    assert "train.batch_size 8 -> 4" in message and "train.epochs 1 -> 2" in message
    assert f"model.init={tiny_config.run_dir / 'checkpoints'}" in message
    assert _folder(tiny_config.run_dir) == before  # nothing written, nothing moved

    tiny_config.train.epochs, tiny_config.train.batch_size = 1, 8
    tiny_config.train.val_batch_size = 8  # an evaluation setting: accepted, and said
    capsys.readouterr()
    assert train(tiny_config, CPU, resume="auto").metrics["epoch"] == 0
    assert "resume: changed since the checkpoint: train.val_batch_size 16 -> 8" in capsys.readouterr().err


def _recorded_lrs(monkeypatch) -> list[float]:
    """The LR of every step trained from now on (read from the optimizer just before its step)."""
    from imagenet_kit.engine import train as train_module

    lrs, step = [], train_module.train_step

    def recording(model, batch, labels, criterion, optimizer, *args):
        lrs.append(optimizer.param_groups[0]["lr"])
        return step(model, batch, labels, criterion, optimizer, *args)

    monkeypatch.setattr(train_module, "train_step", recording)
    return lrs


def test_more_epochs_under_flat_cos_go_on_from_the_lr_reached(tiny_config, monkeypatch, capsys):
    """3 epochs x 4 steps stopped at step 10 (in the cosine part), resumed with 5 epochs: the first 10 steps as
    planned, then the cosine's rest stretched over the 10 steps left, with no jump."""
    import math

    tiny_config.optim.schedule, tiny_config.optim.flat_fraction = "flat_cos", 0.75
    tiny_config.train.epochs, tiny_config.train.max_steps = 3, 10
    lrs = _recorded_lrs(monkeypatch)
    train(tiny_config, CPU)
    tiny_config.train.epochs, tiny_config.train.max_steps = 5, 0
    train(tiny_config, CPU, resume="auto")
    assert "train.epochs 3 -> 5" in capsys.readouterr().err
    peak = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")["max_lr"]

    def cosine(x: float) -> float:  # the planned curve: flat to step 9, then down to 0 at step 12
        return 1.0 if x < 9 else 0.5 * (1 + math.cos(math.pi * (x - 9) / 3))

    assert len(lrs) == 20
    expected = [cosine(s) for s in range(10)] + [cosine(10 + (s - 10) * 2 / 10) for s in range(10, 20)]
    assert lrs == pytest.approx([peak * f for f in expected])
    assert lrs[10] == pytest.approx(peak * cosine(10))  # where the 3-epoch run would have gone on
    state = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    assert (state["epoch"], state["global_step"]) == (5, 20) and state["epoch_changes"] == [(10, 12)]


def test_more_epochs_after_a_finished_flat_cos_run_are_refused(tiny_config):
    from imagenet_kit.errors import ConfigError

    tiny_config.optim.schedule, tiny_config.train.epochs = "flat_cos", 1
    train(tiny_config, CPU)
    tiny_config.train.epochs = 2
    with pytest.raises(ConfigError, match=r"train.epochs 1 -> 2: .* has finished its flat_cos schedule.*model.init="):
        train(tiny_config, CPU, resume="auto")
