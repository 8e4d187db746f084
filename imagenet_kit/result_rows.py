"""The measured rows: where they go and how a measurement becomes a line there, and how they are read back.

Results are append-only JSON lines under ``bench/results/`` (one file per bench), so earlier measurements on other
hardware stay next to new ones; ``imagenet-kit bench report`` turns them into docs/results.md's table, and ``plan``
and ``preflight`` read them (a top-level module, so that neither has to import ``bench``). Every row names its
``kind`` (accuracy, train, memory, check, preflight, data, convert, demo, image): the one key readers branch on.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Hashable, Iterator
from datetime import datetime, timezone
from pathlib import Path

from imagenet_kit.errors import KitError

RESULTS_DIR = Path("bench/results")
KINDS = ("accuracy", "train", "memory", "check", "preflight", "data", "convert", "demo", "image")


class ResultsError(KitError):
    """A result file that cannot be read; the message names the file and line."""


def utc_now() -> str:
    """The ``date`` of a result: UTC, to the second, ISO 8601 (sorts as text)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def append_results(path: Path, records: list[dict]) -> Path:
    """Append one JSON line per record to ``path``, creating its folder."""
    for record in records:
        if record.get("kind") not in KINDS:
            raise ValueError(f"a result row needs a kind among {', '.join(KINDS)}, got {record.get('kind')!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    return path


def read_results(results_dir: Path) -> Iterator[tuple[Path, int, dict]]:
    """(file, line number, row) for every result line under ``results_dir``, files in name order.

    A line that is not JSON, or has no known ``kind``, raises ResultsError naming the file and line."""
    for path in sorted(Path(results_dir).glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ResultsError(f"{path}:{number}: not a JSON line ({err.msg})") from None
            if not isinstance(row, dict) or row.get("kind") not in KINDS:
                kind = row.get("kind") if isinstance(row, dict) else None
                raise ResultsError(f"{path}:{number}: no results-table format for kind {kind!r}; a result row's "
                                   f"\"kind\" is one of {', '.join(KINDS)}")
            yield path, number, row


def newest_rows(results_dir: Path, kind: str, key: Callable[[dict], Hashable],
                keep: Callable[[dict], bool] = lambda row: True) -> dict[Hashable, tuple[dict, str]]:
    """The newest row of ``kind`` per ``key(row)`` among those ``keep`` accepts, with its "file:line".

    Newest by ``date``; of two rows with the same date, the later line. A row ``key`` cannot read (a missing or
    non-numeric field) is a ResultsError naming its file and line."""
    newest: dict[Hashable, tuple[dict, str]] = {}
    for path, number, row in read_results(results_dir):
        if row["kind"] != kind or not keep(row):
            continue
        try:
            k = key(row)
        except (KeyError, TypeError, ValueError) as err:
            what = (f"has no {err.args[0]!r} field" if isinstance(err, KeyError)
                    else f"has a field that is not a number ({err})")
            raise ResultsError(f"{path}:{number}: this {kind} row {what}") from None
        if k not in newest or str(row.get("date", "")) >= str(newest[k][0].get("date", "")):
            newest[k] = (row, f"{path.name}:{number}")
    return newest


# `imagenet-kit bench profiles` marks its accuracy rows with this key ({"arm", "seed", "changes"}); `plan` cites
# them, so the reading and the statistics live here rather than in bench/ (which plan may not import).
PROFILES = "profiles"


def profile_rows(results_dir: Path) -> list[dict]:
    """The newest accuracy row of each (arm, seed) that ``bench profiles`` wrote; none without a results folder."""
    if not Path(results_dir).is_dir():
        return []
    newest: dict[tuple[str, int], dict] = {}
    for _, _, row in read_results(results_dir):
        if PROFILES in row and row.get("top1") is not None:
            newest[(row[PROFILES]["arm"], row[PROFILES]["seed"])] = row
    return list(newest.values())


def arm_summary(rows: list[dict], order: tuple[str, ...] = ()) -> list[dict]:
    """Per arm (those in ``order`` first, then the rest by name): top-1 mean, standard deviation (n - 1), n, what it
    changes (its newest row's words), and the difference from the "reference" arm's mean with its spread (the larger
    of the two arms' standard deviations) and whether the difference is within it."""
    by_arm: dict[str, list[float]] = {}
    changes: dict[str, str] = {}
    for row in rows:
        by_arm.setdefault(row[PROFILES]["arm"], []).append(row["top1"])
        changes[row[PROFILES]["arm"]] = row[PROFILES].get("changes", "")
    stats = {arm: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else None, len(v))
             for arm, v in by_arm.items()}
    reference = stats.get("reference")
    summary = []
    for arm in [a for a in order if a in stats] + sorted(a for a in stats if a not in order):
        mean, std, n = stats[arm]
        delta = mean - reference[0] if reference and arm != "reference" else None
        stds = [s for s in (std, reference[1] if reference else None) if s is not None]
        spread = max(stds) if delta is not None and stds else None
        summary.append({"arm": arm, "changes": changes[arm], "mean": mean, "std": std, "n": n, "delta": delta,
                        "spread": spread,
                        "within_spread": None if delta is None or spread is None else abs(delta) <= spread})
    return summary
