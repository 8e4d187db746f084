"""Checkpoint -> deployable model folder (TorchScript, ONNX, safetensors), each checked against the eager model.

An export folder (``runs.ExportFolder``) holds the model files plus ``classes.json``, ``preprocess.json`` and
``model.json``, which is written last, so a folder that has one is a finished, parity-checked export.
Loading and running an export (``load_exported``, ``Predictor``, ``preprocess``) lives in ``serve/predict.py``,
which needs no training dependencies.
"""
from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import click
import torch
from rich.table import Table

from imagenet_kit.config import config_from_dict
from imagenet_kit.config.flags import output_dir_option
from imagenet_kit.config.recipes import PACKAGE_DIR
from imagenet_kit.data.pixels import CENTER_CROP_RATIO, IMAGENET_MEAN, IMAGENET_STD
from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.environment import environment, write_json
from imagenet_kit.images import UnreadableImage, load_rgb
from imagenet_kit.models.architecture import architecture, architecture_of
from imagenet_kit.models.factory import create_model, fold_parametrizations, model_kwargs
from imagenet_kit.progress import console
from imagenet_kit.runs import BEST_IN_RUN, EXPORT, MODEL_FILES, ExportFolder, checkpoint_label, resolve_checkpoint
from imagenet_kit.serve.model_card import model_cost, run_records
from imagenet_kit.serve.predict import ExportError, _quiet_deprecations, preprocess

FORMATS = tuple(MODEL_FILES)
# Largest allowed max |logit difference| to the eager fp32 model on the parity batch. The TorchScript file
# runs the same kernels; onnxruntime has its own (fused conv+BN, other summation orders); the safetensors
# weights reloaded into the same module must reproduce the logits exactly.
TOLERANCES = {"torchscript": 1e-4, "onnx": 1e-3, "safetensors": 0.0}
ONNX_OPSET = 17
PARITY_IMAGES = 8
EXAMPLES_PER_CLASS, EXAMPLES_MAX, EXAMPLE_SIDE = 3, 12, 400  # demo example photos: enough to try, small to ship
SAMPLE_VAL = PACKAGE_DIR / "sample_data" / "imagenette-sample" / "val"


def preprocess_spec(res: int, crop_ratio: float = CENTER_CROP_RATIO) -> dict:
    """preprocess.json for evaluation at ``res``: resize the shorter side, then center-crop ``crop_ratio`` of it
    (the run's train.val_crop_ratio, so predictions see what validation saw; ImageNet's standard is 224 of 256)."""
    return {"resize": int(round(res / crop_ratio)), "crop": res, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "interpolation": "bilinear",
            "input": "RGB float NCHW /255 then normalized"}


def _parity_batch(spec: dict, sample_images) -> tuple[torch.Tensor, str]:
    """Real photos through ``preprocess`` when there are any (random tensors miss input-range bugs)."""
    if sample_images is None:
        paths = sorted(SAMPLE_VAL.glob("*/*.JPEG"))[:PARITY_IMAGES]
        source = f"{SAMPLE_VAL}/*/*.JPEG (first {len(paths)})"
    else:
        paths, source = [Path(p) for p in sample_images], f"{len(sample_images)} given images"
    if not paths:
        generator = torch.Generator().manual_seed(0)
        return torch.randn(PARITY_IMAGES, 3, spec["crop"], spec["crop"], generator=generator), "random tensor"
    batch = []
    for path in paths:
        try:
            batch.append(preprocess(load_rgb(path), spec))
        except UnreadableImage as err:
            raise ExportError(f"{path}: cannot use it for the parity check: {err}") from None
    return torch.cat(batch), source


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def _export_torchscript(model, path: Path, batch: torch.Tensor, info: dict) -> torch.Tensor:
    # Traced, not scripted: BlurPoolConv2d and torchvision's ResNet are static graphs, and tracing needs no
    # annotations. check_trace is off because the reloaded file is compared to eager right after.
    with _quiet_deprecations(), torch.no_grad():
        torch.jit.trace(model, batch[:1], check_trace=False).save(str(path))
        reloaded = torch.jit.load(str(path), map_location="cpu")
    with torch.inference_mode():
        return reloaded(batch)


def _export_onnx(model, path: Path, batch: torch.Tensor, info: dict) -> torch.Tensor:
    import onnx
    import onnxruntime

    with _quiet_deprecations(), torch.no_grad():
        torch.onnx.export(model, (batch[:1],), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    onnx.checker.check_model(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])


def _export_safetensors(model, path: Path, batch: torch.Tensor, info: dict) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    # The live module's state dict, not the checkpoint's: the checkpoint may hold channels_last tensors,
    # which safetensors refuses; load_state_dict copied them into this model's contiguous parameters.
    save_file(model.state_dict(), str(path), metadata={"arch": info["arch"], "num_classes": str(info["num_classes"])})
    reloaded = create_model(**architecture_of(info), num_classes=info["num_classes"]).eval()
    reloaded.load_state_dict(load_file(path))
    with torch.inference_mode():
        return reloaded(batch)


def _eval_model(cfg, state: dict) -> torch.nn.Module:
    model = create_model(**{**model_kwargs(cfg.model), "channels_last": False}, num_classes=len(state["classes"]))
    model.load_state_dict(state["model"])
    return model.eval()


EXPORTERS = {"torchscript": _export_torchscript, "onnx": _export_onnx, "safetensors": _export_safetensors}


