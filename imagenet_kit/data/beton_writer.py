"""FFCV's writer, run so that every way it can end is seen: a decoding failure, a process that dies, a full
disk, SIGTERM or Ctrl-C.

Each image is decoded once, in FFCV's (forked) writer processes (``_ImageDataset``). A file that cannot be read
there is logged with its reason and written as a 1-pixel stand-in, because the writer has already given it a slot
and a worker that raised would hang the writer; ``convert`` drops those slots afterwards. FFCV alone waits forever
for a writer process that died, and its work queue's feeder thread keeps the main process from exiting after any
error; ``_watched`` mends both and says why a process died (``WriterDied``).
"""
from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np

from imagenet_kit.errors import KitError
from imagenet_kit.images import UnreadableImage, load_rgb

STAND_IN = np.zeros((1, 1, 3), dtype=np.uint8)  # what an unreadable file's slot holds until it is dropped


class WriterDied(KitError):
    """A writer process ended before its work was done; ``no_space`` when it was the disk that was full."""

    def __init__(self, message: str, no_space: bool = False):
        super().__init__(message)
        self.no_space = no_space


class Interrupted(KitError):
    """SIGTERM or Ctrl-C while writing; the caller removes the temporary file and says what was lost."""


class _ImageDataset:
    """What FFCV's writer reads: (HxWx3 uint8 array, label) per index. Runs in the writer's (forked) processes;
    a file that cannot be read is appended to ``failures`` (one JSON line: index, reason) and stood in for."""

    def __init__(self, items: list[tuple[Path, int]], max_res: int, failures: Path):
        self.items, self.max_res, self.failures = items, max_res, failures

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        np.random.seed(i)  # the JPEG-or-raw draw that follows (``_image_field``) depends on the image alone
        try:
            return np.asarray(load_rgb(path, self.max_res)), label
        except Exception as err:  # noqa: BLE001 - any error here would kill the worker and hang FFCV's writer
            reason = str(err) if isinstance(err, UnreadableImage) else f"unexpected {type(err).__name__}: {err}"
            with open(self.failures, "a") as log:  # O_APPEND: one short line per write, whole from every process
                log.write(json.dumps({"index": int(i), "reason": reason}) + "\n")
            return STAND_IN, label


def _logging_worker(job, crashes):
    """FFCV's worker function, with the error that ends a process sent to ``crashes`` (a SimpleQueue: a pipe, not
    a file, since the disk may be full; written at once, before the process exits) in place of a traceback: the
    main process turns it into one line (``_death``)."""

    def worker(*args):
        # The main process's SIGTERM handler (inherited by fork) must not catch terminate(): a writer waiting for
        # a page that a dead writer never wrote would go back to waiting, forever.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:
            job(*args)
        except BaseException as err:  # noqa: BLE001 - whatever it is, the main process reports it
            crashes.put({"type": type(err).__name__, "errno": getattr(err, "errno", None), "message": str(err)})
            os._exit(1)

    return worker


def _death(codes: list[int], crashes) -> KitError:
    rows = []
    while not crashes.empty():
        rows.append(crashes.get())
    if any(row["type"] in ("KeyboardInterrupt", "Interrupted") for row in rows):  # Ctrl-C reached them first
        return Interrupted("Ctrl-C")
    if any(row["errno"] == errno.ENOSPC for row in rows):
        return WriterDied("no space left on the device", no_space=True)
    if rows:
        return WriterDied(f"a writer process died (exit code {codes[0]}): {rows[0]['type']}: {rows[0]['message']}")
    return WriterDied(f"a writer process died (exit code {codes[0]}; -9 is usually the kernel's out-of-memory "
                      "killer): convert with fewer workers (-j / data.workers)")


