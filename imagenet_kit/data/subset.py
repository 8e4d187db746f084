"""Deterministic class/image subsets of a dataset root, written as an ImageFolder for quick experiments.

``src`` is any root ``prepare`` reads (an ImageFolder with train/ and val/, the official tars, Kaggle's zip or
folder, Hugging Face's shards) or a single ImageFolder split. The images are chosen as a recipe's ``subset`` chooses
them (``selection``), so the same seed gives the same files from every layout, named by the image's own name
(``n01440764_10026.JPEG``). The whole plan is worked out and validated before anything is written, so a bad
argument never leaves a half-built ``dst``. Files are hard-linked when ``src`` and ``dst`` share a filesystem (a
100-class subset then costs directory entries, not another 13 GB); members of archives are copied out, and only
those.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path, PurePosixPath

import click

from imagenet_kit.config import SubsetConfig
from imagenet_kit.data.archives import find_splits
from imagenet_kit.data.selection import choose_classes, image_key, take_subset
from imagenet_kit.data.sources import is_class_folder_root, scan_imagefolder
from imagenet_kit.errors import KitError
from imagenet_kit.progress import progress_bar, results


class SubsetError(KitError):
    """A subset that cannot be made; the message names the argument or folder."""


SPLITS = ("train", "val")
# Key (and output folder, relative to ``dst``) used when ``src`` is itself a single split.
WHOLE = "."
LAYOUTS = ("an ImageFolder root (train/<wnid>/, val/<wnid>/) or one split of it (<wnid>/), the official "
           "ILSVRC2012 tars with their val labels, Kaggle's zip or its extracted ILSVRC/ folder, or Hugging Face's "
           "imagenet-1k shards")


def _scanners(src: Path) -> dict:
    """split name -> a function of ``classes`` listing that split of ``src``."""
    found = find_splits(src)
    if found is not None:
        return dict(zip(SPLITS, found, strict=True))
    if all((src / s).is_dir() for s in SPLITS):
        return {s: (lambda classes=None, s=s: scan_imagefolder(src / s, classes)) for s in SPLITS}
    if is_class_folder_root(src):
        return {WHOLE: lambda classes=None: scan_imagefolder(src, classes)}
    raise ValueError(f"{src}: not a layout this command reads; it reads {LAYOUTS}")


def _chosen(classes: int | Path, available: list[str], seed: int, where: str) -> list[str]:
    if isinstance(classes, int) and not 0 < classes <= len(available):
        raise ValueError(f"--classes {classes}: {where} has {len(available)} classes")
    return choose_classes(SubsetConfig(classes=str(classes), seed=seed), available, where)


def _copy_member(member, dst_file: Path) -> None:
    dst_file.parent.mkdir(parents=True, exist_ok=True)
    dst_file.write_bytes(member.read_bytes())


def _place(src_file: Path, dst_file: Path) -> bool:
    """Hard-link, or copy when linking is impossible (other filesystem, no permission). True if linked."""
    dst_file.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src_file, dst_file)
        return True
    except OSError:
        shutil.copy2(src_file, dst_file)
        return False


def _prepare_dst(src: Path, dst: Path, force: bool) -> None:
    s, d = src.resolve(), dst.resolve()
    # Checked even with force: rmtree on an overlapping dst would delete the source images.
    if s == d or s in d.parents or d in s.parents:
        raise ValueError(f"destination {dst} overlaps source {src}")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        if not force:
            raise FileExistsError(f"destination {dst} exists and is not empty (use force to replace it)")
        if dst.is_dir():
            shutil.rmtree(dst)
        else:
            dst.unlink()
    dst.mkdir(parents=True, exist_ok=True)


def make_subset(src: str | Path, dst: str | Path, classes: int | str | Path, per_class: int | None = None,
                seed: int = 0, *, val_per_class: int | None = None, force: bool = False) -> dict:
    """Build an ImageFolder subset of ``src`` at ``dst``.

    ``src`` is any root ``prepare`` reads (see the module's docstring; train and val are subset with the same
    classes: ``per_class`` images per class from train, all of val unless ``val_per_class``), or a single
    ImageFolder split (``per_class`` applies to it). ``classes`` is a count N drawn by ``seed`` from the sorted
    WNIDs, or a path to a text file of WNIDs (one per line, ``#`` comments); ``per_class=None`` keeps every image.
    The same arguments give the same files from every layout. Writes ``dst/subset.json`` and returns the same
    summary.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source {src} is not a directory")
    for name, value in (("per_class", per_class), ("val_per_class", val_per_class)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")

    scanners = _scanners(src)
    first = next(iter(scanners))  # train, or the one split
    listed = scanners[first]()
    if not listed.classes:
        raise ValueError(f"{src} has no class folders")
    chosen = _chosen(classes, listed.classes, seed, str(src))
    plan = {first: take_subset(listed, chosen, per_class or 0, seed)}
    if "val" in scanners:
        plan["val"] = take_subset(scanners["val"](), chosen, val_per_class or 0, seed)
    _prepare_dst(src, dst, force)

    linked = copied = 0
    with progress_bar("subset", total=sum(len(taken.items) for taken in plan.values()), unit="file") as advance:
        for split, taken in plan.items():
            for item, label in taken.items:
                target = dst / split / chosen[label] / (image_key(item) + PurePosixPath(str(item)).suffix)
                if not isinstance(item, Path):  # a member of an archive: its bytes, copied out
                    _copy_member(item, target)
                    copied += 1
                elif _place(item, target):
                    linked += 1
                else:
                    copied += 1
                advance()
    counts = {split: {w: sum(1 for _, label in taken.items if label == i) for i, w in enumerate(chosen)}
              for split, taken in plan.items()}

    summary = {
        "src": str(src.resolve()),
        "dst": str(dst.resolve()),
        "arguments": {"classes": classes if isinstance(classes, int) else str(classes), "per_class": per_class,
                      "val_per_class": val_per_class, "seed": seed},
        "classes": chosen,
        "counts": counts,
        "images": {split: len(taken.items) for split, taken in plan.items()},
        "linked": linked,
        "copied": copied,
    }
    (dst / "subset.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _classes_arg(value: str) -> int | Path:
    # A bare number is a class count; anything else names a file of class names.
    return int(value) if value.isdigit() else Path(value)


@click.command("subset")
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--classes", "classes", required=True,
              help="Number of classes to pick at random, or a file of WNIDs (one per line, # comments).")
@click.option("--per-class", type=click.IntRange(min=1), default=None,
              help="Images per class (train split; the only split when SRC is one). Default: all.")
@click.option("--val-per-class", type=click.IntRange(min=1), default=None,
              help="Images per class in val/. Default: all.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for class and image choice.")
@click.option("--force", is_flag=True, help="Replace a non-empty DST.")
def subset_command(src: Path, dst: Path, classes: str, per_class: int | None, val_per_class: int | None,
                   seed: int, force: bool) -> None:
    """Make a deterministic ImageFolder subset of SRC at DST: any root prepare reads (an ImageFolder, the official
    tars, Kaggle's zip or folder, Hugging Face's shards) or one ImageFolder split."""
    try:
        summary = make_subset(src, dst, _classes_arg(classes), per_class, seed,
                              val_per_class=val_per_class, force=force)
    except (ValueError, OSError) as err:
        raise SubsetError(str(err)) from err
    images = ", ".join(f"{'all' if s == WHOLE else s} {n}" for s, n in summary["images"].items())
    results.out(f"subset {len(summary['classes'])} classes, {images} images -> {dst} "
                f"({summary['linked']} linked, {summary['copied']} copied)")
