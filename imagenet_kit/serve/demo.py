"""Gradio demo: upload a photo, get the exported model's top-5 classes.

Gradio is imported inside the functions that need it: it takes seconds to import, and the CLI that
mounts ``demo_command`` should not pay that for every other command.

Inference-only (imports ``errors``, ``runs``, ``images`` and ``serve.predict``, never training code):
``imagenet-kit space`` ships a byte-identical copy of this file, so a Hugging Face Space runs exactly this demo.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch

from imagenet_kit.errors import KitError
from imagenet_kit.images import UnreadableImage, load_rgb
from imagenet_kit.runs import DEFAULT_OUTPUT_DIR, resolve_export, torch_hub_weights
from imagenet_kit.serve.predict import Predictor, load_exported

if TYPE_CHECKING:
    import gradio as gr

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
CLASSES_SHOWN = 100
log = logging.getLogger("imagenet_kit.demo")
MAX_UPLOAD = "25mb"  # refused by Gradio before it is stored; phone photos are 2-12 MB


def torchvision_predictor() -> Predictor:
    """torchvision's ResNet-50 (IMAGENET1K_V2, 1000 classes) with its own eval transform as the spec."""
    from torchvision.models import ResNet50_Weights, resnet50

    weights = ResNet50_Weights.IMAGENET1K_V2
    try:
        model = resnet50(weights=weights)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a torn download fails its hash check
        target = torch_hub_weights(torch.hub.get_dir(), weights.url)
        raise KitError(
            f"could not load torchvision's ResNet50_Weights.IMAGENET1K_V2 ({type(err).__name__}: {err}). "
            f"On an offline host, download {weights.url} elsewhere and place it at {target}") from None
    transform = weights.transforms()
    spec = {"resize": transform.resize_size[0], "crop": transform.crop_size[0], "mean": list(transform.mean),
            "std": list(transform.std), "interpolation": transform.interpolation.value,
            "input": "RGB float NCHW /255 then normalized"}
    published = weights.meta["_metrics"]["ImageNet-1K"]
    info = {"arch": "resnet50", "num_classes": len(weights.meta["categories"]), "data": "ImageNet-1K",
            "top1": published["acc@1"] / 100, "top5": published["acc@5"] / 100, "epoch": None,
            "res": spec["crop"], "source": "torchvision's ResNet50_Weights.IMAGENET1K_V2 (published accuracy)"}
    # wnids None: ImageNet-1K's 1000 classes, which every bundled photo is one of
    return Predictor(model, spec, list(weights.meta["categories"]), info, "torchvision")


def model_card(info: dict) -> str:
    """The Markdown panel: which model, trained on what, how good, and where it came from."""
    if info.get("top1") is None:
        accuracy = "not measured (the checkpoint has no validation metrics)"
    else:
        accuracy = f"**{100 * info['top1']:.2f}%**"
        if info.get("top5") is not None:
            accuracy += f" (top-5 {100 * info['top5']:.2f}%)"
        if info.get("epoch") is not None:  # metrics.jsonl counts epochs from 0
            accuracy += f" on the validation split after epoch {info['epoch'] + 1} of {info['epochs']}"
    if "source" in info:
        origin = info["source"]
    else:
        origin = f"exported {info['date']} from `{info['checkpoint']}`"
    trained_on = info["data"] + (f" (run `{info['run']}`)" if info.get("run") else "")
    return (f"## imagenet-kit demo\n"
            f"**Model:** {info['arch']}, {info['num_classes']} classes, {info['res']} px input  \n"
            f"**Trained on:** {trained_on}  \n"
            f"**Measured top-1:** {accuracy}  \n"
            f"**Origin:** {origin}")


def example_photos(predictor: Predictor, examples: Path | None = None) -> list[Path]:
    """The page's examples, all of classes the model has: ``examples`` if given, else the export's own
    (validation photos it carries), else the bundled photos whose wnid (file name prefix) is one of its classes."""
    if examples is None and predictor.export is not None and predictor.export.examples.is_dir():
        examples = predictor.export.examples
    if examples is not None:
        return sorted(Path(examples).glob("*.jpg"))
    bundled = sorted(EXAMPLES_DIR.glob("*.jpg"))
    if predictor.wnids is None:
        return bundled
    return [p for p in bundled if p.name.split("_")[0] in set(predictor.wnids)]


