"""`imagenet-kit verify`: a beton read back against its report, classes and source. A sound beton passes; one
swapped label, one missing image and one record holding another image's data are each caught and named."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from imagenet_kit.cli import cli
from imagenet_kit.data.beton_file import drop_samples
from imagenet_kit.data.convert import convert
from imagenet_kit.data.sources import scan_imagefolder
from imagenet_kit.data.verify import verify_beton

VAL = SAMPLE / "val"  # 10 classes x 20 images, in class order


@pytest.fixture(scope="module")
def sound(tmp_path_factory) -> Path:
    beton = tmp_path_factory.mktemp("verify") / "val.beton"
    convert(scan_imagefolder(VAL), beton, max_res=48, compress_prob=0.5, workers=1)
    return beton


@pytest.fixture
def beton(sound, tmp_path) -> Path:
    """A copy to damage."""
    for suffix in ("", ".report.json", ".classes.json"):
        shutil.copy(f"{sound}{suffix}", tmp_path / f"val.beton{suffix}")
    return tmp_path / "val.beton"


def _metadata(beton: Path) -> np.memmap:
    """The beton's metadata rows, writable in place."""
    from ffcv.reader import Reader
    from ffcv.types import FieldDescType, HeaderType

    reader = Reader(str(beton))
    start = HeaderType.itemsize + len(reader.field_names) * FieldDescType.itemsize
    return np.memmap(beton, dtype=reader.metadata.dtype, mode="r+", offset=start, shape=(reader.num_samples,))


def _verify(beton: Path, *extra: str):
    return CliRunner().invoke(cli, ["verify", str(beton), "--source", str(VAL), *extra])


def test_a_sound_beton_passes_every_check(sound):
    result = _verify(sound, "--sample", "200")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (f"verify {sound}: OK, 200 records (counted 200, decoded 200, labels checked "
                                     "200, compared with their files 200)")


def test_two_swapped_labels_are_named_though_the_counts_agree(beton):
    rows = _metadata(beton)
    rows["f1"][0], rows["f1"][20] = 1, 0  # a class-0 image labelled 1 and a class-1 image labelled 0
    rows.flush()
    result = _verify(beton)
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "2 problems in 200 records" in out and "records per class" not in out
    assert "record 0: label 1, but" in out and "record 20: label 0, but" in out


def test_a_missing_image_is_caught_by_the_counts_and_the_source(beton):
    drop_samples(beton, [5])
    verdict = verify_beton(beton, scan_imagefolder(VAL, None))
    assert not verdict.ok and verdict.records == 199
    problems = " ".join(what for _, what in verdict.problems)
    assert "records per class differ from the report (class 0: 19 records, the report says 20)" in problems
    assert "the source has 200 files the report does not list as skipped, the beton 199 records" in problems


def test_a_record_holding_another_images_data_is_caught_by_its_pixels(beton):
    rows = _metadata(beton)
    rows["f0"][3] = rows["f0"][180]  # record 3 (class 0) now points at the data of record 180 (class 9)
    rows.flush()
    without_source = verify_beton(beton)
    assert without_source.ok  # it decodes and its label is still a class: only the source can tell
    result = _verify(beton, "--sample", "200")
    assert result.exit_code == 1, result.output
    out = " ".join(result.output.split())
    assert "1 problem in 200 records" in out and "record 3: not the image of" in out and "PSNR" in out


def test_an_undecodable_record_is_named_without_the_source(beton):
    rows = _metadata(beton)
    jpeg = int(np.flatnonzero(rows["f0"]["mode"] == 0)[0])
    with open(beton, "r+b") as handle:  # overwrite the JPEG's start (its SOI marker and header)
        handle.seek(int(rows["f0"]["data_ptr"][jpeg]))
        handle.write(b"\0" * 64)
    result = CliRunner().invoke(cli, ["verify", str(beton)])
    assert result.exit_code == 1
    assert f"record {jpeg}: its JPEG does not decode" in " ".join(result.output.split())


def test_prepare_ends_with_a_quick_verify(tiny_data, tmp_path):
    result = CliRunner().invoke(cli, ["prepare", "--data", str(tiny_data["root"]), "--set",
                                      f"data.beton_dir={tmp_path}", "--set", "data.name=v", "--set",
                                      "data.max_res=48", "-j", "1"])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    for beton, n in ((tmp_path / "v-train-48.beton", 32), (tmp_path / "v-val-48.beton", 16)):
        # every count and label; 64 records decoded and 16 compared at most
        assert (f"verify {beton}: OK, {n} records (counted {n}, decoded {n}, labels checked {n}, compared with "
                f"their files {min(n, 16)}) in ") in out