def _interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def _watched(advance):
    """FFCV's writer patched for the duration: its tqdm bar feeds ``advance``; its wait loop checks the processes
    and raises ``WriterDied``; its queues are let go on any error (their feeder threads would otherwise wait at
    exit for processes that are gone); SIGTERM raises ``Interrupted`` as Ctrl-C raises KeyboardInterrupt."""
    import ffcv.writer

    class KitBar:
        def __init__(self, total=None, **_):
            pass

        def update(self, n=1):
            advance(n)

        def close(self):
            pass

    started, queues, crashes = [], [], multiprocessing.SimpleQueue()

    class WatchedProcess(ffcv.writer.Process):
        def start(self):
            super().start()
            started.append(self)

    def watched_queue(*args, **kwargs):
        queues.append(ffcv.writer.Queue.__wrapped__(*args, **kwargs))
        return queues[-1]

    def watched_sleep(seconds):
        time.sleep(seconds)
        codes = [p.exitcode for p in started if p.exitcode not in (None, 0)]
        if codes:
            raise _death(codes, crashes)

    names = ("tqdm", "Process", "sleep", "Queue", "worker_job_indexed_dataset")
    originals = {name: getattr(ffcv.writer, name) for name in names}
    watched_queue.__wrapped__ = originals["Queue"]
    patched = {"tqdm": KitBar, "Process": WatchedProcess, "sleep": watched_sleep, "Queue": watched_queue,
               "worker_job_indexed_dataset": _logging_worker(originals["worker_job_indexed_dataset"], crashes)}
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    for name, value in patched.items():
        setattr(ffcv.writer, name, value)
    try:
        yield
    except BaseException:
        for queue in queues:
            queue.cancel_join_thread()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        for name, value in originals.items():
            setattr(ffcv.writer, name, value)
        for process in started:
            if process.is_alive():
                process.terminate()
        for process in started:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()


def _image_field(max_res: int, compress_prob: float, jpeg_quality: int):
    """FFCV's RGBImageField, its JPEG-or-raw choice made reproducible. FFCV stores an image as JPEG when
    ``np.random.rand() < compress_prob``, drawn from the global generator of whichever writer process got it, so
    which images are JPEG changed with the worker count and with whatever ran before in the process. Seeded by the
    image's index (``_ImageDataset``), and drawn again from the same state when FFCV retries the image on a fresh
    page, the choice depends on the image alone: the same records from the same source, every time."""
    from ffcv.fields import RGBImageField

    field = RGBImageField(write_mode="proportion", max_resolution=max_res, compress_probability=compress_prob,
                          jpeg_quality=jpeg_quality)
    encode = field.encode

    def seeded_encode(destination, image, malloc):
        state = np.random.get_state()
        try:
            return encode(destination, image, malloc)
        except MemoryError:  # the page is full: FFCV retries on the next one, which must draw the same
            np.random.set_state(state)
            raise

    field.encode = seeded_encode  # on the instance: a subclass would be a field type FFCV's reader does not know
    return field


def _chunk(count: int, workers: int) -> int:
    """Images per work item: FFCV's 100, fewer when that would leave writer processes idle (a few hundred
    images, as in a mini subset or a test, would otherwise go to one or two processes)."""
    return max(1, min(100, count // (4 * max(workers, 1))))


def write_beton(items: list, tmp: Path, max_res: int, jpeg_quality: int, compress_prob: float, workers: int,
                page_size: int, advance) -> dict[int, str]:
    """FFCV's writer over every item, decoding each once (``advance(n)`` as they are done); returns the unreadable
    ones (index -> reason), whose slots hold stand-ins."""
    from ffcv.fields import IntField
    from ffcv.writer import DatasetWriter

    failures = tmp.with_name(tmp.name + ".failures")
    try:
        writer = DatasetWriter(str(tmp), {
            "image": _image_field(max_res, compress_prob, jpeg_quality),
            "label": IntField(),
        }, num_workers=workers, page_size=page_size)
        try:
            with _watched(advance):
                writer.from_indexed_dataset(_ImageDataset(items, max_res, failures),
                                            chunksize=_chunk(len(items), workers))
        except BaseException:
            shared = getattr(writer, "metadata_sm", None)  # FFCV frees its shared memory on success only
            with contextlib.suppress(FileNotFoundError):
                if shared is not None:
                    shared.close()
                    shared.unlink()
            raise
        if not failures.is_file():
            return {}
        return {row["index"]: row["reason"] for row in map(json.loads, failures.read_text().splitlines())}
    finally:
        failures.unlink(missing_ok=True)
