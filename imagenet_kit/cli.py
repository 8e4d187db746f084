"""The ``imagenet-kit`` command line: one subcommand per stage, and ``run`` for a whole recipe."""
from __future__ import annotations

import csv
import importlib
import json
import sys
from pathlib import Path

import click
from rich.table import Table

from imagenet_kit.config import RECIPES_DIR, ConfigError, RunConfig, load_config
from imagenet_kit.data.convert import (DEFAULT_COMPRESS_PROB, DEFAULT_JPEG_QUALITY, DEFAULT_MAX_RES, ConvertError,
                                       check_imagefolder_root, convert, read_classes, scan_imagefolder,
                                       scan_labelled_flat)
from imagenet_kit.progress import console

KIT_ROOT = RECIPES_DIR.parent


class KitGroup(click.Group):
    """Imports heavy subcommands (Gradio, ONNX) only when they run, and turns the kit's expected errors
    into one red line and exit code 2, without a traceback."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy or {}

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        from imagenet_kit.checkpoint import CheckpointError
        from imagenet_kit.train import DivergenceError
        try:
            return super().invoke(ctx)
        except (ConfigError, ConvertError, CheckpointError, DivergenceError, FileNotFoundError) as err:
            console.print(f"[bold red]error:[/] {err}")
            sys.exit(2)


CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


@click.group(cls=KitGroup, context_settings=CONTEXT, lazy={
    "subset": "imagenet_kit.data.subset:subset_command",
    "export": "imagenet_kit.export:export_command",
    "demo": "imagenet_kit.app:demo_command",
    "space": "imagenet_kit.space:space_command",
    "plan": "imagenet_kit.plan:plan_command",
})
def cli():
    """From a folder of ImageNet JPEGs to a trained ResNet and a Gradio demo."""


@cli.group("bench", cls=KitGroup, context_settings=CONTEXT, lazy={
    "data": "imagenet_kit.bench_data:bench_data_command",
    "demo": "imagenet_kit.bench_demo:bench_demo_command",
    "run": "imagenet_kit.bench_run:bench_run_command",
    "train": "imagenet_kit.bench_train:bench_train_command",
    "report": "imagenet_kit.results_table:report_command",
})
def bench():
    """Benchmarks; each appends JSON lines with hardware and command to bench/results/."""


def _recipe_options(fn):
    """Options shared by every command that builds a run: recipe, then flags users know from
    torchvision's references, then generic ``--set section.key=value`` overrides."""
    options = [
        click.option("--recipe", default="sample", help="recipe name in recipes/ or a YAML path"),
        click.option("--data", "data_root", type=click.Path(), default=None,
                     help="ImageFolder root with train/ and val/ (sets data.root)"),
        click.option("--name", default=None, help="run name (folder under --output-dir)"),
        click.option("--output-dir", default=None, help="where run folders go (default: runs)"),
        click.option("--lr", default=None, help="peak LR at optim.lr_batch images per step, or 'auto'"),
        click.option("--epochs", type=int, default=None),
        click.option("-b", "--batch-size", type=int, default=None, help="per GPU / per process"),
        click.option("--wd", "--weight-decay", "weight_decay", type=float, default=None),
        click.option("--arch", default=None,
                     help="resnet18 | resnet34 | resnet50 | resnet101 | resnet50v2 | resnet50d | resnext50d"),
        click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default=None),
        click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model"),
        click.option("-j", "--workers", type=int, default=None, help="data loader workers (0 = all cores)"),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="any config key, e.g. --set train.min_res=128 (repeatable)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_config(recipe, data_root, name, output_dir, lr, epochs, batch_size, weight_decay, arch, precision,
                 compile_, workers, overrides) -> RunConfig:
    flags = {"data.root": data_root, "name": name, "output_dir": output_dir, "optim.lr": lr, "train.epochs": epochs,
             "train.batch_size": batch_size, "optim.weight_decay": weight_decay, "model.arch": arch,
             "train.precision": precision, "train.compile": compile_, "data.workers": workers}
    # Named flags go after --set so the specific beats the generic, both after the recipe.
    items = list(overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(recipe, items)
    if cfg.data.root:
        cfg.data.root = str(_resolve_data_root(cfg.data.root))
    return cfg


def _resolve_data_root(root: str) -> Path:
    """Relative roots are tried from the current folder, then from the kit (recipes name the sample so)."""
    path = Path(root).expanduser()
    if not path.is_absolute() and not path.exists() and (KIT_ROOT / path).exists():
        return KIT_ROOT / path
    return path


def _runtime():
    from imagenet_kit.runtime import init_runtime
    return init_runtime()


@cli.command("convert")
@click.argument("src", type=click.Path())
@click.argument("out", type=click.Path())
@click.option("--max-res", type=int, default=DEFAULT_MAX_RES, help="longest side stored (FFCV ImageNet: 500)")
@click.option("--jpeg-quality", type=int, default=DEFAULT_JPEG_QUALITY)
@click.option("--compress-prob", type=float, default=DEFAULT_COMPRESS_PROB,
              help="share of images stored as JPEG, the rest as raw pixels (FFCV ImageNet: 0.5)")
@click.option("-j", "--workers", type=int, default=0, help="processes (0 = all cores)")
@click.option("--labels", type=click.Path(exists=True, dir_okay=False), default=None,
              help="flat ILSVRC2012 val folder: the devkit's ILSVRC2012_validation_ground_truth.txt "
                   "or Kaggle's LOC_val_solution.csv")
@click.option("--classes-from", type=click.Path(exists=True, dir_okay=False), default=None,
              help="a train beton (or its .classes.json) whose class indices this split must share")
@click.option("--force", is_flag=True, help="overwrite OUT if it exists")
def convert_command(src, out, max_res, jpeg_quality, compress_prob, workers, labels, classes_from, force):
    """Convert an ImageFolder split (SRC/<class>/*) or a flat ILSVRC2012 val folder to an FFCV beton.

    Writes OUT, OUT.classes.json and OUT.report.json (every file: written, or skipped with its reason)."""
    classes = None
    if classes_from:
        table_path = classes_from if classes_from.endswith(".json") else f"{classes_from}.classes.json"
        classes = [c["wnid"] for c in json.loads(Path(table_path).read_text())]
    if labels:
        source = scan_labelled_flat(Path(src), _read_labels(Path(labels)), classes)
    else:
        source = scan_imagefolder(Path(src), classes)
    report = convert(source, Path(out), max_res, jpeg_quality, compress_prob, workers, force)
    _print_convert_summary(report)


def _read_labels(path: Path) -> dict[str, str]:
    from imagenet_kit.data.imagenet_meta import read_devkit_ground_truth, read_kaggle_val_solution
    if path.suffix == ".csv":
        return read_kaggle_val_solution(path)
    wnids = read_devkit_ground_truth(path)
    return {f"ILSVRC2012_val_{i + 1:08d}": wnid for i, wnid in enumerate(wnids)}


def _print_convert_summary(report: dict) -> None:
    c = report["counts"]
    for item in report["skipped"][:10]:
        console.print(f"[yellow]skipped[/] {item['path']}: {item['reason']}")
    if len(report["skipped"]) > 10:
        console.print(f"... and {len(report['skipped']) - 10} more in {report['out']}.report.json")
    for name in report["empty_classes"]:
        console.print(f"[yellow]empty class folder[/] {name}")
    click.echo(f"{report['out']}: seen {c['seen']}, written {c['written']}, skipped {c['skipped']}, "
               f"ignored {c['ignored']} system files, {c['classes']} classes")


@cli.command("lr-find")
@_recipe_options
def lr_find_command(**flags):
    """LR range test on the recipe's training data; writes lr_find.json and lr_find.png in the run folder."""
    import torch

    from imagenet_kit.data.loaders import default_workers
    from imagenet_kit.model import model_from_config
    from imagenet_kit.runtime import resolve_precision
    from imagenet_kit.train import beton_paths, lr_find_loader, run_lr_find

    cfg = build_config(**flags)
    runtime = _runtime()
    train_beton, _ = beton_paths(cfg)
    _require_betons(cfg)
    classes = read_classes(train_beton)
    model = model_from_config(cfg.model, len(classes))
    model = model.to(runtime.device, memory_format=torch.channels_last)
    amp_dtype, _ = resolve_precision(cfg.train.precision, runtime.device)
    loader = lr_find_loader(cfg, train_beton, runtime.device, default_workers(cfg.data.workers))
    result = run_lr_find(cfg, model, loader, runtime.device, amp_dtype)
    click.echo(f"suggested LR ({result['chosen']}): {result['lr']:.4g} -> {cfg.run_dir / 'lr_find.png'}")


@cli.command("train")
@_recipe_options
@click.option("--resume", default=None, help="'auto' (newest valid checkpoint of the run) or a checkpoint path")
def train_command(resume, **flags):
    """Train (one-cycle, mixed precision). Multi-GPU: torchrun --nproc_per_node=N -m imagenet_kit train ..."""
    from imagenet_kit.runtime import shutdown_runtime
    from imagenet_kit.train import train

    cfg = build_config(**flags)
    _require_betons(cfg)
    runtime = _runtime()
    try:
        result = train(cfg, runtime, resume)
    finally:
        shutdown_runtime(runtime)
    if runtime.is_main and not result.get("interrupted") and "top1" in result:
        click.echo(f"val top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
                   f"-> {cfg.run_dir}")


def _require_betons(cfg: RunConfig) -> None:
    from imagenet_kit.train import beton_paths
    for beton in beton_paths(cfg):
        if not beton.is_file():
            raise FileNotFoundError(f"{beton} not found. Convert first: imagenet-kit run --recipe ... --data ROOT "
                                    f"(converts ROOT/train and ROOT/val), or imagenet-kit convert SRC {beton}")


@cli.command("eval")
@click.option("--checkpoint", "checkpoint_path", required=True, type=click.Path(exists=True),
              help="a checkpoint, or a run folder (uses checkpoints/best.pt)")
@click.option("--data", "data_path", required=True, type=click.Path(exists=True),
              help="a val beton, or an ImageFolder split (converted to a temporary beton)")
@click.option("--res", type=int, default=None, help="evaluation resolution (default: the recipe's val_res)")
@click.option("--tta/--no-tta", default=None, help="average with the horizontally flipped image")
@click.option("-b", "--batch-size", type=int, default=128)
@click.option("--out", type=click.Path(), default=None, help="JSON result (default: <run>/eval.json)")
def eval_command(checkpoint_path, data_path, res, tta, batch_size, out):
    """Top-1, top-5, loss and per-class accuracy of a checkpoint; JSON + per-class CSV + a table."""
    result, out_path = run_eval(Path(checkpoint_path), Path(data_path), res, tta, batch_size, out)
    table = Table(title=f"evaluation of {checkpoint_path}")
    for col in ("images", "res", "flip TTA", "top-1", "top-5", "loss"):
        table.add_column(col, justify="right")
    table.add_row(str(result["count"]), str(result["res"]), str(result["flip_tta"]), f"{100 * result['top1']:.2f}%",
                  f"{100 * result['top5']:.2f}%", f"{result['loss']:.4f}")
    console.print(table)
    click.echo(f"val top-1 {100 * result['top1']:.2f}% -> {out_path}")


def run_eval(checkpoint_path: Path, data_path: Path, res, tta, batch_size, out) -> tuple[dict, Path]:
    import tempfile

    from imagenet_kit.checkpoint import load_checkpoint
    from imagenet_kit.evaluate import evaluate_checkpoint, per_class_rows
    from imagenet_kit.runtime import write_json

    run_dir = checkpoint_path if checkpoint_path.is_dir() else checkpoint_path.parent.parent
    if checkpoint_path.is_dir():
        checkpoint_path = checkpoint_path / "checkpoints" / "best.pt"
    state = load_checkpoint(checkpoint_path)
    runtime = _runtime()
    with tempfile.TemporaryDirectory() as tmp:
        beton = data_path
        if data_path.is_dir():  # an ImageFolder split: same decode path as training evaluation
            beton = Path(tmp) / "eval.beton"
            source = scan_imagefolder(data_path, [c["wnid"] for c in state["classes"]])
            convert(source, beton, max_res=512, compress_prob=0.0)
        result = evaluate_checkpoint(state, str(beton), runtime.device, res, tta, batch_size)
    out_path = Path(out) if out else run_dir / "eval.json"
    rows = per_class_rows(result, state["classes"])
    summary = {k: v for k, v in result.items() if not k.startswith("per_class")}
    summary.update({"checkpoint": str(checkpoint_path), "data": str(data_path), "per_class_csv":
                    str(out_path.with_suffix(".per_class.csv"))})
    write_json(out_path, summary)
    with open(out_path.with_suffix(".per_class.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return summary, out_path


@cli.command("prepare")
@_recipe_options
def prepare_command(**flags):
    """Convert the recipe's data root (train/ and val/) to betons, unless they exist."""
    prepare(build_config(**flags))


def prepare(cfg: RunConfig) -> None:
    from imagenet_kit.train import beton_paths
    train_beton, val_beton = beton_paths(cfg)
    if train_beton.is_file() and val_beton.is_file():
        _check_beton_source(cfg, train_beton)
        console.print(f"convert: skipped, {train_beton} and {val_beton} exist")
        return
    if not cfg.data.root:
        raise ConfigError(f"no data: give --data ROOT (an ImageFolder root with train/ and val/) or set data.root "
                          f"in the recipe; betons {train_beton} and {val_beton} do not exist")
    root = Path(cfg.data.root)
    check_imagefolder_root(root)
    _convert_split(cfg, root / "train", train_beton, None)
    _convert_split(cfg, root / "val", val_beton, train_beton)


def _check_beton_source(cfg: RunConfig, beton: Path) -> None:
    """Betons are found by data.name; refuse ones converted from another root rather than train on them."""
    report = Path(f"{beton}.report.json")
    if not cfg.data.root or not report.is_file():
        return
    source = Path(json.loads(report.read_text())["source"]).resolve()
    wanted = (Path(cfg.data.root) / "train").resolve()
    if source != wanted:
        raise ConfigError(f"{beton} was converted from {source}, not {wanted}. Give this dataset its own name "
                          f"(--set data.name=...) or delete the old betons")


@cli.command("run")
@_recipe_options
def run_command(**flags):
    """A recipe end to end: convert -> LR range test (lr: auto) -> train -> eval -> export.

    Stages whose outputs exist are skipped, so an interrupted run picks up where it stopped."""
    from imagenet_kit.checkpoint import load_checkpoint
    from imagenet_kit.runtime import shutdown_runtime
    from imagenet_kit.train import beton_paths, train

    cfg = build_config(**flags)
    runtime = _runtime()
    if runtime.is_main:
        prepare(cfg)
    if runtime.distributed:  # ranks wait for rank 0's conversion (`make full` converts before torchrun)
        import torch.distributed as dist
        dist.barrier()
    last = cfg.run_dir / "checkpoints" / "last.pt"
    try:
        if last.is_file() and load_checkpoint(last)["epoch"] >= cfg.train.epochs:
            console.print(f"train: skipped, {last} has finished all {cfg.train.epochs} epochs")
        elif train(cfg, runtime, resume="auto").get("interrupted"):
            return
    finally:
        shutdown_runtime(runtime)
    if not runtime.is_main:
        return
    best = cfg.run_dir / "checkpoints" / "best.pt"
    summary, out_path = run_eval(best, beton_paths(cfg)[1], None, None, cfg.train.val_batch_size, None)
    _export_stage(cfg.run_dir, best)
    click.echo(f"{cfg.name}: val top-1 {100 * summary['top1']:.2f}%, top-5 {100 * summary['top5']:.2f}% "
               f"({summary['count']} images, {best}) -> {out_path}")


def _convert_split(cfg: RunConfig, src: Path, beton: Path, classes_from: Path | None) -> None:
    if beton.is_file():
        console.print(f"convert: skipped, {beton} exists")
        return
    classes = [c["wnid"] for c in read_classes(classes_from)] if classes_from else None
    report = convert(scan_imagefolder(src, classes), beton, cfg.data.max_res, cfg.data.jpeg_quality,
                     cfg.data.compress_prob, cfg.data.workers)
    _print_convert_summary(report)


def _export_stage(run_dir: Path, checkpoint: Path) -> None:
    from imagenet_kit.export import export_model
    out = run_dir / "export"
    if (out / "model.json").is_file() and (out / "model.json").stat().st_mtime >= checkpoint.stat().st_mtime:
        console.print(f"export: skipped, {out} is newer than {checkpoint}")
        return
    export_model(checkpoint, out)
    click.echo(f"export: {out}")


def main():
    cli(prog_name="imagenet-kit")
