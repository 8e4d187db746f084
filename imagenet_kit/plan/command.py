"""``imagenet-kit plan``: a recipe on a GPU setup (``--gpu``, ``--instance``, ``--host local``), or with ``--target``
every schedule reaching an accuracy on every instance. Always an estimate, every figure with its source."""
from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from imagenet_kit.config import load_config
from imagenet_kit.plan.catalog import GPUS, INSTANCE_SOURCE, INSTANCES, PRICE_SOURCE, ebs_gp3, instance_price_per_gpu
from imagenet_kit.plan.estimate import DEFAULT_EFFICIENCY, TRAIN_IMAGES, VAL_IMAGES, estimate_plan, resolve_host
from imagenet_kit.plan.host_fit import check_fit
from imagenet_kit.plan.published import accuracy_lines, difference_lines
from imagenet_kit.plan.targets import plan_targets
from imagenet_kit.plan.throughput import PlanError
from imagenet_kit.progress import results
from imagenet_kit.result_rows import RESULTS_DIR


@click.command("plan")
@click.option("--recipe", default=None, help="recipe name in imagenet_kit/recipes/ or a YAML path  [default: full]")
@click.option("--target", type=click.FloatRange(0, 100), default=None,
              help="top-1 %% to reach: every schedule whose published figure reaches it, on every instance")
@click.option("--family", default="", help="with --target: instance families, e.g. g5,g6 (default: all)")
@click.option("--gpu", type=click.Choice(list(GPUS)), default=None, help="GPU model (an --instance names its own)")
@click.option("--gpus", type=click.IntRange(min=1), default=None,
              help="GPUs in the run  [default: the instance's, else 1]")
@click.option("--instance", type=click.Choice(list(INSTANCES)), default=None,
              help="AWS instance: also check the data against its RAM, disk and CPUs, and price it")
@click.option("--host", type=click.Choice(["local"]), default=None, help="local: check this machine instead")
@click.option("--price-per-hour", type=click.FloatRange(min=0), default=None,
              help="USD per GPU-hour [default: AWS on-demand list price]; with --target, a spot price")
@click.option("--spot-discount", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="with --target: spot's discount off on-demand, e.g. 0.65")
@click.option("--images", type=click.IntRange(min=1), default=TRAIN_IMAGES, show_default=True,
              help="training images (ImageNet-1K train split by default)")
@click.option("--val-images", type=click.IntRange(min=0), default=VAL_IMAGES, show_default=True)
@click.option("--efficiency", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_EFFICIENCY,
              show_default=True, help="assumed multi-GPU scaling efficiency where no figure exists")
