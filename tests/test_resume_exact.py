"""Spot-instance safety: a run killed with SIGKILL mid-epoch and resumed ends exactly where an uninterrupted
run ends (deterministic settings: center crops, sequential order, deterministic algorithms)."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from imagenet_kit.engine.checkpoint import CheckpointError, load_checkpoint
from imagenet_kit.engine.train import train
from imagenet_kit.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
COMPARED = ("train_loss", "val_loss", "top1", "top5", "lr")


def _overrides(cfg) -> list[str]:
    return [f"output_dir={cfg.output_dir}", f"name={cfg.name}", f"data.root={cfg.data.root}",
            f"data.beton_dir={cfg.data.beton_dir}",
            "data.name=tiny", "data.max_res=64", "data.workers=1", "model.arch=resnet18", "optim.lr=0.05",
            "optim.lr_batch=8", "optim.lr=0.05", "train.epochs=2", "train.batch_size=2", "train.min_res=32",
            "train.max_res=32", "train.val_res=32", "train.precision=fp32", "train.deterministic=true",
            "train.flip_tta=false"]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tiny_config, capsys):
    tiny_config.train.deterministic = True
    tiny_config.train.flip_tta = False
    tiny_config.train.batch_size = 2  # 16 steps per epoch: the loop checkpoints at its 20-step checks
    tiny_config.name = "uninterrupted"
    reference = train(tiny_config, CPU).metrics

    tiny_config.name = "killed"
    cmd = [sys.executable, "-m", "imagenet_kit", "train", "--recipe", "sample"]
    for item in _overrides(tiny_config) + ["train.checkpoint_minutes=0"]:  # checkpoint at every check
        cmd += ["--set", item]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tiny_config.run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if last.exists() and load_checkpoint(last)["global_step"] >= 20:  # epoch 2, step 4 of 16
                    break
            except CheckpointError:
                pass
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    killed_at = load_checkpoint(last)
    assert killed_at["epoch"] == 1 and 0 < killed_at["step"] < 16, "the kill should land mid-epoch"

    # A different seed would change the initial weights: only a real resume can still match the reference.
    tiny_config.train.seed = 123
    resumed = train(tiny_config, CPU, resume="auto").metrics
    assert "resuming from" in capsys.readouterr().err
    for key in COMPARED:
        assert resumed[key] == pytest.approx(reference[key], abs=1e-6), key
    rows = [json.loads(line) for line in (tiny_config.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # no epoch logged twice
