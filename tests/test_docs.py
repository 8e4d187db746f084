"""README.md and docs/: every relative link resolves (file and heading), every `imagenet-kit ...` command and option
exists in the CLI, the README stays short, and the generated results table matches bench/results/."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from imagenet_kit.bench.report import BEGIN, END, load_rows, results_markdown
from imagenet_kit.cli import cli
from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def without_generated(text: str) -> str:
    """The page less its generated results block: those rows record the commands that made them, at their commit."""
    if BEGIN in text:
        head, rest = text.split(BEGIN, 1)
        return head + rest.split(END, 1)[1]
    return text


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            problems.append(f"{page.name}: {target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{page.name}: {target}: no heading #{anchor} in {linked.name}")
    return problems


def commands(text: str) -> list[list[str]]:
    """Every `imagenet-kit ...` command in code spans and code blocks (not the image of that name in a docker line),
    as the words a shell would pass, up to the first pipe, redirection, separator or comment."""
    found = []
    snippets = CODE.findall(text) + [line for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
                                      for line in block.splitlines()]
    for snippet in snippets:
        # where a command starts: the snippet's start (after a prompt), or after a separator or "# = "
        for match in re.finditer(r"(?:^\s*(?:\$\s+)?|(?:&&|;|\||\(|=)\s*)imagenet-kit((?: [^|;&>#`]*)?)", snippet):
            try:
                words = shlex.split(match.group(1))
            except ValueError:
                words = match.group(1).split()
            found.append(words)
    return found


def unknown_words(words: list[str]) -> list[str]:
    """The subcommands and options in ``words`` that the CLI does not have."""
    ctx, problems, command = click.Context(cli), [], cli
    while words and isinstance(command, click.Group) and not words[0].startswith("-"):
        name = words.pop(0)
        sub = command.get_command(ctx, name)
        if sub is None:
            if name in ("...", "COMMAND"):  # a placeholder: "imagenet-kit ..." or "imagenet-kit COMMAND"
                return []
            return [f"no command {name!r}"]
        command = sub
    if command.ignore_unknown_options:  # `launch`: torchrun's own arguments
        return problems
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)} | {"--help"}
    for word in words:
        if word.startswith("--") and word.split("=", 1)[0] not in options:
            problems.append(f"{command.name}: no option {word.split('=', 1)[0]}")
    return problems


def unknown_commands(page: Path) -> list[str]:
    return [f"{page.name}: imagenet-kit {' '.join(words)}: {problem}"
            for words in commands(without_generated(page.read_text())) for problem in unknown_words(list(words))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_and_option_exists(page):
    assert commands(page.read_text()), f"{page.name} shows no imagenet-kit command"
    assert unknown_commands(page) == []


def test_the_checks_catch_a_broken_link_and_an_unknown_option(tmp_path):
    page = tmp_path / "bad.md"
    (tmp_path / "there.md").write_text("# There\n\n## A section\n")
    page.write_text("[ok](there.md#a-section) [gone](missing.md) [no anchor](there.md#nowhere)\n\n"
                    "`imagenet-kit plan --recipe full --instanse g5.xlarge`\n\n```bash\nimagenet-kit trian\n"
                    "imagenet-kit bench report --doc docs/results.md\n```\n")
    assert broken_links(page) == ["bad.md: missing.md: no such file",
                                  "bad.md: there.md#nowhere: no heading #nowhere in there.md"]
    assert unknown_commands(page) == ["bad.md: imagenet-kit plan --recipe full --instanse g5.xlarge: plan: no option "
                                      "--instanse", "bad.md: imagenet-kit trian: no command 'trian'"]


def test_the_readme_is_short_and_reaches_every_docs_page():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    linked = {target.partition("#")[0] for target in LINK.findall(readme)}
    assert {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")} <= linked
    for page in (REPO / "docs").glob("*.md"):
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# ") and lines[1] == "" and lines[2] and lines[3] and not lines[4], page.name


def test_the_generated_results_table_is_up_to_date():
    """`imagenet-kit bench report` writes docs/results.md's block from bench/results/: run it after a bench."""
    text = (REPO / "docs" / "results.md").read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n")
    rows = load_rows(REPO / "bench" / "results")
    assert block == results_markdown(rows)
    from imagenet_kit.bench.report import GENERATED

    for name, blocks in GENERATED.items():  # the README's headlines, the seeds and the profiles tables
        page = (REPO / name).read_text()
        for marker, make in blocks.items():
            found = page.split(f"<!-- {marker}:begin -->\n", 1)[1].split(f"\n<!-- {marker}:end -->", 1)[0]
            assert found == make(rows), f"{name}'s {marker} block is stale: run imagenet-kit bench report"
