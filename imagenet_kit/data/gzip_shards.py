"""Hugging Face's ``imagenet-1k`` shards, read in place: ``data/train_images_{0..4}.tar.gz`` and
``data/val_images.tar.gz``, flat tars of ``<IMAGE_FILENAME>_<SYNSET_ID>.JPEG`` (train ``n01440764_10026_n01440764``,
val ``ILSVRC2012_val_00000001_n01751748``); the class is the name's last ``_`` field, as the dataset's loading script
takes it.

A gzip stream can only be read forwards from its start. The scan (one pass, which listing the members needs
anyway) keeps a snapshot of the decompressor every ``SNAPSHOT_EVERY`` bytes of tar; a process reading a member
resumes from the snapshot before it and decompresses forward, and keeps its place, so the next member of the
writer's chunk (FFCV hands each process consecutive indices) costs only its own bytes. The snapshots live in this
module and reach FFCV's writer processes by fork; a process started otherwise finds none and starts from the top.
"""
from __future__ import annotations

import bisect
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from imagenet_kit.data.sources import ConvertError, Source
from imagenet_kit.progress import progress_bar

TRAIN_SHARDS, VAL_SHARD = "train_images_*.tar.gz", "val_images.tar.gz"
SNAPSHOT_EVERY = 32 << 20  # bytes of tar between snapshots (each ~40 kB: zlib's state and its 32 kB window)
BLOCK = 1 << 16
WNID = re.compile(r"n\d{8}")
GZIP = 31  # zlib wbits: a gzip header and trailer


@dataclass
class _Snapshot:
    tar_pos: int  # bytes of tar produced before this point
    file_pos: int  # bytes of the .gz consumed
    inflate: object  # zlib decompressor, as it was there


_SNAPSHOTS: dict[str, list[_Snapshot]] = {}  # per shard, in order; filled by the scan


class _Inflater:
    """The tar inside a .gz as a forward-only stream, from a snapshot; ``snapshots`` (if given) collects new ones."""

    def __init__(self, path: str, start: _Snapshot | None = None, snapshots: list | None = None):
        self.snapshots, self.pid = snapshots, os.getpid()
        self.handle = open(path, "rb")  # noqa: SIM115 - lives as long as the cursor that holds it
        start = start or _Snapshot(0, 0, zlib.decompressobj(GZIP))
        self.handle.seek(start.file_pos)
        self.pos, self.file_pos, self.inflate = start.tar_pos, start.file_pos, start.inflate.copy()
        self.buffer, self.at = b"", 0  # decompressed, not yet read: self.buffer[self.at:]
        self.between_members = start.file_pos == 0  # no gzip member begun: the file may end here
        self.next_snapshot = start.tar_pos + SNAPSHOT_EVERY

    def _more(self) -> bool:
        """Decompress one more block into the buffer; False at the end of the file."""
        data = b""
        if self.inflate.eof:  # a gzip member ended; another may follow (``cat a.gz b.gz``)
            data, self.inflate, self.between_members = self.inflate.unused_data, zlib.decompressobj(GZIP), True
        if not data:
            ahead = self.pos + len(self.buffer) - self.at
            if self.snapshots is not None and ahead >= self.next_snapshot:
                self.snapshots.append(_Snapshot(ahead, self.file_pos, self.inflate.copy()))
                self.next_snapshot = ahead + SNAPSHOT_EVERY
            data = self.handle.read(BLOCK)
            self.file_pos += len(data)
            if not data:
                if not self.between_members:
                    raise EOFError("the .gz ends early (a truncated download?)")
                return False
        self.between_members = False
        self.buffer, self.at = self.buffer[self.at:] + self.inflate.decompress(data), 0
        return True

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buffer) - self.at < n) and self._more():
            pass
        end = len(self.buffer) if n < 0 else min(self.at + n, len(self.buffer))
        out, self.at = self.buffer[self.at:end], end
        self.pos += len(out)
        return out

    def skip_to(self, pos: int) -> None:
        while self.pos < pos:
            if not self.read(min(pos - self.pos, 1 << 20)):
                raise EOFError(f"the .gz ends before byte {pos:,} of its tar")


_CURSORS: dict[str, _Inflater] = {}  # per process and shard: where the last read ended


