"""One resume decision for the whole job, whatever disks its nodes have: ``resume_state``; and ``say_layout``.

Under torchrun each node may have a disk of its own or share one with the others, and the node that becomes
rank 0 (the one that writes the run folder) can change from one start to the next, so a run's checkpoints may
be on any node. Each node's first rank reports the newest checkpoint it can read (rank 0 also looks in
``train.mirror``); every rank takes the same one, the furthest on; a rank whose disk holds those same bytes
(sha256) reads them, and the rank that holds them sends them to the others over the process group. Rank 0 then
also gets the run's records and best.pt, so that its run folder goes on from there.
"""
from __future__ import annotations

import io
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from imagenet_kit.engine.checkpoint import CheckpointError, file_digest, find_resume_checkpoint, load_checkpoint
from imagenet_kit.engine.mirror import Mirror
from imagenet_kit.environment import write_bytes
from imagenet_kit.progress import console
from imagenet_kit.runs import BEST, CHECKPOINTS, LAST, RunFolder
from imagenet_kit.runtime import Runtime, on_every_rank


@dataclass(frozen=True)
class Held:
    """A checkpoint that one rank can read: where, the digest of its bytes, and how far on it is."""
    rank: int
    node: int
    path: str
    digest: str
    epoch: int
    step: int
    global_step: int


def resume_state(run: RunFolder, runtime: Runtime, resume: str | None,
                 mirror: Mirror | None = None) -> tuple[str | None, dict | None]:
    """(where the checkpoint resumed from is, its state) on every rank, the same one; (None, None) for a fresh
    run. ``resume``: None, "auto" (the newest of the run, on any node or the mirror) or a checkpoint's path."""
    if not resume:
        return None, None
    found = on_every_rank(lambda: _held_here(run, runtime, resume, mirror), runtime)
    held = _gather(found[0] if found else None, runtime)
    if not held:
        if resume != "auto":
            raise CheckpointError(f"{resume}: no such checkpoint on any node; give a run's {CHECKPOINTS}/{LAST}, "
                                  "or --resume auto")
        return None, None
    choice = max(held, key=lambda h: (h.global_step, -h.rank))
    state = found[1] if found and found[0].digest == choice.digest else _read_same(choice)
    state = _send_where_missing(choice, state, run, runtime)
    where = choice.path if runtime.nodes == 1 else f"{choice.path} on node {choice.node}"
    if runtime.is_main:
        console.print(f"resuming from {where} (epoch {state['epoch']}, step {state['step']})")
    return choice.path, state


def _held_here(run: RunFolder, runtime: Runtime, resume: str, mirror: Mirror | None) -> tuple[Held, dict] | None:
    """This node's newest readable checkpoint (asked of each node's first rank only), or None."""
    if runtime.local_rank != 0:
        return None
    if resume == "auto":
        found = find_resume_checkpoint(run.root)
        if mirror is not None:
            fetched = mirror.fetch_newer(found[1]["global_step"] if found else -1)
            found = (fetched, load_checkpoint(fetched)) if fetched else found
    else:
        found = (Path(resume), load_checkpoint(Path(resume))) if Path(resume).is_file() else None
    if found is None:
        return None
    path, state = found
    return Held(runtime.rank, runtime.node, str(path), file_digest(path), state["epoch"], state["step"],
                state["global_step"]), state


def _gather(mine: Held | None, runtime: Runtime) -> list[Held]:
    if not runtime.distributed:
        return [mine] if mine else []
    everyone: list = [None] * runtime.world_size
    dist.all_gather_object(everyone, mine)
    return [h for h in everyone if h is not None]


def _read_same(choice: Held) -> dict | None:
    """The chosen checkpoint from this rank's disk, if the file there has the same bytes (a shared folder)."""
    path = Path(choice.path)
    return load_checkpoint(path) if path.is_file() and file_digest(path) == choice.digest else None


def _send_where_missing(choice: Held, state: dict | None, run: RunFolder, runtime: Runtime) -> dict:
    """The rank that holds the chosen checkpoint sends it, with its run's records and best.pt, to every rank that
    could not read it (a node with a disk of its own): one broadcast, only when some rank needs it."""
    if not runtime.distributed:
        return state
    needs: list = [None] * runtime.world_size
    dist.all_gather_object(needs, state is None)
    if not any(needs):
        return state
    payload = [_payload(choice, run) if runtime.rank == choice.rank else None]
    dist.broadcast_object_list(payload, src=choice.rank)
    if state is None:
        state = torch.load(io.BytesIO(payload[0]["checkpoint"]), map_location="cpu", weights_only=False)
        if runtime.local_rank == 0:
            console.print(f"node {runtime.node}: {choice.path} is not on this node's disk; received it from node "
                          f"{choice.node}")
        if runtime.is_main:  # the run folder's node: it goes on from here
            _write_run_files(run, payload[0])
    return state


def _payload(choice: Held, run: RunFolder) -> dict:
    files = {f"{CHECKPOINTS}/{BEST}": run.best, **{record.name: record for record in run.records}}
    return {"checkpoint": Path(choice.path).read_bytes(),
            "files": {name: path.read_bytes() for name, path in files.items() if path.is_file()}}


def _write_run_files(run: RunFolder, payload: dict) -> None:
    files = {f"{CHECKPOINTS}/{LAST}": payload["checkpoint"], **payload["files"]}
    for name, data in files.items():
        write_bytes(run.root / name, data)


def say_layout(run: RunFolder, runtime: Runtime) -> None:
    """On several nodes, find out whether they share the run folder (rank 0 writes a token there, each node's
    first rank looks for it) and say so once: where checkpoints, logs and plots end up."""
    if runtime.nodes < 2:
        return
    probe = run.root / ".node-probe"
    token = [uuid.uuid4().hex if runtime.is_main else None]
    if runtime.is_main:
        probe.write_text(token[0])
    dist.broadcast_object_list(token, src=0)
    sees = runtime.local_rank == 0 and probe.is_file() and probe.read_text() == token[0]
    seen: list = [None] * runtime.world_size
    dist.all_gather_object(seen, (runtime.node, sees))
    if not runtime.is_main:
        return
    probe.unlink()
    sharing = sorted({node for node, saw in seen if saw})
    if len(sharing) == runtime.nodes:
        console.print(f"run folder {run.root} shared by {runtime.nodes} nodes")
    else:
        console.print(f"run folder {run.root} on node {runtime.node} only ({socket.gethostname()}); checkpoints, "
                      "logs and plots are written there")
