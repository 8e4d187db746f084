"""What every bench shares: where its results go and how a measurement becomes a line there.

Results are append-only JSON lines under ``bench/results/`` (one file per bench), so earlier
measurements on other hardware stay next to new ones; ``imagenet-kit bench report`` turns them into
the README's table.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
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


def read_results(results_dir: Path) -> Iterator[tuple[Path, int, dict]]:
    """(file, line number, row) for every result line under ``results_dir``, files in name order.

    A line that is not JSON raises ValueError naming the file and line."""
    for path in sorted(Path(results_dir).glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                yield path, number, json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not a JSON line ({err.msg})") from None