def class_list(names: list[str], shown: int = CLASSES_SHOWN) -> str:
    """The classes the model can answer, as the page lists them (all up to ``shown``, then the first ones)."""
    if len(names) <= shown:
        return f"**It answers with one of its {len(names)} classes:** " + ", ".join(names)
    return (f"**It answers with one of its {len(names):,} classes**, from " + ", ".join(names[:shown])
            + f" to {names[-1]}")


def build_app(model: Path | str | Predictor, examples: Path | str | None = None) -> gr.Blocks:
    """The demo page for an export folder (or an already loaded predictor); ``examples``: a folder of *.jpg to
    show instead of ``example_photos``' choice."""
    import gradio as gr

    predictor = model if isinstance(model, Predictor) else load_exported(Path(model))

    def classify(path: str) -> dict:
        try:
            image = load_rgb(Path(path))
        except UnreadableImage as err:
            log.warning("rejected upload %s: %s", Path(path).name, err)  # one line, no traceback
            raise gr.Error(f"Cannot classify this file: {err}", print_exception=False) from None
        return dict(predictor.predict(image, k=5))

    def classify_upload(image: dict | None) -> dict | None:
        # Runs with preprocess=False, so this receives Gradio's file payload (already checked to be a file
        # Gradio received or cached). gr.Image's own preprocessing would PIL.Image.open the file first and
        # fail on non-images and decompression bombs with a generic error; load_rgb gives the reason.
        return classify(image["path"]) if image else None

    with gr.Blocks(title="imagenet-kit demo", analytics_enabled=False) as demo:
        gr.Markdown(model_card(predictor.info))
        gr.Markdown(class_list(predictor.names), elem_id="classes")
        with gr.Row():
            # image_mode=None: Gradio hands over the file as uploaded; load_rgb does the conversion.
            image = gr.Image(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"])
            label = gr.Label(num_top_classes=5, label="Top-5")
        button = gr.Button("Classify", variant="primary")
        # Not image.change: Gradio fires it twice when an upload replaces an image, doubling the work.
        gr.on([image.upload, button.click], classify_upload, inputs=image, outputs=label, api_name="predict",
              preprocess=False)
        image.clear(lambda: None, outputs=label, api_visibility="private")
        photos = example_photos(predictor, Path(examples) if examples else None)
        if photos:  # the examples are the kit's own JPEGs, so Gradio's preprocessing (their path) is safe
            gr.Examples(examples=[[str(p)] for p in photos], inputs=image, outputs=label, fn=classify,
                        run_on_click=True, cache_examples=False, label="Example photos of the model's classes")
    return demo


def launch(demo: gr.Blocks, host: str, port: int, prevent_thread_lock: bool = False):
    """Serve ``demo``; with ``prevent_thread_lock`` return at once (tests run it in the background)."""
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=prevent_thread_lock,
                       max_file_size=MAX_UPLOAD, ssr_mode=False)


@click.command("demo")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="An export folder, or a run folder holding one.  [default: the newest export under --output-dir]")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUTPUT_DIR,
              show_default=True, help="Where run folders are (as train and run wrote them).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0: all).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535))
@click.option("--weights", type=click.Choice(["torchvision"]), default=None,
              help="Serve torchvision's pretrained ResNet-50 (1000 ImageNet classes) instead of an export.")
def demo_command(model: Path | None, output_dir: Path, host: str, port: int, weights: str | None) -> None:
    """Serve a web page that classifies uploaded photos with an exported model."""
    if weights and model:
        raise click.UsageError("--weights and --model exclude each other")
    predictor = torchvision_predictor() if weights else load_exported(resolve_export(model, output_dir))
    launch(build_app(predictor), host, port)
