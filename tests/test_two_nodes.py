"""Two torchrun nodes on one machine (c10d rendezvous on 127.0.0.1, gloo, one worker each), as a user with two
spot instances runs them: `imagenet-kit launch`, what `make full NNODES=2` starts on each node. Each node works in
a folder of its own (its own disk), or both in one (a shared disk). A run stopped by SIGTERM, or with a worker
killed by SIGKILL under --max-restarts, ends with the weights of the same run left alone."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_betons

from imagenet_kit.engine.checkpoint import CheckpointError, load_checkpoint
from imagenet_kit.engine.train import WAITING

pytestmark = pytest.mark.slow
# 4 classes x 21 images, batch 2 per node: 21 steps per epoch, so the loop's first check (at step 20, where it
# acts on a stop signal) falls mid-epoch
EPOCHS = 2
SETTINGS = ["data.name=tiny21", "data.max_res=64", "data.workers=1", "model.arch=resnet18", "optim.lr=0.005",
            "optim.lr_batch=4", "optim.schedule=linear", "optim.peak_epoch=1", f"train.epochs={EPOCHS}",
            "train.min_res=32", "train.max_res=32", "train.val_res=32", "train.val_batch_size=8",
            "train.precision=fp32", "train.deterministic=true", "train.flip_tta=false",
            "train.checkpoint_minutes=0", "data.beton_dir=betons"]
HANG_S = 300  # a node waiting on the other would sit out the process group's 30 minutes


@pytest.fixture(scope="module")
def betons(tmp_path_factory) -> Path:
    """tiny21's betons (a copy goes into each node's folder), converted from images whose root is this folder's."""
    return tiny_betons(tmp_path_factory.mktemp("tiny21"), "tiny21", train_per_class=21)["beton_dir"]


def _root(betons: Path) -> str:
    return f"data.root={betons.parent / 'images'}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_folder(base: Path, betons: Path | None) -> Path:
    base.mkdir(parents=True, exist_ok=True)
    if betons is not None and not (base / "betons").exists():
        shutil.copytree(betons, base / "betons")
    return base


def _launch(folders: list[Path], betons: Path, port: int, *extra: str, restarts: int = 0) -> list[subprocess.Popen]:
    """`imagenet-kit launch` of the same command on each node, each in its own working folder."""
    procs = []
    for i, folder in enumerate(folders):
        cmd = [sys.executable, "-m", "imagenet_kit", "launch", "--nnodes=2", "--nproc_per_node=1",
               "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=two-nodes",
               f"--max-restarts={restarts}", "--monitor-interval=0.5", "-m", "imagenet_kit", "train", "--recipe",
               "sample", "--output-dir", "runs", "--name", "two", "-b", "2", "--resume", "auto", *extra]
        for item in [*SETTINGS, _root(betons)]:
            cmd += ["--set", item]
        log = folder.parent / f"{folder.name}-{i}-{time.monotonic_ns()}.log"  # a file: a worker left behind
        with open(log, "w") as handle:                                      # cannot keep a pipe open
            proc = subprocess.Popen(cmd, cwd=folder, stdout=handle, stderr=subprocess.STDOUT,
                                    env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
        proc.log = log
        procs.append(proc)
    return procs


def _finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Each node's exit status and output, once every node has ended (their process groups are then killed, so
    that nothing is left behind whatever happened)."""
    deadline = time.monotonic() + HANG_S
    try:
        for proc in procs:
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"a node hung: {proc.log}\n" + proc.log.read_text()[-3000:]) from None
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return [(proc.returncode, proc.log.read_text()) for proc in procs]


def _newest(folders: list[Path]) -> tuple[Path, dict]:
    """The run folder that went furthest (rank 0's node of the last start) and its last checkpoint."""
    found = [(load_checkpoint(p), p) for f in folders
             if (p := f / "runs" / "two" / "checkpoints" / "last.pt").is_file()]
    state, path = max(found, key=lambda item: item[0]["global_step"])
    return path.parent.parent, state


def _wait_for(check, procs, what: str) -> None:
    deadline = time.monotonic() + HANG_S
    while not check():
        assert all(p.poll() is None for p in procs), f"a node ended before {what}"
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.05)


