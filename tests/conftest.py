"""Shared fixtures: tiny betons cut from the embedded sample (real images), built once per session."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from imagenet_kit.config import load_config

# `make test` runs a pytest worker per core plus one, and the tests start processes of their own (the CLI, torchrun,
# make). Two processes on 2 cores with 2 torch threads each trained 5x slower than with one each (their threads wait
# on each other at every operation), so each worker and every process it starts computes with one torch thread: the
# kit reads OMP_NUM_THREADS as torchrun sets it (data/workers.torch_threads). Loader and conversion workers stay as
# each test sets them.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "imagenet_kit" / "sample_data" / "imagenette-sample"


# The modules that take longest (pytest --durations under `make test`, 2 cores, 2026-12-06), longest first:
# `make test`'s workers take whole modules in collection order, so these start at once and no worker is left
# running a long one alone at the end.
LONGEST_FIRST = ("test_two_nodes", "test_install", "test_gpu_evidence", "test_ddp_checks", "test_gpu_path",
                 "test_preflight", "test_progress", "test_archives", "test_train", "test_distributed",
                 "test_resume_exact", "test_selection", "test_convert_faults", "test_cli", "test_workers",
                 "test_convert", "test_mirror", "test_space", "test_app", "test_learning", "test_ingestion")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__.rsplit(".", 1)[-1], len(rank)))  # stable


HOST_QUERIES = ("git", "uname", "ldconfig")


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
    """``make test-fast`` runs the tests not marked slow, and promises that none of them starts a process (the
    CLI, make, torchrun, pip, a browser): one that does fails here, naming the command, until it is marked slow.
    The quick queries a run makes of its host are let through: ``git rev-parse`` (the run's provenance),
    ``uname -p`` (Python's ``platform.processor``) and ``ldconfig -p`` (``ctypes.util.find_library``, which torch
    asks on import: blocked, a test that imports torch first would leave it half-imported)."""
    if request.node.get_closest_marker("slow"):
        return
    start = subprocess.Popen.__init__

    def refuse(self, args, *rest, **kwargs):
        if Path(str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]).name not in HOST_QUERIES:
            raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it @pytest.mark.slow")
        start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def live_in_group(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (zombies, which no one may reap here, aside)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):  # exited while we looked
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            if state != "Z" and int(group) == pgid:
                return True
    return False


def wait_until_writing(proc: subprocess.Popen, out: Path) -> None:
    """Until a conversion's image data reaches OUT's temporary file (the writer flushes it in pages): then its
    writer processes are mid-way, and their shared memory is registered with the resource tracker."""
    deadline = time.monotonic() + 120
    while sum(p.stat().st_size for p in out.parent.glob(out.name + ".tmp-*")) < 1 << 20:
        assert proc.poll() is None, "conversion ended before it was seen writing"
        assert time.monotonic() < deadline, "conversion never started writing"
        time.sleep(0.01)


def make_env() -> dict:
    """This environment without the variables by which an outer ``make test ARGS=...`` would pass its own
    command-line variables (ARGS among them) down to the ``make`` a test runs."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}


def _tiny_imagefolder(dst: Path, classes: int, train_per_class: int, val_per_class: int) -> Path:
    for split, n in (("train", train_per_class), ("val", val_per_class)):
        for wnid in sorted(p.name for p in (SAMPLE / split).iterdir())[:classes]:
            (dst / split / wnid).mkdir(parents=True)
            for f in sorted((SAMPLE / split / wnid).iterdir())[:n]:
                shutil.copy(f, dst / split / wnid / f.name)
    return dst


def tiny_betons(base: Path, name: str, train_per_class: int) -> dict:
    """4 classes, ``train_per_class`` train + 4 val real images each, converted to ``<name>-{train,val}-64.beton``
    in ``base``/betons; returns the image root and the beton folder."""
    from imagenet_kit.data.convert import convert
    from imagenet_kit.data.sources import scan_imagefolder

    root = _tiny_imagefolder(base / "images", classes=4, train_per_class=train_per_class, val_per_class=4)
    betons = base / "betons"
    convert(scan_imagefolder(root / "train"), betons / f"{name}-train-64.beton", max_res=64, workers=1)
    classes = [p.name for p in sorted((root / "train").iterdir())]
    convert(scan_imagefolder(root / "val", classes), betons / f"{name}-val-64.beton", max_res=64, workers=1)
    return {"root": root, "beton_dir": betons}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> dict:
    """4 classes, 8 train + 4 val real images each, converted to betons at max side 64."""
    return tiny_betons(tmp_path_factory.mktemp("tiny"), "tiny", train_per_class=8)


def tiny_overrides(tiny_data: dict, output_dir: Path) -> list[str]:
    """tiny_config's settings, for fixtures of a wider scope that train a run of their own."""
    return [
        f"output_dir={output_dir}", "name=tiny", f"data.root={tiny_data['root']}",
        f"data.beton_dir={tiny_data['beton_dir']}",
        "data.name=tiny", "data.max_res=64", "data.workers=1", "model.arch=resnet18", "optim.lr=0.05",
        "optim.lr_batch=8", "train.epochs=2", "train.batch_size=8", "train.min_res=32", "train.max_res=32",
        "train.val_res=32", "train.val_batch_size=16", "train.precision=fp32", "lr_find.num_iter=12",
    ]


@pytest.fixture
def tiny_config(tiny_data, tmp_path):
    """A resnet18 run on the tiny betons: 32 px, batch 8, 2 epochs (4 steps each)."""
    return load_config("sample", tiny_overrides(tiny_data, tmp_path / "runs"))
