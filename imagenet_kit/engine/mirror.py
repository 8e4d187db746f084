"""Checkpoints that outlive the instance: ``train.mirror`` copies a run's checkpoints and records to a folder or
an object store through fsspec (``file:///mnt/efs/runs``, ``s3://bucket/runs`` with s3fs), and ``--resume auto``
on a fresh instance takes the newest complete checkpoint from there.

The mirror holds ``<url>/<run name>/`` laid out like the run folder. A checkpoint is first copied under a
temporary name, then renamed into place (S3: a server-side copy), and only then gets its record,
``checkpoints/<name>.json`` (bytes, sha256, epoch, step, global_step): a checkpoint without a record, or whose
bytes differ from it, is a copy that was cut off, and a resume passes it by for the previous one.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from imagenet_kit.engine.checkpoint import file_digest
from imagenet_kit.environment import write_bytes
from imagenet_kit.errors import ConfigError
from imagenet_kit.progress import console
from imagenet_kit.runs import BEST, CHECKPOINTS, LAST, LAST_PREVIOUS, RunFolder


class Mirror:
    """The mirror of one run folder at ``url`` (``train.mirror``). Copies run on a thread of their own, one at a
    time and in order, so training goes on while a checkpoint travels (seconds to minutes to S3, where FFCV's
    8xA100 epochs take 45-62 s); nothing waits for them but the run's end."""

    def __init__(self, url: str, run: RunFolder):
        import fsspec

        try:
            self.fs, base = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as err:
            raise ConfigError(f"train.mirror {url}: {err} (an s3:// mirror needs s3fs: pip install s3fs)") from None
        self.url, self.run = url, run
        self.root = f"{base.rstrip('/')}/{run.root.name}"
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mirror")
        self._pending: list[Future] = []
        for stale in run.checkpoints.glob(".*.mirror-*"):  # snapshots a killed run left behind
            stale.unlink(missing_ok=True)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def push(self, checkpoint: Path, state: dict) -> None:
        """Copy ``checkpoint`` (just written, holding ``state``) and the run's records in the background, from a hard
        link to it: the run may write a newer checkpoint over the name meanwhile, and the copy still reads these
        bytes. A failure is a warning, since training can go on and the next checkpoint tries again."""
        position = {key: state[key] for key in ("epoch", "step", "global_step")}
        snapshot = checkpoint.with_name(f".{checkpoint.name}.mirror-{state['global_step']}-{os.getpid()}")
        try:
            os.link(checkpoint, snapshot)
        except OSError:  # a filesystem without hard links: copy this one before training goes on
            self.wait()
            snapshot = checkpoint
        self._pending.append(self._copier.submit(self._push, snapshot, checkpoint.name, position))

    def wait(self) -> None:
        """Wait for every copy under way (the end of a run, or a stop: the newest checkpoint must be there)."""
        while self._pending:
            self._pending.pop(0).result()

    def _push(self, snapshot: Path, name: str, position: dict) -> None:
        try:
            self._push_checkpoint(snapshot, name, position)
            for record in self.run.records:
                if record.is_file():
                    self._pipe(record.read_bytes(), record.name)
        except Exception as err:  # any store error: network, credentials, a full disk
            console.print(f"[yellow]warning:[/] mirror: could not copy {name} to {self.url} "
                          f"({type(err).__name__}: {err}); training goes on and the next checkpoint tries again")
        finally:
            if snapshot.name != name:
                snapshot.unlink(missing_ok=True)

    def _push_checkpoint(self, snapshot: Path, checkpoint_name: str, position: dict) -> None:
        name = f"{CHECKPOINTS}/{checkpoint_name}"
        record = {"bytes": snapshot.stat().st_size, "sha256": file_digest(snapshot), **position}
        partial = self._path(f"{CHECKPOINTS}/.{checkpoint_name}.partial")
        self.fs.makedirs(self._path(CHECKPOINTS), exist_ok=True)
        self.fs.put_file(str(snapshot), partial)  # the slow part: a cut here leaves only the partial copy
        if checkpoint_name == LAST and self.fs.exists(self._path(name)):  # the previous one, as in the run folder
            self.fs.mv(self._path(name), self._path(f"{CHECKPOINTS}/{LAST_PREVIOUS}"))
            if self.fs.exists(self._path(name + ".json")):
                self.fs.mv(self._path(name + ".json"), self._path(f"{CHECKPOINTS}/{LAST_PREVIOUS}.json"))
        self.fs.mv(partial, self._path(name))
        self._pipe(json.dumps(record).encode(), name + ".json")  # last: the copy is complete

    def _pipe(self, data: bytes, name: str) -> None:
        tmp = self._path(f".{name.replace('/', '_')}.partial")
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, self._path(name))

    def complete_checkpoints(self) -> list[dict]:
        """The mirror's checkpoints that have a record, newest first (by training progress; last before best)."""
        found = []
        for record_path in self.fs.glob(self._path(f"{CHECKPOINTS}/*.pt.json")):
            record = json.loads(self.fs.cat_file(record_path))
            name = record_path.rsplit("/", 1)[-1][:-len(".json")]
            found.append({**record, "name": name})
        return sorted(found, key=lambda r: (r["global_step"], r["name"] != BEST), reverse=True)

    def fetch_newer(self, local_step: int) -> Path | None:
        """Download the newest complete checkpoint if it is further on than ``local_step`` (the run folder's
        newest, -1 for none), with the run's records and its best.pt; returns its local path."""
        records = self.complete_checkpoints()
        for record in records:
            if record["global_step"] <= local_step:
                return None
            path = self._fetch(record)
            if path is not None:
                self._fetch_best([r for r in records if r["name"] == BEST])
                for local in self.run.records:
                    if self.fs.exists(self._path(local.name)):
                        write_bytes(local, self.fs.cat_file(self._path(local.name)))
                console.print(f"mirror: fetched {self.url.rstrip('/')}/{self.run.root.name}/{CHECKPOINTS}/"
                              f"{record['name']} (epoch {record['epoch']}, step {record['step']})")
                return path
        return None

    def _fetch(self, record: dict) -> Path | None:
        """The checkpoint of ``record`` in the run folder, or None (warned) if its bytes are not the recorded ones."""
        name = record["name"]
        local = self.run.checkpoints / name
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{name}.fetch-{os.getpid()}")
        self.fs.get_file(self._path(f"{CHECKPOINTS}/{name}"), str(tmp))
        if tmp.stat().st_size != record["bytes"] or file_digest(tmp) != record["sha256"]:
            tmp.unlink()
            console.print(f"[yellow]warning:[/] mirror: skipping {CHECKPOINTS}/{name} of {self.url}: its bytes are "
                          "not those recorded for it (a copy cut off halfway); trying the previous one")
            return None
        os.replace(tmp, local)
        return local

    def _fetch_best(self, records: list[dict]) -> None:
        local = self.run.checkpoints / BEST
        if records and not (local.is_file() and file_digest(local) == records[0]["sha256"]):
            self._fetch(records[0])
