"""The model card, written from an export's own files: ``model.json`` (what export and ``imagenet-kit space`` recorded
from the run folder), ``classes.json`` and ``preprocess.json``. The demo's "Model card" tab and the Hugging Face
Space's README.md (``serve/model_card.py``) show the same text.

Inference-only (the standard library and ``runs``): the Space folder ships a byte-identical copy of this file.
A field a record lacks (an export made before the kit recorded it) reads "not recorded"; no figure is made up here.
"""
from __future__ import annotations

from pathlib import Path

from imagenet_kit.runs import ExportFolder

NOT_RECORDED = "not recorded"
CLASSES_NAMED = 20
FILES = ExportFolder(Path("."))  # the export's file names, for the code that loads it


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def headline(info: dict) -> str:
    """The lines above the demo's tabs: which model, trained on what, how good."""
    evaluation = info.get("evaluation") or {}
    top1, res = evaluation.get("top1", info.get("top1")), evaluation.get("res", info["res"])
    accuracy = f"**{_pct(top1)}** top-1" if top1 is not None else "accuracy not measured"
    exported = (info.get("date") or "")[:10] or NOT_RECORDED  # the day of its ISO timestamp
    origin = info.get("source") or f"run `{info.get('run') or NOT_RECORDED}`, exported {exported}"
    return (f"## imagenet-kit demo: {info['arch']}, {info['num_classes']} classes\n"
            f"{accuracy} on {info.get('data') or 'its validation data'} at {res} px · {origin} · "
            "the **Model card** tab tells the rest")


def card_markdown(info: dict, classes: list[dict], spec: dict) -> str:
    """The whole card: model, recipe, measured accuracy, origin, code that loads the export, limits."""
    n = info["num_classes"]
    names = [c["name"] for c in classes]
    shown = ", ".join(names[:CLASSES_NAMED]) + (f", … ({n - CLASSES_NAMED} more in {FILES.classes.name})"
                                                 if n > CLASSES_NAMED else "")
    lines = [
        "## Model card",
        "",
        f"- **Architecture:** {architecture(info, spec)}",
        f"- **Resolution:** {resolution(info, spec)}",
        f"- **Recipe:** {recipe(info)}",
        f"- **Measured accuracy:** {measured(info)}",
        f"- **Data:** {info.get('data') or NOT_RECORDED}, {n} classes: {shown}.",
        f"- **Origin:** {origin(info)}",
        "",
        *load_code(info),
        "## Limits",
        "",
        f"- It knows only these {n} classes. Every photo gets one of them, also a photo of none of them; "
        "the scores are softmax over these classes, not a calibrated confidence.",
        f"- {margin(info.get('evaluation'))}Expect lower accuracy on photos unlike the training data's (drawings, "
        "close-ups, several objects, unusual viewpoints).",
        f"- It sees one center crop at {spec['crop']} px: an object near the border may be cut off.",
        "- ImageNet photos carry their collection's biases. This is a demo of a training kit, not a production "
        "model: do not use it for decisions about people, safety or anything that matters.",
        "- ImageNet's terms of access allow non-commercial research and education only; weights trained on its "
        "images inherit that question.",
        "",
    ]
    return "\n".join(lines)


EXTRAS = (("blurpool", "BlurPool before strided convolutions"),
          ("maxblurpool", "anti-aliased max pooling (MaxBlurPool)"),
          ("self_attention", "a simple self-attention layer (fastai's) at the end of the first stage"))


def architecture(info: dict, spec: dict) -> str:
    text = info["arch"] + start(info.get("recipe") or {}) + f", {info['num_classes']}-way classifier head"
    if info.get("activation", "relu") != "relu":
        text += f", {info['activation'].capitalize()} activations"
    if info.get("se_reduction"):
        text += f", squeeze-and-excitation (reduction {info['se_reduction']}) on every residual branch"
    text += "".join(f", {words}" for key, words in EXTRAS if info.get(key))
    if info.get("params") is None:
        return text + f"; parameters and GMACs {NOT_RECORDED}."
    counted = "as published" if info.get("source") else "counted by torch's FlopCounterMode at export"
    return (text + f"; {info['params'] / 1e6:.2f} M parameters, {info['gmacs']:.3g} GMACs per image at "
            f"{spec['crop']}×{spec['crop']} px (multiply-accumulates of its convolutions and matrix products, "
            f"{counted}).")


