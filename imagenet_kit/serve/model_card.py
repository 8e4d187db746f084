"""The Hugging Face Space's README.md: Spaces' YAML header and a model card written from the run folder's own
records (config.yaml, env.json, eval.json, metrics.jsonl) and the export's model.json."""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import yaml

from imagenet_kit.runs import RunFolder


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
    run = RunFolder(run_dir)
    cfg = yaml.safe_load(run.config.read_text()) if run.config.is_file() else None
    env = _read_json(run.env)
    evaluation = _read_json(run.eval_json)
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
    path = RunFolder(run_dir).metrics
    if not path.is_file():
        return None
    lrs = [json.loads(line).get("lr") for line in path.read_text().splitlines() if line.strip()]
    lrs = [x for x in lrs if x is not None]
    return max(lrs) if lrs else None
