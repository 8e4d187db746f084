"""The ``prepare`` stage: a recipe's data root (train/ and val/) -> its two betons, unless they exist."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from imagenet_kit.config import ConfigError, RunConfig
from imagenet_kit.data.convert import check_imagefolder_root, convert, print_summary, read_classes, scan_imagefolder
from imagenet_kit.errors import KitError
from imagenet_kit.options import build_config, recipe_options
from imagenet_kit.progress import console


class BetonNotFound(KitError):
    """A stage that reads betons found none; the message names the file and the command that makes it."""


def require_betons(cfg: RunConfig, reason: str = "") -> None:
    """Refuse at once, before any model is built, when the run's betons are missing."""
    root = cfg.data.root or "ROOT"
    for beton in cfg.betons:
        if not beton.is_file():
            raise BetonNotFound(f"{beton} not found{reason}. Convert first: imagenet-kit prepare --recipe ... "
                                f"--data {root} (converts {root}/train and {root}/val), or imagenet-kit convert "
                                f"SRC {beton}")
    from imagenet_kit.data.loaders import beton_num_samples

    require_batch_fits(cfg, beton_num_samples(str(cfg.betons[0])), cfg.betons[0])


def require_batch_fits(cfg: RunConfig, images: int, source: Path) -> None:
    """Refuse, before any conversion or run folder, a batch that the training images cannot fill once."""
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's, before the process group exists
    for key, batch in (("train.batch_size", cfg.train.batch_size), ("lr_find.batch_size", cfg.lr_find.batch_size)):
        if batch * ranks > images:
            gpus = f" x {ranks} processes" if ranks > 1 else ""
            raise ConfigError(f"{key} {batch}{gpus} is more than the {images} training images of {source}: no "
                              f"step would get a full batch; lower it (-b {max(1, images // ranks)} at most)")


def prepare(cfg: RunConfig) -> None:
    train_beton, val_beton = cfg.betons
    if train_beton.is_file() and val_beton.is_file():
        _check_beton_source(cfg, train_beton)
        console.print(f"convert: skipped, {train_beton} and {val_beton} exist")
        return
    if not cfg.data.root:
        raise ConfigError(f"no data: give --data ROOT (an ImageFolder root with train/ and val/) or set data.root "
                          f"in the recipe; betons {train_beton} and {val_beton} do not exist")
    root = Path(cfg.data.root)
    check_imagefolder_root(root)
    if not train_beton.is_file():  # listing the files is quick; converting them first and failing after is not
        require_batch_fits(cfg, len(scan_imagefolder(root / "train").items), root / "train")
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


def _convert_split(cfg: RunConfig, src: Path, beton: Path, classes_from: Path | None) -> None:
    if beton.is_file():
        console.print(f"convert: skipped, {beton} exists")
        return
    classes = [c["wnid"] for c in read_classes(classes_from)] if classes_from else None
    report = convert(scan_imagefolder(src, classes), beton, cfg.data.max_res, cfg.data.jpeg_quality,
                     cfg.data.compress_prob, cfg.data.workers)
    print_summary(report)


@click.command("prepare")
@recipe_options
def prepare_command(**flags):
    """Convert the recipe's data root (train/ and val/) to betons, unless they exist."""
    prepare(build_config(**flags))
