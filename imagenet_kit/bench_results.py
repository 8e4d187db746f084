"""What every bench shares: where its results go and how a measurement becomes a line there.

Results are append-only JSON lines under ``bench/results/`` (one file per bench), so earlier
measurements on other hardware stay next to new ones; ``imagenet-kit bench report`` turns them into
the README's table.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

RESULTS_DIR = Path("bench/results")


def utc_now() -> str:
    """The ``date`` of a result: UTC, to the second, ISO 8601 (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append_results(path: Path, records: list[dict]) -> Path:
    """Append one JSON line per record to ``path``, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path
