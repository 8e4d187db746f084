"""``imagenet-kit run``: a recipe end to end, convert -> LR range test (lr: auto) -> train -> eval -> export.

Stages whose outputs exist are skipped, so an interrupted run picks up where it stopped. Each stage is its own
module (``data.prepare``, ``engine.lr_find``, ``engine.train``, ``engine.evaluate``, ``serve.export``); this one
only chains them.
"""
from __future__ import annotations

import click

from imagenet_kit.config import RunConfig
from imagenet_kit.config.flags import build_config, recipe_options
from imagenet_kit.data.prepare import prepare, require_betons
from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.engine.evaluate import run_eval
from imagenet_kit.engine.train import train
from imagenet_kit.progress import console, results
from imagenet_kit.runtime import init_runtime, launched_by_torchrun, on_every_rank, shutdown_runtime
from imagenet_kit.serve.export import export_model

NOT_CONVERTED_UNDER_TORCHRUN = (" on this node (under torchrun, run does not convert: rank 0 would convert for hours "
                                "while the other ranks time out; `make full` converts on each node first)")


@click.command("run")
@recipe_options
def run_command(**flags):
    """A recipe end to end: convert -> LR range test (lr: auto) -> train -> eval -> export.

    Stages whose outputs exist are skipped, so an interrupted run picks up where it stopped."""
    cfg = build_config(**flags)
    if not launched_by_torchrun():
        prepare(cfg)
    runtime = init_runtime(cfg.train.dist_timeout_minutes)
    try:
        if runtime.distributed:  # each node has its own betons, or not: every rank stops if one has none
            on_every_rank(lambda: require_betons(cfg, NOT_CONVERTED_UNDER_TORCHRUN), runtime)
        if not train_stage(cfg, runtime):
            return
    finally:
        shutdown_runtime(runtime)
    if not runtime.is_main:
        return
    best = cfg.run.best
    summary, out_path = run_eval(best, cfg.run, cfg.betons[1], batch_size=cfg.train.val_batch_size)
    export_stage(cfg)
    results.out(f"{cfg.name}: val top-1 {100 * summary['top1']:.2f}%, top-5 {100 * summary['top5']:.2f}% "
               f"({summary['count']} images, {best}) -> {out_path}")


def train_stage(cfg: RunConfig, runtime) -> bool:
    """Train (resuming), unless the last checkpoint has done every epoch; False if a signal stopped it. Under
    torchrun the ranks decide that together (``engine.resume``): another node may hold the newer checkpoint."""
    if not runtime.distributed and training_finished(cfg):
        console.print(f"train: skipped, {cfg.run.last} has finished all {cfg.train.epochs} epochs")
        return True
    return not train(cfg, runtime, resume="auto").stopped


def training_finished(cfg: RunConfig) -> bool:
    """Whether the run's last checkpoint has done every epoch of the recipe."""
    return cfg.run.last.is_file() and load_checkpoint(cfg.run.last)["epoch"] >= cfg.train.epochs


def export_stage(cfg: RunConfig) -> None:
    checkpoint, export = cfg.run.best, cfg.run.export
    if export.finished and export.model_info.stat().st_mtime >= checkpoint.stat().st_mtime:
        console.print(f"export: skipped, {export.root} is newer than {checkpoint}")
        return
    export_model(checkpoint, export.root)
    results.out(f"export: {export.root}")
