"""The Gradio demo served on a local port: API under concurrency, hostile uploads, odd formats, a browser."""
from __future__ import annotations

import csv
import importlib.util
import json
import logging
import os
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
from test_card import write_run_records
from test_export import EXAMPLES, PHOTO, make_fake_run  # tests/ is on sys.path (pytest's rootdir-less import)
from torchvision.models import ResNet50_Weights

from imagenet_kit.cli import cli
from imagenet_kit.images import load_rgb
from imagenet_kit.serve.card import NOT_RECORDED
from imagenet_kit.serve.demo import build_app, launch
from imagenet_kit.serve.export import export_model
from imagenet_kit.serve.predict import load_exported

# Gradio's queue calls pandas APIs that pandas 3 deprecates; not this project's code.
pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# `make screenshots` points this at docs/images (shown in docs/deploying.md); a plain test run leaves docs/ alone.
SCREENSHOTS = Path(os.environ.get("DEMO_SCREENSHOTS", ARTIFACTS / "screenshots")).resolve()
CONCURRENT = 50
TENCH = EXAMPLES / "n01440764_tench.jpg"  # the fixture's model: 2 of its top 3 above 20%, the third below
# Playwright drives the Debian Chromium; its own browser download (`playwright install`) needs internet.
BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, predictor): the demo of a fresh TorchScript export of a run with all its records (so a full model
    card), served by a background thread."""
    run = make_fake_run(tmp_path_factory.mktemp("app"))
    write_run_records(run)
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
    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(lambda _: _classify(client, PHOTO), range(CONCURRENT)))
    assert len(results) == CONCURRENT
    for result in results:
        assert result["label"] == expected[0][0]
        assert [name for name, _ in _top(result)] == [name for name, _ in expected]
        np.testing.assert_allclose([p for _, p in _top(result)], [p for _, p in expected], atol=1e-6)


def test_top_k_and_threshold_are_api_parameters(served, client):
    _, predictor = served
    top3 = predictor.predict(load_rgb(TENCH), k=3)
    assert [p >= 0.2 for _, p in top3] == [True, True, False]
    result = client.predict(handle_file(str(TENCH)), k=3, threshold=20, api_name="/predict")
    assert [name for name, _ in _top(result)] == [name for name, _ in top3[:2]]
    assert [p for _, p in _top(result)] == pytest.approx([p for _, p in top3[:2]], abs=1e-6)
    assert len(_top(client.predict(handle_file(str(TENCH)), k=10, threshold=0, api_name="/predict"))) == 10
    assert client.predict(handle_file(str(TENCH)), k=3, threshold=99, api_name="/predict") == {}  # none reaches it


@pytest.mark.parametrize("k, threshold, reason", [(0, 0, "k must be a whole number from 1 to 10, not 0"),
                                                  (3, 120, "threshold is a confidence in percent, from 0 to 100")])
def test_controls_out_of_range_are_refused_with_the_reason(client, k, threshold, reason):
    with pytest.raises(AppError, match=reason):
        client.predict(handle_file(str(PHOTO)), k=k, threshold=threshold, api_name="/predict")


def test_batch_endpoint_returns_the_table_and_the_downloads(served, client, tmp_path):
    _, predictor = served
    photos = [PHOTO, TENCH, _variant("webp", tmp_path), _variant("grayscale", tmp_path)]
    files = [*photos[:2], _bad_upload("truncated", tmp_path), *photos[2:]]
    table, timing, json_path, csv_path = client.predict([handle_file(str(f)) for f in files], api_name="/batch")

    assert table["headers"] == ["file", "top-1", "confidence (%)", "time (ms)", "error"]
    assert [row[0] for row in table["data"]] == [f.name for f in files]
    answered = [row for row in table["data"] if not row[4]]
    assert len(answered) == 4 and table["data"][2][1:4] == ["", None, None]
    assert table["data"][2][4].startswith("corrupt or truncated image")
    for row, photo in zip(answered, photos, strict=True):
        expected = predictor.predict(load_rgb(photo))[0]
        assert row[1] == expected[0] and row[2] == pytest.approx(100 * expected[1], abs=0.051)
    record = json.loads(Path(json_path).read_text())
    assert (record["files"], record["classified"]) == (5, 4)
    assert record["timing"]["per_image_ms"] == pytest.approx(record["timing"]["batch_ms"] / 4)
    assert {row[3] for row in answered} == {round(record["timing"]["per_image_ms"], 1)}
    assert "One batched forward pass over 4 photos" in timing and "batch time / 4" in timing
    with open(csv_path, newline="") as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == [f.name for f in files]


def test_a_batch_over_32_files_is_refused(client, tmp_path):
    copies = []
    for i in range(33):
        copies.append(tmp_path / f"photo{i}.jpg")
        copies[-1].write_bytes(PHOTO.read_bytes())
    with pytest.raises(AppError, match="33 files: the batch takes at most 32 at once"):
        client.predict([handle_file(str(p)) for p in copies], api_name="/batch")


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
            page.get_by_role("button", name="Classify", exact=True).click()
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


@pytest.mark.browser
@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
@pytest.mark.slow
def test_browser_top_k_a_batch_with_its_download_and_the_card(served, tmp_path):
    """The three tabs as a visitor uses them, each photographed for docs/deploying.md."""
    from playwright.sync_api import expect, sync_playwright

    url, predictor = served
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            _classify_an_example_with_top_3_above_20(page, predictor, expect)
            _screenshot(page, "demo-classify.png")
            _batch_with_a_broken_file(page, predictor, tmp_path, expect)
            _screenshot(page, "demo-batch.png")
            page.get_by_role("tab", name="Model card").click()
            card = page.locator("#model-card")
            for words in ("Architecture:", "GMACs per image at 64×64 px", "Recipe:", "peak LR 0.17",
                          "Measured accuracy:",
                          "59.0% top-1", "Origin:", "Use it without the kit", "torch.jit.load", "Limits"):
                expect(card).to_contain_text(words, timeout=30_000)
            expect(card).not_to_contain_text(NOT_RECORDED)
            _screenshot(page, "demo-card.png")
        finally:
            browser.close()
    for tab in ("classify", "batch", "card"):
        with Image.open(SCREENSHOTS / f"demo-{tab}.png") as shot:
            assert shot.format == "PNG" and shot.width == 1280 and shot.height >= 900


def _screenshot(page, name: str) -> None:
    """The whole page at the 1280 px viewport's width, in 256 colours: a third of the bytes, the text as sharp."""
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    with Image.open(path) as shot:
        small = shot.convert("RGB").quantize(256)
    small.save(path, optimize=True)


