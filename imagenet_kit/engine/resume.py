"""Resume, in one module: where a run starts again (``resume_point``), putting it there (``restore``), and on several
nodes whether they share the run folder (``say_layout``).

The decision is the job's, whatever disks its nodes have. Under torchrun each node may have a disk of its own or share
one with the others, and the node that becomes rank 0 (the one that writes the run folder) can change from one start
to the next, so a run's checkpoints may be on any node. Each node's first rank reports the newest checkpoint it can
read (rank 0 also looks in ``train.mirror``); every rank takes the same one, the furthest on; a rank whose disk holds
those same bytes (sha256) reads them, and the rank that holds them sends them to the others over the process group.
Rank 0 then also gets the run's records and best.pt, so that its run folder goes on from there.

A checkpoint resumes the run that wrote it: the keys declared ``fixed`` (config/schema.py: the data, the network,
the batch and the schedule) are refused, each with its old and new value, before anything in the run folder
changes; the rest may change and are listed. The epoch count may change under the schedules that can go on
continuously (``schedule.CHANGEABLE_EPOCHS``), and a resume into another precision starts a fresh grad scaler.
"""
from __future__ import annotations

import io
import socket
import uuid
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist

from imagenet_kit.config import SECTIONS, RunConfig, config_from_dict
from imagenet_kit.config.schema import fixed_keys
from imagenet_kit.data.convert import check_same_classes
from imagenet_kit.engine.checkpoint import (
    CheckpointError,
    file_digest,
    find_resume_checkpoint,
    load_checkpoint,
    set_rng_state,
)
from imagenet_kit.engine.mirror import Mirror
from imagenet_kit.environment import write_bytes
from imagenet_kit.errors import ConfigError
from imagenet_kit.optim.schedule import CHANGEABLE_EPOCHS
from imagenet_kit.progress import console
from imagenet_kit.runs import BEST, CHECKPOINTS, LAST, RunFolder
from imagenet_kit.runtime import Runtime, on_every_rank, precision_name


@dataclass
class Position:
    """Where training stands: the epoch in progress, the batches of it already trained (a mid-epoch resume skips
    them), steps in total, the best top-1 so far, and an unfinished epoch's running loss."""
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    best_top1: float = -1.0
    partial: dict | None = None  # {"loss_sum", "steps"} of the epoch a mid-epoch checkpoint cut


@dataclass
class ResumePoint:
    """Where a resumed run starts: the checkpoint's state, where it was read, what changed since it, and the changes
    of the epoch count the schedule goes on through (``schedule.changed_epochs``)."""
    source: str
    state: dict
    changes: str  # the settings that changed and may ("" for none), for the log
    epoch_changes: list[tuple[int, int]]  # (step, total steps before) of each resume that changed train.epochs

    @property
    def position(self) -> Position:
        state = self.state
        return Position(state["epoch"], state["step"], state["global_step"], state.get("best_top1", -1.0),
                        state.get("partial_epoch") if state["step"] else None)


def resume_point(cfg: RunConfig, runtime: Runtime, resume: str | None, mirror: Mirror | None,
                 steps_per_epoch: int) -> ResumePoint | None:
    """The checkpoint this run starts from, the same on every rank, checked against ``cfg``; None for a fresh run.
    ``resume``: None, "auto" (the newest of the run, on any node or the mirror) or a checkpoint's path."""
    source, state = _chosen_checkpoint(cfg.run, runtime, resume, mirror)
    if state is None:
        return None
    changes = on_every_rank(lambda: _check(state, cfg, source), runtime)
    if changes and runtime.is_main:
        console.print(f"resume: changed since the checkpoint: {changes}")
    return ResumePoint(source, state, changes, _epoch_changes(state, cfg, steps_per_epoch))


def _epoch_changes(state: dict, cfg: RunConfig, steps_per_epoch: int) -> list[tuple[int, int]]:
    """The checkpoint's changes of the epoch count, and this resume's if it changes it: the schedule goes on from
    the step it had reached."""
    changes = [tuple(change) for change in state.get("epoch_changes", [])]
    before = state["config"]["train"]["epochs"]
    if before != cfg.train.epochs:
        changes.append((state["global_step"], before * steps_per_epoch))
    return changes


