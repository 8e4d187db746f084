"""What torchrun changes, checked with real processes (gloo on CPU): cross-rank syncs in the loop, divergence on
one rank, distributed evaluation and ``lr: auto`` for the global batch (two nodes, restarts and a node without
betons: ``test_two_nodes.py``)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_overrides

from imagenet_kit.data.loaders import create_val_loader
from imagenet_kit.engine.evaluate import evaluate
from imagenet_kit.engine.lr_find import suggestions
from imagenet_kit.models.factory import create_model
from imagenet_kit.optim.optimizers import scaled_lr

WORKER = Path(__file__).with_name("ddp_worker.py")
CPU = torch.device("cpu")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(nproc: int, base: Path, scenarios: dict[str, tuple[str, list[str]]], timeout: float = 600) -> dict:
    """One torchrun launch of ``nproc`` ranks running every scenario (name: (mode, overrides)) in turn; returns
    name -> the ranks' results. One launch for several tests: starting the ranks and compiling FFCV's pipelines
    is most of a tiny scenario's time."""
    spec = [{"mode": mode, "out": str(base / name), "overrides": overrides}
            for name, (mode, overrides) in scenarios.items()]
    (base / "scenarios.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(WORKER), str(base / "scenarios.json")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO / "tests")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return {name: [json.loads((base / name / f"rank{r}.json").read_text()) for r in range(nproc)]
            for name in scenarios}


@pytest.fixture(scope="module")
def two_ranks(tiny_data, tmp_path_factory) -> dict:
    """The 2-rank scenarios, in one launch; each trains in a run folder of its own."""
    base = tmp_path_factory.mktemp("two-ranks")

    def overrides(name: str, *extra: str) -> list[str]:
        return tiny_overrides(tiny_data, base / name / "runs") + list(extra)

    # batch 2 per rank: 32 images / global batch 4 = 8 steps per epoch, 4 epochs = 32 steps
    return {"base": base, **_torchrun(2, base, {
        "reductions": ("reductions", overrides("reductions", "train.batch_size=2", "train.epochs=4")),
        "auto_lr": ("auto_lr", overrides("auto_lr", "optim.lr=auto", "train.batch_size=4")),
        "uncached": ("uncached", overrides("uncached", "data.in_memory=false")),
        "nan": ("nan", overrides("nan")),  # last: it stops training with an error on purpose
    })}


def test_training_reduces_across_ranks_once_per_20_steps_besides_epoch_ends(two_ranks):
    ranks = two_ranks["reductions"]
    first = ranks[0]
    assert first["global_step"] == 32
    # Each epoch end reduces four times: the last step's check, the mean train loss, evaluation's counts (one
    # tensor) and the stop check before the next epoch. In between: one check at global step 20.
    assert all(r["all_reduce"] == first["all_reduce"] for r in ranks)
    assert first["all_reduce"] <= 32 // 20 + 4 * first["epochs"], first


def test_nan_on_one_rank_stops_every_rank_with_the_divergence_error(two_ranks):
    for rank in two_ranks["nan"]:
        assert rank["error"] and "loss became non-finite by step 4" in rank["error"], two_ranks["nan"]
        assert rank["seconds"] < 60  # stopped together, not after a collective's timeout


def test_distributed_eval_counts_every_image_once(tiny_data, tmp_path):
    beton = str(tiny_data["beton_dir"] / "tiny-val-64.beton")  # 16 images: 6 + 5 + 5 over three ranks
    ranks = _torchrun(3, tmp_path, {"eval": ("eval", tiny_overrides(tiny_data, tmp_path / "runs"))})["eval"]
    torch.manual_seed(0)
    single = evaluate(create_model("resnet18", 4), create_val_loader(beton, 4, 32, CPU, 1), 4, CPU, None, False)
    assert single["count"] == 16
    for rank in ranks:
        assert rank["count"] == 16 and rank["per_class_total"] == single["per_class_total"]
        assert rank["per_class_correct"] == single["per_class_correct"]
        for key in ("loss", "top1", "top5"):
            assert rank[key] == pytest.approx(single[key], rel=1e-6), key  # float32 sums in another order


def test_auto_lr_under_two_processes_is_the_pick_scaled_to_the_global_batch(two_ranks):
    ranks = two_ranks["auto_lr"]
    curve = json.loads((two_ranks["base"] / "auto_lr" / "runs" / "tiny" / "lr_find.json").read_text())
    assert curve["lr"] == suggestions(curve["lrs"], curve["losses"])["turn_x3"]  # the rule, at one rank's batch
    assert (curve["test_batch"], curve["global_batch"]) == (4, 8)
    assert curve["peak_lr"] == pytest.approx(scaled_lr(curve["lr"], 4, 8))
    assert [r["lr"] for r in ranks] == [pytest.approx(curve["peak_lr"])] * 2  # every rank trains with it


def test_uncached_betons_under_torchrun_are_refused_on_every_rank_once(two_ranks):
    for rank in two_ranks["uncached"]:
        assert rank["error"].startswith("data.in_memory false under torchrun (2 processes): "), rank
        assert "allocates about the whole beton" in rank["error"] and "NPROC=1" in rank["error"]
        assert rank["every_rank"] and not rank["run_folder"]  # said once per node; nothing written


def test_an_error_every_rank_raised_is_printed_by_each_nodes_first_rank_only(monkeypatch):
    from click.testing import CliRunner

    from imagenet_kit import cli
    from imagenet_kit.errors import ConfigError

    def refused():
        err = ConfigError("data.in_memory false under torchrun")
        err.every_rank = True
        raise err

    group = cli.KitGroup(lazy={}, name="kit")
    group.add_command(cli.click.Command("go", callback=refused))
    for local_rank, printed in (("0", True), ("1", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        run = CliRunner().invoke(group, ["go"])
        assert run.exit_code == 2 and ("error: data.in_memory" in run.output) == printed, run.output