def _classify_an_example_with_top_3_above_20(page, predictor, expect) -> None:
    for control, value in (("Classes shown (top-k)", "3"), ("Minimum confidence (%)", "20")):
        page.get_by_label(f"number input for {control}").fill(value)
        page.get_by_label(f"number input for {control}").press("Tab")
    page.locator(".gallery-item").first.click()  # the tench: the only bundled photo of the model's classes
    confidences = page.locator(".confidence-set")
    expected = [(name, p) for name, p in predictor.predict(load_rgb(TENCH), k=3) if p >= 0.2]
    expect(confidences).to_have_count(len(expected), timeout=30_000)
    assert 0 < len(expected) < 3  # the threshold dropped one of the top 3
    for row, (name, p) in zip(confidences.all(), expected, strict=True):
        expect(row).to_contain_text(name)
        shown = float(re.search(r"([\d.]+)%", row.inner_text())[1])
        assert shown >= 20 and shown == pytest.approx(100 * p, abs=0.51)
    expect(page.locator("#timing")).to_contain_text(re.compile(r"[\d.]+ ms on the server for this photo"))


def _batch_with_a_broken_file(page, predictor, folder: Path, expect) -> None:
    photos = sorted(EXAMPLES.glob("*.jpg"))[:4]
    files = [*photos[:2], _bad_upload("truncated", folder), *photos[2:]]
    page.get_by_role("tab", name="Several photos").click()
    page.locator("#batch-files input[type=file]").set_input_files([str(f) for f in files])  # classified on upload
    rows = page.locator("#batch-table div[role=row]")  # the header row is a <tr>
    expect(rows).to_have_count(5, timeout=60_000)
    expect(page.locator("#batch-timing")).to_contain_text("One batched forward pass over 4 photos", timeout=30_000)
    for row, path in zip(rows.all(), files, strict=True):
        expect(row).to_contain_text(path.name)
        if path in photos:
            expect(row).to_contain_text(predictor.predict(load_rgb(path))[0][0])
        else:
            expect(row).to_contain_text("corrupt or truncated image")
    with page.expect_download() as download:
        page.locator("#batch-json a").first.click()
    record = json.loads(Path(download.value.path()).read_text())
    assert [row["file"] for row in record["rows"]] == [f.name for f in files]
    assert [row["error"] is None for row in record["rows"]] == [True, True, False, True, True]
    assert [row["top1"] for row in record["rows"] if row["top1"]] == [predictor.predict(load_rgb(p))[0][0]
                                                                     for p in photos]
