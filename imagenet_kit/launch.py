"""``imagenet-kit launch``: torchrun, with the exit a spot instance's stop needs; what ``make full`` runs.

torchrun's own ending of a stop is a traceback and exit 1: SIGTERM (``docker compose stop``, a spot notice's
shutdown) reaches the launcher, which sends it on to its workers, waits for them (the kit's worker finishes its
step, writes a checkpoint and exits 0), and then raises ``SignalException`` whatever they did. ``launch`` takes
torchrun's arguments unchanged and ends differently: exit 0 with one line when every worker of this node exited
0 after the stop, 128 + the signal's number otherwise; when a worker fails, the worker's own exit status (2 for
the kit's ``error:`` line, which the worker has printed) instead of torchrun's error report. Each worker tells
its status through a file in a folder this process makes (``report_exit``), since torchrun keeps it to itself.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

import click

from imagenet_kit.progress import console

EXIT_REPORTS = "IMAGENET_KIT_EXIT_REPORTS"
# How long torchrun gives its workers after passing on a stop signal before it kills them (its default is 30 s):
# a ResNet-50 checkpoint on a slow disk, after up to 20 steps, can take longer. The compose file's
# stop_grace_period (2 minutes) leaves room for it.
SHUTDOWN_SECONDS = "100"


def report_exit(code) -> None:
    """Under ``launch``: record this worker's exit status for the launcher (the CLI's last act)."""
    folder = os.environ.get(EXIT_REPORTS)
    if folder and "LOCAL_RANK" in os.environ:
        status = code if isinstance(code, int) else (0 if code is None else 1)
        (Path(folder) / f"rank{os.environ['LOCAL_RANK']}").write_text(str(status))


@click.command("launch", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                                           "help_option_names": []})
@click.argument("torchrun_args", nargs=-1, type=click.UNPROCESSED)
def launch_command(torchrun_args):
    """torchrun TORCHRUN_ARGS (the same arguments), ending a stop signal with exit 0 once every worker here has
    checkpointed, and a failed worker with its own exit status. make full runs it:
    imagenet-kit launch --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500
    --max-restarts=3 -m imagenet_kit run --recipe full --data /data"""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    parser = get_args_parser()
    parser.error = _refuse  # argparse would print its usage and exit: one error line instead
    args = parser.parse_args(list(torchrun_args))
    os.environ.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_SECONDS)
    with tempfile.TemporaryDirectory(prefix="imagenet-kit-exits-") as reports:
        os.environ[EXIT_REPORTS] = reports
        try:
            run(args)
        except SignalException as stop:
            sys.exit(_after_stop(stop.sigval, Path(reports), _local_workers(args.nproc_per_node)))
        except ChildFailedError as failed:
            rank, failure = min(failed.failures.items())
            if failure.exitcode != 2:  # the kit's own errors have printed their one line
                console.print(f"[bold red]error:[/] rank {rank} exited with {failure.exitcode} "
                              f"({failure.message or 'see its output above'})", soft_wrap=True)
            sys.exit(failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode)  # -9: killed


def _refuse(message: str):
    raise click.UsageError(f"torchrun: {message} (launch takes torchrun's arguments; see torchrun --help)")


def _local_workers(nproc_per_node: str) -> int:
    if nproc_per_node.isdigit():
        return int(nproc_per_node)
    import torch

    return max(1, torch.cuda.device_count()) if nproc_per_node in ("gpu", "auto") else os.cpu_count() or 1


def _after_stop(sig: signal.Signals, reports: Path, workers: int) -> int:
    statuses = {path.name: int(path.read_text()) for path in reports.glob("rank*")}
    clean = len(statuses) == workers and not any(statuses.values())
    name = signal.Signals(sig).name
    if clean:
        console.print(f"launch: stopped by {name}; the {workers} worker(s) of this node exited cleanly after the "
                      "checkpoint. Run the same command to resume")
        return 0
    console.print(f"[bold red]error:[/] stopped by {name}, and not every worker of this node exited cleanly "
                  f"({len(statuses)} of {workers} reported: {statuses or 'none'}); the newest complete checkpoint "
                  "is what the same command resumes from", soft_wrap=True)
    return 128 + int(sig)
