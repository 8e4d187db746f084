"""The ``imagenet-kit`` command line: a registry. Each command lives in the module of its stage."""
from __future__ import annotations

import importlib
import os
import sys

import click
from rich.markup import escape

from imagenet_kit.errors import EXIT_CODE, KitError
from imagenet_kit.launch import report_exit
from imagenet_kit.progress import console
from imagenet_kit.revision import print_version

COMMANDS = {
    "subset": "imagenet_kit.data.subset:subset_command",
    "convert": "imagenet_kit.data.convert:convert_command",
    "prepare": "imagenet_kit.data.prepare:prepare_command",
    "verify": "imagenet_kit.data.verify:verify_command",
    "lr-find": "imagenet_kit.engine.lr_find:lr_find_command",
    "train": "imagenet_kit.engine.train:train_command",
    "eval": "imagenet_kit.engine.evaluate:eval_command",
    "export": "imagenet_kit.serve.export:export_command",
    "demo": "imagenet_kit.serve.demo:demo_command",
    "space": "imagenet_kit.serve.space:space_command",
    "run": "imagenet_kit.pipeline:run_command",
    "plan": "imagenet_kit.plan.command:plan_command",
    "preflight": "imagenet_kit.preflight.command:preflight_command",
    "keys": "imagenet_kit.config.flags:keys_command",
    "launch": "imagenet_kit.launch:launch_command",
}
BENCH_COMMANDS = {
    "train": "imagenet_kit.bench.train:bench_train_command",
    "data": "imagenet_kit.bench.data:bench_data_command",
    "convert": "imagenet_kit.bench.convert:bench_convert_command",
    "demo": "imagenet_kit.bench.demo:bench_demo_command",
    "run": "imagenet_kit.bench.run:bench_run_command",
    "report": "imagenet_kit.bench.report:report_command",
    "lr-sweep": "imagenet_kit.bench.lr_sweep:lr_sweep_command",
    "profiles": "imagenet_kit.bench.profiles:profiles_command",
    "gpu-evidence": "imagenet_kit.bench.gpu_evidence:gpu_evidence_command",
}
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


class KitGroup(click.Group):
    """Imports a command's module only when it runs (Gradio and ONNX take seconds), and turns every expected
    error, the kit's (``KitError``) and Click's usage errors alike, into one red ``error:`` line and exit 2."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx, name):
        if name in self.lazy:
            module, attr = self.lazy[name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KitError as err:
            if getattr(err, "every_rank", False) and os.environ.get("LOCAL_RANK", "0") != "0":
                sys.exit(EXIT_CODE)  # every rank of the job raised it (runtime.on_every_rank): one line per node
            fail(str(err))
        except click.ClickException as err:
            where = f" (see '{err.ctx.command_path} --help')" if getattr(err, "ctx", None) else ""
            fail(err.format_message() + where)


def fail(message: str):
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", soft_wrap=True)
    sys.exit(EXIT_CODE)


@click.group(cls=KitGroup, context_settings=CONTEXT, lazy=COMMANDS)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=print_version,
              help="the kit's version and, from a checkout, its commit")
def cli():
    """From a folder of ImageNet JPEGs to a trained ResNet and a Gradio demo."""


@cli.group("bench", cls=KitGroup, context_settings=CONTEXT, lazy=BENCH_COMMANDS)
def bench():
    """Benchmarks; each appends JSON lines with hardware and command to bench/results/."""


def main():
    try:
        cli(prog_name="imagenet-kit")
    except SystemExit as done:  # Click ends every command this way, success included
        report_exit(done.code)  # for `imagenet-kit launch`, when this process is one of its workers
        raise