def _check(state: dict, cfg: RunConfig, source: str) -> str:
    check_same_classes(state["classes"], cfg.betons[0], "the checkpoint resumed from")
    return check_resumable(state, cfg, source)


def restore(training, point: ResumePoint) -> Position:
    """Put ``training`` (engine/setup.py's) where ``point`` is: weights, optimizer, schedule, loss scale and the
    generators; returns the position to go on from."""
    state = point.state
    training.model.load_state_dict(state["model"])
    training.optimizer.load_state_dict(state["optimizer"])
    training.scheduler.load_state_dict(state["scheduler"])
    _restore_scaler(training, state)
    if training.runtime.world_size == state.get("world_size", 1):
        set_rng_state(state["rng"], training.runtime.device)
    return point.position


def _restore_scaler(training, state: dict) -> None:
    """fp16's loss scale goes on from the checkpoint's. A resume into another precision (a g5's bf16 run resumed
    on a g4dn's T4 in fp16, or back) starts a fresh scaler instead, said once: a bf16 or fp32 run saved a disabled
    scaler, whose empty state torch refuses to load ("The source state dict is empty")."""
    saved, scaler = state.get("scaler") or {}, training.scaler
    if bool(saved) == scaler.is_enabled():
        if saved:
            scaler.load_state_dict(saved)
        return
    if training.runtime.is_main:
        before, now = state.get("precision", "fp16" if saved else "bf16 or fp32"), precision_name(training.amp_dtype)
        what = (f"fp16 starts a fresh loss scale ({scaler.get_scale():g}, adjusted within the first steps)"
                if scaler.is_enabled() else f"{now} needs no loss scaling, the checkpoint's scale is dropped")
        console.print(f"resume: precision {before} -> {now}: {what}")


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


def _chosen_checkpoint(run: RunFolder, runtime: Runtime, resume: str | None,
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


def _settings(cfg: RunConfig) -> dict:
    return {f"{name}.{f.name}": getattr(getattr(cfg, name), f.name)
            for name in SECTIONS for f in fields(SECTIONS[name])}


def check_resumable(state: dict, cfg: RunConfig, checkpoint: str) -> str:
    """Refuse a resume into ``cfg`` of checkpoint ``state`` when its run had other fixed settings (declared so in
    config/schema.py); returns the changes it accepts, for the log ("" for none)."""
    old, new = _settings(config_from_dict(state["config"])), _settings(cfg)
    changed = {key: (old[key], new[key]) for key in new if old[key] != new[key]}
    epochs_may_change = cfg.optim.schedule in CHANGEABLE_EPOCHS
    fixed = fixed_keys() - {"train.epochs"} if epochs_may_change else fixed_keys()
    refused = [f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items() if key in fixed]
    if "train.epochs" in changed and epochs_may_change:
        _check_epochs_change(state, cfg, checkpoint)
    if refused:
        extend = (f"; more epochs need a schedule that can go on ({', '.join(CHANGEABLE_EPOCHS)}), not "
                  f"{cfg.optim.schedule}" if "train.epochs" in changed else "")
        raise ConfigError(f"{checkpoint} is of a run with other settings: {', '.join(refused)}. Resume with the "
                          f"run's own settings, or start a new run from its weights: --name NEW_NAME --set "
                          f"model.init={checkpoint}{extend}")
    return ", ".join(f"{key} {a!r} -> {b!r}" for key, (a, b) in changed.items())


def _check_epochs_change(state: dict, cfg: RunConfig, checkpoint: str) -> None:
    """Another epoch count is the rest of the schedule stretched (``schedule.changed_epochs``): the run must still
    have steps left under the new count, and, for the curves that end at 0, under the old one."""
    done, before, after = state["epoch"], state["config"]["train"]["epochs"], cfg.train.epochs
    if after <= done:
        raise ConfigError(f"train.epochs {after}: {checkpoint} has trained {done} epochs already; give more than "
                          f"{done} to go on")
    if done >= before and cfg.optim.schedule != "step":
        raise ConfigError(f"train.epochs {before} -> {after}: {checkpoint} has finished its {cfg.optim.schedule} "
                          "schedule, whose LR ends at 0, so there is nothing left to stretch. Start a new run from "
                          f"its weights: --name NEW_NAME --set model.init={checkpoint}")


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
