"""``imagenet-kit bench lr-sweep``: is ``lr: auto``'s pick a good one-cycle peak? Train the recipe at the pick and
at multiples of it, per seed, and record every run as an accuracy row (with its factor, seed and rule).

Per seed, one LR range test (the one ``lr: auto`` runs, in ``<output-dir>/<recipe>-lr-test-s<seed>``), then one
training run per factor at ``factor x pick`` and, with ``--compare``, one at each other rule's pick on the same
curve. Finished runs are not trained again and rows already recorded are not written twice, so an interrupted
sweep resumes where it stopped.
"""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import click

from imagenet_kit.bench.run import run_record
from imagenet_kit.config import RunConfig
from imagenet_kit.config.flags import build_config
from imagenet_kit.data.prepare import prepare
from imagenet_kit.engine.lr_find import SUGGESTERS, range_test, suggestions
from imagenet_kit.engine.train import DivergenceError, train
from imagenet_kit.errors import ConfigError
from imagenet_kit.pipeline import training_finished
from imagenet_kit.progress import console
from imagenet_kit.result_rows import RESULTS_DIR, append_results, read_results, utc_now
from imagenet_kit.runtime import Runtime, init_runtime

DEFAULT_FACTORS = "1/9,1/3,1,3,9"


def parse_factors(text: str) -> list[Fraction]:
    try:
        factors = [Fraction(item.strip()) for item in text.split(",") if item.strip()]
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"--factors {text!r}: expected a comma list of numbers or fractions, e.g. 1/3,1,3") from None
    if not factors or any(f <= 0 for f in factors):
        raise ConfigError(f"--factors {text!r}: every factor must be positive")
    return factors


def factor_label(factor: Fraction, sep: str = "/") -> str:
    """'x1/3', 'x3': how table rows show a factor; run names take ``sep="_"`` (a folder name has no slash)."""
    return f"x{factor.numerator}" if factor.denominator == 1 else f"x{factor.numerator}{sep}{factor.denominator}"


def range_test_picks(cfg: RunConfig, runtime: Runtime) -> dict[str, float]:
    """Every rule's pick from this seed's range test, run once (its lr_find.json is reused after that)."""
    if not cfg.run.lr_find_json.is_file():
        range_test(cfg, runtime)
    curve = json.loads(cfg.run.lr_find_json.read_text())
    return suggestions(curve["lrs"], curve["losses"])  # the curve is the test's; the rules are today's


def diverged_record(cfg: RunConfig, reason: str) -> dict:
    """An accuracy row for a run whose loss became non-finite: its settings and why, no accuracy."""
    env = json.loads(cfg.run.env.read_text())
    return {"kind": "accuracy", "date": utc_now(), "run": cfg.name, "data": cfg.data.name, "arch": cfg.model.arch,
            "epochs": cfg.train.epochs, "batch": cfg.train.batch_size, "lr": cfg.optim.lr,
            "lr_batch": cfg.optim.lr_batch, "optimizer": cfg.optim.optimizer, "schedule": cfg.optim.schedule,
            "diverged": reason, "top1": None, "top5": None, "device": env["device"], "world_size": env["world_size"],
            "torch_threads": env["torch_threads"], "precision": env["precision"], "git": env["git"],
            "command": env["command"]}


def _recorded(results: Path) -> set[tuple]:
    if not results.parent.is_dir():
        return set()
    return {(r["run"], r["sweep"]["id"]) for _, _, r in read_results(results.parent) if "sweep" in r}


