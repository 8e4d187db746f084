"""The ``prepare`` stage: a recipe's data root (train/ and val/) -> its two betons, unless they exist."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

from imagenet_kit.config import RunConfig
from imagenet_kit.config.flags import build_config, recipe_options
from imagenet_kit.data.archives import find_splits
from imagenet_kit.data.convert import convert, print_summary, read_classes
from imagenet_kit.data.selection import choose_classes, take_subset
from imagenet_kit.data.sources import (
    ConvertError,
    check_imagefolder_root,
    hold_out,
    is_class_folder_root,
    scan_imagefolder,
)
from imagenet_kit.data.verify import verify_beton
from imagenet_kit.errors import ConfigError, KitError
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
        _check_beton_source(cfg, beton)  # train/lr-find/eval --data OTHER_ROOT must not read these silently
    require_page_cache_under_torchrun(cfg)
    from imagenet_kit.data.loaders import beton_num_samples

    require_batch_fits(cfg, beton_num_samples(str(cfg.betons[0])), cfg.betons[0])


def require_page_cache_under_torchrun(cfg: RunConfig) -> None:
    """Refuse ``data.in_memory: false`` with several processes: FFCV's distributed loader needs its RANDOM order,
    and without the page cache (``os_cache=False``) its page scheduler then keeps nearly every page of the beton
    alive, so each process allocates about the whole beton (MemoryError or the OOM killer, once per process)."""
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's, before the process group exists
    if ranks < 2 or cfg.data.in_memory:
        return
    size = cfg.betons[0].stat().st_size / 1e9 if cfg.betons[0].is_file() else None
    about = f" ({size:,.1f} GB for {cfg.betons[0].name})" if size is not None else ""
    raise ConfigError(f"data.in_memory false under torchrun ({ranks} processes): FFCV's distributed loader reads in "
                      f"random order, and without the page cache each process allocates about the whole beton"
                      f"{about}. Keep data.in_memory true with betons that fit the page cache (smaller ones, e.g. "
                      "--gpu t4's 320 px JPEG betons), train with one process (NPROC=1 reads an uncached beton in "
                      "FFCV's QUASI_RANDOM order), or take an instance with more RAM (imagenet-kit plan --recipe "
                      "RECIPE --instance NAME shows what fits)")


def require_batch_fits(cfg: RunConfig, images: int, source: Path) -> None:
    """Refuse, before any conversion or run folder, a batch that the training images cannot fill once."""
    ranks = int(os.environ.get("WORLD_SIZE", "1"))  # torchrun's, before the process group exists
    for key, batch in (("train.batch_size", cfg.train.batch_size), ("lr_find.batch_size", cfg.lr_find.batch_size)):
        if batch * ranks > images:
            gpus = f" x {ranks} processes" if ranks > 1 else ""
            raise ConfigError(f"{key} {batch}{gpus} is more than the {images} training images of {source}: no "
                              f"step would get a full batch; lower it (-b {max(1, images // ranks)} at most)")


def prepare(cfg: RunConfig) -> None:
    """Convert ``data.root`` to the run's two betons, unless they exist. The root is an ImageFolder root
    (train/ and val/), or holds ImageNet as downloaded (``archives.find_splits``): read in place."""
    train_beton, val_beton = cfg.betons
    if train_beton.is_file() and val_beton.is_file():
        _check_beton_source(cfg, train_beton)
        console.print(f"convert: skipped, {train_beton} and {val_beton} exist")
        return
    if not cfg.data.root:
        where = f"; {cfg.data.source}" if cfg.data.source else ""
        raise ConfigError(f"no data: give --data ROOT (an ImageFolder root with train/ and val/, or a folder with "
                          f"ImageNet's official tars or Kaggle's download){where}. Betons {train_beton} and "
                          f"{val_beton} do not exist yet")
    scan_train, scan_val = data_splits(Path(cfg.data.root), cfg.data.holdout_fraction, cfg.data.holdout_seed)
    subset = cfg.subset
    if not train_beton.is_file():
        source = scan_train()  # listing is quick; converting first and failing after is not
        if subset.classes:
            chosen = choose_classes(subset, source.classes, cfg.data.root)
            source = take_subset(source, chosen, subset.per_class, subset.seed)
        require_batch_fits(cfg, len(source.items), source.root)
        _convert(cfg, source, train_beton)
    if not val_beton.is_file():
        classes = [c["wnid"] for c in read_classes(train_beton)]
        # a subset's val: every image of its classes, read with no class list (the others are left out, not
        # listed as skipped)
        val = take_subset(scan_val(), classes, 0, subset.seed) if subset.classes else scan_val(classes)
        _convert(cfg, val, val_beton)
    else:
        console.print(f"convert: skipped, {val_beton} exists")


def data_splits(root: Path, holdout_fraction: float = 0.1, holdout_seed: int = 0):
    """The scanners of ``root``'s train and val splits: functions of ``classes`` returning a ``Source``."""
    found = find_splits(root) if root.is_dir() else None
    if found is not None:
        return found
    if is_class_folder_root(root):  # no split given: hold one out, the same files every time
        def split(classes=None):
            return hold_out(scan_imagefolder(root, classes), holdout_fraction, holdout_seed)
        return (lambda classes=None: split(classes)[0], lambda classes=None: split(classes)[1])
    check_imagefolder_root(root)
    return (lambda classes=None: scan_imagefolder(root / "train", classes),
            lambda classes=None: scan_imagefolder(root / "val", classes))


def _check_beton_source(cfg: RunConfig, beton: Path) -> None:
    """Betons are found by data.name; refuse ones converted from another root rather than train on them."""
    report = Path(f"{beton}.report.json")
    if not cfg.data.root or not report.is_file():
        return
    source = Path(json.loads(report.read_text())["source"]).resolve()
    root = Path(cfg.data.root).resolve()
    if root not in (source, *source.parents):
        raise ConfigError(f"{beton} was converted from {source}, which is not in {root}. Give this dataset its "
                          f"own name (--set data.name=...) or delete the old betons")


# The quick check after each conversion: every count and label, and a sample of records decoded and compared
# with their files (``imagenet-kit verify`` decodes them all).
QUICK_DECODE, QUICK_COMPARE = 64, 16


def _convert(cfg: RunConfig, source, beton: Path) -> None:
    report = convert(source, beton, cfg.data.max_res, cfg.data.jpeg_quality, cfg.data.compress_prob,
                     cfg.data.workers)
    print_summary(report)
    start = time.monotonic()
    verdict = verify_beton(beton, source, sample=QUICK_COMPARE, decode=QUICK_DECODE)
    if not verdict.ok:
        raise ConvertError(verdict.summary(beton) + f"; the beton may be damaged: delete {beton} and convert again")
    console.print(f"{verdict.summary(beton)} in {time.monotonic() - start:.1f} s (a sample decoded; "
                  f"imagenet-kit verify {beton} decodes every record)")


@click.command("prepare")
@recipe_options
def prepare_command(**flags):
    """Convert the recipe's data root (train/ and val/) to betons, unless they exist."""
    prepare(build_config(**flags))
