"""`imagenet-kit bench convert`: both writers on the same files, one row each per setting, the ratio against FFCV's."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from imagenet_kit.bench.convert import bench_convert_command, link_imagefolder, parse_settings
from imagenet_kit.errors import ConfigError
from tests.conftest import SAMPLE


def _flat_sample(tmp_path, per_class: int = 2):
    """A flat folder like imagenet-samples: <wnid>_<name>.JPEG, two real sample images of each class."""
    flat = tmp_path / "flat"
    flat.mkdir()
    for wnid_dir in sorted((SAMPLE / "val").iterdir()):
        for f in sorted(wnid_dir.iterdir())[:per_class]:
            (flat / f"{wnid_dir.name}_{f.stem}.JPEG").write_bytes(f.read_bytes())
    return flat


def test_settings_parse_and_bad_ones_name_the_item():
    assert parse_settings("500:0.5:90, 256:1:95,") == [(500, 0.5, 90), (256, 1.0, 95)]
    with pytest.raises(ConfigError, match=r"'256:1'.*MAX_RES:COMPRESS_PROB:JPEG_QUALITY"):
        parse_settings("500:0.5:90,256:1")
    with pytest.raises(ConfigError, match=r"'256:1.5:90'.*compress_prob in \[0, 1\]"):
        parse_settings("256:1.5:90")
    with pytest.raises(ConfigError, match="at least one"):
        parse_settings(" , ")


def test_a_flat_folder_becomes_class_folders_named_by_the_wnid(tmp_path):
    folder = link_imagefolder(_flat_sample(tmp_path), tmp_path / "linked", copies=3)
    classes = sorted(p.name for p in folder.iterdir())
    assert classes == sorted(p.name for p in (SAMPLE / "val").iterdir())
    assert all(len(list((folder / c).iterdir())) == 2 * 3 for c in classes)  # two files, three links each
    assert all(link.is_symlink() and link.resolve().parent == tmp_path / "flat" for link in folder.rglob("*.JPEG"))


@pytest.mark.slow
def test_both_writers_timed_on_the_same_images_at_each_setting(tmp_path):
    src, results = _flat_sample(tmp_path), tmp_path / "results"
    run = CliRunner().invoke(bench_convert_command, ["--src", str(src), "--settings", "128:0.5:90,64:1:80",
                                                     "-j", "1", "--repeats", "1", "--results-dir", str(results)])
    assert run.exit_code == 0, run.output
    rows = [json.loads(line) for line in (results / "convert.jsonl").read_text().splitlines()]
    assert [(r["writer"], r["max_res"], r["compress_prob"], r["jpeg_quality"]) for r in rows] == [
        ("ffcv", 128, 0.5, 90), ("kit", 128, 0.5, 90), ("ffcv", 64, 1.0, 80), ("kit", 64, 1.0, 80)]
    for ffcv, kit in (rows[0:2], rows[2:4]):
        assert ffcv["time_vs_ffcv"] == 1.0
        # the ratio is rounded to 0.001 from unrounded times; recomputed from the times rounded to 1 ms it can
        # differ by up to that rounding carried through the quotient (more, the shorter the times)
        ratio = kit["seconds"] / ffcv["seconds"]
        assert kit["time_vs_ffcv"] == pytest.approx(ratio, abs=5e-4 + ratio * 5e-4 * (1 / kit["seconds"] +
                                                                                        1 / ffcv["seconds"]))
        for r in (ffcv, kit):
            assert (r["kind"], r["n_images"], r["workers"], r["src"]) == ("convert", 20, 1, str(src))
            assert r["img_per_s"] == pytest.approx(20 / r["seconds"], rel=0.01, abs=0.06)  # both rounded
    # All JPEG: the same pixels in the same stored form, so (nearly) the same bytes; the writers differ only in how
    # they decode (PIL's full decode vs the kit's), which moves JPEG re-encoding by a few bytes at most. At 0.5
    # each writer draws which images are JPEG (the kit by image, FFCV from whatever state its process's global
    # generator is in), so of 20 images another few may be stored raw: no like-for-like bytes there.
    assert rows[3]["bytes_per_image"] == pytest.approx(rows[2]["bytes_per_image"], rel=0.05)
    # 64 px JPEG at quality 80 stores far less than 128 px half raw pixels
    assert rows[2]["bytes_per_image"] < rows[0]["bytes_per_image"] / 3
    assert "appended 4 lines" in run.output
