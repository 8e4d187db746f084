"""``imagenet-kit space``: a run's export -> a self-contained Hugging Face Space folder (Gradio SDK).

The folder runs the kit's own demo, not a copy that could drift: its ``imagenet_kit/`` holds byte-identical
copies of the kit's inference-only modules (``serve/demo.py``, ``serve/answers.py``, ``serve/card.py``,
``serve/predict.py``, ``images.py``, ``runs.py``, ``errors.py`` and the empty ``__init__.py`` files), which import
nothing from training (no FFCV, numba or ONNX). Its ``app.py`` only builds that demo on ``model/`` and serves it on
Spaces' port. Its README.md is the model card the demo shows (``serve/model_card.py``), written from the run's files.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import click

from imagenet_kit.config.flags import output_dir_option
from imagenet_kit.config.recipes import PACKAGE_DIR
from imagenet_kit.errors import KitError
from imagenet_kit.progress import results
from imagenet_kit.runs import DEFAULT_OUTPUT_DIR, EXPORT_IN_RUN, ExportFolder, RunFolder, find_latest_export
from imagenet_kit.serve.demo import EXAMPLES_DIR
from imagenet_kit.serve.model_card import card_info, readme

# The inference-only module set, as paths in the package; each must import only these and the REQUIREMENTS below.
SHIPPED_MODULES = ("__init__.py", "errors.py", "runs.py", "images.py", "serve/__init__.py", "serve/predict.py",
                   "serve/answers.py", "serve/card.py", "serve/demo.py")
# What the shipped modules import: torch + torchvision (predict: TorchScript, preprocess), Pillow + numpy
# (images.load_rgb), gradio and click (app). requirements.txt pins them and what they require to this
# environment's versions.
REQUIREMENTS = ("torch", "torchvision", "gradio", "pillow", "numpy", "click")
# TorchScript needs no model code; no ONNX (onnxruntime) or safetensors (models/factory.py) in the Space.
SERVED = ExportFolder(Path("."))
MODEL_FILES = tuple(p.name for p in (SERVED.model_file("torchscript"), SERVED.classes, SERVED.preprocess,
                                     SERVED.model_info))
SIZE_SLACK = 5_000_000  # the folder may exceed the model file by at most this (5 MB)

APP_PY = '''\
"""Hugging Face Space entry point: the kit's own demo (imagenet_kit/app.py) on model/. Local: python app.py --port N"""
import argparse, os
from pathlib import Path

from imagenet_kit.serve.demo import build_app, launch

here = Path(__file__).resolve().parent
demo = build_app(here / "model", examples=here / "examples")
if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 7860)))  # 7860: Spaces' port
    launch(demo, "0.0.0.0", parser.parse_args().port)
