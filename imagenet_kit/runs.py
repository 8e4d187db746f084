"""Where the kit's outputs live: the run folder, its export folder and the betons. The one module that knows.

A run folder (``<output_dir>/<name>/``)::

    config.yaml  env.json  metrics.jsonl  lr_find.json  lr_find.png  schedule.png  curves.png
    eval.json  eval.per_class.csv  tensorboard/  checkpoints/{last,last.prev,best}.pt
    export/{model.ts,model.onnx,model.safetensors,classes.json,preprocess.json,model.json}

An export folder counts as finished once it has ``model.json`` (written last). Betons are
``<beton_dir>/<data.name>-{train,val}-<max_res>.beton`` with ``.classes.json`` and ``.report.json`` beside them.

Inference-only (pathlib alone): the Hugging Face Space folder ships a copy of this file with the demo.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from imagenet_kit.errors import KitError

DEFAULT_OUTPUT_DIR = Path("runs")
CHECKPOINTS = "checkpoints"
LAST, BEST = "last.pt", "best.pt"
LAST_PREVIOUS = "last.prev.pt"  # the last.pt before the newest, kept in case the newest is cut short
EXPORT = "export"
MODEL_INFO = "model.json"
BEST_IN_RUN = f"{CHECKPOINTS}/{BEST}"  # for messages: what a run folder given as a checkpoint stands for
EXPORT_IN_RUN = f"{EXPORT}/{MODEL_INFO}"
# An export's model files, by format.
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx", "safetensors": "model.safetensors"}


class RunNotFound(KitError):
    """No run, checkpoint or export where one was asked for; the message says where it looked."""


@dataclass(frozen=True)
class ExportFolder:
    """An export: the model files, ``classes.json``, ``preprocess.json`` and ``model.json`` (written last)."""
    root: Path

    @property
    def model_info(self) -> Path:
        return self.root / MODEL_INFO

    @property
    def classes(self) -> Path:
        return self.root / "classes.json"

    @property
    def preprocess(self) -> Path:
        return self.root / "preprocess.json"

    @property
    def examples(self) -> Path:
        """Validation photos of the model's own classes, named ``<wnid>_<k>.jpg``: the demo's examples."""
        return self.root / "examples"

    def model_file(self, fmt: str) -> Path:
        return self.root / MODEL_FILES[fmt]

    @property
    def finished(self) -> bool:
        return self.model_info.is_file()


@dataclass(frozen=True)
class RunFolder:
    """One run's folder; every file the stages write is a property here."""
    root: Path

    config = property(lambda self: self.root / "config.yaml")
    env = property(lambda self: self.root / "env.json")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    lr_find_json = property(lambda self: self.root / "lr_find.json")
    lr_find_png = property(lambda self: self.root / "lr_find.png")
    schedule_png = property(lambda self: self.root / "schedule.png")
    curves_png = property(lambda self: self.root / "curves.png")
    eval_json = property(lambda self: self.root / "eval.json")
    tensorboard = property(lambda self: self.root / "tensorboard")
    checkpoints = property(lambda self: self.root / CHECKPOINTS)
    last = property(lambda self: self.checkpoints / LAST)
    best = property(lambda self: self.checkpoints / BEST)
    export = property(lambda self: ExportFolder(self.root / EXPORT))
    space = property(lambda self: self.root / "space")

    @property
    def records(self) -> tuple[Path, ...]:
        """The small files a run keeps of itself: what a mirror copies and a node without them is sent."""
        return (self.config, self.env, self.metrics, self.lr_find_json, self.lr_find_png, self.schedule_png,
                self.curves_png)

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name


def checkpoint_label(checkpoint: Path) -> str:
    """How an export (and so the demo's model card) names its checkpoint: ``runs/<name>/checkpoints/<file>`` for one
    in a run folder, the same on every machine that serves it; otherwise the path as given."""
    path = Path(checkpoint).resolve()
    if path.parent.name == CHECKPOINTS and len(path.parents) > 3:
        return str(path.relative_to(path.parents[3]))
    return str(checkpoint)


def resolve_checkpoint(path: Path | str | None, output_dir: Path | str = DEFAULT_OUTPUT_DIR) -> tuple[Path, RunFolder]:
    """(checkpoint file, its run folder) for a checkpoint file, a run folder (its best checkpoint), a run name
    under ``output_dir``, or None (the newest run under ``output_dir`` that has a best checkpoint)."""
    output_dir = Path(output_dir)
    if path is None:
        found = [RunFolder(p.parent.parent) for p in output_dir.glob(f"*/{BEST_IN_RUN}")]
        if not found:
            raise RunNotFound(f"no trained run found: looked for {output_dir.resolve()}/*/{BEST_IN_RUN}. Train one "
                              "(make mini) or pass --checkpoint RUN_FOLDER_OR_FILE")
        run = max(found, key=lambda r: r.best.stat().st_mtime)
        return run.best, run
    path = Path(path)
    if not path.exists() and (output_dir / path).exists():
        path = output_dir / path
    if path.is_dir():
        run = RunFolder(path)
        if not run.best.is_file():
            raise RunNotFound(f"{path}: no {BEST_IN_RUN} in this run folder; train it first or give a checkpoint file")
        return run.best, run
    if not path.is_file():
        raise RunNotFound(f"{path}: no such checkpoint, run folder or run under {output_dir}")
    return path, RunFolder(path.parent.parent if path.parent.name == CHECKPOINTS else path.parent)


def find_latest_export(output_dir: Path | str = DEFAULT_OUTPUT_DIR) -> ExportFolder | None:
    """The newest finished ``<output_dir>/*/export`` (by its model.json's mtime), or None."""
    found = [ExportFolder(p.parent) for p in Path(output_dir).glob(f"*/{EXPORT_IN_RUN}")]
    return max(found, key=lambda e: e.model_info.stat().st_mtime) if found else None


def resolve_export(model: Path | str | None, output_dir: Path | str = DEFAULT_OUTPUT_DIR) -> ExportFolder:
    """``--model`` as given (an export folder, or a run folder holding one), or the newest export under
    ``output_dir``; the error says where it looked and what to run."""
    if model is not None:
        folder = Path(model)
        if not ExportFolder(folder).finished and ExportFolder(folder / EXPORT).finished:
            folder = folder / EXPORT
        return ExportFolder(folder)
    latest = find_latest_export(output_dir)
    if latest is None:
        raise RunNotFound(f"no exported model found: looked for {Path(output_dir).resolve()}/*/{EXPORT_IN_RUN}. "
                          "Run 'make mini' first (it trains and exports a small model), or pass --model DIR")
    return latest


def torch_hub_weights(hub_dir: str | Path, url: str) -> Path:
    """Where ``torch.hub`` keeps (and looks for) a downloaded weights file: ``<hub dir>/checkpoints/<file>``."""
    return Path(hub_dir) / CHECKPOINTS / Path(urlparse(url).path).name


def beton_paths(beton_dir: str | Path, name: str, max_res: int) -> tuple[Path, Path]:
    """The train and val betons of a dataset: named by ``data.name`` and the stored ``max_res``."""
    base = Path(beton_dir)
    return base / f"{name}-train-{max_res}.beton", base / f"{name}-val-{max_res}.beton"
