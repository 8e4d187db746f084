"""A conversion that cannot finish ends cleanly: one ``error:`` line, exit 2, nothing at OUT, no temporary file, no
process left behind. A full disk (a small tmpfs, refused up front or filling mid-way), SIGTERM and Ctrl-C, a writer
process killed with SIGKILL, each with two writer processes; and a source file removed mid-run is listed with its
reason while the rest is written. Before these, a full disk printed a writer's traceback, advised fewer workers,
and the process then hung at exit (its work queue's feeder thread waited for the dead writers)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SAMPLE, live_in_group, wait_until_writing

pytestmark = pytest.mark.slow
KIT = [sys.executable, "-m", "imagenet_kit"]
# The CLI with the up-front space check switched off, so that the disk fills while the writers write.
NO_SPACE_CHECK = """
import sys
import imagenet_kit.data.disk_space as disk_space
disk_space.REFUSE_BELOW = 0
from imagenet_kit.cli import main
sys.argv[0] = "imagenet-kit"
main()
"""
# A hang is caught by these; a conversion that ends cleanly takes a few seconds.
END_WITHIN_S = {"disk": 30, "signal": 10}


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 6 MB tmpfs: the embedded sample's train split (about 25 MB as a beton) cannot fit."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _many_images(folder: Path, copies: int) -> Path:
    """The sample's train split, each file linked ``copies`` times: a write phase of several seconds."""
    for source in sorted((SAMPLE / "train").glob("*/*.JPEG")):
        (folder / source.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(copies):
            (folder / source.parent.name / f"{k}_{source.name}").symlink_to(source)
    return folder


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def _nothing_left(out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(out.name + "*")), list(out.parent.iterdir())


def test_a_disk_that_clearly_cannot_hold_the_beton_is_refused_before_writing(small_disk):
    out = small_disk / "train.beton"
    start = time.monotonic()
    proc = subprocess.run([*KIT, "convert", str(SAMPLE / "train"), str(out)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert time.monotonic() - start < END_WITHIN_S["disk"]
    [line] = _errors(proc.stderr)
    assert f"{small_disk} has " in line and "MB free, but the beton needs about" in line
    assert "estimated from 24 of them" in line and "Traceback" not in proc.stderr
    _nothing_left(out)


def test_a_disk_that_fills_while_writing_is_one_line_and_no_hang(small_disk):
    out = small_disk / "train.beton"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", NO_SPACE_CHECK, "convert", str(SAMPLE / "train"), str(out),
                             "-j", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    assert time.monotonic() - start < END_WITHIN_S["disk"]
    [line] = _errors(err)
    assert f"{small_disk} ran out of space: the beton needs about" in line and "was free at the start" in line
    assert "fewer workers" not in line and "Traceback" not in err
    _nothing_left(out)


@pytest.mark.parametrize("signum, said", [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "Ctrl-C")])
def test_sigterm_and_ctrl_c_end_within_seconds_leaving_nothing(tmp_path, signum, said):
    src = _many_images(tmp_path / "src", copies=8)
    out = tmp_path / "out" / "train.beton"
    proc = _start_writing(src, out)
    try:
        # Ctrl-C reaches the terminal's whole process group, writers too; SIGTERM (docker stop) the main process
        (os.killpg if signum == signal.SIGINT else os.kill)(proc.pid, signum)
        signalled = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - signalled < END_WITHIN_S["signal"]
        deadline = time.monotonic() + 30
        while live_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live_in_group(proc.pid), "a writer process outlived the conversion"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    [line] = _errors(err)
    assert f"conversion to {out} interrupted ({said}); nothing was written there" in " ".join(err.split())
    assert "Traceback" not in err
    _nothing_left(out)


def _writers_of(pid: int) -> list[int]:
    """The forked writer processes of ``pid``: its children running its own command line (the resource tracker,
    also a child, runs another)."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes()
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid and \
                    (stat.parent / "cmdline").read_bytes() == command:
                found.append(int(stat.parent.name))
    return found


def _start_writing(src: Path, out: Path) -> subprocess.Popen:
    """A 2-process conversion of ``src`` in a process group of its own, returned once its writers are mid-way.
    SIGINT handled as at a terminal: a parent that ignores it (pytest-xdist's workers do) passes that on."""
    proc = subprocess.Popen([*KIT, "convert", str(src), str(out), "-j", "2", "--max-res", "256"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until_writing(proc, out)
    return proc


def test_a_writer_killed_with_sigkill_is_an_error_within_seconds(tmp_path):
    """As the out-of-memory killer does it: one writer process gone mid-way. FFCV alone waits for it forever."""
    out = tmp_path / "out" / "train.beton"
    proc = _start_writing(_many_images(tmp_path / "src", copies=8), out)
    try:
        [victim, *_] = _writers_of(proc.pid)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        assert time.monotonic() - killed < END_WITHIN_S["disk"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    [line] = _errors(err)
    assert "a writer process died (exit code -9" in line and "out-of-memory" in line and "Traceback" not in err
    _nothing_left(out)


def test_a_source_file_removed_mid_run_is_listed_with_its_reason(tmp_path):
    """Files that go away after the scan (a network disk, a cleanup job) are listed, and the rest written."""
    src = _many_images(tmp_path / "src", copies=8)
    files = sorted(src.glob("*/*.JPEG"))
    out = tmp_path / "out" / "train.beton"
    proc = _start_writing(src, out)
    try:
        for gone in files[-3:]:  # the last work items: no writer has reached them yet
            gone.unlink()
        _, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["counts"]["written"] == len(files) - 3
    assert report["skipped"] == [{"path": str(p), "reason": "broken symbolic link or file removed during "
                                  "conversion"} for p in files[-3:]]
