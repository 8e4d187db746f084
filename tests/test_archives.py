"""ImageNet as downloaded, read in place: miniature official tars (train: a tar of class tars; val: flat, with the
devkit's ground truth) and Kaggle's zip, built from the embedded sample's ImageNet JPEGs (in the repo, so these
tests never skip). Every image lands with its label;
a truncated member and a non-image member are listed with their reason, not fatal."""
from __future__ import annotations

import io
import json
import subprocess
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, SAMPLE, make_env

from imagenet_kit.data.archives import TRAIN_TAR, VAL_TAR, find_splits
from imagenet_kit.data.convert import convert
from imagenet_kit.data.imagenet_meta import imagenet_classes

CLASSES = 4


def _originals() -> list[tuple[str, bytes]]:
    """(wnid, the JPEG's bytes): the first image of each of the sample's first CLASSES classes."""
    folders = sorted(p for p in (SAMPLE / "train").iterdir() if p.is_dir())[:CLASSES]
    return [(f.name, sorted(f.glob("*.JPEG"))[0].read_bytes()) for f in folders]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _official(root: Path) -> dict:
    """root/ILSVRC2012_img_train.tar (class tars of 3 images; one class also holds a cut JPEG and a text file),
    root/ILSVRC2012_img_val.tar (2 images per class) and root/ILSVRC2012_validation_ground_truth.txt."""
    ids = {c["wnid"]: c["ilsvrc2012_id"] for c in imagenet_classes()}
    originals = _originals()
    root.mkdir(parents=True)
    with tarfile.open(root / TRAIN_TAR, "w") as outer:
        for i, (wnid, jpeg) in enumerate(originals):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as inner:
                for k in range(3):
                    _add(inner, f"{wnid}_{k}.JPEG", jpeg)
                if i == 0:
                    _add(inner, f"{wnid}_cut.JPEG", jpeg[: len(jpeg) // 3])
                    _add(inner, f"{wnid}_notes.JPEG", b"not a picture\n")
            _add(outer, f"{wnid}.tar", buffer.getvalue())
        _add(outer, "README.txt", b"not a class tar\n")
    truth = []
    with tarfile.open(root / VAL_TAR, "w") as val:
        for k in range(2 * len(originals)):
            wnid, jpeg = originals[k % len(originals)]
            _add(val, f"ILSVRC2012_val_{k + 1:08d}.JPEG", jpeg)
            truth.append(str(ids[wnid]))
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(truth) + "\n")
    return {"wnids": sorted(w for w, _ in originals), "val": [w for w, _ in originals] * 2}


def _kaggle_zip(root: Path) -> dict:
    originals = _originals()
    root.mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    with zipfile.ZipFile(root / "imagenet-object-localization-challenge.zip", "w") as archive:
        for wnid, jpeg in originals:
            for k in range(2):
                archive.writestr(f"ILSVRC/Data/CLS-LOC/train/{wnid}/{wnid}_{k}.JPEG", jpeg)
        for k, (wnid, jpeg) in enumerate(originals):
            archive.writestr(f"ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_{k + 1:08d}.JPEG", jpeg)
            rows.append(f"ILSVRC2012_val_{k + 1:08d},{wnid} 1 2 3 4")
        archive.writestr("ILSVRC/Data/CLS-LOC/val/ILSVRC2012_val_00000099.JPEG", b"\x89PNG broken")
        rows.append(f"ILSVRC2012_val_00000099,{originals[0][0]} 1 2 3 4")
        archive.writestr("LOC_val_solution.csv", "\n".join(rows) + "\n")
    return {"wnids": sorted(w for w, _ in originals), "val": [w for w, _ in originals]}


def _cut_inside_last_member(path: Path) -> None:
    """Truncate a .tar.gz at the shortest prefix that decompresses to the middle of its last member's data."""
    whole = path.read_bytes()
    with tarfile.open(path) as shard:
        last = shard.getmembers()[-1]
    target, lo, hi = last.offset_data + last.size // 2, 0, len(whole)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(zlib.decompressobj(31).decompress(whole[:mid])) >= target:
            hi = mid
        else:
            lo = mid + 1
    path.write_bytes(whole[:lo])


def _hf_shards(root: Path) -> dict:
    """Hugging Face's layout: root/data/train_images_{0,1}.tar.gz (flat <id>_<wnid>.JPEG, a cut JPEG and a text
    file among them) and root/data/val_images.tar.gz; shard 1 is cut short, inside its last member."""
    originals = _originals()
    data = root / "data"
    data.mkdir(parents=True)
    train = [(f"{wnid}_{k}_{wnid}.JPEG", jpeg) for k in range(3) for wnid, jpeg in originals]
    shards = {0: train[: len(train) // 2], 1: train[len(train) // 2:]}
    shards[0] += [(f"{originals[0][0]}_cut_{originals[0][0]}.JPEG", originals[0][1][: len(originals[0][1]) // 3]),
                  ("LICENSE.txt", b"not a picture\n")]
    for i, members in shards.items():
        with tarfile.open(data / f"train_images_{i}.tar.gz", "w:gz") as shard:
            for name, jpeg in members:
                _add(shard, name, jpeg)
    _cut_inside_last_member(data / "train_images_1.tar.gz")
    with tarfile.open(data / "val_images.tar.gz", "w:gz") as shard:
        for k, (wnid, jpeg) in enumerate(originals * 2):
            _add(shard, f"ILSVRC2012_val_{k + 1:08d}_{wnid}.JPEG", jpeg)
    return {"wnids": sorted(w for w, _ in originals), "val": [w for w, _ in originals] * 2,
            "lost": train[-1][0], "train": train}


def _member(where: str) -> str:
    """The file name of a report's ``archive:member/path``."""
    assert ":" in where, where  # the archive and the member, so the user finds it
    return Path(where.rsplit(":", 1)[1]).name


def _labels(beton: Path) -> list[int]:
    from imagenet_kit.data.loaders import create_val_loader
    return [int(y) for _, labels in create_val_loader(str(beton), 4, 32, torch.device("cpu"), 1)
            for y in labels.reshape(-1)]


def test_official_tars_convert_in_place_with_every_label(tmp_path):
    expected = _official(tmp_path / "imagenet")
    scan_train, scan_val = find_splits(tmp_path / "imagenet")
    train = scan_train()
    assert train.classes == expected["wnids"]  # sorted WNIDs: torchvision's class order
    report = convert(train, tmp_path / "train.beton", max_res=64, workers=1)
    assert report["counts"]["written"] == 3 * CLASSES
    reasons = {_member(s["path"]): s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"README.txt", f"{expected['wnids'][0]}_cut.JPEG", f"{expected['wnids'][0]}_notes.JPEG"}
    assert "not a class tar" in reasons["README.txt"]
    assert "truncated" in reasons[f"{expected['wnids'][0]}_cut.JPEG"]
    assert "not an image file" in reasons[f"{expected['wnids'][0]}_notes.JPEG"]
    assert _labels(tmp_path / "train.beton") == [i for i in range(CLASSES) for _ in range(3)]

    val = scan_val(train.classes)
    report = convert(val, tmp_path / "val.beton", max_res=64, workers=1)
    assert report["counts"]["written"] == 2 * CLASSES and not report["skipped"]
    assert _labels(tmp_path / "val.beton") == [train.classes.index(w) for w in expected["val"]]
    # the same pixels as the original file: nothing was re-encoded on the way out of the archive
    member = val.items[0][0]
    assert member.read_bytes() == dict(_originals())[expected["val"][0]]


def test_kaggle_zip_converts_in_place(tmp_path):
    expected = _kaggle_zip(tmp_path / "kaggle")
    scan_train, scan_val = find_splits(tmp_path / "kaggle")
    train = scan_train()
    report = convert(train, tmp_path / "train.beton", max_res=64, workers=1)
    assert train.classes == expected["wnids"] and report["counts"]["written"] == 2 * CLASSES
    assert _labels(tmp_path / "train.beton") == [i for i in range(CLASSES) for _ in range(2)]
    report = convert(scan_val(train.classes), tmp_path / "val.beton", max_res=64, workers=1)
    assert report["counts"]["written"] == CLASSES
    assert [_member(s["path"]) for s in report["skipped"]] == ["ILSVRC2012_val_00000099.JPEG"]
    assert _labels(tmp_path / "val.beton") == [train.classes.index(w) for w in expected["val"]]


@pytest.mark.parametrize("workers", [1, 2])
def test_hugging_face_shards_convert_in_place(tmp_path, monkeypatch, workers):
    import imagenet_kit.data.gzip_shards as gzip_shards

    # small blocks and many snapshots, so that reads resume from the middle of a shard
    monkeypatch.setattr(gzip_shards, "BLOCK", 1024)
    monkeypatch.setattr(gzip_shards, "SNAPSHOT_EVERY", 4096)
    expected = _hf_shards(tmp_path / "hf")
    scan_train, scan_val = find_splits(tmp_path / "hf")
    train = scan_train()
    assert train.classes == expected["wnids"]
    assert len(gzip_shards._SNAPSHOTS[str(tmp_path / "hf" / "data" / "train_images_0.tar.gz")]) > 3
    # every member's bytes, read out of order, are the file that went in
    by_name = dict(expected["train"])
    for member, _ in reversed(train.items):
        if member.name in by_name:
            assert member.read_bytes() == by_name[member.name], member.name
    report = convert(train, tmp_path / "train.beton", max_res=64, workers=workers)
    # members are named archive:member; the cut shard itself by its path
    reasons = {_member(s["path"]) if ":" in s["path"] else Path(s["path"]).name: s["reason"]
               for s in report["skipped"]}
    wnid0 = expected["wnids"][0]
    assert set(reasons) == {f"{wnid0}_cut_{wnid0}.JPEG", "LICENSE.txt", expected["lost"], "train_images_1.tar.gz"}
    assert "not an image" in reasons["LICENSE.txt"]
    assert "truncated" in reasons[f"{wnid0}_cut_{wnid0}.JPEG"]
    assert "cut off: the archive ends inside this member" in reasons[expected["lost"]]
    assert "the members before it are kept" in reasons["train_images_1.tar.gz"]
    written = [name for name, _ in expected["train"] if name != expected["lost"]]
    assert report["counts"]["written"] == len(written)
    labels = sorted(_labels(tmp_path / "train.beton"))
    assert labels == sorted(expected["wnids"].index(name.rsplit("_", 1)[1][:-5]) for name in written)

    report = convert(scan_val(train.classes), tmp_path / "val.beton", max_res=64, workers=workers)
    assert report["counts"]["written"] == 2 * CLASSES and not report["skipped"]
    assert _labels(tmp_path / "val.beton") == [train.classes.index(w) for w in expected["val"]]


def test_a_single_shard_converts_from_the_command_line(tmp_path):
    from click.testing import CliRunner

    from imagenet_kit.cli import cli
    expected = _hf_shards(tmp_path / "hf")
    shard = tmp_path / "hf" / "data" / "val_images.tar.gz"
    result = CliRunner().invoke(cli, ["convert", str(shard), str(tmp_path / "val.beton"), "--max-res", "64", "-j", "1"])
    assert result.exit_code == 0, result.output
    assert f"written {2 * CLASSES}, skipped 0" in result.output
    classes = json.loads((tmp_path / "val.beton.classes.json").read_text())
    assert [c["wnid"] for c in classes] == expected["wnids"]


def test_train_shards_without_the_val_shard_say_what_is_missing(tmp_path):
    _hf_shards(tmp_path / "hf")
    (tmp_path / "hf" / "data" / "val_images.tar.gz").unlink()
    with pytest.raises(Exception, match="2 train shards found, but no val_images.tar.gz beside them"):
        find_splits(tmp_path / "hf")


def test_official_tars_without_val_labels_say_what_is_missing(tmp_path):
    _official(tmp_path / "imagenet")
    (tmp_path / "imagenet" / "ILSVRC2012_validation_ground_truth.txt").unlink()
    with pytest.raises(Exception, match="ILSVRC2012_validation_ground_truth.txt or Kaggle's LOC_val_solution.csv"):
        find_splits(tmp_path / "imagenet")


@pytest.mark.slow
def test_make_full_on_the_official_tars_needs_no_manual_step(tmp_path):
    """The full recipe's own data settings (500 px, 12 workers): on a host with fewer cores, each kind of loader
    and the conversion say once that they use what there is. 12 workers ended in numba's ValueError here."""
    from imagenet_kit.data.workers import host_cores

    _official(tmp_path / "imagenet")
    out = tmp_path / "out"
    args = (f"--output-dir {out} --set data.beton_dir={out}/betons --arch resnet18 -b 4 "
            "--epochs 1 --set train.min_res=32 --set train.max_res=32 --set train.val_res=32 "
            "--set train.val_batch_size=4 --set train.precision=fp32 --lr 0.05")
    proc = subprocess.run(["make", "-C", str(REPO), "full", f"DATA={tmp_path / 'imagenet'}", f"ARGS={args}"],
                          capture_output=True, text=True, timeout=900, env=make_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    if host_cores() < 12:
        for kind in ("convert", "train loader", "val loader"):
            lines = [line for line in proc.stderr.splitlines() if line.startswith(f"{kind}: data.workers 12 >")]
            # conversion runs once per split, in one process: said once
            assert lines == [f"{kind}: data.workers 12 > {host_cores()} cores here: using {host_cores()}"], kind
    reports = {p.name: json.loads(p.read_text()) for p in (out / "betons").glob("*.report.json")}
    assert [r["counts"]["written"] for _, r in sorted(reports.items())] == [3 * CLASSES, 2 * CLASSES]  # train, val
    summary = json.loads((out / "full" / "eval.json").read_text())
    assert summary["count"] == 2 * CLASSES and np.isfinite(summary["loss"])


def test_a_root_of_class_folders_gets_a_recorded_deterministic_held_out_split(tmp_path):
    import shutil

    from conftest import SAMPLE

    from imagenet_kit.config import load_config
    from imagenet_kit.data.prepare import data_splits, prepare
    root = tmp_path / "mini"  # class folders only, as some mini-ImageNet downloads come
    for wnid in sorted(p.name for p in (SAMPLE / "train").iterdir())[:3]:
        shutil.copytree(SAMPLE / "train" / wnid, root / wnid)
    scan_train, scan_val = data_splits(root, 0.2, 7)
    train = scan_train()
    val = scan_val(train.classes)
    everything = sorted(str(p) for p in root.glob("*/*"))
    assert sorted(str(p) for p, _ in train.items + val.items) == everything  # each file on exactly one side
    assert not {p for p, _ in train.items} & {p for p, _ in val.items}
    assert [sum(1 for _, y in val.items if y == c) for c in range(3)] == [10, 10, 10]  # 20% of 50 per class
    again_train, again_val = data_splits(root, 0.2, 7)
    assert again_val(train.classes).items == val.items  # the same files every time
    assert data_splits(root, 0.2, 8)[1](train.classes).items != val.items  # another seed, another draw

    cfg = load_config("sample", [f"data.root={root}", f"data.beton_dir={tmp_path / 'betons'}", "data.name=mini",
                                 "data.max_res=64", "data.holdout_fraction=0.2", "data.holdout_seed=7",
                                 "data.workers=1", "train.batch_size=8"])
    prepare(cfg)
    reports = [json.loads(Path(f"{beton}.report.json").read_text()) for beton in cfg.betons]
    assert [r["counts"]["written"] for r in reports] == [120, 30]
    for report, side in zip(reports, ("train", "val"), strict=True):
        assert report["split"] == {"held_out_from": str(root), "fraction": 0.2, "seed": 7, "train": 120, "val": 30,
                                   "side": side}


def test_listing_a_shard_shows_its_progress_in_mib(tmp_path, capsys):
    """gzip reads only from the start, so a shard is listed by one pass over it (about 30 GB for each of
    ImageNet's train shards): a bar of the MiB read says it is moving."""
    import os
    import tarfile

    from imagenet_kit.data.gzip_shards import scan_gzip_shards

    shard = tmp_path / "train_images_0.tar.gz"
    with tarfile.open(shard, "w:gz") as archive:
        for i in range(12):  # random bytes do not compress: a 3 MiB .gz
            _add(archive, f"n01440764_{i}_n01440764.JPEG", os.urandom(256 << 10))
    source = scan_gzip_shards([shard])
    assert len(source.items) == 12
    mib = shard.stat().st_size >> 20
    assert mib == 3 and f"list 1 .tar.gz shard: {mib}/{mib}" in capsys.readouterr().err
