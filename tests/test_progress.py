"""What a user sees while training: periodic plain lines in a log, a bar with the running loss on a terminal, and one
img/s figure in the bar, the epoch line and metrics.jsonl."""
from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import sys

import pytest

from imagenet_kit import progress
from imagenet_kit.progress import ProgressLine

LINE = re.compile(r"^epoch (\d+)/2 @ 32px: step (\d+)/4, loss (\d+\.\d{4}), ([\d,.]+|-) img/s, "
                  r"ETA (\d:\d\d:\d\d|-:--:--) \((\d+)%\)$")


def _train_command(cfg) -> list[str]:
    flags = {"output_dir": cfg.output_dir, "name": cfg.name, "data.root": cfg.data.root,
             "data.beton_dir": cfg.data.beton_dir,
             "data.name": cfg.data.name, "data.max_res": cfg.data.max_res, "data.workers": 1, "model.arch": "resnet18",
             "optim.lr": 0.05, "optim.lr_batch": 8, "train.batch_size": 8, "train.epochs": 2, "train.min_res": 32,
             "train.max_res": 32, "train.val_res": 32, "train.precision": "fp32"}
    return [sys.executable, "-m", "imagenet_kit", "train", "--recipe", "sample",
            *sum((["--set", f"{k}={v}"] for k, v in flags.items()), [])]


@pytest.mark.slow
def test_a_log_gets_a_line_per_tenth_of_an_epoch_with_step_loss_rate_and_eta(tiny_config, tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as out:  # as nohup, CI and docker compose logs see it: no terminal
        proc = subprocess.run(_train_command(tiny_config), stdout=out, stderr=subprocess.STDOUT, timeout=300,
                              env={k: v for k, v in os.environ.items() if k != "IMAGENET_KIT_PROGRESS"})
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\x1b[" not in text  # no terminal control codes in a file
    lines = [LINE.match(line) for line in text.splitlines() if line.startswith("epoch ") and " step " in line]
    assert all(lines), text
    # 4 steps per epoch: each is a tenth or more, so each gets a line; the first has no rate yet
    assert [(int(m[1]), int(m[2]), int(m[6])) for m in lines] == [(e, s, 25 * s) for e in (1, 2) for s in (1, 2, 3, 4)]
    assert all(m[4] != "-" and m[5] != "-:--:--" for m in lines if int(m[2]) > 1)
    assert text.count("waiting for the first batch (FFCV compiles its data pipeline") == 1  # the first epoch only
    metrics = [json.loads(x) for x in (tiny_config.run_dir / "metrics.jsonl").read_text().splitlines()]
    epoch_lines = re.findall(r"epoch (\d)/2: train loss .* ([\d.]+) img/s$", text, re.M)
    for m, (_, rate), last in zip(metrics, epoch_lines, [lines[3], lines[7]], strict=True):
        # one img/s: the bar's last figure, the epoch line's and metrics.jsonl's
        assert f"{m['img_per_s']:.1f}" == rate == last[4].replace(",", "")
        assert float(last[3]) == pytest.approx(m["train_loss"], abs=1e-4)  # the running loss ends at the mean


@pytest.mark.slow
def test_a_terminal_shows_the_running_loss_in_the_bar(tiny_config):
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160"}
    env.pop("IMAGENET_KIT_PROGRESS", None)
    proc = subprocess.Popen(_train_command(tiny_config), stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        ready, _, _ = select.select([leader], [], [], 300)
        if not ready:
            proc.kill()
            pytest.fail("no output from the training for 300 s")
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    assert "\x1b" in b"".join(chunks).decode(errors="replace")  # rich drew a live bar
    assert re.search(r"epoch 2/2 @ 32px .*step 4/4, loss \d+\.\d{4}, [\d,.]+ img/s, ETA", screen), screen[-2000:]


def test_plain_lines_come_every_tenth_and_every_minute(monkeypatch, capsys):
    now = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(type(progress.console), "is_terminal", property(lambda self: False))
    printed = []
    monkeypatch.setattr(progress.console, "print", lambda text, **_: printed.append(text))
    with ProgressLine("epoch 1/1 @ 160px", total=1000 * 64, steps=1000, waiting="waiting") as bar:
        for step in range(1, 1001):
            now[0] = step * 0.5 if step < 300 else 150 + (step - 300) * 10.0  # slow down after step 300
            if bar.line_due(64):
                bar.set_loss(2.0 - step / 1000)
            bar.advance(64)
    steps = [int(re.search(r"step (\d+)/", line)[1]) for line in printed[1:]]
    assert printed[0] == "epoch 1/1 @ 160px: waiting"
    assert steps[:3] == [100, 200, 300]  # every tenth while fast (50 s per tenth)
    assert steps[3:9] == [306, 312, 318, 324, 330, 336]  # then every 60 s (6 steps of 10 s)
    assert "loss 1.9000, 128.0 img/s, ETA 0:07:30" in printed[1]  # 99 steps x 64 in 49.5 s; 900 steps left
    assert steps[-1] == 1000


def test_a_bar_of_nothing_to_do_ends(monkeypatch, capsys):
    """A total of 0 (a .tar.gz shard under 1 MiB, listed in MiB) once looped forever looking for the next tenth."""
    monkeypatch.setattr(type(progress.console), "is_terminal", property(lambda self: False))
    with ProgressLine("list 1 .tar.gz shard", total=0, unit="MiB") as bar:
        bar.advance(0)
    assert "list 1 .tar.gz shard: 0/0" in capsys.readouterr().err