def sweep(flags: dict, factors: list[Fraction], seeds: list[int], compare: list[str], results_dir: Path) -> list[dict]:
    """Train and record every (seed, factor) run and every compared rule's run; returns the rows written."""
    base = build_config(**flags)
    if base.optim.lr != "auto":
        raise ConfigError(f"recipe {flags['recipe']}: optim.lr is {base.optim.lr}, not auto; the sweep checks the "
                          "range test's pick (give --set optim.lr=auto)")
    runtime, rule, rows = init_runtime(), base.lr_find.suggestion, []
    results = Path(results_dir) / "accuracy.jsonl"
    sweep_id = f"{base.name}:{rule}:{','.join(map(factor_label, factors))}"
    prepare(base)
    for seed in seeds:
        test_cfg = build_config(**{**flags, "name": f"{base.name}-lr-test-s{seed}",
                                   "overrides": [*flags["overrides"], f"train.seed={seed}"]})
        picks = range_test_picks(test_cfg, runtime)
        runs = [(rule, f, picks[rule] * float(f)) for f in factors] + [(other, Fraction(1), picks[other])
                                                                        for other in compare if other != rule]
        for run_rule, factor, lr in runs:
            name = f"{base.name}-s{seed}-{run_rule}-{factor_label(factor, sep='_')}"
            global_batch = base.train.batch_size * runtime.world_size
            cfg = build_config(**{**flags, "name": name, "overrides": [
                *flags["overrides"], f"train.seed={seed}", f"optim.lr={lr:.6g}", f"optim.lr_batch={global_batch}"]})
            console.print(f"lr-sweep: {name}: peak LR {lr:.4g} ({factor_label(factor)} of {run_rule} "
                          f"{picks[run_rule]:.4g})")
            if (name, sweep_id) in _recorded(results):
                continue
            try:
                if not training_finished(cfg) and train(cfg, runtime, resume="auto").stopped:
                    return rows
                record = run_record(cfg.run_dir)
            except DivergenceError as err:  # too high an LR is a result of the sweep, not its end
                record = diverged_record(cfg, str(err))
            row = {**record, "sweep": {
                "id": sweep_id, "recipe": flags["recipe"], "seed": seed, "rule": run_rule, "factor": str(factor),
                "pick": picks[run_rule], "default_rule": rule, "lr_test": str(test_cfg.run.lr_find_json)}}
            append_results(results, [row])
            rows.append(row)
    return rows


@click.command("lr-sweep")
@click.option("--recipe", required=True, help="a recipe with optim.lr: auto (name or YAML path)")
@click.option("--data", "data_root", type=click.Path(), default=None, help="ImageFolder root (sets data.root)")
@click.option("--factors", default=DEFAULT_FACTORS, show_default=True, help="multiples of the pick to train at")
@click.option("--seeds", default="0", show_default=True, help="comma list: one range test and one run per factor each")
@click.option("--compare", default="", help=f"other rules to train at too, e.g. valley ({', '.join(SUGGESTERS)})")
@click.option("--output-dir", default=None, help="where the sweep's run folders go (default: runs)")
@click.option("-j", "--workers", type=int, default=None, help="data loader workers (0 = all cores)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="any config key (repeatable)")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR, show_default=True)
def lr_sweep_command(recipe, data_root, factors, seeds, compare, output_dir, workers, overrides, results_dir):
    """Train a recipe at lr: auto's pick and at multiples of it; one accuracy row per run."""
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {seeds!r}: expected a comma list of integers") from None
    unknown = [r for r in compare.split(",") if r.strip() and r.strip() not in SUGGESTERS]
    if unknown:
        raise ConfigError(f"--compare: unknown rule {unknown[0]!r}; choose from {', '.join(SUGGESTERS)}")
    flags = dict(recipe=recipe, data_root=data_root, name=None, output_dir=output_dir, lr=None, epochs=None,
                 batch_size=None, weight_decay=None, arch=None, precision=None, compile_=None, workers=workers,
                 overrides=list(overrides))
    rows = sweep(flags, parse_factors(factors), seed_list, [r.strip() for r in compare.split(",") if r.strip()],
                 results_dir)
    for row in rows:
        s = row["sweep"]
        result = "diverged" if row["top1"] is None else f"top-1 {100 * row['top1']:.2f}%"
        console.print(f"{row['run']}: {result} at LR {row['lr']} ({s['rule']} x{s['factor']}, seed {s['seed']})")
