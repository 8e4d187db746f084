"""Building a run's config: defaults < recipe YAML (its ``base:`` first) < GPU profile < ``--set key=value`` < named
flags, every value converted to its key's declared type and every key checked (``checks.validate``).

A value reaches its key as what it is: a named flag as Click typed it, a ``--set`` item as its text, read as the
key's type (a text key keeps ``007``, ``yes`` or ``null`` as written), a recipe value as YAML read it. An unknown
or mistyped key is an error naming it and the valid ones, so a typo never falls back to a default.
"""
from __future__ import annotations

import difflib
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from imagenet_kit.config.checks import validate
from imagenet_kit.config.recipes import flatten, profile_items, recipe_items
from imagenet_kit.config.schema import SECTIONS, TOP_LEVEL, RunConfig, choices, declaration, declared_keys
from imagenet_kit.errors import ConfigError

BOOLEAN_WORDS = {**dict.fromkeys(("1", "true", "yes", "on"), True), **dict.fromkeys(("0", "false", "no", "off"), False)}


def coerce(name: str, value: Any) -> Any:
    """``value`` as ``name``'s declared type, or ConfigError naming the key. Text is read as the type; a text key
    takes text as it is, and numbers (a recipe's ``classes: 100``) as their digits, but no YAML yes/no or null."""
    f = declaration(name)
    kind = type(f.default)
    if isinstance(value, str) and value.strip().lower() in f.metadata["words"]:
        return value.strip().lower()
    try:
        if kind is str:
            if isinstance(value, bool) or value is None:
                raise ValueError
            return value if isinstance(value, str) else str(value)
        if kind is bool:
            return value if isinstance(value, bool) else BOOLEAN_WORDS[str(value).strip().lower()]
        if isinstance(value, bool):  # YAML's `yes` is no number
            raise ValueError
        if kind is int:
            if float(value) != int(float(value)):
                raise ValueError
            return int(float(value))
        return float(value)
    except (KeyError, TypeError, ValueError):
        quoted = " (quote it in YAML: 'text')" if kind is str else ""
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}{quoted}") from None


def _key_hint(name: str) -> str:
    """The nearest valid key (by its name within a known section), else that section's keys, else the sections."""
    section, _, rest = name.partition(".")
    if section in SECTIONS:
        names = [f.name for f in fields(SECTIONS[section])]
        close = difflib.get_close_matches(rest, names, n=1, cutoff=0.6)
        if close:
            return f"did you mean {section}.{close[0]}?"
        return f"the keys of {section}: " + ", ".join(f"{section}.{n}" for n in names)
    close = difflib.get_close_matches(name, declared_keys(), n=1, cutoff=0.75)
    if close:
        return f"did you mean {close[0]}?"
    return f"keys are section.key, the sections {', '.join(SECTIONS)}; or one of {', '.join(TOP_LEVEL)}"


def set_key(cfg: RunConfig, name: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key) on ``cfg``, checking the key and converting the value."""
    try:
        declaration(name)
    except KeyError:
        raise ConfigError(f"unknown config key '{name}'; {_key_hint(name)}") from None
    section, _, rest = name.partition(".")
    owner = getattr(cfg, section) if rest else cfg
    setattr(owner, rest or section, coerce(name, value))


def parse_overrides(items: typing.Iterable[str]) -> list[tuple[str, str]]:
    """``--set`` items as (key, text): the text is read as the key's type by ``coerce``."""
    pairs = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.epochs=5)")
        name, value = item.split("=", 1)
        pairs.append((name.strip(), value.strip()))
    return pairs


def load_config(recipe: str | None = None, overrides: typing.Iterable[str] = (),
                flags: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the recipe's YAML (its ``base:`` first), then its GPU profile (``train.profile``, from the
    recipe, an override or a flag), then ``key=value`` overrides, then ``flags`` (typed values by key)."""
    cfg = RunConfig()
    later = [*parse_overrides(overrides), *((k, v) for k, v in (flags or {}).items() if v is not None)]
    items = recipe_items(recipe) if recipe else []
    profiles = [value for _, name, value in items if name == "train.profile"] + [v for k, v in later
                                                                                 if k == "train.profile"]
    items += profile_items(str(profiles[-1])) if profiles and profiles[-1] else []
    for path, name, value in items:
        try:
            set_key(cfg, name, value)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    for name, value in later:
        set_key(cfg, name, value)
    validate(cfg)
    return cfg


def config_from_dict(tree: dict) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict()`` output (e.g. a checkpoint's or a run folder's config)."""
    cfg = RunConfig()
    for name, value in flatten(tree):
        set_key(cfg, name, value)
    return cfg


def dump_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe(cfg: RunConfig) -> str:
    """The config as YAML with each key's declaration as a comment (its help, choices, whether a resume keeps it):
    what ``--dry-run`` prints, still YAML that loads."""
    lines, tree = [], cfg.to_dict()
    for top, value in tree.items():
        if isinstance(value, dict):
            lines.append(f"{top}:")
            lines += [_line(f"{top}.{name}", item, indent="  ") for name, item in value.items()]
        else:
            lines.append(_line(top, value, indent=""))
    return "\n".join(lines) + "\n"


def _line(name: str, value: Any, indent: str) -> str:
    meta = declaration(name).metadata
    text = yaml.safe_dump({name.rpartition(".")[2]: value}, default_flow_style=True, width=10**6).strip()[1:-1]
    notes = [meta["help"]]
    if choices(name):
        notes.append("one of " + ", ".join(repr(c) if c == "" else str(c) for c in choices(name)))
    if meta["fixed"]:
        notes.append("a resume keeps it")
    return f"{indent}{text}  # {'; '.join(notes)}"


def key_table() -> str:
    """Every key as a Markdown table (key, default, what it is, choices or range, whether a resume keeps it): the
    docs' key table, from the same declarations as everything else."""
    lines = ["| key | default | what it is | resume |", "|---|---|---|---|"]
    for name in declared_keys():
        f = declaration(name)
        allowed = choices(name)
        what = f.metadata["help"]
        if allowed:
            what += "; one of " + ", ".join(f"`{c}`" if c else "`''`" for c in allowed)
        if f.metadata["valid"]:
            what += f"; {f.metadata['valid'][1]}"
        default = yaml.safe_dump(f.default, default_flow_style=True).strip().removesuffix("...").strip()
        keeps = "kept" if f.metadata["fixed"] else "may change"
        lines.append(f"| `{name}` | `{default}` | {what.replace('|', '/')} | {keeps} |")
    return "\n".join(lines)
