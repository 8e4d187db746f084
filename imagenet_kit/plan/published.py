"""Is the run a plan prices the one whose accuracy was published? If not, what differs, and what the kit measured
each difference to cost.

A recipe's ``reference.top1`` is what its publisher measured with their betons, images per step (and the LR for
it) and precision. A plan credits that figure to a run only when the run has all of them; any other run's accuracy is
"not measured", with the differences listed. Where ``imagenet-kit bench profiles`` has rows for a difference (one arm
per difference, several seeds, the full recipe scaled to resnet18 on Imagenette), its line cites the measured delta;
that is evidence about the direction and size of an effect at test scale, never an ImageNet figure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from imagenet_kit.config import RunConfig
from imagenet_kit.optim.optimizers import scaled_lr
from imagenet_kit.plan.catalog import GPUS
from imagenet_kit.plan.throughput import PlanError
from imagenet_kit.result_rows import arm_summary, profile_rows


@dataclass(frozen=True)
class PublishedRun:
    """The settings of a published run that decide whether a planned run is that run."""
    who: str  # how the recipes' reference.source names it
    max_res: int
    compress_prob: float
    jpeg_quality: int
    images_per_step: int  # the global batch: GPUs x batch per GPU
    lr: float  # the peak LR at images_per_step
    precision: str  # fp16 | bf16 | fp32
    source: str

    @property
    def betons(self) -> str:
        return f"{self.max_res}:{self.compress_prob:g}:{self.jpeg_quality}"

    @property
    def settings(self) -> str:
        return (f"{self.betons} betons, {self.images_per_step:,} images per step at LR {self.lr:g}, "
                f"{self.precision}")


# The one place the published runs' settings are written; a recipe's reference: holds the figure and its source.
PUBLISHED = {run.who: run for run in (
    PublishedRun("FFCV", 500, 0.5, 90, 8 * 512, 1.7, "fp16",
                 "libffcv/ffcv-imagenet at 4dd291a1: README.md, Training Details (ResNet-50: 50% JPEG, 500 px "
                 "side; ./write_imagenet.sh 500 0.50 90), rn50_configs/rn50_*_epochs.yaml (batch_size 512 on 8 "
                 "A100s, lr 1.7), train_imagenet.py (torch.cuda.amp autocast with GradScaler: fp16)"),
)}

# For each kind of difference: the bench profiles arm that measured it, and the sign that turns the arm's delta (the
# arm minus its bf16 reference arm) into the planned run's effect (a bf16 run differs from fp16 by minus fp16's).
EVIDENCE = {"betons": ("jpeg-betons", 1), "batch": ("batch-32", 1), "bf16": ("fp16", -1), "fp32": ("fp32", 1)}


def published_run(cfg: RunConfig) -> PublishedRun | None:
    """The published run behind the recipe's reference figure; None when it has none."""
    if not cfg.reference.top1:
        return None
    for who, run in PUBLISHED.items():
        if cfg.reference.source.startswith(who):
            return run
    raise PlanError(f"recipe {cfg.name}: its reference.source names no published run whose settings plan knows "
                    f"({', '.join(PUBLISHED)}): add them to imagenet_kit/plan/published.py")


