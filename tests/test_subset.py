"""Deterministic ImageFolder subsets: class choice, per-class counts, hard links, safety checks, CLI."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from imagenet_kit.cli import cli
from imagenet_kit.data.subset import make_subset, subset_command

WNIDS = [f"n0{i:07d}" for i in range(1, 9)]  # 8 classes


def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(path, "JPEG")


@pytest.fixture
def root(tmp_path) -> Path:
    """train/ with 6 images per class, val/ with 3, plus the junk file managers leave behind."""
    src = tmp_path / "imagenet"
    for c, wnid in enumerate(WNIDS):
        for i in range(6):
            _jpeg(src / "train" / wnid / f"{wnid}_{i}.JPEG", c * 10 + i)
        for i in range(3):
            _jpeg(src / "val" / wnid / f"ILSVRC2012_val_{c:04d}{i}.JPEG", c * 10 + i)
        (src / "train" / wnid / ".DS_Store").write_bytes(b"junk")
        (src / "train" / wnid / "Thumbs.db").write_bytes(b"junk")
        (src / "val" / wnid / "._resource_fork").write_bytes(b"junk")
    (src / "train" / ".hidden_class").mkdir()
    return src


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != "subset.json")


def test_root_subset_counts_and_summary(root, tmp_path):
    dst = tmp_path / "tiny"
    summary = make_subset(root, dst, classes=3, per_class=2, seed=0)
    assert len(summary["classes"]) == 3 and set(summary["classes"]) <= set(WNIDS)
    assert summary["classes"] == sorted(summary["classes"])
    assert summary["counts"]["train"] == {w: 2 for w in summary["classes"]}
    assert summary["counts"]["val"] == {w: 3 for w in summary["classes"]}  # val keeps everything by default
    assert summary["images"] == {"train": 6, "val": 9}
    assert summary["linked"] + summary["copied"] == 15
    assert sorted(os.listdir(dst / "train")) == summary["classes"] == sorted(os.listdir(dst / "val"))
    files = _files(dst)
    assert len(files) == 15 and not any(Path(f).name.startswith(".") or f.endswith("Thumbs.db") for f in files)

    written = json.loads((dst / "subset.json").read_text())
    assert written["classes"] == summary["classes"]
    assert written["arguments"] == {"classes": 3, "per_class": 2, "val_per_class": None, "seed": 0}


def test_val_per_class(root, tmp_path):
    summary = make_subset(root, tmp_path / "tiny", classes=2, per_class=1, seed=0, val_per_class=2)
    assert summary["images"] == {"train": 2, "val": 4}


def test_same_seed_same_files_other_seed_other_choice(root, tmp_path):
    a = make_subset(root, tmp_path / "a", classes=3, per_class=2, seed=7)
    b = make_subset(root, tmp_path / "b", classes=3, per_class=2, seed=7)
    assert a["classes"] == b["classes"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")

    others = [make_subset(root, tmp_path / f"s{seed}", classes=3, per_class=2, seed=seed) for seed in range(1, 4)]
    assert any(o["classes"] != a["classes"] for o in others)
    picks = {tuple(_files(tmp_path / f"s{seed}" / "train")) for seed in range(1, 4)}
    assert len(picks) > 1


def test_hard_links_share_inodes(root, tmp_path):
    dst = tmp_path / "tiny"
    summary = make_subset(root, dst, classes=1, per_class=2, seed=0)
    assert summary["linked"] == 5 and summary["copied"] == 0  # tmp_path: one filesystem
    for f in _files(dst):
        assert os.stat(dst / f).st_ino == os.stat(root / f).st_ino


def test_copies_when_linking_fails(root, tmp_path, monkeypatch):
    def no_link(*args):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    dst = tmp_path / "tiny"
    summary = make_subset(root, dst, classes=1, per_class=2, seed=0)
    assert summary["linked"] == 0 and summary["copied"] == 5
    for f in _files(dst):
        assert (dst / f).read_bytes() == (root / f).read_bytes()
        assert os.stat(dst / f).st_ino != os.stat(root / f).st_ino


def test_wnid_file_selection(root, tmp_path):
    wnid_file = tmp_path / "classes.txt"
    wnid_file.write_text(f"# my classes\n{WNIDS[5]}\n\n{WNIDS[1]}  # second one\n")
    summary = make_subset(root, tmp_path / "tiny", classes=wnid_file, per_class=None, seed=0)
    assert summary["classes"] == [WNIDS[1], WNIDS[5]]
    assert summary["images"] == {"train": 12, "val": 6}


def test_unknown_wnid_is_named(root, tmp_path):
    wnid_file = tmp_path / "classes.txt"
    wnid_file.write_text(f"{WNIDS[0]}\nn09999999\n")
    with pytest.raises(ValueError, match="n09999999"):
        make_subset(root, tmp_path / "tiny", classes=wnid_file, per_class=1, seed=0)
    assert not (tmp_path / "tiny").exists()  # validated before anything is written


def test_single_split_source(root, tmp_path):
    dst = tmp_path / "tiny"
    summary = make_subset(root / "train", dst, classes=4, per_class=3, seed=1)
    assert summary["images"] == {".": 12}
    assert sorted(os.listdir(dst)) == sorted(summary["classes"] + ["subset.json"])
    assert all(len(os.listdir(dst / w)) == 3 for w in summary["classes"])


def test_refuses_to_overwrite_unless_forced(root, tmp_path):
    dst = tmp_path / "tiny"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="not empty"):
        make_subset(root, dst, classes=2, per_class=1, seed=0)
    assert (dst / "stale.txt").exists()

    make_subset(root, dst, classes=2, per_class=1, seed=0, force=True)
    assert not (dst / "stale.txt").exists()
    assert len(_files(dst)) == 2 + 6


def test_refuses_destination_overlapping_source(root):
    with pytest.raises(ValueError, match="overlaps"):
        make_subset(root, root / "train" / "subset", classes=1, per_class=1, seed=0, force=True)
    with pytest.raises(ValueError, match="overlaps"):
        make_subset(root / "train", root, classes=1, per_class=1, seed=0, force=True)


@pytest.mark.parametrize("classes", [0, 9])
def test_class_count_out_of_range(root, tmp_path, classes):
    with pytest.raises(ValueError, match="has 8 classes"):
        make_subset(root, tmp_path / "tiny", classes=classes, per_class=1, seed=0)


def test_cli(root, tmp_path):
    dst = tmp_path / "tiny"
    runner = CliRunner()
    result = runner.invoke(subset_command, [str(root), str(dst), "--classes", "2", "--per-class", "1",
                                            "--val-per-class", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "2 classes" in result.output and "train 2, val 2" in result.output
    assert json.loads((dst / "subset.json").read_text())["arguments"]["seed"] == 3

    again = runner.invoke(cli, ["subset", str(root), str(dst), "--classes", "2"])
    assert again.exit_code != 0 and "not empty" in again.output

    wnid_file = tmp_path / "c.txt"
    wnid_file.write_text("n00000000\n")
    bad = runner.invoke(cli, ["subset", str(root), str(dst), "--classes", str(wnid_file), "--force"])
    assert bad.exit_code != 0 and "n00000000" in bad.output
