"""Where the betons sit: whether they fit the page cache, how fast the disk under them reads, and the sequential
read before epoch 0 that puts them in the page cache.

With ``data.in_memory`` FFCV memory-maps a beton and reads it by page faults in the epoch's random order: on a
cold cache the first epoch then reads the whole dataset by random 4 KiB faults, at a fraction of the disk's
sequential rate (ffcv-imagenet#11: 45-minute epochs on uncached data; 358 GB at gp3's baseline 125 MiB/s is 48 min
even read in order). Reading each beton once, in order, before epoch 0 costs that sequential time once and lets
the first epoch run at the GPU's speed.
"""
from __future__ import annotations

import os
import random
import time
from pathlib import Path

from imagenet_kit.progress import ProgressLine, console

GIB = 2**30
CHUNK = 16 * 2**20  # sequential reads in 16 MiB pieces: the disk's streaming rate, few system calls
RANDOM_READ = 256 * 2**10  # a random read the size of an image record or two (FFCV's reads of one sample)
# What the page cache cannot have: the OS, and per training process its model, optimizer and FFCV's pinned batch
# buffers. An allowance, not a measurement (plan/host_fit.py keeps the same one for instances).
BASE_HEADROOM_GIB, HEADROOM_PER_PROCESS_GIB = 4, 4


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (MemTotal, MemAvailable, Cached, ...); empty where there is none."""
    info = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, value = line.split(":", 1)
            info[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    return info


def page_cache_room(processes: int = 1, total_bytes: int | None = None) -> int:
    """Bytes of page cache the betons may take on this machine: its RAM less the OS's and each process's share."""
    total = total_bytes if total_bytes is not None else meminfo().get("MemTotal", 0)
    return max(0, total - (BASE_HEADROOM_GIB + HEADROOM_PER_PROCESS_GIB * processes) * GIB)


def betons_fit(paths: list[Path], processes: int = 1, total_bytes: int | None = None) -> tuple[bool, int, int]:
    """(whether ``paths`` fit the page cache together, their bytes, the room there is)."""
    size = sum(Path(p).stat().st_size for p in paths)
    room = page_cache_room(processes, total_bytes)
    return size <= room, size, room


def _drop_from_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (no root needed for a file's own clean pages), so a read
    rate is the disk's and not the page cache's."""
    with open(path, "rb") as handle:
        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def read_rates(path: Path, seconds: float = 5.0, limit_bytes: int = 2 * GIB) -> dict:
    """The disk's sequential and random read rates under ``path``, in MB/s, each read for at most ``seconds`` and
    ``limit_bytes`` with the file dropped from the page cache first. Random: RANDOM_READ bytes at random offsets."""
    path = Path(path)
    size = path.stat().st_size
    _drop_from_cache(path)
    read, start = 0, time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while read < min(size, limit_bytes) and time.perf_counter() - start < seconds:
            got = handle.read(CHUNK)
            if not got:
                break
            read += len(got)
    sequential = read / (time.perf_counter() - start) / 1e6
    _drop_from_cache(path)
    picker, reads, start = random.Random(0), 0, time.perf_counter()
    with open(path, "rb", buffering=0) as handle:
        while reads * RANDOM_READ < min(size, limit_bytes) and time.perf_counter() - start < seconds:
            handle.seek(picker.randrange(0, max(1, size - RANDOM_READ)))
            handle.read(RANDOM_READ)
            reads += 1
    random_mb_s = reads * RANDOM_READ / (time.perf_counter() - start) / 1e6
    _drop_from_cache(path)
    return {"file": str(path), "file_mb": round(size / 1e6, 1), "sequential_mb_s": round(sequential, 1),
            "random_mb_s": round(random_mb_s, 1), "random_read_kib": RANDOM_READ // 1024,
            "sequential_read_mb": round(read / 1e6, 1), "random_reads": reads}


def preread(paths: list[Path], processes: int = 1, enabled: bool = True) -> float | None:
    """Read the betons once, in order, into the page cache when they fit it (a progress bar in MB/s); else, or when
    ``enabled`` is off, one line saying why not. Returns the seconds it took, None when skipped."""
    fits, size, room = betons_fit(paths, processes)
    if not enabled:
        return None
    if not fits:
        console.print(f"pre-read skipped: the betons ({size / 1e9:,.1f} GB) do not fit this machine's page cache "
                      f"(~{room / 1e9:,.1f} GB); the first epoch reads them from disk")
        return None
    start = time.perf_counter()
    read, shown = 0, 0  # bytes read, MiB shown: counted over all betons so the bar ends at its total
    with ProgressLine("pre-read betons into the page cache", -(-size // 2**20), unit="MiB") as bar:
        for path in paths:
            with open(path, "rb", buffering=0) as handle:
                while chunk := handle.read(CHUNK):
                    read += len(chunk)
                    bar.advance(-(-read // 2**20) - shown)
                    shown = -(-read // 2**20)
    seconds = time.perf_counter() - start
    rate = size / 1e6 / max(seconds, 1e-9)
    console.print(f"pre-read {size / 1e9:,.2f} GB of betons in {seconds:,.1f} s ({rate:,.0f} MB/s): the first epoch "
                  "reads them from RAM")
    return seconds
