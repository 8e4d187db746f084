"""Recipe YAML files: where a name points, the keys a recipe sets once its ``base:`` chain is followed, and GPU
profiles (``recipes/profiles/``), the keys that depend on the GPU.

A recipe may start from another (``base: full``, a name in ``recipes/`` or a path relative to the recipe) and set
only what differs; the base's keys come first, so the recipe's own win. Each key keeps the file it came from, so a
bad key or value is reported against that file.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from imagenet_kit.config.choice import check_choice
from imagenet_kit.errors import ConfigError

# Package data, so an installed kit (pip install .) finds them from any folder. `files` gives a real folder for
# an installed or editable package (the kit is never imported from a zip).
PACKAGE_DIR = Path(str(files("imagenet_kit")))
RECIPES_DIR = PACKAGE_DIR / "recipes"
PROFILES_DIR = RECIPES_DIR / "profiles"
BASE = "base"


def resolve_recipe_path(recipe: str, relative_to: Path | None = None) -> Path:
    """A recipe is a YAML path or the name of one in ``recipes/`` (``sample`` -> recipes/sample.yaml)."""
    path = Path(recipe)
    if path.suffix not in (".yaml", ".yml"):
        path = RECIPES_DIR / f"{recipe}.yaml"
    elif relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if not path.is_file():
        known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
        raise ConfigError(f"recipe not found: {path}. Give a YAML path or one of: {', '.join(known)}")
    return path


def flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """{"train": {"epochs": 5}} -> [("train.epochs", 5)]"""
    return [item for k, v in tree.items()
            for item in (flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)])]


def _read(path: Path) -> dict:
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(tree).__name__}")
    return tree


def recipe_items(recipe: str) -> list[tuple[Path, str, Any]]:
    """(file, section.key, value) for every key ``recipe`` sets, its bases' first."""
    chain: list[tuple[Path, dict]] = []
    path = resolve_recipe_path(recipe)
    while True:
        if any(path.resolve() == seen.resolve() for seen, _ in chain):
            cycle = " -> ".join(p.name for p, _ in [*chain, (path, {})])
            raise ConfigError(f"{chain[0][0]}: its base recipes form a cycle: {cycle}")
        tree = _read(path)
        chain.append((path, tree))
        base = tree.pop(BASE, None)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: base must be a recipe name or YAML path, got {base!r}")
        path = resolve_recipe_path(base, relative_to=path.parent)
    return [(path, key, value) for path, tree in reversed(chain) for key, value in flatten(tree)]


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def profile_items(name: str) -> list[tuple[Path, str, Any]]:
    """(file, section.key, value) for the GPU profile ``name`` (recipes/profiles/<name>.yaml)."""
    check_choice("train.profile", name, tuple(profile_names()))
    path = PROFILES_DIR / f"{name}.yaml"
    tree = _read(path)
    if BASE in tree or "profile" in tree.get("train", {}):
        raise ConfigError(f"{path}: a profile sets a GPU's keys only; it has no base and names no profile")
    return [(path, key, value) for key, value in flatten(tree)]
