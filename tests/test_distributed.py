"""torchrun on CPU with the gloo backend: 2 processes x batch B train like 1 process x batch 2B, closer than a run
whose gradients were summed over the processes instead of averaged."""
import json
import socket
import subprocess
import sys

import pytest
import torch

from imagenet_kit.engine.train import train
from imagenet_kit.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
# BatchNorm statistics are per process (B images each, not 2B): the one intended difference, since
# SyncBatchNorm has no CPU implementation. |delta| 0.039 (train) and 0.039 (val) on losses near 1.5, the same
# every run: the tiny betons are the same records every time (conversion's JPEG-or-raw choice is seeded), where
# before they changed with what had run before in the process, and with them the delta (up to 0.094).
TOLERANCE = 0.08
# Gradients summed over the 2 processes instead of averaged are gradients x 2: one process with its gradients x 2 ended
# at train loss 2.05 against 1.49 and val loss 1.55 against 1.43 (2026-12-06), both beyond TOLERANCE, and the test
# trains that run too and checks it is; torchrun with the loss x world size (DDP's average made a sum, a scratch edit of
# engine/step.py) ended at train loss 2.32 and failed this test. Top-1 is near chance (25%) after these 8 steps and
# rests on 16 val images, so the BatchNorm statistics flip some: 5 of 16 right under torchrun against 3 of 16 in one
# process (2026-12-06). Its tolerance, one image more than that, catches an evaluation that counts each rank's shard
# wrongly, not a summed gradient (3 of 16 became 4 in one process): the losses catch that.
TOP1_TOLERANCE = 3 / 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _settings(cfg) -> list[str]:
    return [f"data.root={cfg.data.root}", f"data.beton_dir={cfg.data.beton_dir}", "data.name=tiny", "data.max_res=64",
            "data.workers=1", "model.arch=resnet18", "optim.lr=0.02", "optim.lr_batch=8", "optim.schedule=linear",
            "optim.peak_epoch=0", "train.epochs=2", "train.min_res=32", "train.max_res=32", "train.val_res=32",
            "train.precision=fp32", "train.deterministic=true", "train.flip_tta=false"]


def _metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(tiny_config, tmp_path, monkeypatch):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "imagenet_kit", "train", "--recipe", "sample",
           "--output-dir", str(tmp_path / "runs"), "--name", "ddp", "-b", "4"]
    for item in _settings(tiny_config):
        cmd += ["--set", item]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ddp = _metrics(tmp_path / "runs" / "ddp")

    from imagenet_kit.config import load_config
    single_cfg = load_config("sample", _settings(tiny_config) + [f"output_dir={tmp_path / 'runs'}", "name=single",
                                                                 "train.batch_size=8"])
    train(single_cfg, CPU)
    single = _metrics(tmp_path / "runs" / "single")
    assert ddp["global_step"] == single["global_step"] == 8  # 32 images / global batch 8, 2 epochs
    for key in ("train_loss", "val_loss"):
        assert ddp[key] == pytest.approx(single[key], abs=TOLERANCE), key
    assert ddp["top1"] == pytest.approx(single["top1"], abs=TOP1_TOLERANCE + 1e-9)
    summed = _summed_gradients_run(single_cfg, monkeypatch)
    assert max(abs(summed[key] - single[key]) for key in ("train_loss", "val_loss")) > TOLERANCE, summed
    env = json.loads((tmp_path / "runs" / "ddp" / "env.json").read_text())
    assert env["world_size"] == 2


class _DoubledScaler:
    """The run's scaler, with the loss doubled before backward: the logged loss stays the true one."""

    def __init__(self, scaler):
        self.scaler = scaler

    def scale(self, loss):
        return self.scaler.scale(2 * loss)

    def __getattr__(self, name):
        return getattr(self.scaler, name)


def _summed_gradients_run(cfg, monkeypatch) -> dict:
    """The single process with its gradients x 2, what a summed instead of averaged all-reduce over 2 processes
    gives (weight decay, which the optimizer adds, unchanged), as the metrics it ends with."""
    from imagenet_kit.engine import train as train_module

    step = train_module.train_step

    def doubled(model, images, labels, criterion, optimizer, scaler, *rest):
        return step(model, images, labels, criterion, optimizer, _DoubledScaler(scaler), *rest)

    monkeypatch.setattr(train_module, "train_step", doubled)
    cfg.name = "summed"
    train(cfg, CPU)
    return _metrics(cfg.run_dir)