'''

# Hugging Face's default .gitattributes does not send *.ts through LFS, and the Hub refuses plain files over 10 MB.
GITATTRIBUTES = "*.ts filter=lfs diff=lfs merge=lfs -text\n"
GITIGNORE = "__pycache__/\n.gradio/\nflagged/\n"


class SpaceError(KitError):
    """A Space folder that cannot be made: the message says what is missing or too big."""


def resolve_run(run: Path | None, output_dir: Path = DEFAULT_OUTPUT_DIR) -> Path:
    """``--run`` as given (or a run name under ``output_dir``), or the newest run folder holding a finished export."""
    if run is not None:
        run = Path(run)
        return output_dir / run if not run.exists() and (output_dir / run).is_dir() else run
    latest = find_latest_export(output_dir)
    if latest is None:
        raise SpaceError(f"no run with an export found: looked for {Path(output_dir).resolve()}/*/{EXPORT_IN_RUN}. "
                         "Run 'make mini' first (it trains and exports a small model), or pass --run runs/<name>")
    return latest.root.parent


def build_space(run_dir: Path, out: Path | None = None, license_id: str = "other") -> dict:
    """Write the Space folder for ``run_dir`` (default ``run_dir/space``); return its path and sizes."""
    run_dir = Path(run_dir)
    export_dir = RunFolder(run_dir).export.root
    if ExportFolder(run_dir).finished and not ExportFolder(export_dir).finished:
        run_dir, export_dir = run_dir.parent, run_dir  # given the export folder itself
    if not ExportFolder(export_dir).finished:
        raise SpaceError(f"{export_dir}: no {SERVED.model_info.name}, so no finished export in this run folder; "
                         f"make one with 'imagenet-kit export --checkpoint {run_dir}'")
    missing = [name for name in MODEL_FILES if not (export_dir / name).is_file()]
    if missing:
        raise SpaceError(f"{export_dir}: missing {', '.join(missing)}; the Space serves the TorchScript file, "
                         f"so re-export with 'imagenet-kit export --checkpoint {run_dir} --format torchscript'")
    out = Path(out) if out else RunFolder(run_dir).space
    # Replaced when rebuilt, so it must be one of ours: never a run folder or anything else given by mistake.
    ours = (out / "app.py").is_file() and ExportFolder(out / "model").finished
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not ours)):
        raise SpaceError(f"{out} exists and is not a Space folder made by 'imagenet-kit space'; "
                         "remove it or choose another --out")

    export = ExportFolder(export_dir)
    # The record the card is written from: the Space's model.json, so its demo shows the README's card.
    info = _public(card_info(run_dir, export, json.loads(export.model_info.read_text())), run_dir)
    classes = json.loads(export.classes.read_text())
    spec = json.loads(export.preprocess.read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built next to ``out`` and swapped in at the end: a refused or failed build leaves the old folder alone.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the Space folder's mode
    try:
        (tmp / "model").mkdir()
        for name in MODEL_FILES:
            if name == SERVED.model_info.name:
                (tmp / "model" / name).write_text(json.dumps(info, indent=1))
            else:
                shutil.copyfile(export_dir / name, tmp / "model" / name)
        for name in SHIPPED_MODULES:
            (tmp / "imagenet_kit" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(PACKAGE_DIR / name, tmp / "imagenet_kit" / name)
        (tmp / "examples").mkdir()
        for path in pick_examples(ExportFolder(export_dir), classes):
            shutil.copyfile(path, tmp / "examples" / path.name)
        (tmp / "app.py").write_text(APP_PY)
        (tmp / "requirements.txt").write_text(requirements())
        (tmp / "README.md").write_text(readme(info, classes, spec, run_dir.name, license_id))
        (tmp / ".gitattributes").write_text(GITATTRIBUTES)
        (tmp / ".gitignore").write_text(GITIGNORE)

        model_bytes = (tmp / "model" / SERVED.model_file("torchscript").name).stat().st_size
        total = folder_bytes(tmp)
        if total > model_bytes + SIZE_SLACK:
            raise SpaceError(f"the Space folder would be {total / 1e6:.1f} MB, more than the model "
                             f"({model_bytes / 1e6:.1f} MB) + {SIZE_SLACK / 1e6:.0f} MB; not written")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": out, "bytes": total, "model_bytes": model_bytes}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _public(info: dict, run_dir: Path) -> dict:
    """model.json without this machine's absolute paths (the Space is public): relative to the runs' parent."""
    prefixes = sorted({str(run_dir.resolve().parent.parent) + os.sep, str(PACKAGE_DIR.parent) + os.sep}, key=len,
                      reverse=True)

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, str):
            for prefix in prefixes:
                value = value.replace(prefix, "")
        return value
    return strip(info)


def pick_examples(export: ExportFolder, classes: list[dict]) -> list[Path]:
    """The demo's examples, all of the model's own classes: the export's validation photos, else the kit's
    bundled photos of those classes (file names start with the wnid)."""
    if export.examples.is_dir():
        return sorted(export.examples.glob("*.jpg"))
    wnids = {c.get("wnid") for c in classes}
    return [p for p in sorted(EXAMPLES_DIR.glob("*.jpg")) if p.name.split("_")[0] in wnids]


def requirements() -> str:
    """requirements.txt: what the shipped modules import, then everything those require on every platform, each
    at this environment's version (no local +cu tags), so a Space built next year installs what was tested here.
    Platform-specific requirements (torch's CUDA libraries, triton) are left to the pins of what requires them."""
    lines, wanted = {}, list(REQUIREMENTS)
    while wanted:
        name = re.sub(r"[-_.]+", "-", wanted.pop(0)).lower()  # PEP 503's normalized name
        if name in lines:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise SpaceError(f"{name} is not installed here; the Space's requirements.txt pins this "
                             "environment's versions, so install the kit first (make setup)") from None
        lines[name] = f"{name}=={dist.version.split('+')[0]}"
        # PEP 508: the name, then extras, version and, after a ";", the marker that makes it conditional
        wanted += [re.match(r"[A-Za-z0-9._-]+", r)[0] for r in dist.requires or [] if ";" not in r]
    return "\n".join(lines.values()) + "\n"


@click.command("space")
@click.option("--run", "run", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A run folder with an export (or the export folder, or a run name under --output-dir).  "
                   "[default: the newest run with a finished export]")
@output_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder.  [default: RUN/space]")
@click.option("--license", "license_id", default="other", show_default=True,
              help="The Space's license id in its README header (Hugging Face's list, e.g. apache-2.0, mit).")
def space_command(run: Path | None, output_dir: Path, out: Path | None, license_id: str) -> None:
    """Write a self-contained Hugging Face Space (Gradio) of a run's exported model: the demo's own code,
    the TorchScript model, pinned requirements, three example photos and a model card."""
    result = build_space(resolve_run(run, output_dir), out, license_id)
    rest = result["bytes"] - result["model_bytes"]
    results.out(f"space: {result['out']} ({result['bytes'] / 1e6:.1f} MB: model {result['model_bytes'] / 1e6:.1f} MB "
               f"+ {rest / 1e3:.0f} kB of app, examples and card)")
    results.out(f"publish: huggingface-cli upload <user>/<space> {result['out']} . --repo-type=space")
