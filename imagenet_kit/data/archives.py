"""ImageNet as people download it, read in place: the official tars, Kaggle's download, or an ImageFolder.

- ``ILSVRC2012_img_train.tar``: a tar of 1,000 per-class tars (``n01440764.tar`` ...) of JPEGs;
- ``ILSVRC2012_img_val.tar``: 50,000 flat JPEGs, labelled by the devkit's
  ``ILSVRC2012_validation_ground_truth.txt`` or Kaggle's ``LOC_val_solution.csv``;
- Kaggle's ``imagenet-object-localization-challenge`` (zip or extracted): ``ILSVRC/Data/CLS-LOC/train/<wnid>/``,
  ``ILSVRC/Data/CLS-LOC/val/`` and ``LOC_val_solution.csv``;
- Hugging Face's ``imagenet-1k`` shards (``train_images_*.tar.gz``, ``val_images.tar.gz``): ``gzip_shards``.

Nothing is extracted. An image in an uncompressed tar (nested ones too) is a ``TarMember``: its file, byte offset
and size, which any converter process reads with one seek. A zip member is read through the zip's index.
``find_splits`` looks at a data root and returns its two splits as ``Source``s, whatever the layout.
"""
from __future__ import annotations

import functools
import io
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from imagenet_kit.data.gzip_shards import find_shards, scan_gzip_shards
from imagenet_kit.data.imagenet_meta import read_kaggle_val_solution
from imagenet_kit.data.sources import (
    ConvertError,
    Source,
    label_by_stem,
    read_val_labels,
    scan_imagefolder,
    scan_labelled_flat,
)

TRAIN_TAR, VAL_TAR = "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"
GROUND_TRUTH, KAGGLE_CSV = "ILSVRC2012_validation_ground_truth.txt", "LOC_val_solution.csv"
KAGGLE_ZIP, KAGGLE_DIR = "imagenet-object-localization-challenge.zip", "ILSVRC/Data/CLS-LOC"


@dataclass(frozen=True)
class TarMember:
    """An image inside an uncompressed tar: ``size`` bytes at ``offset`` of ``archive``."""
    archive: str
    offset: int
    size: int
    name: str

    def read_bytes(self) -> bytes:
        with open(self.archive, "rb") as handle:
            handle.seek(self.offset)
            return handle.read(self.size)

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


@dataclass(frozen=True)
class ZipMember:
    archive: str
    name: str

    def read_bytes(self) -> bytes:
        return _open_zip(self.archive, os.getpid()).read(self.name)

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


@functools.lru_cache(maxsize=4)  # one open index per archive and process: ImageNet's has 1.3 million entries
def _open_zip(path: str, pid: int) -> zipfile.ZipFile:
    """``pid``: the process that opened it. A converter process forked after the scan inherits the scan's open
    file, and with it one file offset shared by every process: their reads then interleave, and members come
    out with bad CRCs. Keyed by pid, each process opens the zip once for itself."""
    return zipfile.ZipFile(path)


