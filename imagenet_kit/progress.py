"""Progress of every long step, in one style: a rich bar on a terminal, plain lines in a log.

On a terminal: description, bar, count, running loss (training), rate and ETA, with a status while the first
item is awaited (FFCV compiles its pipeline then). Elsewhere (``nohup``, CI, ``docker compose logs``) a plain line
at every 10% and at least every ``PLAIN_EVERY_S`` seconds. The rate is items per second from the first item on: the
wait for it is shown, not counted, so the bar, the epoch line and metrics.jsonl report one figure.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
from rich.text import Text

# The kit's two output streams, the only ones it writes to (docs/development.md, "Output"): `console` (stderr) for
# progress, status and warnings; `results` (stdout) for what a command answers (its last line, a table, JSON), so
# that it can be piped or saved. soft_wrap: a line stays one line (grep-able) instead of being cut at 80 columns in
# a log.
console = Console(stderr=True, soft_wrap=True)
results = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
PLAIN_EVERY_S = 60.0


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    """``with ProgressLine(...) as bar: bar.advance(n, loss=...)``. ``steps`` (training): also count steps and show
    them; ``rate_scale``: the rate shown is this x the local one (the GPUs of a run, whose images all count)."""

    def __init__(self, description: str, total: int, unit: str = "img", steps: int | None = None,
                 waiting: str = "", rate_scale: int = 1, enabled: bool = True):
        self.description, self.total, self.unit, self.steps, self.waiting = description, total, unit, steps, waiting
        self.rate_scale, self.done, self.step, self.loss = rate_scale, 0, 0, None
        self._first_at, self._first_done, self._next_plain_pct, self._last_plain = None, 0, 10, time.monotonic()
        self._last_at = None
        self._terminal = enabled and (console.is_terminal or os.environ.get("IMAGENET_KIT_PROGRESS") == "1")
        self._plain = enabled and not self._terminal
        self._rich, self._task = None, None

    def __enter__(self) -> ProgressLine:
        if self._terminal:
            self._rich = Progress(TextColumn("[bold]{task.description}"), BarColumn(), _Fields(self),
                                  console=console, transient=False)
            self._rich.__enter__()
            self._task = self._rich.add_task(self.description, total=self.total)
        elif self._plain and self.waiting:
            console.print(f"{self.description}: {self.waiting}", highlight=False)
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.__exit__(*exc)
        sys.stderr.flush()

    def skip(self, n: int, steps: int = 0) -> None:
        """Items already done before this run (a resumed epoch): counted, but not in the rate."""
        self.done, self.step, self._first_done = self.done + n, self.step + steps, self._first_done + n
        self._refresh()

    def advance(self, n: int = 1, loss: float | None = None) -> None:
        now = time.monotonic()
        if self._first_at is None:  # the first item: the clock of the rate starts now
            self._first_at, self._first_done = now, self.done + n
        self.done, self.step, self._last_at = self.done + n, self.step + (1 if self.steps else 0), now
        self.loss = self.loss if loss is None else loss
        self._refresh()
        if self._plain and (100 * self.done >= self._next_plain_pct * self.total
                            or now - self._last_plain >= PLAIN_EVERY_S):
            console.print(self.plain_line(), highlight=False)
            self._last_plain = now
            while self.total and self._next_plain_pct * self.total <= 100 * self.done:  # total 0: nothing to pass
                self._next_plain_pct += 10

    def line_due(self, n: int) -> bool:
        """Whether ``advance(n)`` will print a plain line (callers fetch what it should show first)."""
        return self._plain and (100 * (self.done + n) >= self._next_plain_pct * self.total
                                or time.monotonic() - self._last_plain >= PLAIN_EVERY_S)

    def set_loss(self, loss: float) -> None:
        self.loss = loss

    @property
    def rate(self) -> float | None:
        """Items per second from the first item to the latest (times ``rate_scale``); None until two moments
        are apart. Fixed between items, so every report of one moment gives the same figure."""
        if self._first_at is None:
            return None
        seconds = self._last_at - self._first_at
        counted = self.done - self._first_done
        return self.rate_scale * counted / seconds if seconds > 0 and counted > 0 else None

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return (self.total - self.done) * self.rate_scale / rate if rate else None

    def fields(self) -> str:
        parts = []
        if self.steps:
            parts.append(f"step {self.step}/{self.steps}")
        else:
            parts.append(f"{self.done:,}/{self.total:,}")
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        if self._first_at is None and self.waiting:
            parts.append(self.waiting)
        else:
            rate = self.rate
            parts += [f"{rate:,.1f} {self.unit}/s" if rate else f"- {self.unit}/s", f"ETA {_clock(self.eta)}"]
        return ", ".join(parts)

    def plain_line(self) -> str:
        return f"{self.description}: {self.fields()} ({100 * self.done // max(1, self.total)}%)"

    def _refresh(self) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done)


class _Fields(ProgressColumn):
    def __init__(self, line: ProgressLine):
        super().__init__()
        self.line = line

    def render(self, task) -> Text:
        return Text(self.line.fields(), style="cyan")


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "img", waiting: str = ""):
    """Yield ``advance(n)`` of a ``ProgressLine``: for steps that count items and nothing else."""
    with ProgressLine(description, total, unit, waiting=waiting) as line:
        yield line.advance
