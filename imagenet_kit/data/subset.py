"""Deterministic class/image subsets of an ImageFolder tree, for quick experiments on a slice of ImageNet.

The whole plan (which classes, which files) is worked out and validated before anything is written,
so a bad argument never leaves a half-built ``dst``. Files are hard-linked when ``src`` and ``dst``
share a filesystem: a 100-class subset then costs directory entries, not another 13 GB.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from imagenet_kit.data.archives import find_splits
from imagenet_kit.errors import KitError
from imagenet_kit.progress import progress_bar


class SubsetError(KitError):
    """A subset that cannot be made; the message names the argument or folder."""


# Files that file managers leave behind in class folders; never images.
SYSTEM_FILES = {".DS_Store", "Thumbs.db", "desktop.ini"}
SPLITS = ("train", "val")
# Key (and output folder, relative to ``dst``) used when ``src`` is itself a single split.
WHOLE = "."


def _hidden(name: str) -> bool:
    return name in SYSTEM_FILES or name.startswith(".")


def _class_dirs(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not _hidden(p.name))


def _images(class_dir: Path) -> list[Path]:
    """Every non-hidden file under ``class_dir`` (ImageFolder also searches nested folders), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found += [Path(dirpath) / f for f in filenames if not _hidden(f)]
    return sorted(found)


def _read_wnid_file(path: Path) -> list[str]:
    wnids: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        wnid = line.split("#", 1)[0].strip()
        if wnid and wnid not in wnids:
            wnids.append(wnid)
    if not wnids:
        raise ValueError(f"{path}: no class names in file")
    return wnids


def _choose_classes(classes: int | str | Path, available: list[str], seed: int, where: str) -> list[str]:
    if isinstance(classes, int):
        if not 0 < classes <= len(available):
            raise ValueError(f"--classes {classes}: {where} has {len(available)} classes")
        return sorted(random.Random(seed).sample(available, classes))
    path = Path(classes)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist")
    wnids = _read_wnid_file(path)
    known = set(available)
    unknown = [w for w in wnids if w not in known]
    if unknown:
        raise ValueError(f"{path}: unknown class {unknown[0]!r}: no such class folder in {where}"
                         + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    return sorted(wnids)


def _pick(files: list[Path], count: int | None, seed: int, split: str, wnid: str) -> list[Path]:
    if count is None or count >= len(files):
        return files
    # One generator per (split, class): a class's picks don't change when other classes are added.
    return sorted(random.Random(f"{seed}:{split}:{wnid}").sample(files, count))


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

    ``src`` is either a root holding ``train/`` and ``val/`` (both are subset with the same classes:
    ``per_class`` images per class from train, all of val unless ``val_per_class``), or a single
    ImageFolder split (``per_class`` applies to it). ``classes`` is a count N, chosen with
    ``random.Random(seed)`` from the sorted class folders, or a path to a text file of class names
    (one per line, ``#`` comments). ``per_class=None`` keeps every image. The same arguments always
    give the same files. Writes ``dst/subset.json`` and returns the same summary.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"source {src} is not a directory")
    for name, value in (("per_class", per_class), ("val_per_class", val_per_class)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be positive, got {value}")

    is_root = all((src / s).is_dir() for s in SPLITS)
    limits = {"train": per_class, "val": val_per_class} if is_root else {WHOLE: per_class}
    split_dirs = {s: src / s for s in limits}
    available = {s: _class_dirs(d) for s, d in split_dirs.items()}
    # Choose from classes every split has, so that train and val always describe the same problem.
    common = sorted(set.intersection(*(set(a) for a in available.values())))
    if not common:
        raise ValueError(f"{src} has no class folders" + (" common to train/ and val/" if is_root else ""))
    where = f"{src} ({' and '.join(f'{s}/' for s in SPLITS)})" if is_root else str(src)
    chosen = _choose_classes(classes, common, seed, where)

    plan = {s: {w: _pick(_images(split_dirs[s] / w), limits[s], seed, s, w) for w in chosen} for s in limits}
    _prepare_dst(src, dst, force)

    linked = copied = 0
    with progress_bar("subset", total=sum(len(f) for per in plan.values() for f in per.values()),
                      unit="file") as advance:
        for split, per_wnid in plan.items():
            for wnid, files in per_wnid.items():
                class_src = split_dirs[split] / wnid
                for f in files:
                    if _place(f, dst / split / wnid / f.relative_to(class_src)):
                        linked += 1
                    else:
                        copied += 1
                    advance()

    summary = {
        "src": str(src.resolve()),
        "dst": str(dst.resolve()),
        "arguments": {"classes": classes if isinstance(classes, int) else str(classes), "per_class": per_class,
                      "val_per_class": val_per_class, "seed": seed},
        "classes": chosen,
        "counts": {s: {w: len(f) for w, f in per.items()} for s, per in plan.items()},
        "images": {s: sum(len(f) for f in per.values()) for s, per in plan.items()},
        "linked": linked,
        "copied": copied,
    }
    (dst / "subset.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _refuse_archives(src: Path) -> None:
    """This command links files of an ImageFolder tree; a download read in place takes its subset at conversion."""
    if find_splits(src) is not None:
        raise SubsetError(f"{src} holds ImageNet as downloaded (the official tars, Kaggle's zip or folder, or Hugging "
                          "Face's shards), which this command does not extract. Convert a subset straight from it: "
                          f"make mini DATA={src} (the mini recipe's 100 classes x 600), or imagenet-kit prepare --data "
                          f"{src} --set subset.classes=N --set subset.per_class=M")


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
    """Make a deterministic ImageFolder subset of SRC (a train/+val/ root or one split) at DST."""
    _refuse_archives(src)
    try:
        summary = make_subset(src, dst, _classes_arg(classes), per_class, seed,
                              val_per_class=val_per_class, force=force)
    except (ValueError, OSError) as err:
        raise SubsetError(str(err)) from err
    images = ", ".join(f"{'all' if s == WHOLE else s} {n}" for s, n in summary["images"].items())
    # soft_wrap keeps the summary on one line for log grepping; escape: paths may contain "[".
    Console().print(f"[green]subset[/] {len(summary['classes'])} classes, {images} images -> {escape(str(dst))} "
                    f"({summary['linked']} linked, {summary['copied']} copied)", soft_wrap=True)
