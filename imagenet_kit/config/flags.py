"""The flags of every command that builds a run, and the config they build.

A recipe, then the flags users know from torchvision's references, then generic ``--set section.key=value``
overrides: defaults < recipe YAML < GPU profile (``--gpu``) < ``--set`` < named flags. Each named flag stands for
one key: its type, choices and help are that key's declaration (``schema``), and its value reaches the config as
Click typed it, never as text read again.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from imagenet_kit.config.choice import check_choice
from imagenet_kit.config.load import describe, key_table, load_config
from imagenet_kit.config.recipes import PACKAGE_DIR
from imagenet_kit.config.schema import RunConfig, choices, declaration
from imagenet_kit.progress import results
from imagenet_kit.runs import DEFAULT_OUTPUT_DIR


class KeyChoice(click.ParamType):
    """A key's declared choices, read when Click asks (help, completion, checking): a choice added at the
    declaration is a flag's choice at once."""
    name = "choice"

    def __init__(self, key: str):
        self.key = key

    def get_metavar(self, param, ctx=None) -> str:
        return "[" + "|".join(c for c in choices(self.key) if c) + "]"

    def convert(self, value, param, ctx):
        check_choice(self.key, value, tuple(c for c in choices(self.key) if c))  # the key's line, with a did-you-mean
        return value


@dataclass(frozen=True)
class Flag:
    """A named flag for one config key: its option names, the keyword the command receives it as, and its key."""
    names: tuple[str, ...]
    param: str
    key: str
    note: str = ""

    def option(self):
        f = declaration(self.key)
        kind = type(f.default)
        help_text = f"{f.metadata['help']} ({self.key}{'; ' + self.note if self.note else ''})"
        if kind is bool:
            return click.option(*self.names, self.param, default=None, help=help_text)
        if choices(self.key):
            return click.option(*self.names, self.param, type=KeyChoice(self.key), default=None, help=help_text)
        click_type = {str: click.STRING, int: int, float: float}[kind]
        if f.metadata["words"]:  # a number or a word: the key's own conversion reads it
            click_type = click.STRING
        return click.option(*self.names, self.param, type=click_type, default=None, help=help_text)


FLAGS = (
    Flag(("--data",), "data_root", "data.root"),
    Flag(("--name",), "name", "name"),
    Flag(("--output-dir",), "output_dir", "output_dir", f"default: {DEFAULT_OUTPUT_DIR}"),
    Flag(("--lr",), "lr", "optim.lr"),
    Flag(("--epochs",), "epochs", "train.epochs"),
    Flag(("-b", "--batch-size"), "batch_size", "train.batch_size"),
    Flag(("--wd", "--weight-decay"), "weight_decay", "optim.weight_decay"),
    Flag(("--arch",), "arch", "model.arch"),
    Flag(("--precision",), "precision", "train.precision"),
    Flag(("--compile/--no-compile",), "compile_", "train.compile"),
    Flag(("-j", "--workers"), "workers", "data.workers"),
    Flag(("--gpu",), "gpu", "train.profile", "batch, precision and data that fit its instances"),
)
FLAG_KEYS = {flag.param: flag.key for flag in FLAGS}


def recipe_options(fn):
    """Add the recipe flags to a command; it receives them as keyword arguments for ``build_config``."""
    options = [click.option("--recipe", default="sample", help="recipe name in imagenet_kit/recipes/ or a YAML path"),
               *(flag.option() for flag in FLAGS),
               click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                            help="any config key, e.g. --set train.min_res=128 (repeatable; --dry-run lists them)"),
               click.option("--dry-run", is_flag=True,
                            help="print the resolved config (YAML, each key's help as a comment) and exit")]
    for option in reversed(options):
        fn = option(fn)
    return fn


def output_dir_option(fn):
    """``--output-dir`` for commands that find a run or an export in the run folders."""
    return click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUTPUT_DIR,
                        show_default=True, help="where run folders are (as train and run wrote them)")(fn)


def build_config(recipe: str | None = "sample", overrides=(), dry_run: bool = False, **flag_values) -> RunConfig:
    """The run's config from a recipe, ``--set`` items and the named flags (keyword arguments as ``recipe_options``
    passes them; None = not given). ``dry_run``: print it and exit before any folder, beton or process group."""
    typed = {FLAG_KEYS[name]: value for name, value in flag_values.items() if value is not None}
    cfg = load_config(recipe, overrides, typed)
    if cfg.data.root:
        cfg.data.root = str(resolve_data_root(cfg.data.root))
    if dry_run:
        results.out(describe(cfg), end="")
        click.get_current_context().exit(0)
    return cfg


def resolve_data_root(root: str) -> Path:
    """Relative roots are tried from the current folder, then from the package (the sample recipe names its
    embedded images so, and they are package data)."""
    path = Path(root).expanduser()
    if not path.is_absolute() and not path.exists() and (PACKAGE_DIR / path).exists():
        return PACKAGE_DIR / path
    return path


@click.command("keys")
@click.option("--markdown", is_flag=True, help="as the Markdown table of docs/configuration.md")
def keys_command(markdown):
    """Every config key: its default, what it is, its choices or range, and whether a resume keeps it."""
    results.out(key_table() if markdown else describe(RunConfig()), end="" if not markdown else "\n")