class _Window(io.RawIOBase):
    """``size`` bytes of ``handle`` from ``start``, as a seekable file: a tar inside a tar, opened in place."""

    def __init__(self, handle, start: int, size: int):
        super().__init__()
        self.handle, self.start, self.size, self.pos = handle, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: offset, io.SEEK_CUR: self.pos + offset, io.SEEK_END: self.size + offset}[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        self.handle.seek(self.start + self.pos)
        data = self.handle.read(n)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def scan_train_tar(path: Path, classes: list[str] | None = None) -> Source:
    """The official train archive: each ``<wnid>.tar`` member is a class; its files are the images. A member
    that is no tar, or an inner tar that cannot be read to its end, is listed with the reason."""
    path = Path(path)
    with open(path, "rb") as handle, _open_tar(path, fileobj=handle) as outer:
        inner_tars = sorted((m for m in outer.getmembers() if m.isfile()), key=lambda m: m.name)
        wnids = [Path(m.name).stem for m in inner_tars if m.name.endswith(".tar")]
        source = Source(root=path, classes=list(classes) if classes else wnids)
        index = {name: i for i, name in enumerate(source.classes)}
        for member in inner_tars:
            where = TarMember(str(path), member.offset_data, member.size, member.name)
            wnid = Path(member.name).stem
            if not member.name.endswith(".tar"):
                source.skipped.append((where, "not a class tar (<wnid>.tar) in the train archive"))
                continue
            try:
                images = _inner_members(path, handle, member)
            except (tarfile.TarError, OSError, EOFError) as err:
                source.skipped.append((where, f"unreadable class tar: {err}"))
                continue
            if not images:
                source.empty_classes.append(wnid)
            if wnid not in index:
                source.skipped += [(m, f"class '{wnid}' is not among the training classes") for m in images]
                continue
            source.items += [(m, index[wnid]) for m in images]
    return source


def _inner_members(path: Path, handle, member: tarfile.TarInfo) -> list[TarMember]:
    with tarfile.open(fileobj=io.BufferedReader(_Window(handle, member.offset_data, member.size)), mode="r:") as inner:
        return [TarMember(str(path), member.offset_data + m.offset_data, m.size, f"{member.name}/{m.name}")
                for m in sorted(inner.getmembers(), key=lambda m: m.name) if m.isfile()]


def _open_tar(path: Path, fileobj=None) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:", fileobj=fileobj)  # uncompressed only: members are read by offset
    except tarfile.ReadError as err:
        raise ConvertError(f"{path}: not an uncompressed tar ({err}); the official ILSVRC2012 archives are plain "
                           "tars; a .tar.gz is read as a Hugging Face imagenet-1k shard when named *.tar.gz") from None


def scan_val_tar(path: Path, labels: dict[str, str], classes: list[str] | None = None) -> Source:
    """The official flat val archive; ``labels``: file stem -> wnid (``sources.read_val_labels``)."""
    path = Path(path)
    with _open_tar(path) as archive:
        members = [TarMember(str(path), m.offset_data, m.size, m.name)
                   for m in sorted(archive.getmembers(), key=lambda m: m.name) if m.isfile()]
    return label_by_stem(path, members, _member_stem, labels, classes)


def _member_stem(member) -> str:
    return Path(member.name).stem


def scan_kaggle_zip(path: Path, split: str, classes: list[str] | None = None) -> Source:
    """Kaggle's zip, read through its index: ``ILSVRC/Data/CLS-LOC/<split>/``, val labelled by its CSV."""
    archive = _open_zip(str(path), os.getpid())
    prefix = f"{KAGGLE_DIR}/{split}/"
    names = sorted(n for n in archive.namelist() if n.startswith(prefix) and not n.endswith("/"))
    members = [ZipMember(str(path), n) for n in names]
    if split == "val":
        csv_name = next((n for n in archive.namelist() if n.endswith(KAGGLE_CSV)), None)
        if csv_name is None:
            raise ConvertError(f"{path}: no {KAGGLE_CSV} inside, so the val images have no labels")
        with io.TextIOWrapper(archive.open(csv_name), encoding="utf-8", newline="") as handle:
            labels = read_kaggle_val_solution(f"{path}:{csv_name}", handle)
        return label_by_stem(Path(path), members, _member_stem, labels, classes)
    folders = sorted({n[len(prefix):].split("/")[0] for n in names if "/" in n[len(prefix):]})
    source = Source(root=Path(path), classes=list(classes) if classes else folders)
    index = {name: i for i, name in enumerate(source.classes)}
    for member in members:
        parts = member.name[len(prefix):].split("/")
        if len(parts) < 2:
            source.skipped.append((member, "not inside a class folder"))
        elif parts[0] not in index:
            source.skipped.append((member, f"class '{parts[0]}' is not among the training classes"))
        else:
            source.items.append((member, index[parts[0]]))
    return source


def find_splits(root: Path) -> tuple[object, object] | None:
    """How to scan ``root``'s train and val splits: two functions of ``classes`` returning ``Source``s, or None
    when ``root`` is none of the known archive layouts (an ImageFolder root is handled by the caller)."""
    root = Path(root)
    shards = find_shards(root)
    if shards is not None:
        train_shards, val_shard = shards
        return (lambda classes=None: scan_gzip_shards(train_shards, classes),
                lambda classes=None: scan_gzip_shards([val_shard], classes))
    if (root / TRAIN_TAR).is_file() and (root / VAL_TAR).is_file():
        truth = next((root / name for name in (GROUND_TRUTH, KAGGLE_CSV) if (root / name).is_file()), None)
        if truth is None:
            raise ConvertError(f"{root}: {TRAIN_TAR} and {VAL_TAR} found, but no labels for val: put the devkit's "
                               f"{GROUND_TRUTH} or Kaggle's {KAGGLE_CSV} next to them")
        return (lambda classes=None: scan_train_tar(root / TRAIN_TAR, classes),
                lambda classes=None: scan_val_tar(root / VAL_TAR, read_val_labels(truth), classes))
    if (root / KAGGLE_ZIP).is_file():
        zipped = root / KAGGLE_ZIP
        return (lambda classes=None: scan_kaggle_zip(zipped, "train", classes),
                lambda classes=None: scan_kaggle_zip(zipped, "val", classes))
    if (root / KAGGLE_DIR / "train").is_dir():
        csv = next(iter(sorted(root.glob(f"**/{KAGGLE_CSV}"))), None)
        if csv is None:
            raise ConvertError(f"{root}: Kaggle's {KAGGLE_DIR} found, but no {KAGGLE_CSV} to label val")
        return (lambda classes=None: scan_imagefolder(root / KAGGLE_DIR / "train", classes),
                lambda classes=None: scan_labelled_flat(root / KAGGLE_DIR / "val", read_kaggle_val_solution(csv),
                                                        classes))
    return None
