"""What the demo answers, without a server: top-k above a threshold with its time, a batch in one forward pass with a
row per file (bad ones with their reason), and the JSON and CSV downloads."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from test_export import EXAMPLES, PHOTO, make_fake_run  # tests/ is on sys.path (pytest's rootdir-less import)

from imagenet_kit.errors import KitError
from imagenet_kit.images import UnreadableImage, load_rgb
from imagenet_kit.serve import answers
from imagenet_kit.serve.export import export_model
from imagenet_kit.serve.predict import load_exported

TENCH = EXAMPLES / "n01440764_tench.jpg"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("answers"))
    export_model(run / "checkpoints" / "best.pt", run / "export", formats=("torchscript",))
    return load_exported(run / "export")


@pytest.fixture
def forward_passes(predictor, monkeypatch) -> list[int]:
    """The batch size of every forward pass the predictor makes from here on."""
    sizes, logits = [], predictor.logits

    def counted(batch):
        sizes.append(len(batch))
        return logits(batch)

    monkeypatch.setattr(predictor, "logits", counted)
    return sizes


def test_top_k_above_the_threshold_and_the_time(predictor):
    top3 = predictor.predict(load_rgb(TENCH), k=3)
    # the fixture's model: two of the tench's top 3 above 20%, the third below; a test of the filter, not of luck
    assert [p >= 0.2 for _, p in top3] == [True, True, False]
    shown, note = answers.classify_photo(predictor, TENCH, k=3, threshold=20)
    assert list(shown) == [name for name, _ in top3[:2]]
    assert list(shown.values()) == pytest.approx([p for _, p in top3[:2]], abs=1e-6)
    assert "2 of the top 3 reach 20%" in note
    total, preprocessing, model = (float(x) for x in re.findall(r"([\d.]+) ms", note)[:3])
    assert total > 0 and total == pytest.approx(preprocessing + model, abs=0.15)  # each rounded to 0.1 ms

    shown, _ = answers.classify_photo(predictor, TENCH, k=10, threshold=0)
    assert len(shown) == 10 and list(shown) == [name for name, _ in predictor.predict(load_rgb(TENCH), k=10)]
    shown, note = answers.classify_photo(predictor, TENCH, k=5, threshold=99)
    assert shown == {} and f"No class reaches 99%; the most likely is {top3[0][0]}" in note


@pytest.mark.parametrize("k, threshold, reason", [
    (0, 0, "k must be a whole number from 1 to 10, not 0"),
    (11, 0, "k must be a whole number from 1 to 10, not 11"),
    (2.5, 0, "k must be a whole number from 1 to 10, not 2.5"),
    (3, 101, "threshold is a confidence in percent, from 0 to 100, not 101"),
    (3, -1, "threshold is a confidence in percent, from 0 to 100, not -1"),
    ("three", 0, "k and threshold must be numbers; got k='three'"),
])
def test_controls_out_of_range_are_refused_with_the_reason(predictor, k, threshold, reason):
    with pytest.raises(answers.DemoRequestError, match=reason) as refused:
        answers.classify_photo(predictor, TENCH, k, threshold)
    assert isinstance(refused.value, KitError)


def test_a_batch_is_one_forward_pass_with_a_row_per_file_in_order(predictor, tmp_path, forward_passes):
    broken = tmp_path / "cut.jpg"
    broken.write_bytes(PHOTO.read_bytes()[:5000])
    notes = tmp_path / "notes.png"
    notes.write_text("not a photo")
    photos = sorted(EXAMPLES.glob("*.jpg"))[:3]
    files = [(p.name, p) for p in photos[:2]] + [("cut.jpg", broken), ("notes.png", notes), (photos[2].name, photos[2])]
    rows, timing = answers.classify_files(predictor, files)

    assert forward_passes == [3]  # the three readable photos, together
    assert [row["file"] for row in rows] == [name for name, _ in files]
    for row, path in zip([rows[0], rows[1], rows[4]], photos, strict=True):
        expected = predictor.predict(load_rgb(path), k=5)
        assert row["error"] is None and row["top1"] == expected[0][0]
        assert [c["label"] for c in row["top5"]] == [name for name, _ in expected]
        assert row["confidence"] == pytest.approx(expected[0][1], abs=1e-5)
        assert row["time_ms"] == pytest.approx(timing.total_ms / 3)
    assert rows[2]["error"].startswith("corrupt or truncated image")
    assert rows[3]["error"] == "not an image file: accepted JPEG, PNG, WebP, GIF, BMP, TIFF"
    assert rows[2]["top1"] is rows[2]["confidence"] is rows[2]["time_ms"] is None
    assert timing.images == 3 and timing.total_ms > 0
    line = answers.timing_line(rows, timing)
    assert "over 3 photos" in line and "batch time / 3" in line
    assert answers.table(rows)[2] == ["cut.jpg", "", None, None, rows[2]["error"]]
    assert answers.table(rows)[0][2] == round(100 * rows[0]["confidence"], 1)


def test_more_than_32_files_are_refused_before_any_is_read(predictor, forward_passes):
    with pytest.raises(answers.DemoRequestError, match="33 files: the batch takes at most 32 at once"):
        answers.classify_files(predictor, [(f"{i}.jpg", Path("/nonexistent")) for i in range(33)])
    assert forward_passes == []


def test_a_batch_of_only_bad_files_answers_each_with_its_reason(predictor, tmp_path, forward_passes):
    (tmp_path / "empty.jpg").write_bytes(b"")
    rows, timing = answers.classify_files(predictor, [("empty.jpg", tmp_path / "empty.jpg")])
    assert timing is None and forward_passes == []
    assert rows[0]["error"] == "empty file (0 bytes)"
    assert answers.timing_line(rows, timing).startswith("None of the 1 files is a photo the model can read")


def test_downloads_hold_the_rows_the_model_and_the_timing(predictor, tmp_path):
    broken = tmp_path / "cut.jpg"
    broken.write_bytes(PHOTO.read_bytes()[:5000])
    rows, timing = answers.classify_files(predictor, [("pizza.jpg", PHOTO), ("cut.jpg", broken)])
    json_path, csv_path = answers.write_downloads(rows, timing, predictor.info, tmp_path / "out")
    record = json.loads(json_path.read_text())
    assert record["rows"] == rows and (record["files"], record["classified"]) == (2, 1)
    assert record["model"] == {"arch": "resnet18", "num_classes": 10, "res": 64, "run": "fake",
                               "data": "imagenette-sample"}
    assert record["timing"]["per_image_ms"] == pytest.approx(timing.total_ms)
    assert "batch time / 1" in record["timing"]["note"]
    with open(csv_path, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["file"] for r in table] == ["pizza.jpg", "cut.jpg"]
    assert table[0]["top1"] == rows[0]["top1"] and float(table[0]["confidence"]) == pytest.approx(rows[0]["confidence"],
                                                                                                  abs=1e-4)
    assert (table[1]["top1"], table[1]["confidence"], table[1]["error"]) == ("", "", rows[1]["error"])


def test_predict_batch_answers_each_photo_as_predict_does(predictor):
    photos = [load_rgb(p) for p in sorted(EXAMPLES.glob("*.jpg"))]
    batched, timing = predictor.predict_batch(photos, k=3)
    assert timing.images == len(photos) and timing.preprocess > 0 and timing.model > 0
    for photo, top in zip(photos, batched, strict=True):
        alone = predictor.predict(photo, k=3)
        assert [name for name, _ in top] == [name for name, _ in alone]
        assert [p for _, p in top] == pytest.approx([p for _, p in alone], abs=1e-5)
    with pytest.raises(UnreadableImage):  # the single-image path reports a bad file as load_rgb does
        answers.classify_photo(predictor, Path(__file__), 5, 0)
