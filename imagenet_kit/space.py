"""``imagenet-kit space``: a run's export -> a self-contained Hugging Face Space folder (Gradio SDK).

The folder runs the kit's own demo, not a copy that could drift: its ``imagenet_kit/`` holds byte-identical
copies of the kit's inference-only modules (``app.py``, ``predict.py``, ``images.py`` and the empty
``__init__.py``), which import nothing from training (no FFCV, numba or ONNX). Its ``app.py`` only builds
that demo on ``model/`` and serves it on Spaces' port.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import click
import yaml

from imagenet_kit.predict import FILES, ExportError, find_latest_export

PACKAGE_DIR = Path(__file__).resolve().parent
KIT_ROOT = PACKAGE_DIR.parent
# The inference-only module set; each must import only these and the REQUIREMENTS below.
SHIPPED_MODULES = ("__init__.py", "app.py", "images.py", "predict.py")
# What the shipped modules import: torch + torchvision (predict: TorchScript, preprocess), Pillow + numpy
# (images.load_rgb), gradio and click (app). Pinned to this environment's versions.
REQUIREMENTS = ("torch", "torchvision", "gradio", "pillow", "numpy", "click")
# TorchScript needs no model code; no ONNX (onnxruntime) or safetensors (model.py) in the Space.
MODEL_FILES = (FILES["torchscript"], "classes.json", "preprocess.json", "model.json")
N_EXAMPLES = 3
SIZE_SLACK = 5_000_000  # the folder may exceed the model file by at most this (5 MB)

APP_PY = '''\
"""Hugging Face Space entry point: the kit's own demo (imagenet_kit/app.py) on model/. Local: python app.py --port N"""
import argparse, os
from pathlib import Path

from imagenet_kit.app import build_app, launch

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


class SpaceError(click.ClickException):
    """A Space folder that cannot be made: the message says what is missing or too big."""


def resolve_run(run: Path | None, runs_dir: Path = Path("runs")) -> Path:
    """``--run`` as given, or the newest run folder holding a finished export."""
    if run is not None:
        return Path(run)
    latest = find_latest_export(runs_dir)
    if latest is None:
        raise SpaceError(f"no run with an export found: looked for {Path(runs_dir).resolve()}/*/export/model.json. "
                         "Run 'make mini' first (it trains and exports a small model), or pass --run runs/<name>")
    return latest.parent