def export_model(checkpoint: Path, out_dir: Path, formats=FORMATS, res: int | None = None,
                 sample_images=None) -> dict:
    """Write the requested formats and the three JSON files into ``out_dir``; return model.json's content.

    Raises ExportError when a format's logits on the parity batch differ from eager beyond its tolerance.
    """
    checkpoint, export = Path(checkpoint), ExportFolder(Path(out_dir))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ExportError(f"unknown format(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(FORMATS)}")
    state = load_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"])
    res = res or cfg.train.val_res
    classes = state["classes"]
    model = _eval_model(cfg, state)
    # TorchScript and ONNX get plain weights; safetensors keeps the state dict that create_model's
    # model loads (their logits are the same).
    served = fold_parametrizations(_eval_model(cfg, state))
    spec = preprocess_spec(res, cfg.train.val_crop_ratio)
    batch, batch_source = _parity_batch(spec, sample_images)
    with torch.inference_mode():
        expected = model(batch)

    metrics = state.get("metrics") or {}
    env = environment()
    _, run = resolve_checkpoint(checkpoint)  # its run folder's env.json and eval.json complete the model card
    info = {
        **architecture(cfg.model), "num_classes": len(classes), "res": res,
        "run": cfg.name, "data": cfg.data.name,
        # Measured by training's own evaluation (FFCV center crop at train.val_res, flip TTA if set).
        "top1": metrics.get("top1"), "top5": metrics.get("top5"), "epoch": metrics.get("epoch"),
        "epochs": cfg.train.epochs, "val_res": cfg.train.val_res, "flip_tta": cfg.train.flip_tta,
        "checkpoint": checkpoint_label(checkpoint),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": env["device"], "cpu": env["cpu"], "torch": env["torch"], "git": env["git"],
        **model_cost(served, res), **run_records(run, cfg.to_dict(), state.get("max_lr"), state.get("world_size")),
        "parity": {"images": len(batch), "source": batch_source}, "formats": {},
    }

    export.root.mkdir(parents=True, exist_ok=True)
    export.model_info.unlink(missing_ok=True)  # the folder stops counting as an export until done
    for fmt in formats:
        path = export.model_file(fmt)
        exported = EXPORTERS[fmt](model if fmt == "safetensors" else served, path, batch, info)
        delta, tolerance = _max_diff(exported, expected), TOLERANCES[fmt]
        if not delta <= tolerance:  # also catches NaN
            raise ExportError(f"{fmt} parity failed: max |Δlogit| {delta:.3g} vs eager exceeds the tolerance "
                              f"{tolerance:g} on {len(batch)} images ({path})")
        info["formats"][fmt] = {"file": path.name, "bytes": path.stat().st_size, "max_abs_diff": delta,
                                "tolerance": tolerance}
    info["examples"] = write_examples(export, cfg.data.root, classes)
    write_json(export.classes, classes)
    write_json(export.preprocess, spec)
    write_json(export.model_info, info)
    return info


def write_examples(export: ExportFolder, data_root: str, classes: list[dict]) -> int:
    """A few validation photos of the model's own classes in ``export.examples``, so the demo's examples are
    ones it can answer: up to EXAMPLES_PER_CLASS per class, EXAMPLES_MAX in all, classes evenly spread.
    None when the run's val folder is not here (the demo then shows the bundled photos of its classes)."""
    val = Path(data_root) / "val" if data_root else None
    shutil.rmtree(export.examples, ignore_errors=True)
    if val is None or not val.is_dir():
        return 0
    per_class = max(1, min(EXAMPLES_PER_CLASS, EXAMPLES_MAX // len(classes)))
    step = max(1, len(classes) / EXAMPLES_MAX)
    chosen = [classes[int(i * step)] for i in range(min(len(classes), EXAMPLES_MAX))]
    export.examples.mkdir(parents=True)
    written = 0
    for c in chosen:
        for k, path in enumerate(sorted((val / c["wnid"]).glob("*"))[:per_class]):
            try:
                load_rgb(path, EXAMPLE_SIDE).save(export.examples / f"{c['wnid']}_{k}.jpg", quality=90)
                written += 1
            except UnreadableImage:  # the converter listed it already; the demo just shows one photo fewer
                continue
    return written


@click.command("export")
@click.option("--checkpoint", "checkpoint", default=None,
              help=f"A checkpoint file, a run folder or a run name under --output-dir (then its {BEST_IN_RUN}).  "
                   "[default: the newest run]")
@output_dir_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help=f"Output folder.  [default: <run>/{EXPORT}]")
@click.option("--format", "format_list", default=",".join(FORMATS), show_default=True,
              help="Comma-separated formats to write.")
@click.option("--res", type=click.IntRange(min=32), default=None,
              help="Input crop size.  [default: the run's train.val_res]")
def export_command(checkpoint: str | None, output_dir: Path, out: Path | None, format_list: str,
                   res: int | None) -> None:
    """Export a trained checkpoint to TorchScript, ONNX and safetensors, checking each against PyTorch."""
    formats = tuple(f.strip() for f in format_list.split(",") if f.strip())
    checkpoint, run = resolve_checkpoint(checkpoint, output_dir)
    out = out or run.export.root
    info = export_model(checkpoint, out, formats, res)
    table = Table(title=f"{info['arch']} export -> {out}  (parity: {info['parity']['images']} images)")
    for column in ("format", "file", "size", "max |Δlogit|", "tolerance"):
        table.add_column(column, justify="left" if column in ("format", "file") else "right")
    for fmt, entry in info["formats"].items():
        table.add_row(fmt, entry["file"], f"{entry['bytes'] / 1e6:.1f} MB", f"{entry['max_abs_diff']:.2e}",
                      f"{entry['tolerance']:g}")
    console.print(table)
    console.print(f"also wrote classes.json ({info['num_classes']} classes), preprocess.json "
                  f"(crop {info['res']}) and {ExportFolder(out).model_info.name}")
