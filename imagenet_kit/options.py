"""Flags shared by several commands, and the run config they build.

Every command that builds a run takes a recipe, then the flags users know from torchvision's references, then
generic ``--set section.key=value`` overrides: defaults < recipe YAML < GPU profile (``--gpu``) < ``--set`` < named
flags.
"""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from imagenet_kit.config import RunConfig, load_config
from imagenet_kit.progress import results
from imagenet_kit.recipe_files import PACKAGE_DIR
from imagenet_kit.runs import DEFAULT_OUTPUT_DIR

RECIPE_OPTIONS = [
    click.option("--recipe", default="sample", help="recipe name in imagenet_kit/recipes/ or a YAML path"),
    click.option("--data", "data_root", type=click.Path(), default=None,
                 help="ImageFolder root with train/ and val/ (sets data.root)"),
    click.option("--name", default=None, help="run name (folder under --output-dir)"),
    click.option("--output-dir", default=None, help=f"where run folders go (default: {DEFAULT_OUTPUT_DIR})"),
    click.option("--lr", default=None, help="peak LR at optim.lr_batch images per step, or 'auto'"),
    click.option("--epochs", type=int, default=None),
    click.option("-b", "--batch-size", type=int, default=None, help="per GPU / per process"),
    click.option("--wd", "--weight-decay", "weight_decay", type=float, default=None),
    click.option("--arch", default=None,
                 help="resnet18 | resnet34 | resnet50 | resnet101 | resnet50v2 | resnet50d | resnext50d"),
    click.option("--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16"]), default=None),
    click.option("--compile/--no-compile", "compile_", default=None, help="torch.compile the model"),
    click.option("-j", "--workers", type=int, default=None, help="data loader workers (0 = all cores)"),
    click.option("--gpu", default=None, help="GPU profile, recipes/profiles/<gpu>.yaml: t4 | a10g | l4 | l40s | "
                                             "a100 | h100 (batch, precision, data that fits its instances)"),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                 help="any config key, e.g. --set train.min_res=128 (repeatable)"),
    click.option("--dry-run", is_flag=True, help="print the resolved config (YAML) and exit"),
]


def recipe_options(fn):
    """Add RECIPE_OPTIONS to a command; it receives them as keyword arguments for ``build_config``."""
    for option in reversed(RECIPE_OPTIONS):
        fn = option(fn)
    return fn


def output_dir_option(fn):
    """``--output-dir`` for commands that find a run or an export in the run folders."""
    return click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUTPUT_DIR,
                        show_default=True, help="where run folders are (as train and run wrote them)")(fn)


def build_config(recipe, data_root, name, output_dir, lr, epochs, batch_size, weight_decay, arch, precision,
                 compile_, workers, overrides, gpu=None, dry_run=False) -> RunConfig:
    flags = {"data.root": data_root, "name": name, "output_dir": output_dir, "optim.lr": lr, "train.epochs": epochs,
             "train.batch_size": batch_size, "optim.weight_decay": weight_decay, "model.arch": arch,
             "train.precision": precision, "train.compile": compile_, "data.workers": workers, "train.profile": gpu}
    # Named flags go after --set so the specific beats the generic, both after the recipe.
    items = list(overrides) + [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = load_config(recipe, items)
    if cfg.data.root:
        cfg.data.root = str(resolve_data_root(cfg.data.root))
    if dry_run:  # before any folder, beton or process group exists
        results.out(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        click.get_current_context().exit(0)
    return cfg


def resolve_data_root(root: str) -> Path:
    """Relative roots are tried from the current folder, then from the package (the sample recipe names its
    embedded images so, and they are package data)."""
    path = Path(root).expanduser()
    if not path.is_absolute() and not path.exists() and (PACKAGE_DIR / path).exists():
        return PACKAGE_DIR / path
    return path
