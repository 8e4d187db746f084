"""Gradio demo: a photo's top-k classes above a minimum confidence you choose, with the server's time for it;
up to 32 photos at once, as a table with JSON and CSV downloads; and the model card.

Gradio is imported inside the functions that need it: it takes seconds to import, and the CLI that
mounts ``demo_command`` should not pay that for every other command.

Inference-only (imports ``errors``, ``runs``, ``images`` and ``serve.predict``, ``serve.answers`` and
``serve.card``, never training code): ``imagenet-kit space`` ships a byte-identical copy of this file, so a Hugging
Face Space runs exactly this demo.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch

from imagenet_kit.errors import KitError
from imagenet_kit.images import UnreadableImage
from imagenet_kit.runs import DEFAULT_OUTPUT_DIR, resolve_export, torch_hub_weights
from imagenet_kit.serve import answers
from imagenet_kit.serve.card import card_markdown, headline
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
            "res": spec["crop"], "params": weights.meta["num_params"], "gmacs": weights.meta["_ops"],  # as published
            "source": f"torchvision's ResNet50_Weights.IMAGENET1K_V2 (published figures; recipe "
                      f"{weights.meta['recipe']})"}
    # wnids None: ImageNet-1K's 1000 classes, which every bundled photo is one of
    return Predictor(model, spec, list(weights.meta["categories"]), info, "torchvision")


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
    # Every hour, what uploads and downloads left in Gradio's cache for over an hour goes: a Space runs for weeks.
    with gr.Blocks(title="imagenet-kit demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(headline(predictor.info))
        with gr.Tab("Classify"):
            _classify_tab(predictor, Path(examples) if examples else None)
        with gr.Tab("Several photos"):
            _batch_tab(predictor)
        with gr.Tab("Model card"):
            gr.Markdown(_card(predictor), elem_id="model-card")
    return demo


def _card(predictor: Predictor) -> str:
    classes = [{"name": name} for name in predictor.names]
    return card_markdown(predictor.info, classes, predictor.spec)


def _refused(err: Exception, name: str):
    """A request refused with its reason: one line in the server's log, the reason on the page (or to the caller)."""
    import gradio as gr

    log.warning("rejected %s: %s", name, err)  # one line, no traceback
    prefix = "Cannot classify this file: " if isinstance(err, UnreadableImage) else ""
    return gr.Error(f"{prefix}{err}", print_exception=False)


def _classify_tab(predictor: Predictor, examples: Path | None) -> None:
    import gradio as gr

    def classify(image: dict | None, k: float, threshold: float) -> tuple:
        # Runs with preprocess=False, so this receives Gradio's file payload (already checked to be a file
        # Gradio received or cached) and the sliders' raw numbers. gr.Image's own preprocessing would
        # PIL.Image.open the file first and fail on non-images and decompression bombs with a generic error;
        # load_rgb gives the reason.
        if not image:
            return None, ""
        path = Path(image["path"])
        try:
            return answers.classify_photo(predictor, path, k, threshold)
        except (UnreadableImage, KitError) as err:
            raise _refused(err, f"upload {path.name}") from None

    with gr.Row():
        # image_mode=None: Gradio hands over the file as uploaded; load_rgb does the conversion.
        image = gr.Image(type="filepath", image_mode=None, label="Photo", sources=["upload", "clipboard"])
        with gr.Column():
            label = gr.Label(num_top_classes=answers.TOP_K_MAX, label="Most likely classes")
            timing = gr.Markdown(elem_id="timing")
    with gr.Row():
        k = gr.Slider(1, answers.TOP_K_MAX, value=answers.TOP_K_DEFAULT, step=1, label="Classes shown (top-k)")
        threshold = gr.Slider(0, 100, value=0, step=1, label="Minimum confidence (%)")
    button = gr.Button("Classify", variant="primary")
    # The time goes through a State, which the API leaves out: gradio_client callers of /predict keep getting
    # the Label alone, as before k and threshold existed.
    note = gr.State("")
    inputs, outputs = [image, k, threshold], [label, note]
    show_note = {"fn": lambda text: text, "inputs": note, "outputs": timing, "api_visibility": "private"}
    # Not image.change: Gradio fires it twice when an upload replaces an image, doubling the work.
    gr.on([image.upload, button.click], classify, inputs=inputs, outputs=outputs, api_name="predict",
          preprocess=False).success(**show_note)
    image.clear(lambda: (None, ""), outputs=[label, timing], api_visibility="private")
    photos = example_photos(predictor, examples)
    if photos:  # a click fills the photo; the classification then uses the sliders as they are
        shown = gr.Examples(examples=[[str(p)] for p in photos], inputs=image,
                            label="Example photos of the model's classes")
        shown.load_input_event.then(classify, inputs=inputs, outputs=outputs, preprocess=False,
                                    api_visibility="private").success(**show_note)
    gr.Markdown(class_list(predictor.names), elem_id="classes")


def _batch_tab(predictor: Predictor) -> None:
    import gradio as gr

    def classify_all(files: list[dict] | None) -> tuple:
        if not files:
            raise gr.Error("Choose the photos first (drag a folder's files onto the box)", print_exception=False)
        named = [(f.get("orig_name") or Path(f["path"]).name, Path(f["path"])) for f in files]
        try:
            rows, timing = answers.classify_files(predictor, named)
        except KitError as err:
            raise _refused(err, f"batch of {len(files)} files") from None
        for row in rows:
            if row["error"]:
                log.warning("rejected upload %s: %s", row["file"], row["error"])
        folder = Path(tempfile.mkdtemp(dir=_cache_dir(json_file)))  # in Gradio's cache, so delete_cache clears it
        json_path, csv_path = answers.write_downloads(rows, timing, predictor.info, folder)
        return answers.table(rows), answers.timing_line(rows, timing), str(json_path), str(csv_path)

    gr.Markdown(f"Up to {answers.MAX_FILES} photos at once (drag a folder's files onto the box): one batched "
                "forward pass, a row per file, and the answers to download. A file that is not a photo gets its "
                "row with the reason; the others are still answered.")
    files = gr.File(file_count="multiple", label=f"Photos (up to {answers.MAX_FILES})", elem_id="batch-files")
    button = gr.Button("Classify all", variant="primary")
    summary = gr.Markdown(elem_id="batch-timing")
    rows = gr.Dataframe(headers=list(answers.COLUMNS), datatype=["str", "str", "number", "number", "str"],
                        interactive=False, wrap=True, label="Answers", elem_id="batch-table")
    with gr.Row():
        json_file = gr.File(label="JSON", elem_id="batch-json", interactive=False)
        csv_file = gr.File(label="CSV", elem_id="batch-csv", interactive=False)
    gr.on([files.upload, button.click], classify_all, inputs=files, outputs=[rows, summary, json_file, csv_file],
          api_name="batch", preprocess=False)


def _cache_dir(component) -> Path:
    folder = Path(component.GRADIO_CACHE)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