def build_space(run_dir: Path, out: Path | None = None, license_id: str = "other") -> dict:
    """Write the Space folder for ``run_dir`` (default ``run_dir/space``); return its path and sizes."""
    run_dir = Path(run_dir)
    export_dir = run_dir / "export"
    if (run_dir / "model.json").is_file() and not (export_dir / "model.json").is_file():
        run_dir, export_dir = run_dir.parent, run_dir  # given the export folder itself
    if not (export_dir / "model.json").is_file():
        raise SpaceError(f"{export_dir}: no model.json, so no finished export in this run folder; "
                         f"make one with 'imagenet-kit export --checkpoint {run_dir}'")
    missing = [name for name in MODEL_FILES if not (export_dir / name).is_file()]
    if missing:
        raise SpaceError(f"{export_dir}: missing {', '.join(missing)}; the Space serves the TorchScript file, "
                         f"so re-export with 'imagenet-kit export --checkpoint {run_dir} --format torchscript'")
    out = Path(out) if out else run_dir / "space"
    # Replaced when rebuilt, so it must be one of ours: never a run folder or anything else given by mistake.
    ours = (out / "app.py").is_file() and (out / "model" / "model.json").is_file()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not ours)):
        raise SpaceError(f"{out} exists and is not a Space folder made by 'imagenet-kit space'; "
                         "remove it or choose another --out")

    info = json.loads((export_dir / "model.json").read_text())
    classes = json.loads((export_dir / "classes.json").read_text())
    spec = json.loads((export_dir / "preprocess.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    # Built next to ``out`` and swapped in at the end: a refused or failed build leaves the old folder alone.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become the Space folder's mode
    try:
        (tmp / "model").mkdir()
        for name in MODEL_FILES:
            if name == "model.json":
                (tmp / "model" / name).write_text(json.dumps(_public(info, run_dir), indent=1))
            else:
                shutil.copyfile(export_dir / name, tmp / "model" / name)
        (tmp / "imagenet_kit").mkdir()
        for name in SHIPPED_MODULES:
            shutil.copyfile(PACKAGE_DIR / name, tmp / "imagenet_kit" / name)
        (tmp / "examples").mkdir()
        for path in pick_examples(classes):
            shutil.copyfile(path, tmp / "examples" / path.name)
        (tmp / "app.py").write_text(APP_PY)
        (tmp / "requirements.txt").write_text(requirements())
        (tmp / "README.md").write_text(readme(run_dir, info, classes, spec, license_id))
        (tmp / ".gitattributes").write_text(GITATTRIBUTES)
        (tmp / ".gitignore").write_text(GITIGNORE)

        model_bytes = (tmp / "model" / FILES["torchscript"]).stat().st_size
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
    prefixes = sorted({str(run_dir.resolve().parent.parent) + os.sep, str(KIT_ROOT) + os.sep}, key=len, reverse=True)

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


def pick_examples(classes: list[dict], n: int = N_EXAMPLES) -> list[Path]:
    """``n`` of the kit's example photos, those of the model's own classes first (file names start with the wnid)."""
    photos = sorted((PACKAGE_DIR / "examples").glob("*.jpg"))
    wnids = {c.get("wnid") for c in classes}
    return sorted(photos, key=lambda p: p.name.split("_")[0] not in wnids)[:n]


def requirements() -> str:
    """requirements.txt: what the shipped modules import, at this environment's versions (no local +cu tags)."""
    lines = []
    for name in REQUIREMENTS:
        try:
            lines.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            raise SpaceError(f"{name} is not installed here; the Space's requirements.txt pins this "
                             "environment's versions, so install the kit first (make setup)") from None
    return "\n".join(lines) + "\n"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def readme(run_dir: Path, info: dict, classes: list[dict], spec: dict, license_id: str = "other") -> str:
    """The Space's README.md: Spaces' YAML header, then a model card from the run folder's own records."""
    header = {
        "title": f"imagenet-kit {info['arch']} ({info.get('run') or run_dir.name})"[:60],
        "emoji": "🖼️", "colorFrom": "indigo", "colorTo": "blue",
        "sdk": "gradio", "sdk_version": version("gradio"),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py", "pinned": False, "license": license_id,
        "short_description": f"Top-5 of {info['num_classes']} classes for a photo (imagenet-kit)"[:60],
    }
    return ("---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n\n"
            + model_card(run_dir, info, classes, spec))


def model_card(run_dir: Path, info: dict, classes: list[dict], spec: dict) -> str:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else None
    env = _read_json(run_dir / "env.json")
    evaluation = _read_json(run_dir / "eval.json")
    n = info["num_classes"]
    names = [c["name"] for c in classes]
    shown = ", ".join(names[:20]) + (f", … ({n - 20} more in model/classes.json)" if n > 20 else "")
    data = info.get("data") or "unknown"

    arch = (f"{info['arch']}{_start(cfg)}, {n}-way classifier head, "
            f"{spec['crop']}×{spec['crop']} px input (shorter side resized to {spec['resize']}, center crop)")
    if info.get("blurpool"):
        arch += ", BlurPool before strided convolutions"
    if info.get("activation", "relu") != "relu":
        arch += f", {info['activation'].capitalize()} activations"
    if info.get("maxblurpool"):
        arch += ", anti-aliased max pooling (MaxBlurPool)"
    if info.get("se_reduction"):
        arch += f", squeeze-and-excitation (reduction {info['se_reduction']}) on every residual branch"
    if info.get("self_attention"):
        arch += ", a simple self-attention layer (fastai's) at the end of the first stage"
    arch += ". Served as TorchScript (`model/model.ts`), checked against the PyTorch model at export."

    if evaluation:
        hardware = _hardware(env)
        measured = (f"**{_pct(evaluation['top1'])}** top-1, {_pct(evaluation['top5'])} top-5 on "
                    f"{evaluation['count']} validation images of {data} at {evaluation['res']} px"
                    f"{' with flip TTA' if evaluation.get('flip_tta') else ''} (`imagenet-kit eval`, eval.json)"
                    f"{'; run on ' + hardware if hardware else ''}.")
    elif info.get("top1") is not None:
        measured = (f"**{_pct(info['top1'])}** top-1 by training's own validation"
                    f"{' after epoch ' + str(info['epoch'] + 1) if info.get('epoch') is not None else ''} "
                    f"(no eval.json in the run folder).")
    else:
        measured = "not measured (the run folder has no eval.json and the checkpoint no validation metrics)."

    recipe = _recipe(run_dir, cfg, env)
    val_count = f" ({evaluation['count']} validation images)" if evaluation else ""
    lines = [
        f"# imagenet-kit demo: {info['arch']}, {n} classes",
        "",
        "Upload a photo and get the model's five most likely classes. Made with "
        "imagenet-kit (`make space`); the app is the kit's own `imagenet-kit demo`.",
        "",
        "## Model card",
        "",
        f"- **Architecture:** {arch}",
        f"- **Data:** {data}{val_count}. Classes ({n}): {shown}.",
        f"- **Recipe:** {recipe}",
        f"- **Measured accuracy:** {measured}",
        f"- **Exported:** {info.get('date', 'unknown')} from run `{info.get('run') or run_dir.name}`.",
        "",
        "## Limits",
        "",
        f"- It knows only these {n} classes. Every photo gets one of them, also a photo of none of them; "
        "the scores are softmax over these classes, not a calibrated confidence.",
        f"- {_margin(evaluation)}Expect lower accuracy on photos unlike the training data's (drawings, close-ups, "
        "several objects, unusual viewpoints).",
        f"- It sees one center crop at {spec['crop']} px: an object near the border may be cut off.",
        "- ImageNet photos carry their collection's biases. This is a demo of a training kit, not a production "
        "model: do not use it for decisions about people, safety or anything that matters.",
        "- ImageNet's terms of access allow non-commercial research and education only; weights trained on its "
        "images inherit that question.",
        "",
        "## Files",
        "",
        "`app.py` (serves the demo on port 7860), `imagenet_kit/` (the kit's inference modules, unchanged), "
        "`model/` (TorchScript, classes, preprocessing, model.json), `examples/`, `requirements.txt`. "
        "Run locally: `pip install -r requirements.txt && python app.py --port 7860`.",
        "",
    ]
    return "\n".join(lines)


def _hardware(env: dict | None) -> str:
    if not env:
        return ""
    device = env.get("device") or "unknown device"
    parts = [f"{env.get('gpu_count')}× {device}" if env.get("gpu_count") else f"CPU {device}"]
    if env.get("cpu_count"):
        parts.append(f"{env['cpu_count']} CPU cores")
    parts.append(f"torch {env.get('torch', '?')}")
    return ", ".join(parts) + " (env.json)"


def _start(cfg: dict | None) -> str:
    """Where training started from, as config.yaml says (model.init: "" random, "torchvision", or a path)."""
    if not cfg:
        return ""
    init = (cfg.get("model") or {}).get("init") or ""
    if not init:
        return ", trained from scratch (random init)"
    if init == "torchvision":
        return ", fine-tuned from torchvision's published ImageNet weights"
    return f", fine-tuned from `{Path(init).name}`"


def _margin(evaluation: dict | None) -> str:
    """How far the measured top-1 can be from the truth: a 95% normal interval on the validation count."""
    if not evaluation or not evaluation.get("count"):
        return "Its accuracy was not measured on held-out images. "
    p, count = evaluation["top1"], evaluation["count"]
    margin = 1.96 * (p * (1 - p) / count) ** 0.5
    return (f"Validated on {count} images only: the top-1 above is known to about ±{100 * margin:.1f} points "
            "(95%). ")


def _recipe(run_dir: Path, cfg: dict | None, env: dict | None) -> str:
    if not cfg:
        return "not recorded (no config.yaml in the run folder)."
    train, optim = cfg["train"], cfg["optim"]
    peak = _peak_lr(run_dir)
    lr = f"peak LR {peak:.3g}" if peak else f"LR {optim['lr']}"
    if str(optim.get("lr")) == "auto":
        lr += " (from the LR range test)"
    world = (env or {}).get("world_size") or 1
    batch = f"batch {train['batch_size']}" + (f"×{world} processes" if world > 1 else "")
    res = (f"progressive resizing {train['min_res']}→{train['max_res']} px" if train["min_res"] != train["max_res"]
           else f"{train['max_res']} px")
    name = optim.get("optimizer", "sgd")  # run folders from before the key existed trained with SGD
    optimizer = (f"SGD (momentum {optim['momentum']}" if name == "sgd" else
                 f"{ {'adamw': 'AdamW', 'radam': 'RAdam'}[name]} (betas {optim['momentum']}, {optim['beta2']}, "
                 f"eps {optim.get('eps', 1e-8):g}")
    if optim.get("lookahead_k"):
        optimizer = f"Lookahead (k {optim['lookahead_k']}, alpha {optim['lookahead_alpha']}) over {optimizer}"
    text = (f"{train['epochs']} epochs, {batch}, {optimizer}, weight decay "
            f"{optim['weight_decay']:g}, label smoothing {optim['label_smoothing']}), {optim['schedule']} schedule, "
            f"{lr}, {res}, precision {train['precision']}, FFCV data loading.")
    if env and env.get("command"):
        text += f" Command: `{env['command']}`"
        if env.get("git"):
            text += f" (kit revision {env['git'][:12]})"
        text += "; full settings in the run's config.yaml."
    return text


def _peak_lr(run_dir: Path) -> float | None:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    lrs = [json.loads(line).get("lr") for line in path.read_text().splitlines() if line.strip()]
    lrs = [x for x in lrs if x is not None]
    return max(lrs) if lrs else None


@click.command("space")
@click.option("--run", "run", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A run folder with an export (or the export folder).  [default: the newest runs/*/ with "
                   "export/model.json]")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Output folder.  [default: RUN/space]")
@click.option("--license", "license_id", default="other", show_default=True,
              help="The Space's license id in its README header (Hugging Face's list, e.g. apache-2.0, mit).")
def space_command(run: Path | None, out: Path | None, license_id: str) -> None:
    """Write a self-contained Hugging Face Space (Gradio) of a run's exported model: the demo's own code,
    the TorchScript model, pinned requirements, three example photos and a model card."""
    try:
        result = build_space(resolve_run(run), out, license_id)
    except ExportError as err:
        raise click.ClickException(str(err)) from None
    rest = result["bytes"] - result["model_bytes"]
    click.echo(f"space: {result['out']} ({result['bytes'] / 1e6:.1f} MB: model {result['model_bytes'] / 1e6:.1f} MB "
               f"+ {rest / 1e3:.0f} kB of app, examples and card)")
    click.echo(f"publish: huggingface-cli upload <user>/<space> {result['out']} . --repo-type=space")
