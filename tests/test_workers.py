"""A recipe's ``data.workers`` above this host's cores is lowered, once per loader kind, at every entry point.

FFCV hands the count to numba's ``set_num_threads``, which refuses more threads than the process may use: each
test below asks for one worker more than this machine has, which ended in numba's ValueError before the cap.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import SAMPLE

from imagenet_kit.data import workers as workers_module
from imagenet_kit.data.workers import core_share, host_cores, torch_threads, usable_workers
from imagenet_kit.runtime import Runtime

CPU = Runtime(torch.device("cpu"))
TOO_MANY = host_cores() + 1


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Each test sees the first-time lines of its own process-wide announcements."""
    monkeypatch.setattr(workers_module, "_announced", set())
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


def _lines(err: str, kind: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(f"{kind}: data.workers")]


@pytest.mark.parametrize("requested, cores, processes, expected", [
    (12, 2, 1, 2), (2, 2, 1, 2), (1, 2, 1, 1), (0, 2, 1, 2),  # 0: all of them
    (12, 96, 8, 12), (13, 96, 8, 12), (0, 96, 8, 12),  # torchrun, 8 processes: each gets 12
    (4, 3, 4, 1),  # fewer cores than processes: still one each
])
def test_the_count_is_capped_at_this_process_share(requested, cores, processes, expected):
    assert usable_workers(requested, "train loader", cores, processes) == expected


def test_one_line_per_kind_saying_what_was_asked_and_what_is_used(capsys):
    for _ in range(3):
        usable_workers(12, "train loader", 2, 1)
    usable_workers(12, "val loader", 2, 1)
    usable_workers(0, "convert", 2, 1)  # all cores is what 0 asks for: nothing to say
    err = capsys.readouterr().err
    assert _lines(err, "train loader") == ["train loader: data.workers 12 > 2 cores here: using 2"]
    assert _lines(err, "val loader") == ["val loader: data.workers 12 > 2 cores here: using 2"]
    assert _lines(err, "convert") == []


def test_under_torchrun_the_line_says_how_the_node_was_split(capsys, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert usable_workers(12, "train loader", 16) == 4
    assert capsys.readouterr().err.strip() == ("train loader: data.workers 12 > 4 cores for this process: using 4 "
                                               "(16 cores split between 4 processes on this node)")
    monkeypatch.setenv("LOCAL_RANK", "1")  # the node's other processes lower it silently
    assert usable_workers(12, "val loader", 16) == 4 and capsys.readouterr().err == ""


@pytest.mark.parametrize("omp, processes, expected", [
    ("1", "1", 1), ("3", "1", 3), ("1", "4", 1),  # as set (torchrun sets 1 for several processes)
    (None, "1", host_cores()), (None, "2", core_share(host_cores(), 2)), ("", "1", host_cores()),
    ("two", "1", host_cores()),
])
def test_torch_threads_are_omp_num_threads_else_this_process_share(monkeypatch, omp, processes, expected):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)
    assert torch_threads() == expected


def test_a_loader_sets_numbas_threads_and_leaves_torchs_alone(tiny_data):
    """FFCV sets torch's thread count to its worker count for every loader and epoch, which undid torchrun's
    OMP_NUM_THREADS=1; two such processes on 2 cores trained 5x slower (tests/conftest.py). ffcv_compat stops it."""
    from ffcv.pipeline.compiler import Compiler

    from imagenet_kit.data.loaders import create_train_loader, epoch_batches

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # any count but the loader's single worker
    try:
        loader = create_train_loader(str(tiny_data["beton_dir"] / "tiny-train-64.beton"), 8, 32, CPU.device, 1)
        assert sum(len(labels) for _, labels in epoch_batches(loader)) == 32
        assert sum(len(labels) for _, labels in epoch_batches(loader, skip=2)) == 16  # the kit's own epoch start
        assert (torch.get_num_threads(), Compiler.num_threads) == (2, 1)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_training_with_lr_auto_lowers_every_loader_once(tiny_config, capsys):
    from imagenet_kit.engine.train import train

    tiny_config.data.workers = TOO_MANY
    tiny_config.optim.lr = "auto"
    tiny_config.train.epochs = 1
    result = train(tiny_config, CPU)
    assert result.metrics["global_step"] == 4
    err = capsys.readouterr().err
    for kind in ("LR range test loader", "train loader", "val loader"):
        assert _lines(err, kind) == [f"{kind}: data.workers {TOO_MANY} > {host_cores()} cores here: using "
                                     f"{host_cores()}"], err


def test_eval_of_a_checkpoint_with_more_workers_than_cores(tiny_config, capsys):
    from imagenet_kit.engine.checkpoint import load_checkpoint
    from imagenet_kit.engine.evaluate import evaluate_checkpoint
    from imagenet_kit.engine.train import train

    tiny_config.train.epochs, tiny_config.train.max_steps = 1, 1  # a checkpoint to evaluate, nothing more
    train(tiny_config, CPU)
    state = load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")
    beton = str(tiny_config.betons[1])
    result = evaluate_checkpoint(state, beton, torch.device("cpu"), batch_size=8, workers=TOO_MANY)
    assert result["count"] == 16
    assert len(_lines(capsys.readouterr().err, "val loader")) == 1


def test_convert_with_more_workers_than_cores(tmp_path, capsys):
    from imagenet_kit.data.convert import convert
    from imagenet_kit.data.sources import scan_imagefolder

    report = convert(scan_imagefolder(SAMPLE / "val"), tmp_path / "val.beton", max_res=32, workers=TOO_MANY)
    assert report["counts"]["written"] == len(list((SAMPLE / "val").rglob("*.JPEG")))
    assert len(_lines(capsys.readouterr().err, "convert")) == 1


@pytest.mark.slow
def test_bench_data_records_the_count_it_timed(tmp_path):
    from imagenet_kit.bench.data import bench_data_command

    results = tmp_path / "results"
    run = CliRunner().invoke(bench_data_command, [
        "--src", str(SAMPLE / "val" / "n01440764"), "--out", str(tmp_path / "betons"), "--results-dir", str(results),
        "--res", "32", "--max-res", "48", "-b", "4", "--epochs", "1", "-j", str(TOO_MANY)])
    assert run.exit_code == 0, run.output
    rows = [json.loads(line) for line in (results / "data.jsonl").read_text().splitlines()]
    assert [r["workers"] for r in rows] == [host_cores()] * 2
    assert f"bench data: data.workers {TOO_MANY} > {host_cores()} cores here" in run.output