def start(rec: dict) -> str:
    """Where training started from, as the run's ``model.init`` says ("": random, "torchvision", or a path)."""
    if "init" not in rec:
        return ""
    if not rec["init"]:
        return ", trained from scratch (random init)"
    if rec["init"] == "torchvision":
        return ", fine-tuned from torchvision's published ImageNet weights"
    return f", fine-tuned from `{Path(rec['init']).name}`"


def resolution(info: dict, spec: dict) -> str:
    rec = info.get("recipe") or {}
    if rec.get("min_res") is None:
        trained = f"trained at a resolution {NOT_RECORDED}"
    elif rec["min_res"] != rec["max_res"]:
        trained = f"trained at {rec['min_res']}→{rec['max_res']} px (progressive resizing)"
    else:
        trained = f"trained at {rec['max_res']} px"
    return (f"{trained}; evaluated and served at {spec['crop']}×{spec['crop']} px (shorter side resized to "
            f"{spec['resize']}, {spec['interpolation']}, then center crop).")


def optimizer(optim: dict) -> str:
    """'SGD (momentum 0.9, weight decay 5e-05, label smoothing 0.1)', from the run's ``optim:`` settings."""
    name = optim.get("optimizer", "sgd")  # run folders from before the key existed trained with SGD
    if name == "sgd":
        text = f"SGD (momentum {optim['momentum']}"
    else:
        text = (f"{ {'adamw': 'AdamW', 'radam': 'RAdam'}.get(name, name)} (betas {optim['momentum']}, "
                f"{optim['beta2']}, eps {optim.get('eps', 1e-8):g}")
    text += f", weight decay {optim['weight_decay']:g}, label smoothing {optim['label_smoothing']})"
    if optim.get("lookahead_k"):
        text = f"Lookahead (k {optim['lookahead_k']}, alpha {optim['lookahead_alpha']}) over {text}"
    return text


def recipe(info: dict) -> str:
    rec = info.get("recipe")
    if not rec:
        return f"{NOT_RECORDED} ({info['source']})." if info.get("source") else f"{NOT_RECORDED}."
    name = f"`{rec['name']}`" + (f" with GPU profile `{rec['profile']}`" if rec.get("profile") else "")
    peak = f"peak LR {rec['peak_lr']:.3g}" if rec.get("peak_lr") is not None else f"peak LR {NOT_RECORDED}"
    if rec.get("lr_rule"):
        peak += f", set by {rec['lr_rule']}"
    world, precision = rec.get("world_size"), rec.get("precision")
    if world is None:
        batch = f"batch {rec['batch_size']} per process (processes {NOT_RECORDED})"
    else:
        batch = f"batch {rec['batch_size']}" + (f" × {world} processes = {rec['batch_size'] * world}" if world > 1
                                                else "")
    if precision is None:
        precision = f"{NOT_RECORDED} (the recipe says {rec['precision_setting']})"
    text = (f"{name}: {rec['epochs']} epochs, {optimizer(rec['optim'])}, {rec['optim']['schedule']} schedule, "
            f"{peak}, precision {precision}, {batch}")
    if rec.get("hardware"):
        text += f", on {rec['hardware']}"
    text += "."
    if rec.get("command"):
        text += f" Command: `{rec['command']}`."
    return text


