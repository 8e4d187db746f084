"""One rank of the torchrun tests in test_ddp_checks.py (run by ``python -m torch.distributed.run``, gloo on CPU).

``python ddp_worker.py SCENARIOS.json``: a list of ``{"mode", "out", "overrides"}``, run one after another in one
process group, so that one launch (process start, imports, FFCV's compilation) serves several tests. ``mode`` is
what the rank does; ``overrides`` are config overrides (tiny_overrides'); each rank writes what the test checks,
and the seconds the scenario took, to ``out``/rank<r>.json.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from imagenet_kit.config import load_config
from imagenet_kit.engine import train as train_module
from imagenet_kit.runtime import init_runtime, shutdown_runtime


def count_reductions(cfg, runtime) -> dict:
    """Train with every ``dist.all_reduce`` counted (DDP's gradient buckets go through C++, not this)."""
    calls = []
    all_reduce = dist.all_reduce

    def counted(tensor, *args, **kwargs):
        calls.append(tensor.numel())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counted
    try:
        result = train_module.train(cfg, runtime)
    finally:
        dist.all_reduce = all_reduce
    return {"all_reduce": len(calls), "global_step": result.metrics["global_step"], "epochs": cfg.train.epochs}


def diverge_on_rank_1(cfg, runtime) -> dict:
    """Rank 1's loss turns NaN from its 3rd step on; every rank must stop with the divergence error."""
    step, steps = train_module.train_step, [0]

    def nan_step(*args, **kwargs):
        loss = step(*args, **kwargs)
        steps[0] += 1
        return loss * float("nan") if runtime.rank == 1 and steps[0] >= 3 else loss

    train_module.train_step = nan_step
    try:
        train_module.train(cfg, runtime)
    except train_module.DivergenceError as err:
        return {"error": str(err)}
    finally:
        train_module.train_step = step
    return {"error": None}


def evaluate_shard(cfg, runtime) -> dict:
    from imagenet_kit.data.loaders import create_val_loader
    from imagenet_kit.engine.evaluate import evaluate
    from imagenet_kit.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 4)
    loader = create_val_loader(str(cfg.betons[1]), 4, 32, runtime.device, 1, runtime.rank, runtime.world_size)
    return evaluate(model, loader, 4, runtime.device, None, False, True, distributed=True)


def auto_lr(cfg, runtime) -> dict:
    from imagenet_kit.engine.lr_find import range_test

    return {"lr": range_test(cfg, runtime)}


def uncached_betons(cfg, runtime) -> dict:
    """data.in_memory false under torchrun: refused on every rank before the run folder exists."""
    from imagenet_kit.errors import KitError

    try:
        train_module.train(cfg, runtime)
    except KitError as err:
        return {"error": str(err), "every_rank": getattr(err, "every_rank", False),
                "run_folder": cfg.run_dir.exists()}
    return {"error": None}


MODES = {"reductions": count_reductions, "nan": diverge_on_rank_1, "eval": evaluate_shard, "auto_lr": auto_lr,
         "uncached": uncached_betons}

if __name__ == "__main__":
    scenarios = json.loads(Path(sys.argv[1]).read_text())
    runtime = init_runtime(load_config("sample", scenarios[0]["overrides"]).train.dist_timeout_minutes)
    try:
        for scenario in scenarios:
            cfg = load_config("sample", scenario["overrides"])
            start = time.monotonic()
            result = MODES[scenario["mode"]](cfg, runtime)
            result["seconds"] = time.monotonic() - start
            out = Path(scenario["out"])
            out.mkdir(parents=True, exist_ok=True)
            (out / f"rank{runtime.rank}.json").write_text(json.dumps(result))
    finally:
        shutdown_runtime(runtime)
