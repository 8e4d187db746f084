"""Conversion acceptance (issue 3): awkward files are decoded right or skipped with a reason, every file
is accounted for, the beton holds what the report says, --force, kill safety, and ILSVRC val labels.

Every input is generated here with PIL/numpy, small, so the suite stays fast on 2 shared cores.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import live_in_group, wait_until_writing
from PIL import Image

from imagenet_kit.cli import cli
from imagenet_kit.data.convert import convert
from imagenet_kit.data.sources import ConvertError, scan_imagefolder
from imagenet_kit.images import UnreadableImage, load_rgb

W, H = 64, 32  # quadrant edges on 8-px JPEG block edges; JPEGs are 4:4:4, so no chroma bleeds across them
RED, BLUE, GREEN = (200, 30, 40), (30, 40, 220), (20, 180, 60)
JPEG_TOL = 4  # max per-pixel error of a quality-95 4:4:4 JPEG of flat colour blocks (measured: 1)
KIT = Path(sys.executable).with_name("imagenet-kit")
SAMPLES = Path("/work/shared/data/imagenet-samples")


def pattern() -> np.ndarray:
    """H x W x 3, not symmetric under any flip or rotation: red top-left, blue top-right, green bottom."""
    image = np.empty((H, W, 3), np.uint8)
    image[: H // 2, : W // 2] = RED
    image[: H // 2, W // 2:] = BLUE
    image[H // 2:] = GREEN
    return image


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(Image.fromarray(rgb).convert("L"))[..., None], 3, axis=2)


# Each maker writes one awkward-but-valid file and returns (the RGB load_rgb must produce, tolerance).
def _cmyk(path):
    Image.fromarray(pattern()).convert("CMYK").save(path, "JPEG", quality=95, subsampling=0)
    return pattern(), JPEG_TOL


def _png_named_jpeg(path):
    Image.fromarray(pattern()).save(path, "PNG")
    return pattern(), 0


def _webp_named_jpeg(path):
    Image.fromarray(pattern()).save(path, "WEBP", lossless=True)
    return pattern(), 0


def _grayscale(path):
    Image.fromarray(pattern()).convert("L").save(path, "JPEG", quality=95, subsampling=0)
    return _gray(pattern()), JPEG_TOL


def _palette_png(path):
    colours = [RED, BLUE, GREEN]
    index = np.zeros((H, W), np.uint8)
    index[: H // 2, W // 2:], index[H // 2:] = 1, 2
    image = Image.fromarray(index, "P")
    image.putpalette([v for c in colours for v in c])
    image.save(path, "PNG")
    return pattern(), 0


def _rgba_png(path):
    rgba = np.dstack([pattern(), np.full((H, W), 255, np.uint8)])
    rgba[: H // 2, W // 2:] = (0, 0, 0, 0)  # transparent black: must come out white, not black
    Image.fromarray(rgba, "RGBA").save(path, "PNG")
    want = pattern()
    want[: H // 2, W // 2:] = 255
    return want, 0


def _gray16_png(path):
    levels = np.zeros((H, W), np.uint16)
    levels[: H // 2, : W // 2] = 65535
    levels[H // 2:] = 128 * 257  # 16-bit mid grey -> 128
    Image.fromarray(levels).save(path, "PNG")
    want = np.zeros((H, W, 3), np.uint8)
    want[: H // 2, : W // 2], want[H // 2:] = 255, 128
    return want, 0


def _progressive(path):
    Image.fromarray(pattern()).save(path, "JPEG", quality=95, subsampling=0, progressive=True)
    return pattern(), JPEG_TOL


def _exif_rotated(path):
    """Stored sideways (np.rot90: a quarter turn counter-clockwise, H wide and W tall) with EXIF orientation
    6, "rotate 90 degrees clockwise to display": loading must give back the upright pattern."""
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(pattern())))
    sideways.save(path, "JPEG", quality=95, subsampling=0, exif=exif)
    return pattern(), JPEG_TOL


def _plain_jpeg(path):
    Image.fromarray(pattern()).save(path, "JPEG", quality=95, subsampling=0)
    return pattern(), JPEG_TOL


KEPT = {
    "cmyk.JPEG": _cmyk, "png_inside.JPEG": _png_named_jpeg, "webp_inside.JPEG": _webp_named_jpeg,
    "grayscale.JPEG": _grayscale, "palette.png": _palette_png, "rgba.png": _rgba_png, "gray16.png": _gray16_png,
    "progressive.JPEG": _progressive, "exif_orientation_6.JPEG": _exif_rotated,
    "ünïcode näme 猫 with spaces.JPEG": _plain_jpeg,
}


def _bomb_png(path: Path) -> None:
    """A PNG whose header declares 30000 x 30000 pixels (5x Pillow's hard limit) over almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def _truncated_jpeg(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, "JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# name -> (maker, words the skip reason must contain)
BAD = {
    "truncated.JPEG": (_truncated_jpeg, "truncated"),
    "zero_bytes.JPEG": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "text.JPEG": (lambda p: p.write_text("not a picture\n"), "not an image"),
    "bomb.png": (_bomb_png, "image too large"),
}


def _assert_image(got: np.ndarray, want: np.ndarray, tol: int, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    err = int(np.abs(got.astype(int) - want.astype(int)).max())
    assert err <= tol, f"{what}: max pixel error {err} > {tol}"


@pytest.mark.parametrize("name", list(KEPT))
def test_load_rgb_decodes_awkward_files(tmp_path, name):
    path = tmp_path / name
    want, tol = KEPT[name](path)
    image = load_rgb(path)
    assert image.mode == "RGB"
    _assert_image(np.asarray(image), want, tol, name)


def test_exif_orientation_transposes_size_and_moves_corner(tmp_path):
    path = tmp_path / "rotated.JPEG"
    _exif_rotated(path)
    with Image.open(path) as raw:
        assert raw.size == (H, W)  # as stored: sideways
        stored = np.asarray(raw.convert("RGB"))
    # Stored sideways, red is bottom-left; upright it must be top-left, with blue top-right.
    assert np.abs(stored[-1, 0].astype(int) - RED).max() <= JPEG_TOL
    upright = np.asarray(load_rgb(path))
    assert upright.shape[:2] == (H, W)
    assert np.abs(upright[0, 0].astype(int) - RED).max() <= JPEG_TOL
    assert np.abs(upright[0, -1].astype(int) - BLUE).max() <= JPEG_TOL


@pytest.mark.parametrize("name", list(BAD))
def test_load_rgb_gives_a_reason_for_unreadable_files(tmp_path, name):
    make, words = BAD[name]
    make(tmp_path / name)
    with pytest.raises(UnreadableImage, match=re.escape(words)):
        load_rgb(tmp_path / name)


def test_pillow_bomb_warning_zone_is_refused_too(tmp_path, monkeypatch):
    """Between 1x and 2x MAX_IMAGE_PIXELS Pillow only warns; load_rgb must refuse those as well."""
    _plain_jpeg(tmp_path / "big.JPEG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", W * H * 2 // 3)
    with pytest.raises(UnreadableImage, match="image too large"):
        load_rgb(tmp_path / "big.JPEG")


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """ImageFolder with every awkward kind in class 'a', a symlinked class 'b', an empty class 'c', the bad
    files in class 'd', file-manager junk everywhere and a stray file directly in the split folder."""
    src = tmp_path / "train"
    for name, make in KEPT.items():
        (src / "a").mkdir(parents=True, exist_ok=True)
        make(src / "a" / name)
    elsewhere = tmp_path / "mirror" / "b"
    elsewhere.mkdir(parents=True)
    for i in range(2):
        _plain_jpeg(elsewhere / f"b{i}.JPEG")
    (src / "b").symlink_to(elsewhere, target_is_directory=True)
    (src / "c").mkdir()
    (src / "c" / ".DS_Store").write_bytes(b"\0Bud1")
    (src / "d").mkdir()
    for name, (make, _) in BAD.items():
        make(src / "d" / name)
    _plain_jpeg(src / "d" / "fine.JPEG")
    (src / "a" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (src / ".DS_Store").write_bytes(b"\0Bud1")
    _plain_jpeg(src / "stray.JPEG")
    return src


def _beton_labels(beton: Path) -> list[int]:
    from ffcv.reader import Reader
    return Reader(str(beton)).metadata["f1"].tolist()


def test_convert_accounts_for_every_file(tmp_path, messy_folder):
    from ffcv.reader import Reader

    source = scan_imagefolder(messy_folder)
    assert source.classes == ["a", "b", "c", "d"]
    out = tmp_path / "betons" / "train.beton"
    report = convert(source, out, workers=1)

    assert sorted(Path(p).name for p in report["ignored"]) == [".DS_Store", ".DS_Store", "Thumbs.db"]
    assert report["empty_classes"] == ["c"]
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(BAD) | {"stray.JPEG"}
    assert reasons["stray.JPEG"] == "not inside a class folder"
    for name, (_, words) in BAD.items():
        assert words in reasons[name], f"{name}: {reasons[name]!r}"

    counts = report["counts"]
    written = len(KEPT) + 2 + 1  # class a, symlinked b, and d's one good file
    assert counts == {"seen": written + len(BAD) + 1, "written": written, "skipped": len(BAD) + 1,
                      "ignored": 3, "classes": 4}
    assert counts["seen"] == counts["written"] + counts["skipped"]
    assert report["per_class_written"] == [len(KEPT), 2, 0, 1]

    reader = Reader(str(out))
    assert reader.num_samples == written
    assert _beton_labels(out) == [0] * len(KEPT) + [1, 1, 3]
    # The beton stores upright images: every one is W x H, the EXIF-rotated one included.
    assert set(reader.metadata["f0"]["width"].tolist()) == {W}
    assert set(reader.metadata["f0"]["height"].tolist()) == {H}
    assert [c["wnid"] for c in json.loads(Path(f"{out}.classes.json").read_text())] == source.classes


def test_beton_pixels_match_the_decoded_files(tmp_path):
    """Read back through FFCV's own Loader: stored raw (compress_prob 0), each image must equal what
    load_rgb promises for its file, in file order, with its class label."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    import imagenet_kit.data.ffcv_compat  # noqa: F401  (the kit's fix to FFCV's reader, as loaders.py applies it)

    src = tmp_path / "train"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    expected = []
    for i, (name, make) in enumerate(sorted(KEPT.items())):
        label = i % 2
        expected.append((name, label, *make(src / "ab"[label] / name)))
    expected.sort(key=lambda e: (e[1], e[0]))  # beton order: class, then file name
    out = tmp_path / "pixels.beton"
    convert(scan_imagefolder(src), out, compress_prob=0.0, workers=1)

    loader = Loader(str(out), batch_size=len(expected), num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = next(iter(loader))
    assert labels.ravel().tolist() == [e[1] for e in expected]
    for got, (name, _, want, tol) in zip(images, expected, strict=False):
        _assert_image(np.asarray(got), want, tol, name)


def _distinct_jpeg(path: Path, value: int) -> np.ndarray:
    """A flat image of grey ``value``: which sample FFCV hands back is visible in its pixels."""
    pixels = np.full((24, 32, 3), value, dtype=np.uint8)
    Image.fromarray(pixels).save(path, "PNG")
    return pixels


@pytest.mark.parametrize("workers", [1, 2])
def test_unreadable_files_between_good_ones_are_dropped_from_the_beton(tmp_path, workers):
    """Bad files interleaved with good ones, across chunks of several writer processes: the beton holds exactly
    the good images, each with its own pixels and label, in source order, readable by FFCV's Loader; the report
    lists every bad one with its reason."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    import imagenet_kit.data.ffcv_compat  # noqa: F401

    src = tmp_path / "train"
    expected = []
    for i in range(230):  # > 2 of FFCV's 100-sample chunks, so the drops land in several workers' pages
        label = i % 3
        (src / "abc"[label]).mkdir(parents=True, exist_ok=True)
        name = f"{i:03d}.png"
        if i % 7 == 3:
            (src / "abc"[label] / name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            expected.append((label, name, _distinct_jpeg(src / "abc"[label] / name, i)))
    expected.sort(key=lambda e: (e[0], e[1]))
    out = tmp_path / "dropped.beton"
    report = convert(scan_imagefolder(src), out, compress_prob=0.0, workers=workers, page_size=1 << 21)

    assert report["counts"]["written"] == len(expected) and report["counts"]["skipped"] == 230 - len(expected)
    assert all("corrupt or truncated" in s["reason"] or "not an image" in s["reason"] for s in report["skipped"])
    assert report["per_class_written"] == [sum(e[0] == c for e in expected) for c in range(3)]
    loader = Loader(str(out), batch_size=len(expected), num_workers=1, order=OrderOption.SEQUENTIAL,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    images, labels = next(iter(loader))
    assert labels.ravel().tolist() == [e[0] for e in expected]
    for got, (_, name, want) in zip(images, expected, strict=True):
        _assert_image(np.asarray(got), want, 0, name)
    assert not list(tmp_path.glob("dropped.beton.tmp-*")), "temporary files left behind"


def test_each_image_is_decoded_once(tmp_path, monkeypatch):
    """One decode per file, in FFCV's writer processes: no separate checking pass."""
    import imagenet_kit.data.beton_writer as writer_module

    calls = tmp_path / "decodes.log"

    def counting_load_rgb(path, max_res=None):
        with open(calls, "a") as log:
            log.write(f"{path}\n")
        return load_rgb(path, max_res)

    monkeypatch.setattr(writer_module, "load_rgb", counting_load_rgb)  # the forked writers inherit it
    src = tmp_path / "train"
    (src / "a").mkdir(parents=True)
    for i in range(12):
        _plain_jpeg(src / "a" / f"{i}.JPEG")
    BAD["truncated.JPEG"][0](src / "a" / "truncated.JPEG")
    report = convert(scan_imagefolder(src), tmp_path / "once.beton", workers=2)
    decoded = calls.read_text().splitlines()
    assert len(decoded) == 13 and len(set(decoded)) == 13
    assert report["counts"]["written"] == 12 and report["counts"]["skipped"] == 1


def test_a_writer_process_that_dies_is_an_error_not_a_hang(tmp_path, monkeypatch):
    """FFCV's writer would wait forever for a process the kernel killed; the kit names the exit code instead."""
    import imagenet_kit.data.beton_writer as writer_module

    def dying_load_rgb(path, max_res=None):
        if path.name == "5.JPEG":
            os._exit(9)  # as abruptly as the out-of-memory killer
        return load_rgb(path, max_res)

    monkeypatch.setattr(writer_module, "load_rgb", dying_load_rgb)
    src = tmp_path / "train"
    (src / "a").mkdir(parents=True)
    for i in range(12):
        _plain_jpeg(src / "a" / f"{i}.JPEG")
    out = tmp_path / "dies.beton"
    with pytest.raises(ConvertError, match=r"a writer process died \(exit code 9"):
        convert(scan_imagefolder(src), out, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train"]  # no beton, no temporary file


def test_a_folder_of_only_unreadable_files_is_an_error_that_leaves_nothing(tmp_path):
    src = tmp_path / "train"
    (src / "a").mkdir(parents=True)
    (src / "a" / "x.JPEG").write_text("not a picture")
    (src / "a" / "y.JPEG").write_bytes(b"")
    out = tmp_path / "none.beton"
    with pytest.raises(ConvertError, match=r"none of 2 files could be read \(the first: .*x\.JPEG: not an image"):
        convert(scan_imagefolder(src), out, workers=1)
    assert not list(tmp_path.glob("none.beton*"))


def test_force_is_needed_to_overwrite(tmp_path):
    src = tmp_path / "train"
    (src / "a").mkdir(parents=True)
    _plain_jpeg(src / "a" / "one.JPEG")
    out = tmp_path / "out.beton"
    out.write_bytes(b"someone's earlier beton")

    with pytest.raises(ConvertError, match="pass --force"):
        convert(scan_imagefolder(src), out, workers=1)
    refused = CliRunner().invoke(cli, ["convert", str(src), str(out), "-j", "1"])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert out.read_bytes() == b"someone's earlier beton"

    forced = CliRunner().invoke(cli, ["convert", str(src), str(out), "-j", "1", "--force"])
    assert forced.exit_code == 0, forced.output
    assert _beton_labels(out) == [0]


@pytest.mark.slow
@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"needs the ImageNet sample JPEGs in {SAMPLES}")
def test_killed_conversion_leaves_no_output_and_rerun_cleans_up(tmp_path):
    """SIGKILL while the writer is filling OUT.tmp-<pid>: OUT must not exist; a rerun succeeds and removes
    the stale temporary file."""
    src = tmp_path / "samples" / "all"
    src.mkdir(parents=True)
    for path in sorted(SAMPLES.glob("*.JPEG")):  # 400 full-size JPEGs: a write phase of a few seconds
        (src / path.name).symlink_to(path)
    out = tmp_path / "out" / "samples.beton"
    cmd = [str(KIT), "convert", str(src.parent), str(out), "--max-res", "500", "-j", "1"]
    # Own process group, so that whatever the conversion started can be waited for and, failing that, killed.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until_writing(proc, out)  # not as the file appears: its shared memory is registered by then
        proc.kill()
        proc.wait(30)
        # Only the leader is killed, as by the OOM killer: its writer workers stop on their own and its
        # resource tracker unlinks the writer's shared memory (killing the tracker too would leak it).
        deadline = time.monotonic() + 30
        while live_in_group(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        if live_in_group(proc.pid):
            with contextlib.suppress(ProcessLookupError):  # it may have ended since
                os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists()
    assert [p.name for p in out.parent.glob(out.name + ".tmp-*")] == [f"{out.name}.tmp-{proc.pid}"]

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert out.is_file()
    assert not list(out.parent.glob(out.name + ".tmp-*"))
    assert _beton_labels(out) == [0] * 400


# Miniature ILSVRC2012 val: devkit IDs 449 = tench n01440764, 490 = sea snake n01751748,
# 5 = English springer n02102040, 382 = chain saw n03000684. Training classes (sorted wnids):
TRAIN_WNIDS = ["n01440764", "n01751748", "n02102040"]
VAL_IDS = {1: 490, 2: 449, 3: 5, 4: 449, 5: 382}  # image 5 is a chain saw: not a training class; 6 has no label
ID_TO_WNID = {449: "n01440764", 490: "n01751748", 5: "n02102040", 382: "n03000684"}


@pytest.fixture(scope="module")
def train_beton(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ilsvrc")
    for wnid in TRAIN_WNIDS:
        (root / "train" / wnid).mkdir(parents=True)
        _plain_jpeg(root / "train" / wnid / f"{wnid}_1.JPEG")
    out = root / "train.beton"
    convert(scan_imagefolder(root / "train"), out, workers=1)
    return out


@pytest.mark.parametrize("label_format", ["devkit", "kaggle"])
def test_flat_ilsvrc_val_gets_training_class_indices(tmp_path, train_beton, label_format):
    val = tmp_path / "val"
    val.mkdir()
    for i in range(1, 7):
        _plain_jpeg(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    if label_format == "devkit":
        labels = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
        labels.write_text("".join(f"{VAL_IDS[i]}\n" for i in sorted(VAL_IDS)))
    else:
        labels = tmp_path / "LOC_val_solution.csv"
        rows = [f"ILSVRC2012_val_{i:08d},{ID_TO_WNID[v]} 1 2 30 20 {ID_TO_WNID[v]} 5 5 9 9"
                for i, v in VAL_IDS.items()]
        labels.write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")  # CSV order is arbitrary
    out = tmp_path / "val.beton"

    result = CliRunner().invoke(cli, ["convert", str(val), str(out), "--labels", str(labels),
                                      "--classes-from", str(train_beton), "-j", "1"])
    assert result.exit_code == 0, result.output
    # sorted-wnid indices of the training classes: sea snake 1, tench 0, springer 2, tench 0
    assert _beton_labels(out) == [1, 0, 2, 0]
    report = json.loads(Path(f"{out}.report.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert reasons == {"ILSVRC2012_val_00000005.JPEG": "class 'n03000684' is not among the training classes",
                       "ILSVRC2012_val_00000006.JPEG": "no label for this file in the labels file"}
    assert report["counts"]["seen"] == 6 and report["counts"]["written"] == 4


def test_the_same_source_gives_the_same_records_at_any_worker_count(tmp_path):
    """Which images FFCV stores as JPEG was a draw from whatever state the writer process's generator was in:
    the same folder gave other betons at another worker count, or after other work in the same process."""
    from imagenet_kit.data.verify import BetonRecords

    src = Path(__file__).resolve().parent.parent / "imagenet_kit" / "sample_data" / "imagenette-sample" / "val"
    records = []
    for workers, draws in ((1, 0), (2, 0), (1, 7)):
        np.random.rand(draws)  # what ran before in this process
        out = tmp_path / f"w{workers}-{draws}.beton"
        convert(scan_imagefolder(src), out, max_res=32, compress_prob=0.5, workers=workers, page_size=1 << 21)
        records.append(BetonRecords(out))
    first = records[0]
    assert 40 < int((first.images["mode"] == 0).sum()) < 160  # about half JPEG
    for other in records[1:]:
        assert other.images["mode"].tolist() == first.images["mode"].tolist()
        assert other.labels.tolist() == first.labels.tolist()
        assert all((other.pixels(i) == first.pixels(i)).all() for i in range(first.count))