def measured(info: dict) -> str:
    evaluation = info.get("evaluation")
    if evaluation:
        measured_on = f" (`{evaluation['data']}`)" if evaluation.get("data") else ""
        return (f"**{_pct(evaluation['top1'])}** top-1, {_pct(evaluation['top5'])} top-5 on {evaluation['count']} "
                f"validation images of {info.get('data') or 'its data'}{measured_on} at {evaluation['res']} px"
                f"{' with flip TTA' if evaluation.get('flip_tta') else ''} (`imagenet-kit eval`, eval.json).")
    if info.get("top1") is not None and info.get("source"):
        return f"**{_pct(info['top1'])}** top-1, {_pct(info['top5'])} top-5 on {info['data']}: {info['source']}."
    if info.get("top1") is not None:
        after = f" after epoch {info['epoch'] + 1}" if info.get("epoch") is not None else ""  # counted from 0
        return (f"**{_pct(info['top1'])}** top-1, {_pct(info['top5'])} top-5 by training's own validation{after} "
                "(no eval.json in the run folder).")
    return "not measured (no eval.json in the run folder and no validation metrics in the checkpoint)."


def commit(git: str) -> str:
    """'`9741c11c6f92`', marked when the tree had uncommitted changes (``environment.git_revision``'s -dirty)."""
    return f"`{git[:12]}`" + (" (with uncommitted changes)" if git.endswith("-dirty") else "")


def origin(info: dict) -> str:
    if info.get("source"):
        return info["source"] + "."
    trained, exported = info.get("train_git"), info.get("git")
    return (f"run `{info.get('run') or NOT_RECORDED}`, checkpoint `{info.get('checkpoint') or NOT_RECORDED}`, "
            + (f"trained at kit commit {commit(trained)}" if trained else f"training commit {NOT_RECORDED}")
            + f"; exported {info.get('date') or NOT_RECORDED} "
            + (f"at kit commit {commit(exported)}." if exported else f"(export commit {NOT_RECORDED})."))


def load_code(info: dict) -> list[str]:
    """Python that classifies a photo with the export's files and no kit: TorchScript, then ONNX Runtime."""
    formats = info.get("formats") or {}
    if "torchscript" not in formats:
        return []
    lines = ["## Use it without the kit", "",
             f"In the folder with `{FILES.model_file('torchscript').name}`, `{FILES.classes.name}` and "
             f"`{FILES.preprocess.name}` (this Space's `model/`), with torch and torchvision:", "",
             "```python", *TORCHSCRIPT_CODE, "```", ""]
    if "onnx" in formats:
        lines += [f"Or with ONNX Runtime and `{FILES.model_file('onnx').name}` from the same export (a Space "
                  "ships only the TorchScript file), on the `x` above:", "", "```python", *ONNX_CODE, "```", ""]
    return lines


TORCHSCRIPT_CODE = (
    "import json",
    "import torch",
    "import torchvision.transforms.functional as TF",
    "from PIL import Image, ImageOps",
    "",
    f'spec = json.load(open("{FILES.preprocess.name}"))',
    f'names = [c["name"] for c in json.load(open("{FILES.classes.name}"))]',
    f'model = torch.jit.load("{FILES.model_file("torchscript").name}").eval()',
    "",
    'image = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")',
    'image = TF.resize(image, spec["resize"], interpolation=TF.InterpolationMode(spec["interpolation"]))',
    'x = TF.normalize(TF.to_tensor(TF.center_crop(image, spec["crop"])), spec["mean"], spec["std"])[None]',
    "with torch.inference_mode():",
    "    probs = model(x).softmax(1)[0]",
    "print(names[int(probs.argmax())], float(probs.max()))",
)
ONNX_CODE = (
    "import onnxruntime",
    "",
    f'session = onnxruntime.InferenceSession("{FILES.model_file("onnx").name}", providers=["CPUExecutionProvider"])',
    'logits = session.run(None, {"input": x.numpy()})[0]',
    "print(names[int(logits[0].argmax())])",
)


def margin(evaluation: dict | None) -> str:
    """How far the measured top-1 can be from the truth: a 95% normal interval on the validation count."""
    if not evaluation or not evaluation.get("count"):
        return "Its accuracy was not measured on held-out images. "
    p, count = evaluation["top1"], evaluation["count"]
    half_width = 1.96 * (p * (1 - p) / count) ** 0.5
    return (f"Validated on {count} images only: the top-1 above is known to about ±{100 * half_width:.1f} points "
            "(95%). ")
