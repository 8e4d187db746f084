"""An installed kit (a wheel, not this checkout) runs a recipe from any folder, and its demo serves that run.

Recipes and the embedded sample are package data: ``pip install .`` into a fresh venv, then
``imagenet-kit run --recipe sample --output-dir DIR`` from a folder that holds nothing of the repository, and
``imagenet-kit demo --output-dir DIR`` from yet another folder. The fresh venv borrows this environment's
third-party packages (torch, FFCV, Gradio: gigabytes) through a .pth line, never its editable imagenet_kit.
"""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

TINY = ["--epochs", "1", "--lr", "0.1", "-b", "32", "-j", "2", "--set", "train.min_res=64", "--set",
        "train.max_res=64", "--set", "train.val_res=64", "--set", "train.start_ramp=0", "--set", "train.end_ramp=0"]
SERVE_TIMEOUT = 180


def _copy_checkout(dst: Path) -> Path:
    """The tracked files (the recipes link stays a link), as a clone would have them."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_symlink():
            target.symlink_to((REPO / name).readlink())
        elif (REPO / name).is_file():  # a file deleted in the working tree but not yet in git's index
            shutil.copy2(REPO / name, target)
    return dst


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv's bin/ holding the kit installed from its wheel."""
    base = tmp_path_factory.mktemp("install")
    source = _copy_checkout(base / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "-w", str(base / "wheels"), str(source)], check=True, timeout=600)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "borrowed-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel = next((base / "wheels").glob("imagenet_kit-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, timeout=600)
    return venv / "bin"


@pytest.mark.slow
def test_the_installed_kit_runs_the_sample_from_any_folder_and_serves_it(installed, tmp_path):
    workdir, elsewhere, out = tmp_path / "work", tmp_path / "elsewhere", tmp_path / "my-runs"
    workdir.mkdir()
    elsewhere.mkdir()
    where = subprocess.run([installed / "python", "-c", "import imagenet_kit; print(imagenet_kit.__file__)"],
                           cwd=elsewhere, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(installed.parent)), where  # the wheel's copy, not this checkout

    run = subprocess.run([installed / "imagenet-kit", "run", "--recipe", "sample", "--output-dir", str(out), *TINY],
                         cwd=workdir, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "sample: val top-1" in run.stdout
    assert (out / "sample" / "export" / "model.json").is_file() and not (workdir / "runs").exists()
    report = json.loads((workdir / "betons" / "imagenette-sample-train-160.beton.report.json").read_text())
    assert report["counts"]["written"] == 500 and report["source"].startswith(str(installed.parent))

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([installed / "imagenet-kit", "demo", "--output-dir", str(out), "--port", str(port)],
                              cwd=elsewhere, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        page = _wait_for(f"http://127.0.0.1:{port}/config", server)
        assert "run `sample`" in page and "imagenette-sample" in page  # the model card of that run's export
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for(url: str, server: subprocess.Popen) -> str:
    deadline = time.monotonic() + SERVE_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the demo exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.read().decode()
        except OSError:
            time.sleep(1)
    pytest.fail(f"the demo did not answer {url} within {SERVE_TIMEOUT} s")