def _epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _max_difference(a: dict, b: dict) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def left_alone(betons, tmp_path_factory) -> dict:
    """The reference: the same 2-node run, never interrupted."""
    base = tmp_path_factory.mktemp("alone")
    folders = [_node_folder(base / f"node{i}", betons) for i in range(2)]
    for code, text in _finish(_launch(folders, betons, _free_port())):
        assert code == 0, text[-3000:]
    run, state = _newest(folders)
    assert state["epoch"] == EPOCHS
    return state["model"]


def _stop_with_sigterm(folders: list[Path], betons: Path) -> None:
    """Start, and send SIGTERM to both launchers once training has begun: the stop lands at the loop's first check
    (global step 20: epoch 1, step 20 of 21)."""
    procs = _launch(folders, betons, _free_port())
    # rank 0's first progress line comes after the stop handler is installed, and seconds before step 20
    _wait_for(lambda: any(WAITING in p.log.read_text() for p in procs), procs, "training start")
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for code, text in _finish(procs):
        assert code == 0 and "Traceback" not in text, text[-3000:]
        assert "stopped by SIGTERM" in text
    _, state = _newest(folders)
    assert (state["epoch"], state["step"]) == (0, 20), "the stop should land mid-epoch, at the first check"


def _kill_node_1_worker_once_past(folders: list[Path], procs: list[subprocess.Popen], global_step: int) -> None:
    def checkpointed() -> bool:
        try:
            return _newest(folders)[1]["global_step"] >= global_step
        except (ValueError, CheckpointError, OSError, EOFError):  # none yet, or one being replaced
            return False

    _wait_for(checkpointed, procs, f"a checkpoint at step {global_step}")
    workers = subprocess.run(["pgrep", "-P", str(procs[1].pid)], capture_output=True, text=True).stdout.split()
    assert workers, "node 1's worker not found"
    os.kill(int(workers[0]), signal.SIGKILL)


@pytest.mark.parametrize("shared", [False, True], ids=["own-disks", "shared-disk"])
def test_a_stopped_run_started_again_ends_with_the_weights_of_the_run_left_alone(betons, left_alone, tmp_path, shared):
    """Stopped by SIGTERM mid-epoch, then started again; on own disks the second start also has node 1's worker
    killed (SIGKILL) after its first epoch, which torchrun restarts (--max-restarts=1) from the newest checkpoint.
    Whichever node became rank 0 at each start, one node lacked the checkpoint and was sent it."""
    folders = [_node_folder(tmp_path / "shared", betons)] * 2 if shared else \
        [_node_folder(tmp_path / f"node{i}", betons) for i in range(2)]
    _stop_with_sigterm(folders, betons)
    procs = _launch(folders, betons, _free_port(), restarts=1)
    if not shared:
        _kill_node_1_worker_once_past(folders, procs, 21)
    results = _finish(procs)
    for code, text in results:
        assert code == 0, text[-3000:]
    text = "".join(t for _, t in results)
    assert "resuming from" in text and "(epoch 0, step 20)" in text
    assert ("shared by 2 nodes" if shared else "on node") in text
    assert ("received it from node" in text) is not shared
    run, state = _newest(folders)
    assert state["epoch"] == EPOCHS
    assert _max_difference(state["model"], left_alone) <= 1e-6
    assert _epochs_logged(run) == list(range(EPOCHS))


def test_a_node_without_betons_stops_both_nodes_naming_prepare(betons, tmp_path):
    folders = [_node_folder(tmp_path / "node0", betons), _node_folder(tmp_path / "node1", None)]
    start = time.monotonic()
    for code, text in _finish(_launch(folders, betons, _free_port())):
        assert code == 2, text[-3000:]
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "imagenet-kit prepare" in errors[0], text[-3000:]
        assert "Traceback" not in text
    assert time.monotonic() - start < 60
    assert not (tmp_path / "node1" / "runs").exists()

