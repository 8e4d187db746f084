"""One rich progress bar style for every long step: count, items/s and ETA."""
from __future__ import annotations

import contextlib
import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "img"):
    """Yield ``advance(n)``; the bar shows done/total, rate in ``unit``/s and the ETA.

    Off a terminal (CI logs, pipes) rich would redraw nothing useful, so the bar is disabled there
    unless IMAGENET_KIT_PROGRESS=1.
    """
    enabled = console.is_terminal or os.environ.get("IMAGENET_KIT_PROGRESS") == "1"
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        _RateColumn(unit), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                        console=console, disable=not enabled, transient=False)
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
    sys.stderr.flush()
