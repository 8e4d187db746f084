"""Every number README.md and docs/ state with a unit comes from a committed row (bench/results/*.jsonl), or is a
fact listed in docs/sources.md with its source (a published figure, a datasheet, a price, a derivation from either).
A number added without either fails here, naming its file, line and text."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FACTS = REPO / "docs" / "sources.md"
# A number and its unit; "12 min 5 s" reads as two numbers, each checked.
UNIT = r"%|img/s|ms|min|s|h|GB|MB|MiB|GiB|kB|×|x"
NUMBER = re.compile(rf"(?<![\w.$/-])(\d[\d,]*(?:\.\d+)?)\s?({UNIT})(?![\w/])")
GENERATED = re.compile(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", re.S)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
# What a row's field may be written as, by unit: the value as stored, or converted.
CONVERSIONS = {
    "%": (lambda v: v, lambda v: 100 * v),
    "img/s": (lambda v: v,),
    "ms": (lambda v: v, lambda v: 1000 * v),
    "s": (lambda v: v, lambda v: 60 * v),
    "min": (lambda v: v, lambda v: v / 60),
    "h": (lambda v: v, lambda v: v / 3600, lambda v: v / 60),
    "GB": (lambda v: v, lambda v: v / 1e9),
    "MB": (lambda v: v, lambda v: v / 1e6),
    "MiB": (lambda v: v, lambda v: v / 2**20),
    "GiB": (lambda v: v, lambda v: v / 2**30),
    "kB": (lambda v: v, lambda v: v / 1e3),
    "×": (lambda v: v,),
}
CONVERSIONS["x"] = CONVERSIONS["×"]


def _numbers_in(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in _numbers_in(v)]
    return []


def row_numbers() -> list[float]:
    """Every number of every committed row, and the ratios a row's rates make (a "3.0×" compares two of them)."""
    numbers = []
    for path in sorted((REPO / "bench" / "results").glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                numbers += _numbers_in(json.loads(line))
    return numbers


def facts() -> set[str]:
    """The `number unit` texts docs/sources.md lists, each on a line of its own table with its source."""
    listed = set()
    for line in FACTS.read_text().splitlines():
        if line.startswith("| `"):
            listed.add(line.split("`")[1])
    return listed


def claims(page: Path) -> list[tuple[int, str, str, str]]:
    """(line, number, unit, the line's text) for each number with a unit outside generated tables and code."""
    text = page.read_text()
    blanked = CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), GENERATED.sub(
        lambda m: re.sub(r"[^\n]", " ", m.group()), text))
    found = []
    for number, line in enumerate(blanked.splitlines(), 1):
        for match in NUMBER.finditer(line):
            found.append((number, match.group(1), match.group(2), text.splitlines()[number - 1].strip()))
    return found


def backed(number: str, unit: str, rows: list[float]) -> bool:
    decimals = len(number.split(".")[1]) if "." in number else 0
    value = float(number.replace(",", ""))
    tolerance = 0.5 * 10 ** -decimals + 1e-9
    return any(abs(convert(v) - value) <= tolerance for v in rows for convert in CONVERSIONS[unit])


@pytest.fixture(scope="module")
def committed() -> list[float]:
    return row_numbers()


@pytest.mark.parametrize("page", [p for p in PAGES if p != FACTS], ids=lambda p: p.name)
def test_every_number_has_a_row_or_a_listed_source(page, committed):
    listed = facts()
    missing = [f"{page.name}:{line}: {number} {unit} in {text!r}" for line, number, unit, text in claims(page)
               if f"{number} {unit}" not in listed and f"{number}{unit}" not in listed
               and not backed(number, unit, committed)]
    assert not missing, ("numbers with no row behind them and not in docs/sources.md (measure them with a bench "
                         "command, or list the fact with its source):\n" + "\n".join(missing))


def test_a_number_added_without_a_row_or_a_source_is_caught(committed, tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# A page\n\nThe kit trains at 12,345.6 img/s on a toaster, 99.97% top-1.\n")
    found = [(number, unit) for _, number, unit, _ in claims(page)]
    assert found == [("12,345.6", "img/s"), ("99.97", "%")]
    assert not any(backed(number, unit, committed) for number, unit in found)


def test_facts_are_each_listed_with_a_source():
    rows = [line for line in FACTS.read_text().splitlines() if line.startswith("| `")]
    assert rows
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 2 and cells[1], row
