"""``imagenet-kit bench profiles``: what a GPU profile's differences from FFCV's published run cost in accuracy,
measured on data we have, several seeds per arm.

A GPU profile (``recipes/profiles/``) trains the full recipe with other betons (320 px JPEG-only instead of 500 px
with half raw pixels), another batch per step (the LR scaled by the kit's linear rule) and another precision. Those
are the differences that keep ``plan`` from crediting FFCV's published top-1 to a profile's run. This bench trains
the full recipe's structure (``recipes/full.yaml``: BlurPool, the linear schedule with its warm-up, progressive
resizing, label smoothing, evaluation at 4/3 of the training resolution with a 0.875 centre crop and flip TTA),
scaled to a CPU: resnet18, every resolution halved (training 64 -> 96 px, evaluation 128 px, betons 250 px against
160 px), 5 epochs, on Imagenette. Each arm changes one thing from the reference arm; every run is an accuracy row
(``bench/results/accuracy.jsonl``) with its arm and seed, and ``bench report`` renders each arm as mean ± std.

Runs that finished are not trained again and rows already recorded are not written twice, so an interrupted bench
resumes where it stopped (each run resumes mid-epoch from its checkpoint).
"""
from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from imagenet_kit.bench.run import run_record
from imagenet_kit.config import RunConfig, load_config
from imagenet_kit.config.flags import resolve_data_root
from imagenet_kit.data.prepare import prepare
from imagenet_kit.engine.train import train
from imagenet_kit.environment import cpu_has_native_bf16
from imagenet_kit.errors import ConfigError
from imagenet_kit.pipeline import training_finished
from imagenet_kit.progress import console, results
from imagenet_kit.result_rows import PROFILES, RESULTS_DIR, append_results, arm_summary, profile_rows, read_results
from imagenet_kit.runtime import init_runtime

BENCH = PROFILES  # the key of its accuracy rows; result_rows reads them back (plan cites them)
# The full recipe at half its resolutions, on a 2-core CPU: its structure, not its size.
SCALED_FULL = {
    "model.arch": "resnet18", "train.epochs": 5, "optim.peak_epoch": 1, "train.min_res": 64, "train.max_res": 96,
    "train.start_ramp": 3, "train.end_ramp": 4, "train.val_res": 128, "train.val_batch_size": 256,
    "train.batch_size": 256, "train.precision": "bf16", "data.workers": 0, "data.name": "imagenette2-bench-raw",
    "data.max_res": 250,  # 500 px halved; Imagenette's 224 px images are stored whole
    "data.compress_prob": 0.5, "data.jpeg_quality": 90,
}
# Each arm: (what it changes from the reference, its overrides). The reference is FFCV's published setup scaled:
# a large batch, raw-pixel betons, mixed precision.
ARMS = {
    "reference": ("FFCV's setup scaled: 250 px betons half raw, batch 256, bf16", {}),
    "jpeg-betons": ("the profiles' betons scaled: 160 px, JPEG only (t4, a10g, l4, l40s)",
                    {"data.name": "imagenette2-bench-jpg", "data.max_res": 160, "data.compress_prob": 1.0}),
    "batch-32": ("a smaller batch per step, LR scaled by the kit's rule (256 -> 32: FFCV's 4096 -> one GPU's 512)",
                 {"train.batch_size": 32}),
    "fp32": ("fp32 instead of bf16", {"train.precision": "fp32"}),
    "fp16": ("fp16 with loss scaling instead of bf16 (the t4 profile)", {"train.precision": "fp16"}),
}


def default_arms() -> list[str]:
    """Every arm this host trains at a usable speed: fp16 only with AMX-FP16 (elsewhere torch emulates it; one
    step took 42 s here against 0.4 s in bf16), and the bf16 reference only where bf16 is native."""
    import torch

    if not cpu_has_native_bf16():
        raise ConfigError("bench profiles trains its reference arm in bf16, emulated on this CPU (no AVX-512-BF16 "
                          "or AMX): run it on a CPU with native bf16, or name --arms without it")
    return [arm for arm in ARMS if arm != "fp16" or torch.cpu._is_amx_fp16_supported()]


