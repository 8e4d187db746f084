"""Which code is running: the package's version and, from a checkout, the commit (``imagenet-kit --version``, every
env.json and results row). Standard library only, so ``--version`` answers without importing torch."""
from __future__ import annotations

import os
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS_IN_TREE = "bench/results"


def git_revision() -> str:
    """HEAD (+ "-dirty"); a copy of the tree without .git (a GPU host's) names it in IMAGENET_KIT_GIT."""
    if os.environ.get("IMAGENET_KIT_GIT"):
        return os.environ["IMAGENET_KIT_GIT"]
    root = ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        # Rows appended to bench/results are what runs write, not code: seed 1 run after seed 0's row is still
        # a run of HEAD.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":(exclude){RESULTS_IN_TREE}"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def package_version() -> str:
    try:
        return version("imagenet-kit")
    except PackageNotFoundError:  # run from a copy of the tree that was never installed
        return "not installed"


def version_line() -> str:
    """``imagenet-kit 0.1.0`` and, from a checkout, ``(commit abc1234...)`` with ``-dirty`` for local changes."""
    line = f"imagenet-kit {package_version()}"
    if (ROOT / ".git").exists() or os.environ.get("IMAGENET_KIT_GIT"):
        line += f" (commit {git_revision()})"
    return line


def print_version(ctx, _param, value) -> None:
    """``--version``'s callback: the version line on stdout, then exit."""
    if value and not ctx.resilient_parsing:
        from imagenet_kit.progress import results

        results.out(version_line())
        ctx.exit(0)
