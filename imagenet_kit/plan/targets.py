"""``plan --target``: every schedule whose published accuracy reaches a target, on every instance of the catalog.

Each row is one recipe with the GPU profile of the instance's GPU (``recipes/profiles/``: its batch, precision and
data settings) on one instance (all of its GPUs, or ``--gpus`` of them): hours and on-demand dollars from
``estimate``, spot dollars from a discount or a spot price, and whether the betons fit the instance's page cache and
disk (``host_fit``). A published figure reaches the target only for the run it was measured on (``published``): a
row that differs from it is listed with its differences, its accuracy not measured, and is not marked cheapest or
fastest unless asked (``include_unverified``). The cheapest and fastest eligible rows that run as configured are
marked.
"""
from __future__ import annotations

from pathlib import Path

from imagenet_kit.config import load_config
from imagenet_kit.config.recipes import RECIPES_DIR
from imagenet_kit.plan.catalog import INSTANCES, Host, Storage, ebs_gp3, instance_price_per_gpu
from imagenet_kit.plan.estimate import estimate_plan
from imagenet_kit.plan.host_fit import check_fit
from imagenet_kit.plan.throughput import PlanError


def schedules_reaching(target: float) -> list[str]:
    """The packaged recipes with a published top-1 at or above ``target``, fewest epochs first. A recipe that names
    a GPU profile (g4dn-t4: full with the t4 profile) is its base's schedule, which every instance gets with its
    own GPU's profile here: it is left out, not listed twice."""
    configs = [cfg for cfg in (load_config(path.stem) for path in sorted(RECIPES_DIR.glob("*.yaml")))
               if not cfg.train.profile]
    reaching = [cfg for cfg in configs if cfg.reference.top1 and cfg.reference.top1 >= target]
    if not reaching:
        best = max(cfg.reference.top1 for cfg in configs)
        raise PlanError(f"no recipe has a published top-1 of {target:g}% or more (the highest is {best:g}%)")
    return [cfg.name for cfg in sorted(reaching, key=lambda cfg: (cfg.train.epochs, cfg.name))]


def instances_in(families: tuple[str, ...], gpus: int | None) -> list[Host]:
    """The catalog's instances of ``families`` (g5, g6, ...; all when empty) with at least ``gpus`` GPUs."""
    known = sorted({name.split(".")[0] for name in INSTANCES})
    unknown = [f for f in families if f not in known]
    if unknown:
        raise PlanError(f"unknown instance family {', '.join(unknown)}; the catalog has {', '.join(known)}")
    return [h for h in INSTANCES.values() if (not families or h.name.split(".")[0] in families)
            and h.gpus >= (gpus or 1)]


def target_row(recipe: str, host: Host, gpus: int, spot: tuple[float | None, float | None], images: int,
               val_images: int, efficiency: float, results_dir: Path, storage: Storage | None = None) -> dict:
    """One recipe with its GPU's profile on one instance. ``spot``: (discount off on-demand, USD per GPU-hour)."""
    cfg = load_config(recipe, [f"train.profile={host.gpu}"])
    fit = check_fit(cfg, host, gpus, images, val_images, results_dir, storage)
    plan = estimate_plan(cfg, host.gpu, gpus, instance_price_per_gpu(host, gpus), images, val_images, efficiency,
                         results_dir, fit["decode_img_per_s"], cold=fit)
    discount, spot_price = spot
    spot_usd = (plan["total_cost_usd"] * (1 - discount) if discount is not None
                else plan["gpu_hours"] * spot_price if spot_price is not None else None)
    return {"recipe": cfg.name, "epochs": cfg.train.epochs, "reference_top1": cfg.reference.top1,
            "instance": host.name, "gpu": host.gpu, "gpus": gpus, "batch_size": cfg.train.batch_size,
            "data": fit["settings"], "hours": plan["total_hours"],
            "on_demand_usd": plan["total_cost_usd"], "spot_usd": spot_usd,
            "fits_page_cache": fit.get("fits_ram"), "fits_disk": fit.get("fits_disk"),
            "first_read_min": None if fit.get("first_read_s") is None else fit["first_read_s"] / 60,
            "disk_img_per_s": fit.get("disk_img_per_s"),
            "runs_as_configured": not fit["problems"], "throughput": plan["throughput"]["kind"],
            "bound": plan["bottleneck"], "reference_match": plan["reference_match"],
            "differences": plan["differences"], "evidence": plan["evidence"], "accuracy": plan["accuracy"],
            "published_run": plan["published_run"]}


def selection_rule(target: float, include_unverified: bool) -> str:
    """The one line saying which rows reach the target and which may be marked cheapest or fastest."""
    rule = (f"a row reaches {target:g}% on a published figure only when it runs the published setup (betons, images "
            "per step and the LR the linear rule gives, precision); a row that differs is listed with its "
            "differences and its top-1 is not measured")
    return rule + ("; --include-unverified: cheapest and fastest are marked among all rows, measured or not"
                   if include_unverified else "; only rows that run the published setup are marked cheapest or "
                   "fastest (--include-unverified marks among all rows)")


def plan_targets(target: float, families: tuple[str, ...] = (), gpus: int | None = None,
                 spot_discount: float | None = None, spot_price: float | None = None, *, images: int,
                 val_images: int, efficiency: float, results_dir: Path, storage: Storage | None = None,
                 include_unverified: bool = False) -> dict:
    """Every (schedule, instance) row, cheapest first, with the cheapest and fastest eligible rows marked: those
    that run the published setup (any row with ``include_unverified``), among them those that run as configured."""
    if spot_discount is not None and spot_price is not None:
        raise PlanError("give --spot-discount or --price-per-hour (a spot price), not both")
    rows = [target_row(recipe, host, gpus or host.gpus, (spot_discount, spot_price), images, val_images, efficiency,
                       results_dir, storage)
            for recipe in schedules_reaching(target) for host in instances_in(families, gpus)]
    cost = "spot_usd" if spot_discount is not None or spot_price is not None else "on_demand_usd"
    rows.sort(key=lambda r: (r[cost], r["hours"]))
    eligible = [r for r in rows if r["reference_match"] or include_unverified]
    runnable = [r for r in eligible if r["runs_as_configured"]] or eligible
    cheapest = runnable[0] if runnable else None
    fastest = min(runnable, key=lambda r: (r["hours"], r[cost])) if runnable else None
    for r in rows:
        r["mark"] = " ".join(word for word, row in (("cheapest", cheapest), ("fastest", fastest)) if r is row)
    return {"estimate": True, "target_top1": target, "cost": cost, "rows": rows,
            "storage": (storage or ebs_gp3()).name, "include_unverified": include_unverified,
            "rule": selection_rule(target, include_unverified),
            "cheapest": cheapest and {k: cheapest[k] for k in ("recipe", "instance", "gpus")},
            "fastest": fastest and {k: fastest[k] for k in ("recipe", "instance", "gpus")}}
