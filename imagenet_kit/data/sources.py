"""Where a split's images come from, as a ``Source``: an ImageFolder split, or a flat val folder with labels.
Archives (the official tars, Kaggle's zip) are ``data/archives.py``. Every file found is either an item to
convert or set aside with its reason; nothing is dropped unreported.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from imagenet_kit.data.imagenet_meta import read_devkit_ground_truth, read_kaggle_val_solution
from imagenet_kit.errors import KitError

# Files that file managers leave behind: never images, never worth a line in the report.
SYSTEM_FILES = {".DS_Store", "Thumbs.db", "desktop.ini", "Icon\r"}


class ConvertError(KitError):
    """A problem with the source as a whole (missing folder, no classes, unknown label file)."""


@dataclass
class Source:
    """What a scan found: files to try with their class index, and files set aside with a reason."""
    root: Path
    classes: list[str]
    items: list[tuple[Path, int]] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    split: dict | None = None  # how a held-out split was drawn (``hold_out``), for the report
    subset: dict | None = None  # which classes and images a subset took (``selection.take_subset``)


def _is_system(path: Path) -> bool:
    return path.name in SYSTEM_FILES or path.name.startswith(".")


def _files_under(folder: Path) -> list[Path]:
    # followlinks: ImageNet mirrors are often farms of symlinks.
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames.sort()
        out += [Path(dirpath) / name for name in sorted(filenames)]
    return out


def scan_imagefolder(src: Path, classes: list[str] | None = None) -> Source:
    """``src/<class>/**/<file>``. Class indices follow sorted folder names (torchvision's ImageFolder
    order, which for ImageNet wnids is the standard 0..999 order) unless ``classes`` fixes them, as it
    must for a val split that lacks some training class."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder. Expected an ImageFolder split: {src}/<class>/<image files>")
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not _is_system(p))
    if not folders:
        raise ConvertError(f"{src}: no class folders inside. Expected {src}/<class>/<image files>")
    source = Source(root=src, classes=list(classes) if classes else [p.name for p in folders])
    index = {name: i for i, name in enumerate(source.classes)}
    for entry in sorted(p for p in src.iterdir() if p.is_file()):
        if _is_system(entry):
            source.ignored.append(entry)
        else:
            source.skipped.append((entry, "not inside a class folder"))
    for folder in folders:
        files = _files_under(folder)
        wanted = [f for f in files if not _is_system(f)]
        source.ignored += [f for f in files if _is_system(f)]
        if not wanted:
            source.empty_classes.append(folder.name)
        if folder.name not in index:
            source.skipped += [(f, f"class '{folder.name}' is not among the training classes") for f in wanted]
            continue
        source.items += [(f, index[folder.name]) for f in wanted]
    return source


def scan_labelled_flat(src: Path, labels: dict[str, str], classes: list[str] | None = None) -> Source:
    """A flat folder (ILSVRC2012 val layout) with a file-stem -> wnid map from the devkit or Kaggle."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"{src}: not a folder of validation images")
    files = _files_under(src)
    source = label_by_stem(src, [f for f in files if not _is_system(f)], lambda f: f.stem, labels, classes)
    source.ignored += [f for f in files if _is_system(f)]
    return source


def label_by_stem(root: Path, files: list, stem_of, labels: dict[str, str], classes: list[str] | None) -> Source:
    """Files labelled by their stem (``stem_of(file)``) through ``labels`` (stem -> wnid); the unlabelled and
    those of another class set aside with the reason. Flat folders and flat archives alike."""
    source = Source(root=root, classes=list(classes) if classes else sorted(set(labels.values())))
    index = {name: i for i, name in enumerate(source.classes)}
    for file in files:
        stem = stem_of(file)
        if stem not in labels:
            source.skipped.append((file, "no label for this file in the labels file"))
        elif labels[stem] not in index:
            source.skipped.append((file, f"class '{labels[stem]}' is not among the training classes"))
        else:
            source.items.append((file, index[labels[stem]]))
    return source


def hold_out(source: Source, fraction: float, seed: int) -> tuple[Source, Source]:
    """(train, val) from one ImageFolder scan: ``fraction`` of each class's files, drawn by ``seed``, go to val.
    At least one file of a class with two or more stays on each side. Skipped and ignored files stay listed on
    the train side, so each appears in one report."""
    rng = random.Random(seed)
    train = Source(source.root, source.classes, skipped=source.skipped, ignored=source.ignored,
                   empty_classes=source.empty_classes)
    val = Source(source.root, source.classes)
    for label in range(len(source.classes)):
        files = [item for item in source.items if item[1] == label]
        rng.shuffle(files)
        n_val = min(len(files) - 1, max(1, round(fraction * len(files)))) if len(files) > 1 else 0
        val.items += sorted(files[:n_val])
        train.items += sorted(files[n_val:])
    record = {"held_out_from": str(source.root), "fraction": fraction, "seed": seed,
              "train": len(train.items), "val": len(val.items)}
    train.split, val.split = {**record, "side": "train"}, {**record, "side": "val"}
    return train, val


def is_class_folder_root(root: Path) -> bool:
    """Class folders of images and no train/ or val/: a dataset without a split (some mini-ImageNet downloads)."""
    return (root.is_dir() and not (root / "train").exists() and not (root / "val").exists()
            and any(p.is_dir() and not _is_system(p) for p in root.iterdir()))


def check_imagefolder_root(root: Path) -> None:
    """A dataset root must hold train/ and val/, each with one folder per class."""
    layout = (f"expected {root}/train/<class>/<images> and {root}/val/<class>/<images> "
              "(ImageFolder layout, as in Kaggle's mini-ImageNet or an extracted ImageNet)")
    if not root.is_dir():
        raise ConvertError(f"data root {root} does not exist; {layout}")
    for split in ("train", "val"):
        folder = root / split
        if not folder.is_dir() or not any(p.is_dir() for p in folder.iterdir()):
            raise ConvertError(f"{folder} is missing or has no class folders; {layout}")


def read_val_labels(path: Path) -> dict[str, str]:
    """file stem -> wnid from the devkit's ground truth (ILSVRC2012_val_<8 digits> by line) or Kaggle's CSV."""
    if path.suffix == ".csv":
        return read_kaggle_val_solution(path)
    wnids = read_devkit_ground_truth(path)
    return {f"ILSVRC2012_val_{i + 1:08d}": wnid for i, wnid in enumerate(wnids)}