def read_member(path: str, offset: int, size: int) -> bytes:
    cursor = _CURSORS.get(path)
    if cursor is not None and cursor.pid != os.getpid():
        cursor = None  # inherited through fork: its file offset is shared with the parent, never use it here
    snapshots = _SNAPSHOTS.get(path, [])
    before = bisect.bisect_right([s.tar_pos for s in snapshots], offset)  # snapshots at or before the member
    start = snapshots[before - 1] if before else None
    if cursor is None or cursor.pos > offset or (start is not None and start.tar_pos > cursor.pos):
        if cursor is not None:
            cursor.handle.close()
        cursor = _CURSORS[path] = _Inflater(path, start)
    cursor.skip_to(offset)
    data = cursor.read(size)
    if len(data) < size:
        raise EOFError(f"the .gz ends inside this member ({len(data)} of {size} bytes)")
    return data


@dataclass(frozen=True)
class GzipMember:
    """An image inside a .tar.gz: ``size`` bytes at ``offset`` of the tar it decompresses to."""
    archive: str
    offset: int
    size: int
    name: str

    def read_bytes(self) -> bytes:
        return read_member(self.archive, self.offset, self.size)

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


def _scan_shard(path: Path, advance) -> tuple[list[GzipMember], list[tuple[object, str]]]:
    """Every file member of one shard in archive order, and what could not be listed, with the reason;
    ``advance(n)`` as each n MiB of the .gz is read (a shard of ImageNet's train split is about 30 GB)."""
    snapshots: list[_Snapshot] = []
    members, problems = [], []
    stream = _Inflater(str(path), snapshots=snapshots)
    read_mib = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|") as archive:
            while (info := archive.next()) is not None:
                archive.members.clear()  # tarfile would keep every header; the list below is all that is needed
                if info.isfile():
                    members.append(GzipMember(str(path), info.offset_data, info.size, info.name))
                if stream.file_pos >> 20 > read_mib:
                    advance((stream.file_pos >> 20) - read_mib)
                    read_mib = stream.file_pos >> 20
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        complete = stream.pos + len(stream.buffer) - stream.at
        while members and members[-1].offset + members[-1].size > complete:
            problems.append((members.pop(), f"cut off: the archive ends inside this member ({err})"))
        problems.append((path, f"unreadable after byte {complete:,} of its tar ({err}); the members before it "
                               "are kept"))
    finally:
        stream.handle.close()
    advance((path.stat().st_size >> 20) - read_mib)  # the end of the tar, and what follows it, is passed too
    _SNAPSHOTS[str(path)] = snapshots
    return members, problems


def wnid_of(member: GzipMember) -> str | None:
    stem = Path(member.name).name.rsplit(".", 1)[0]
    wnid = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    return wnid if WNID.fullmatch(wnid) else None


def scan_gzip_shards(paths: list[Path], classes: list[str] | None = None) -> Source:
    """One split from one or more shards. Classes: ``classes`` (val: the train split's), else the sorted WNIDs found."""
    paths = sorted(Path(p) for p in paths)
    if not paths:
        raise ConvertError("no .tar.gz shards given")
    members, skipped = [], []
    # gzip reads only from the start: listing a shard is one decompressing pass over it, shown as it goes
    with progress_bar(f"list {len(paths)} .tar.gz shard{'s' * (len(paths) > 1)}", sum(p.stat().st_size >> 20
                      for p in paths), unit="MiB") as advance:
        for path in paths:
            found, problems = _scan_shard(path, advance)
            members += found
            skipped += problems
    labelled = [(m, wnid_of(m)) for m in members]
    source = Source(root=paths[0].parent, classes=list(classes) if classes else
                    sorted({w for m, w in labelled if w and m.name.endswith(".JPEG")}))
    source.skipped = skipped
    index = {wnid: i for i, wnid in enumerate(source.classes)}
    for member, wnid in labelled:
        if not member.name.endswith(".JPEG"):
            source.skipped.append((member, "not an image: Hugging Face's imagenet-1k shards hold only .JPEG files"))
        elif wnid is None:
            source.skipped.append((member, "no class in the name: expected <IMAGE_FILENAME>_<wnid>.JPEG"))
        elif wnid not in index:
            source.skipped.append((member, f"class '{wnid}' is not among the training classes"))
        else:
            source.items.append((member, index[wnid]))
    return source


def find_shards(root: Path) -> tuple[list[Path], Path] | None:
    """The train shards and the val shard in ``root`` or ``root/data`` (as the dataset repository lays them out)."""
    for folder in (Path(root), Path(root) / "data"):
        train = sorted(folder.glob(TRAIN_SHARDS))
        if train and (folder / VAL_SHARD).is_file():
            return train, folder / VAL_SHARD
        if train:
            raise ConvertError(f"{folder}: {len(train)} train shards found, but no {VAL_SHARD} beside them")
    return None