@click.option("--results-dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True, help="where `imagenet-kit bench ...` writes its JSON lines")
@click.option("--ebs-mib-s", type=click.FloatRange(125, 1000), default=125, show_default=True,
              help="throughput of the EBS gp3 volume the betons are read from (125 is its baseline, 1000 its most); "
                   "a preflight row of the instance replaces it")
@click.option("--include-unverified", is_flag=True,
              help="with --target: also mark cheapest and fastest among rows whose run differs from the published "
                   "one (their top-1 is not measured)")
@click.option("--json", "as_json", is_flag=True, help="print the plan as JSON")
def plan_command(recipe, target, family, gpu, gpus, instance, host, price_per_hour, spot_discount, images,
                 val_images, efficiency, results_dir, ebs_mib_s, include_unverified, as_json):
    """Estimate hours and cost of a recipe on GPUs, from measured or published throughput; with a host, check
    that its data fits and whether CPU decoding or the GPU bounds it. With --target, compare every schedule that
    reaches an accuracy on every instance."""
    if target is not None:
        families = tuple(f.strip() for f in family.split(",") if f.strip())
        result = plan_targets(target, families, gpus, spot_discount, price_per_hour, images=images,
                              val_images=val_images, efficiency=efficiency, results_dir=results_dir,
                              storage=ebs_gp3(ebs_mib_s), include_unverified=include_unverified)
        results.out(json.dumps(result, indent=2)) if as_json else print_targets(result)
        return
    if include_unverified:
        raise PlanError("--include-unverified goes with --target (it decides which rows are marked)")
    cfg = load_config(recipe or "full")
    gpu, gpus, chosen = resolve_host(gpu, gpus, instance, host, price_per_hour, cfg.data.beton_dir)
    fit = check_fit(cfg, chosen, gpus, images, val_images, results_dir, ebs_gp3(ebs_mib_s)) if chosen else None
    price_source = None
    if chosen and chosen.price_per_hour is not None and price_per_hour is None:
        price_per_hour = instance_price_per_gpu(chosen, gpus)
        price_source = f"{chosen.name} ${chosen.price_per_hour}/h for the whole instance, {PRICE_SOURCE}"
    plan = estimate_plan(cfg, gpu, gpus, price_per_hour, images, val_images, efficiency, results_dir,
                         fit["decode_img_per_s"] if fit else None, price_source, cold=fit)
    plan["host_fit"] = fit
    if as_json:
        results.out(json.dumps(plan, indent=2))
    else:
        print_plan(plan, images)


def _yes_no(value) -> str:
    return "?" if value is None else "yes" if value else "NO"


def print_targets(result: dict) -> None:
    spot = result["cost"] == "spot_usd"
    table = Table(title=f"Estimate: schedules whose published top-1 reaches {result['target_top1']:g}% (not the "
                        "kit's), and what each row's run is")
    for column in ("recipe", "top-1", "instance", "GPUs", "batch", "data", "hours", "on-demand $",
                   *(("spot $",) * spot),
                   "page cache", "first read", "disk", "throughput", ""):
        left = column in ("recipe", "top-1", "instance", "data", "throughput", "")
        table.add_column(column, justify="left" if left else "right", no_wrap=True)
    for r in result["rows"]:
        table.add_row(r["recipe"], r["accuracy"], r["instance"], str(r["gpus"]), str(r["batch_size"]),
                      r["data"], f"{r['hours']:.1f}",
                      f"{r['on_demand_usd']:,.2f}", *([f"{r['spot_usd']:,.2f}"] if spot else []),
                      _yes_no(r["fits_page_cache"]), _first_read(r), _yes_no(r["fits_disk"]), r["throughput"],
                      r["mark"],
                      style="bold" if r["mark"] else None)
    results.print(table)
    for line in (*_target_accuracy_lines(result),
                 f"prices: {PRICE_SOURCE}",
                 "each recipe runs with the GPU profile of the instance's GPU (recipes/profiles/): its batch per GPU, "
                 "precision and data settings (max side:JPEG share:quality)",
                 "throughput: measured = a bench train row; reference = a published figure; derived = another GPU's "
                 "published figure scaled by the datasheets (imagenet-kit plan --recipe R --instance I names it)",
                 "page cache / disk: whether the recipe's betons fit (? = no bench convert row for its data "
                 "settings); cheapest and fastest are marked among eligible rows that run as configured",
                 f"first read: the betons read in order into the page cache before epoch 0, from {result['storage']} "
                 "(counted in the hours); uncached: they do not fit it, and every epoch is priced at the disk's "
                 "random-read rate where that is slower than the GPU"):
        results.print(line, markup=False, soft_wrap=True)


def _target_accuracy_lines(result: dict) -> list[str]:
    """The rule, which published run the figures are for, and each distinct set of differences with its rows."""
    lines = [f"rule: {result['rule']}"]
    if result["cheapest"] is None:
        lines.append("no row runs the published setup, so none is marked cheapest or fastest")
    runs = {r["published_run"]["settings"]: r["published_run"] for r in result["rows"]}
    lines += [f"published top-1: {run['who']}'s runs of these schedules, each with {run['settings']} "
              f"({run['source']}; each recipe's reference.source names its figure)" for run in runs.values()]
    groups: dict[tuple, list[str]] = {}  # (differences, evidence) -> the instances whose rows have them
    for r in result["rows"]:
        where = groups.setdefault((tuple(r["differences"]), tuple(r["evidence"])), [])
        name = r["instance"] + (f" ({r['gpus']} GPUs)" if r["gpus"] > 1 else "")
        if not r["reference_match"] and name not in where:
            where.append(name)
    lines += [f"not measured on {', '.join(where)}: " + "; ".join(difference_lines(list(diff), list(evidence)))
              for (diff, evidence), where in groups.items() if where]
    return lines


def _first_read(row: dict) -> str:
    if row["first_read_min"] is not None:
        return f"{row['first_read_min']:,.0f} min"
    return "uncached" if row["disk_img_per_s"] is not None else "?"


def print_plan(plan: dict, images: int) -> None:
    fit, gpus = plan["host_fit"], plan["gpus"]
    on = f" on {fit['host']}" if fit and fit["host"] != "this machine" else ""
    table = Table(title=f"Estimate: recipe '{plan['recipe']}' ({plan['arch']}){on}, {gpus} x {plan['gpu_name']}")
    bound = plan["bottleneck"] is not None
    for column in ("epoch", "res (px)", "img/s", *(("bound",) if bound else ()), "minutes", "cost (USD)"):
        table.add_column(column, justify="right")
    if plan["first_read_hours"]:
        table.add_row("read", "", "", *(("disk",) if bound else ()), f"{60 * plan['first_read_hours']:.1f}",
                      f"{plan['first_read_cost_usd']:,.2f}")
    for e in plan["epochs"]:
        table.add_row(str(e["epoch"]), str(e["res"]), f"{e['img_per_s']:,.0f}", *((e["bound"],) if bound else ()),
                      f"{60 * e['hours']:.1f}", f"{e['cost_usd']:,.2f}")
    table.add_row("total", "", "", *(("",) if bound else ()), f"{60 * plan['total_hours']:.1f}",
                  f"{plan['total_cost_usd']:,.2f}", style="bold")
    results.print(table)
    throughput = plan["throughput"]
    lines = [(f"{plan['total_hours']:.2f} hours on {gpus} GPU(s) = {plan['gpu_hours']:.1f} GPU-hours at "
              f"${plan['price_per_gpu_hour']:.4g} per GPU-hour ({plan['price_source']})"),
             (f"{plan['images_per_epoch']:,} training images per epoch (--images {images:,}, whole batches of "
              f"{gpus} x {plan['batch_size']})"),
             f"throughput ({throughput['kind']}): {throughput['scaling']}",
             *plan["assumptions"]]
    if fit:
        host = "this machine" if fit["host"] == "this machine" else f"{fit['host']} ({INSTANCE_SOURCE})"
        lines += [f"host: {host}: {fit['vcpus']} vCPUs, {fit['ram_gib']:,.0f} GiB RAM, {fit['disk_gb']:,.0f} GB "
                  f"{fit['disk_what']}", *fit["lines"],
                  f"bottleneck: {plan['bottleneck'] or 'unknown (CPU decoding not measured); GPU-bound hours'}"]
        lines += [f"DOES NOT FIT as configured: {problem}" for problem in fit["problems"]]
    lines += accuracy_lines(plan)
    lines.append(f"Estimate — sources: {throughput['kind']}: {throughput['source']}; price: {plan['price_source']}")
    for line in lines:
        results.print(line, markup=False, soft_wrap=True)
