"""The Gradio demo served on a local port: API under concurrency, hostile uploads, odd formats, a browser."""
from __future__ import annotations

import importlib.util
import logging
import re
import socket
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_export import EXAMPLES, PHOTO, make_fake_run  # tests/ is on sys.path (pytest's rootdir-less import)
from torchvision.models import ResNet50_Weights

from imagenet_kit.cli import cli
from imagenet_kit.images import load_rgb
from imagenet_kit.serve.demo import build_app, launch
from imagenet_kit.serve.export import export_model
from imagenet_kit.serve.predict import load_exported

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not this project's code.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Playwright drives the Debian Chromium; its own browser download (`playwright install`) needs internet.
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, predictor): the demo of a fresh TorchScript export, served by a background thread."""
    run = make_fake_run(tmp_path_factory.mktemp("app"))
    export_model(run / "checkpoints" / "best.pt", run / "export", formats=("torchscript",))
    demo = build_app(run / "export")
    port = _free_port()
    launch(demo, "127.0.0.1", port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/", load_exported(run / "export")
    demo.close()


@pytest.fixture(scope="module")
def client(served):
    return Client(served[0], verbose=False)


def _classify(client: Client, path: Path) -> dict:
    return client.predict(handle_file(str(path)), api_name="/predict")


def _top(result: dict) -> list[tuple[str, float]]:
    return [(c["label"], c["confidence"]) for c in result["confidences"]]


def test_concurrent_requests_agree_with_the_predictor(served, client):
    _, predictor = served
    expected = predictor.predict(load_rgb(PHOTO))
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: _classify(client, PHOTO), range(20)))
    for result in results:
        assert result["label"] == expected[0][0]
        assert [name for name, _ in _top(result)] == [name for name, _ in expected]
        np.testing.assert_allclose([p for _, p in _top(result)], [p for _, p in expected], atol=1e-6)


def _png_bomb(path: Path) -> None:
    """A valid 1-bit PNG of 20000x20000 black pixels: ~50 kB on disk but 4e8 pixels, over twice Pillow's
    MAX_IMAGE_PIXELS, so Pillow refuses to open it (DecompressionBombError)."""
    width = height = 20000
    row = b"\x00" + bytes(width // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _bad_upload(kind: str, folder: Path) -> Path:
    if kind == "text":
        path = folder / "notes.jpg"
        path.write_text("these are my holiday notes, not a photo\n")
    elif kind == "truncated":
        path = folder / "cut.jpg"
        blob = PHOTO.read_bytes()
        path.write_bytes(blob[: len(blob) // 2])
    else:
        path = folder / "bomb.png"
        _png_bomb(path)
        with pytest.raises(Image.DecompressionBombError):
            Image.open(path)
    return path


@pytest.mark.parametrize("kind, reason", [
    ("text", "not an image file: accepted JPEG, PNG, WebP, GIF, BMP, TIFF"),
    ("truncated", "corrupt or truncated image"),
    ("bomb", r"image too large: \d+ megapixels, the limit is 89"),
])
def test_bad_upload_shows_the_reason_and_the_server_keeps_serving(served, client, tmp_path, kind, reason, caplog,
                                                                 capfd):
    with caplog.at_level(logging.WARNING, logger="imagenet_kit.demo"), \
            pytest.raises(AppError, match=f"Cannot classify this file: {reason}"):
        _classify(client, _bad_upload(kind, tmp_path))
    logged = [r.getMessage() for r in caplog.records if r.name == "imagenet_kit.demo"]
    assert len(logged) == 1 and re.search(reason, logged[0]), logged  # one line in the server's log
    assert "Traceback" not in capfd.readouterr().err
    assert _classify(client, PHOTO)["label"] == served[1].predict(load_rgb(PHOTO))[0][0]


def _variant(kind: str, folder: Path) -> Path:
    photo = load_rgb(PHOTO)
    if kind == "grayscale":
        path = folder / "gray.jpg"
        photo.convert("L").save(path, quality=90)
    elif kind == "rgba":
        path = folder / "alpha.png"
        rgba = photo.convert("RGBA")
        rgba.putalpha(Image.linear_gradient("L").resize(photo.size))  # transparent top to opaque bottom
        rgba.save(path)
    elif kind == "png16":
        path = folder / "deep.png"
        Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257).save(path)
        assert Image.open(path).mode.startswith("I")
    elif kind == "webp":
        path = folder / "photo.webp"
        photo.save(path, quality=90)
    else:
        path = folder / "photo.gif"
        photo.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    return path


@pytest.mark.parametrize("kind", ["grayscale", "rgba", "png16", "webp", "gif"])
def test_other_formats_classify(served, client, tmp_path, kind):
    path = _variant(kind, tmp_path)
    result = _classify(client, path)
    assert len(result["confidences"]) == 5
    assert result["label"] == served[1].predict(load_rgb(path))[0][0]


def test_exif_rotated_jpeg_classifies_like_the_upright_photo(served, client, tmp_path):
    # The panda: the fixture's model gives its sideways version a different top-1, so a demo that ignored
    # EXIF orientation would fail here.
    upright = load_rgb(EXAMPLES / "n02510455_giant_panda.jpg")
    upright.save(tmp_path / "upright.jpg", quality=100, subsampling=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: stored rotated 90° counter-clockwise; viewers turn it clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "rotated.jpg", quality=100, subsampling=0,
                                                      exif=exif)
    sideways = served[1].predict(Image.open(tmp_path / "rotated.jpg").convert("RGB"))  # EXIF ignored
    expected = _classify(client, tmp_path / "upright.jpg")["label"]
    assert sideways[0][0] != expected
    assert _classify(client, tmp_path / "rotated.jpg")["label"] == expected


def test_demo_without_an_export_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["demo"])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    assert f"looked for {tmp_path / 'runs'}/*/export/model.json" in result.output
    assert "make mini" in result.output


def test_torchvision_weights_offline_names_the_cache_file(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", offline)
    result = CliRunner().invoke(cli, ["demo", "--weights", "torchvision"])
    assert result.exit_code == 2 and result.output.startswith("error: ")
    target = Path(torch.hub.get_dir()) / "checkpoints" / "resnet50-11ad3fa6.pth"
    assert str(target) in result.output


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (apt-get install chromium)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright; no browser download needed)"
    return None


@pytest.mark.browser
@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
@pytest.mark.slow
def test_browser_upload_shows_five_labels(served, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, predictor = served
    expected = predictor.predict(load_rgb(PHOTO))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.locator("input[type=file]").first.set_input_files(str(PHOTO))
            # The upload itself triggers a prediction; wait for the preview, then press the button too.
            expect(page.locator("img[src*='pizza']").first).to_be_visible(timeout=30_000)
            page.get_by_role("button", name="Classify").click()
            confidences = page.locator(".confidence-set")
            expect(confidences).to_have_count(5, timeout=30_000)
            expect(page.get_by_test_id("label-output-value")).to_have_text(expected[0][0])
            for row, (name, _) in zip(confidences.all(), expected, strict=False):
                expect(row).to_contain_text(name)
                expect(row).to_contain_text("%")
            page.screenshot(path=str(ARTIFACTS / "demo.png"), full_page=True)
            # A broken upload: the reason appears on the page.
            page.locator("input[type=file]").first.set_input_files(str(_bad_upload("truncated", tmp_path)))
            expect(page.get_by_text("Cannot classify this file: corrupt or truncated image").first).to_be_visible(
                timeout=30_000)
        finally:
            browser.close()
