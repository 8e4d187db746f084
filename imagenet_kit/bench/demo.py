"""How long the demo takes per photo on CPU: batch-1 latency of the exported predictor."""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np

from imagenet_kit.config.flags import output_dir_option
from imagenet_kit.environment import environment
from imagenet_kit.images import load_rgb
from imagenet_kit.progress import console
from imagenet_kit.result_rows import RESULTS_DIR, append_results, utc_now
from imagenet_kit.runs import ExportFolder, resolve_export
from imagenet_kit.serve.demo import EXAMPLES_DIR
from imagenet_kit.serve.predict import load_exported

RESULTS = RESULTS_DIR / "demo.jsonl"
WARMUP = 3  # first calls pay for allocator growth and oneDNN kernel selection


def bench_demo(model_dir: Path | ExportFolder, n: int = 50, results: Path = RESULTS, image: Path | None = None) -> dict:
    """Time ``n`` calls of ``predict`` on one photo (after a warm-up) and append the record to ``results``.

    Each call is what the demo does after decoding the upload: resize, crop, normalize, forward, top-5.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    export = model_dir if isinstance(model_dir, ExportFolder) else ExportFolder(Path(model_dir))
    predictor = load_exported(export)
    image_path = Path(image) if image else sorted(EXAMPLES_DIR.glob("*.jpg"))[0]
    photo = load_rgb(image_path)
    for _ in range(WARMUP):
        predictor.predict(photo)
    times_ms = []
    for _ in range(n):
        start = time.perf_counter()
        predictor.predict(photo)
        times_ms.append((time.perf_counter() - start) * 1000)
    p50, p95 = np.percentile(times_ms, [50, 95]).tolist()
    record = {
        "kind": "demo", "date": utc_now(),
        "model_dir": str(export.root.resolve()), "arch": predictor.info["arch"],
        "res": predictor.spec["crop"], "backend": predictor.backend, "image": image_path.name,
        "image_size": list(photo.size), "n": n, "warmup": WARMUP,
        "p50_ms": p50, "p95_ms": p95, "mean_ms": float(np.mean(times_ms)),
        **environment(),  # host, cpu, versions, thread count, git revision, command
    }
    append_results(results, [record])
    return record


@click.command("demo")
@click.option("--model", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="An export folder, or a run folder holding one.  [default: the newest under --output-dir]")
@output_dir_option
@click.option("-n", "n", default=50, show_default=True, type=click.IntRange(min=1), help="Timed calls.")
@click.option("--image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Photo to classify.  [default: the first demo example]")
@click.option("--results", type=click.Path(dir_okay=False, path_type=Path), default=RESULTS, show_default=True,
              help="JSON-lines file the record is appended to.")
def bench_demo_command(model: Path | None, output_dir: Path, n: int, image: Path | None, results: Path) -> None:
    """CPU batch-1 latency of the demo's predictor (p50/p95/mean)."""
    record = bench_demo(resolve_export(model, output_dir), n, results, image)
    console.print(f"{record['arch']} ({record['backend']}, {record['res']} px) on {record['cpu']}, "
                  f"{record['torch_threads']} threads: p50 {record['p50_ms']:.1f} ms, p95 {record['p95_ms']:.1f} ms, "
                  f"mean {record['mean_ms']:.1f} ms over {n} calls -> {results}")
