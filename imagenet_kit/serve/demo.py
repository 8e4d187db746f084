"""Gradio demo: upload a photo, get the exported model's top-5 classes.

Gradio is imported inside the functions that need it: it takes seconds to import, and the CLI that
mounts ``demo_command`` should not pay that for every other command.

Inference-only (imports ``errors``, ``runs``, ``images`` and ``serve.predict``, never training code):
``imagenet-kit space`` ships a byte-identical copy of this file, so a Hugging Face Space runs exactly this demo.
"""
from __future__ import annotations

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


def build_app(model: Path | str | Predictor, examples: Path | str = EXAMPLES_DIR) -> gr.Blocks:
    """The demo page for an export folder (or an already loaded predictor), with ``examples``/*.jpg below."""
    import gradio as gr

    predictor = model if isinstance(model, Predictor) else load_exported(Path(model))

    def classify(path: str) -> dict:
        try:
            image = load_rgb(Path(path))
        except UnreadableImage as err:
            raise gr.Error(f"Cannot classify this file: {err}") from None
        return dict(predictor.predict(image, k=5))

    def classify_upload(image: dict | None) -> dict | None:
        # Runs with preprocess=False, so this receives Gradio's file payload (already checked to be a file
        # Gradio received or cached). gr.Image's own preprocessing would PIL.Image.open the file first and
        # fail on non-images and decompression bombs with a generic error; load_rgb gives the reason.
        return classify(image["path"]) if image else None

    with gr.Blocks(title="imagenet-kit demo", analytics_enabled=False) as demo:
        gr.Markdown(model_card(predictor.info))
        with gr.Row():
            # image_mode=None: Gradio hands over the file as uploaded; load_rgb does the conversion.
            image = gr.Image(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"])
            label = gr.Label(num_top_classes=5, label="Top-5")
        button = gr.Button("Classify", variant="primary")
        # Not image.change: Gradio fires it twice when an upload replaces an image, doubling the work.
        gr.on([image.upload, button.click], classify_upload, inputs=image, outputs=label, api_name="predict",
              preprocess=False)
        image.clear(lambda: None, outputs=label, api_visibility="private")
        # The examples are the kit's own JPEGs, so Gradio's preprocessing (which yields their path) is safe.
        gr.Examples(examples=[[str(p)] for p in sorted(Path(examples).glob("*.jpg"))], inputs=image, outputs=label,
                    fn=classify, run_on_click=True, cache_examples=False,
                    label="Example photos (ImageNet validation-style)")
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