def run_precision(cfg: RunConfig, gpu: str) -> str:
    """The precision the run trains in: "auto" is bf16 on GPUs that have it, else fp16 (runtime.resolve_precision)."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    return "bf16" if GPUS[gpu].bf16 else "fp16"


def differences(cfg: RunConfig, gpu: str, gpus: int, run: PublishedRun) -> list[tuple[str, str | None]]:
    """(what differs, its EVIDENCE key or None) for each setting where the planned run is not ``run``."""
    found: list[tuple[str, str | None]] = []
    betons = f"{cfg.data.max_res}:{cfg.data.compress_prob:g}:{cfg.data.jpeg_quality}"
    if betons != run.betons:
        found.append((f"betons {betons}, not {run.betons}", "betons"))
    per_step = cfg.train.batch_size * gpus
    lr = None if cfg.optim.lr == "auto" else scaled_lr(float(cfg.optim.lr), cfg.optim.lr_batch, per_step)
    lr_text = "LR from the range test" if lr is None else f"LR {lr:.3g} by the kit's linear rule"
    if per_step != run.images_per_step:
        found.append((f"{per_step:,} images per step ({lr_text}), not {run.images_per_step:,} (LR {run.lr:g})",
                      "batch" if per_step < run.images_per_step else None))
    elif lr is None or not math.isclose(lr, run.lr, rel_tol=1e-6):
        peak = "the range test's" if lr is None else f"{lr:.3g} (optim.lr by the kit's linear rule)"
        found.append((f"peak LR {peak}, not {run.lr:g}", None))
    precision = run_precision(cfg, gpu)
    if precision != run.precision:
        found.append((f"{precision}, not {run.precision}", precision if precision in EVIDENCE else None))
    return found


def measured_effects(results_dir: Path) -> dict[str, str]:
    """Per EVIDENCE key, the bench profiles measurement as one citation; keys without rows are left out."""
    summary = {s["arm"]: s for s in arm_summary(profile_rows(results_dir))}
    cited = {}
    for key, (arm, sign) in EVIDENCE.items():
        s = summary.get(arm)
        if s is None or s["delta"] is None:
            continue
        spread = f" ± {100 * s['spread']:.1f}" if s["spread"] is not None else " (one seed: no spread)"
        reference_n = summary["reference"]["n"]
        seeds = f"n={s['n']}" + (f", reference n={reference_n}" if reference_n != s["n"] else "")
        reversed_ = "; sign reversed: bf16 against fp16" if sign < 0 else ""
        points = round(100 * sign * s["delta"], 1) + 0.0  # + 0.0: a delta that rounds to zero is +0.0, not -0.0
        cited[key] = (f"on Imagenette at test scale: {points:+.1f}{spread} points ({seeds}), not ImageNet (bench "
                      f"profiles arm {arm}: {s['changes']}{reversed_})")
    return cited


def compare_to_published(cfg: RunConfig, gpu: str, gpus: int, results_dir: Path) -> dict:
    """Whether the planned run is the published one, its differences (each with its measured effect or None) and
    the accuracy a plan may state for it."""
    run = published_run(cfg)
    if run is None:
        return {"reference_top1": None, "reference_match": False,
                "differences": [f"recipe {cfg.name} has no published top-1"], "evidence": [None],
                "accuracy": "not measured", "published_run": None}
    found = differences(cfg, gpu, gpus, run)
    effects = measured_effects(results_dir) if found else {}
    return {"reference_top1": cfg.reference.top1, "reference_match": not found,
            "differences": [text for text, _ in found], "evidence": [effects.get(key) for _, key in found],
            "accuracy": "not measured" if found else f"{cfg.reference.top1:g}% ({run.who}'s)",
            "published_run": {"who": run.who, "settings": run.settings, "source": run.source,
                              "top1_source": cfg.reference.source}}


def difference_lines(differences: list[str], evidence: list[str | None]) -> list[str]:
    """Each difference, with the kit's measured effect of it where there is one."""
    return [text + (f" ({cited})" if cited else " (effect not measured by the kit)")
            for text, cited in zip(differences, evidence, strict=True)]


def accuracy_lines(plan: dict) -> list[str]:
    """What a plan may say about the accuracy of the run it prices (``compare_to_published``'s fields)."""
    run = plan["published_run"]
    if run is None:
        return [f"accuracy: not measured ({plan['differences'][0]})"]
    if plan["reference_match"]:
        return [f"accuracy: {plan['accuracy']} published top-1 for this setup ({run['settings']}), not measured by "
                f"the kit: {run['top1_source']}"]
    return [f"accuracy: not measured. {run['who']}'s published {plan['reference_top1']:g}% is for its own run "
            f"({run['settings']}; {run['source']}); this run differs:",
            *(f"  - {line}" for line in difference_lines(plan["differences"], plan["evidence"]))]