def arm_config(arm: str, seed: int, data_root: str, output_dir: str, extra: tuple[str, ...] = ()) -> RunConfig:
    """The full recipe, scaled, with ``arm``'s change and ``seed``; ``extra``: ``--set`` items over all of it."""
    settings = {**SCALED_FULL, **ARMS[arm][1], "train.seed": seed, "data.root": data_root,
                "output_dir": output_dir, "name": f"{BENCH}-{arm}-s{seed}"}
    return load_config("full", [f"{key}={value}" for key, value in settings.items()] + list(extra))


def _recorded(results_dir: Path) -> set[tuple[str, int]]:
    if not Path(results_dir).is_dir():
        return set()
    return {(r[BENCH]["arm"], r[BENCH]["seed"]) for _, _, r in read_results(results_dir) if BENCH in r}


def run_arm(cfg: RunConfig, arm: str, seed: int, results_dir: Path) -> dict | None:
    """Train one (arm, seed) run (resuming it) and record it; None if a stop signal ended it first."""
    prepare(cfg)
    if not training_finished(cfg) and train(cfg, init_runtime(), resume="auto").stopped:
        return None
    row = {**run_record(cfg.run_dir), BENCH: {"arm": arm, "seed": seed, "changes": ARMS[arm][0]}}
    append_results(Path(results_dir) / "accuracy.jsonl", [row])
    return row


def print_summary(summary: list[dict]) -> None:
    table = Table(title="GPU profiles' differences, full recipe scaled to resnet18 on Imagenette: val top-1")
    for column in ("arm", "changes", "top-1 mean ± std", "n", "vs reference"):
        table.add_column(column, justify="left" if column in ("arm", "changes") else "right")
    for s in summary:
        spread = "" if s["std"] is None else f" ± {100 * s['std']:.2f}"
        delta = "" if s["delta"] is None else f"{100 * s['delta']:+.2f} pts" + (
            " (within the spread)" if s["within_spread"] else "")
        table.add_row(s["arm"], s["changes"], f"{100 * s['mean']:.2f}%{spread}", str(s["n"]), delta)
    results.print(table)


@click.command("profiles")
@click.option("--data", "data_root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Imagenette 2 (train/ and val/), e.g. imagenette2")
@click.option("--seeds", default="0,1,2", show_default=True, help="comma list: one run per arm each")
@click.option("--arms", default="", help=f"comma list of {', '.join(ARMS)}  [default: all this CPU runs at speed]")
@click.option("--output-dir", default="runs", show_default=True, help="where the runs' folders go")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="any config key over every arm (tests shrink the runs with it)")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True)
def profiles_command(data_root, seeds, arms, output_dir, overrides, results_dir):
    """Accuracy cost of each GPU profile difference (betons, batch, precision): ≥ 3 seeds per arm, mean ± std."""
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected a comma list of integers") from None
    chosen = [a.strip() for a in arms.split(",") if a.strip()] or default_arms()
    unknown = [a for a in chosen if a not in ARMS]
    if unknown:
        raise ConfigError(f"--arms: unknown arm {unknown[0]!r}; choose from {', '.join(ARMS)}")
    root = str(resolve_data_root(data_root))
    done = _recorded(results_dir)
    for seed in seed_list:  # seeds outermost: a bench stopped early still has every arm at the seeds it finished
        for arm in chosen:
            if (arm, seed) in done:
                continue
            console.print(f"bench profiles: {arm}, seed {seed}: {ARMS[arm][0]}")
            if run_arm(arm_config(arm, seed, root, output_dir, tuple(overrides)), arm, seed, results_dir) is None:
                return
    print_summary(arm_summary([r for r in profile_rows(results_dir) if r[BENCH]["arm"] in chosen], tuple(ARMS)))
