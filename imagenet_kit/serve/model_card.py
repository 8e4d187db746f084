"""What the model card needs from a run folder, and the Hugging Face Space's README.md.

Export records in ``model.json`` what the card shows (``model_cost``, ``run_records``: the recipe from the checkpoint's
config and env.json, the evaluation from eval.json, the training commit), so the card reads the export alone;
``card_info`` completes an older export's model.json from its run folder when ``imagenet-kit space`` builds a
Space. The card's text itself is ``serve/card.py``, which the demo shows too.
"""
from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.runs import ExportFolder, RunFolder
from imagenet_kit.serve.card import card_markdown
from imagenet_kit.serve.predict import load_exported


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def model_cost(model: torch.nn.Module, res: int) -> dict:
    """Parameters, and GMACs of one forward pass on a ``res``×``res`` image: FlopCounterMode counts the FLOPs of
    convolutions and matrix products, two per multiply-accumulate (normalization and activations are not counted,
    as in torchvision's published figures)."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.eval()(torch.zeros(1, 3, res, res))
    return {"params": sum(p.numel() for p in model.parameters()), "gmacs": counter.get_total_flops() / 2 / 1e9}


def run_records(run: RunFolder, cfg: dict, checkpoint_lr: float | None = None,
                checkpoint_world: int | None = None) -> dict:
    """The card's fields from a run's records: the recipe (``cfg``: the checkpoint's config, with env.json's
    resolved precision, peak LR and its rule, processes, hardware and command), the evaluation (eval.json) and the
    commit training ran at. ``checkpoint_*``: the checkpoint's own ``max_lr`` and ``world_size``, for a run whose
    env.json predates them."""
    env = _read_json(run.env) or {}
    train, optim = cfg["train"], cfg["optim"]
    recipe = {
        "name": cfg["name"], "profile": train.get("profile", ""), "epochs": train["epochs"],
        "batch_size": train["batch_size"], "world_size": env.get("world_size", checkpoint_world),
        "precision": env.get("precision") or (None if train["precision"] == "auto" else train["precision"]),
        "precision_setting": train["precision"],
        "peak_lr": env.get("peak_lr", checkpoint_lr), "lr_rule": env.get("lr_rule"),
        "min_res": train["min_res"], "max_res": train["max_res"], "init": cfg["model"].get("init", ""),
        "optim": optim, "hardware": hardware(env), "command": env.get("command"),
    }
    return {"recipe": recipe, "evaluation": evaluation_record(_read_json(run.eval_json)), "train_git": env.get("git")}


def evaluation_record(evaluation: dict | None) -> dict | None:
    """eval.json's figures and what they were measured on (the beton or image folder, by its last two parts)."""
    if not evaluation:
        return None
    measured_on = evaluation.get("data") or evaluation.get("beton")
    return {"top1": evaluation["top1"], "top5": evaluation["top5"], "count": evaluation["count"],
            "res": evaluation["res"], "flip_tta": evaluation.get("flip_tta", False),
            "data": "/".join(Path(measured_on).parts[-2:]) if measured_on else None}


def hardware(env: dict) -> str:
    """'8× NVIDIA H100 80GB HBM3, 26 CPU cores, torch 2.14.1' or 'CPU AMD EPYC (AVX2), 2 CPU cores, torch ...',
    from env.json ("" without one)."""
    if not env:
        return ""
    device = env.get("device") or "unknown device"
    parts = [f"{env['gpu_count']}× {device}" if env.get("gpu_count") else f"CPU {device}"]
    if env.get("cpu_count"):
        parts.append(f"{env['cpu_count']} CPU cores")
    if env.get("torch"):
        parts.append(f"torch {env['torch']}")
    return ", ".join(parts)


def card_info(run_dir: Path, export: ExportFolder, info: dict) -> dict:
    """``info`` (the export's model.json) completed from its run folder: the run's eval.json, which may be newer
    than the export, and for an export made before model.json held them, the recipe (config.yaml, env.json, else
    the best checkpoint's peak LR) and the cost (counted on the exported model itself)."""
    run = RunFolder(Path(run_dir))
    filled = dict(info)
    evaluation = evaluation_record(_read_json(run.eval_json))
    if evaluation is not None:
        filled["evaluation"] = evaluation
    if "recipe" not in info and run.config.is_file():
        env = _read_json(run.env) or {}
        checkpoint = load_checkpoint(run.best) if "peak_lr" not in env and run.best.is_file() else {}
        filled.update(run_records(run, yaml.safe_load(run.config.read_text()), checkpoint.get("max_lr"),
                                  checkpoint.get("world_size")))
    if info.get("gmacs") is None:
        filled.update(model_cost(load_exported(export).model, info["res"]))
    return filled


def readme(info: dict, classes: list[dict], spec: dict, run_name: str, license_id: str = "other") -> str:
    """The Space's README.md: Spaces' YAML header, then the card (the demo's "Model card" tab) and the folder."""
    header = {
        "title": f"imagenet-kit {info['arch']} ({info.get('run') or run_name})"[:60],
        "emoji": "🖼️", "colorFrom": "indigo", "colorTo": "blue",
        "sdk": "gradio", "sdk_version": version("gradio"),
        "python_version": f"{sys.version_info.major}.{sys.version_info.minor}",
        "app_file": "app.py", "pinned": False, "license": license_id,
        "suggested_hardware": "cpu-basic",  # TorchScript on the CPU: the demo needs no GPU
        "short_description": f"Top-k of {info['num_classes']} classes for your photos (imagenet-kit)"[:60],
    }
    return "\n".join([
        "---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# imagenet-kit demo: {info['arch']}, {info['num_classes']} classes", "",
        "Upload a photo and get the model's most likely classes (as many as you choose, above the confidence you "
        "set) with the server's time for it, or drop up to 32 photos at once and download the answers as JSON or "
        "CSV. Made with imagenet-kit (`make space`); the app is the kit's own `imagenet-kit demo`.", "",
        card_markdown(info, classes, spec),
        "## Files", "",
        "`app.py` (serves the demo on port 7860), `imagenet_kit/` (the kit's inference modules, unchanged), "
        "`model/` (TorchScript, classes, preprocessing and the record this card is written from), `examples/`, "
        "`requirements.txt` (every package pinned to the versions the kit tested the folder with). Run locally: "
        "`pip install -r requirements.txt && python app.py --port 7860`.", ""])
