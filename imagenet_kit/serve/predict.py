"""Inference on an export folder: the predictor, ``preprocess`` and finding the newest export.

``preprocess`` is the single implementation of ``preprocess.json``: the export's parity check, the demo,
its benchmark and any evaluation of an export all call it, so they all see the same pixels.

Inference-only: torch, torchvision and Pillow, nothing from training (no FFCV, numba, ONNX). The Hugging
Face Space folder (``imagenet-kit space``) ships a byte-identical copy of this file.
"""
from __future__ import annotations

import contextlib
import json
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from imagenet_kit.errors import KitError
from imagenet_kit.runs import ExportFolder


class ExportError(KitError):
    """An export that cannot be made or trusted; the message names the file, the Δ or the missing piece."""


def preprocess(image: Image.Image, spec: dict) -> torch.Tensor:
    """RGB PIL image -> 1x3xHxW float tensor: shorter side to ``resize``, center crop, /255, normalize.

    Open files with ``load_rgb`` (EXIF rotation, CMYK, 16-bit, alpha); ``convert`` changes nothing in its output.
    """
    image = TF.resize(image.convert("RGB"), spec["resize"], interpolation=InterpolationMode(spec["interpolation"]))
    image = TF.center_crop(image, spec["crop"])
    x = TF.pil_to_tensor(image).float().div_(255)
    return TF.normalize(x, spec["mean"], spec["std"]).unsqueeze(0)


@dataclass(frozen=True)
class Timing:
    """The server's time for one forward pass over ``images`` photos, in seconds: ``preprocess`` (resize, crop,
    normalize each decoded photo) and ``model`` (the forward pass, softmax and top-k). Decoding the files is not in
    it."""
    preprocess: float
    model: float
    images: int

    @property
    def total_ms(self) -> float:
        return 1000 * (self.preprocess + self.model)

    @property
    def per_image_ms(self) -> float:
        """The batch's time shared out evenly: one forward pass has no per-photo time of its own."""
        return self.total_ms / self.images


class Predictor:
    """A classifier plus the preprocessing and class names it was exported with."""

    def __init__(self, model: torch.nn.Module, spec: dict, names: list[str], info: dict, backend: str,
                 wnids: list[str] | None = None, export: ExportFolder | None = None):
        """``wnids``: the classes' WordNet IDs (None: ImageNet-1K's, in its order); ``export``: the folder it came
        from, if any."""
        self.model, self.spec, self.names, self.info, self.backend = model.eval(), spec, names, info, backend
        self.wnids, self.export = wnids, export

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(batch)

    def predict(self, image: Image.Image, k: int = 5) -> list[tuple[str, float]]:
        """Top-``k`` (class name, softmax probability), most likely first."""
        return self.predict_batch([image], k)[0][0]

    def predict_batch(self, images: Iterable[Image.Image], k: int = 5) -> tuple[list[list[tuple[str, float]]],
                                                                                Timing | None]:
        """Each photo's top-``k``, from one forward pass over all of them, and the time it took (None: no photos).
        ``images`` may decode each photo as it is asked for: that time is not counted."""
        tensors, preprocess_s = [], 0.0
        for image in images:
            start = time.perf_counter()
            tensors.append(preprocess(image, self.spec))
            preprocess_s += time.perf_counter() - start
        if not tensors:
            return [], None
        start = time.perf_counter()
        top = self.logits(torch.cat(tensors)).softmax(1).topk(min(k, len(self.names)), dim=1)
        timing = Timing(preprocess_s, time.perf_counter() - start, len(tensors))
        return [[(self.names[i], p) for p, i in zip(probs, indices, strict=True)]
                for probs, indices in zip(top.values.tolist(), top.indices.tolist(), strict=True)], timing


@contextlib.contextmanager
def _quiet_deprecations():
    # torch 2.9+ flags torch.jit and the TorchScript-based ONNX exporter as deprecated. Both still work and
    # are what this export needs (the torch.export-based ONNX exporter requires onnxscript), so the
    # warnings would only be noise in every export and demo start.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def load_exported(model_dir: Path | ExportFolder) -> Predictor:
    """The predictor of an export folder: TorchScript if exported, else safetensors into ``create_model``."""
    export = model_dir if isinstance(model_dir, ExportFolder) else ExportFolder(Path(model_dir))
    if not export.finished:
        raise ExportError(f"{export.root}: no {export.model_info.name}, so not a finished export; make one with "
                          "'imagenet-kit export'")
    info = json.loads(export.model_info.read_text())
    spec = json.loads(export.preprocess.read_text())
    classes = json.loads(export.classes.read_text())
    names, wnids = [c["name"] for c in classes], [c.get("wnid", "") for c in classes]
    if export.model_file("torchscript").is_file():
        with _quiet_deprecations():
            model = torch.jit.load(str(export.model_file("torchscript")), map_location="cpu")
        return Predictor(model, spec, names, info, "torchscript", wnids, export)
    if export.model_file("safetensors").is_file():
        from safetensors.torch import load_file

        # not shipped in a Space folder (it serves model.ts)
        from imagenet_kit.models.architecture import architecture_of
        from imagenet_kit.models.factory import create_model

        model = create_model(**architecture_of(info), num_classes=info["num_classes"])
        model.load_state_dict(load_file(export.model_file("safetensors")))
        return Predictor(model, spec, names, info, "safetensors", wnids, export)
    raise ExportError(f"{export.root}: neither {export.model_file('torchscript').name} nor "
                      f"{export.model_file('safetensors').name} to load; export with --format torchscript or "
                      "safetensors")
