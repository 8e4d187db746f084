"""Every layout the kit reads, at 1, 2 and 4 writer processes, with and without broken members: each split's beton
holds every decodable image exactly once with its right label, told apart by its pixels (not counted), and every
broken member is listed with its reason. The same images are written in each layout, so the same set comes out at
every worker count and from every download. Before the zip was opened once per process, Kaggle's zip lost a
third of its images at 2 workers as 'Bad CRC-32'."""
from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imagenet_kit.data.archives import GROUND_TRUTH, KAGGLE_CSV, KAGGLE_DIR, KAGGLE_ZIP, TRAIN_TAR, VAL_TAR
from imagenet_kit.data.convert import convert
from imagenet_kit.data.imagenet_meta import imagenet_classes
from imagenet_kit.data.prepare import data_splits

WNIDS = ["n01440764", "n01443537", "n01484850", "n01491361"]
TRAIN_PER_CLASS, VAL_PER_CLASS = 30, 4
# name -> bytes of members no decoder reads: a PNG cut short and a text file under an image's name
BROKEN = {"cut": lambda png: png[: len(png) // 2], "notes": lambda _png: b"not a picture\n"}


def _png(value: int) -> bytes:
    """A flat 16x16 image whose red and green channels spell ``value``: its pixels say which file it was."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), (value % 256, value // 256, 7), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def _images(broken: bool) -> dict[str, list[tuple[str, str, bytes]]]:
    """split -> (file name, wnid, bytes); values 0.. in train, then val; broken members last, labelled."""
    value, splits = 0, {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        splits[split] = []
        for _ in range(per_class):
            for wnid in WNIDS:
                # named as ImageNet names its train images (<wnid>_<number>); val is renamed by each layout
                splits[split].append((f"{wnid if split == 'train' else split}_{value:04d}", wnid, _png(value)))
                value += 1
        if broken:
            splits[split] += [(f"{split}_{kind}", WNIDS[0], damage(_png(0))) for kind, damage in BROKEN.items()]
    return splits


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _val_name(k: int) -> str:
    return f"ILSVRC2012_val_{k + 1:08d}"


def _kaggle_csv(val) -> str:
    return "ImageId,PredictionString\n" + "".join(f"{_val_name(k)},{wnid} 1 2 3 4\n" for k, (_, wnid, _) in
                                                  enumerate(val))


def _imagefolder(root: Path, images) -> None:
    for split, items in images.items():
        for name, wnid, data in items:
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            (root / split / wnid / f"{name}.JPEG").write_bytes(data)


def _class_folders(root: Path, images) -> None:
    """Class folders only, as some mini-ImageNet downloads come: the kit holds val out itself."""
    for items in images.values():
        for name, wnid, data in items:
            (root / wnid).mkdir(parents=True, exist_ok=True)
            (root / wnid / f"{name}.JPEG").write_bytes(data)


def _official_tars(root: Path, images, labels: str) -> None:
    """A train tar of class tars and a flat val tar, labelled by the devkit's ground truth or Kaggle's CSV."""
    root.mkdir(parents=True)
    with tarfile.open(root / TRAIN_TAR, "w") as outer:
        for wnid in WNIDS:
            inner_bytes = io.BytesIO()
            with tarfile.open(fileobj=inner_bytes, mode="w") as inner:
                for name, _, data in (item for item in images["train"] if item[1] == wnid):
                    _add(inner, f"{name}.JPEG", data)
            _add(outer, f"{wnid}.tar", inner_bytes.getvalue())
    with tarfile.open(root / VAL_TAR, "w") as val:
        for k, (_, _, data) in enumerate(images["val"]):
            _add(val, f"{_val_name(k)}.JPEG", data)
    if labels == "devkit":
        ids = {c["wnid"]: c["ilsvrc2012_id"] for c in imagenet_classes()}
        (root / GROUND_TRUTH).write_text("".join(f"{ids[wnid]}\n" for _, wnid, _ in images["val"]))
    else:
        (root / KAGGLE_CSV).write_text(_kaggle_csv(images["val"]))


def _kaggle_zip(root: Path, images) -> None:
    root.mkdir(parents=True)
    with zipfile.ZipFile(root / KAGGLE_ZIP, "w") as archive:
        for name, wnid, data in images["train"]:
            archive.writestr(f"{KAGGLE_DIR}/train/{wnid}/{name}.JPEG", data)
        for k, (_, _, data) in enumerate(images["val"]):
            archive.writestr(f"{KAGGLE_DIR}/val/{_val_name(k)}.JPEG", data)
        archive.writestr(KAGGLE_CSV, _kaggle_csv(images["val"]))


def _kaggle_folder(root: Path, images) -> None:
    """Kaggle's zip extracted: ILSVRC/Data/CLS-LOC/{train/<wnid>, val} and the CSV beside ILSVRC/."""
    for name, wnid, data in images["train"]:
        (root / KAGGLE_DIR / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (root / KAGGLE_DIR / "train" / wnid / f"{name}.JPEG").write_bytes(data)
    (root / KAGGLE_DIR / "val").mkdir(parents=True)
    for k, (_, _, data) in enumerate(images["val"]):
        (root / KAGGLE_DIR / "val" / f"{_val_name(k)}.JPEG").write_bytes(data)
    (root / KAGGLE_CSV).write_text(_kaggle_csv(images["val"]))


def _hf_shards(root: Path, images) -> None:
    """Hugging Face's imagenet-1k: two train shards and one val shard of flat <id>_<wnid>.JPEG members."""
    (root / "data").mkdir(parents=True)
    train = images["train"]
    for i, members in enumerate((train[::2], train[1::2])):
        with tarfile.open(root / "data" / f"train_images_{i}.tar.gz", "w:gz") as shard:
            for name, wnid, data in members:
                _add(shard, f"{name}_{wnid}.JPEG", data)
    with tarfile.open(root / "data" / "val_images.tar.gz", "w:gz") as shard:
        for k, (_, wnid, data) in enumerate(images["val"]):
            _add(shard, f"{_val_name(k)}_{wnid}.JPEG", data)


LAYOUTS = {
    "imagefolder": _imagefolder,
    "class-folders": _class_folders,
    "official-tars-devkit": lambda root, images: _official_tars(root, images, "devkit"),
    "official-tars-kaggle-csv": lambda root, images: _official_tars(root, images, "kaggle"),
    "kaggle-zip": _kaggle_zip,
    "kaggle-folder": _kaggle_folder,
    "hf-shards": _hf_shards,
}


def _beton_images(beton: Path) -> list[tuple[int, int]]:
    """(value spelled by the pixels, label) of every record, in order; each record must be one flat image."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    import imagenet_kit.data.ffcv_compat  # noqa: F401  (the kit's fix to FFCV's reader, as loaders.py applies it)

    loader = Loader(str(beton), batch_size=512, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
                    pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]})
    records = []
    for images, labels in loader:
        for image, label in zip(images, labels.ravel().tolist(), strict=True):
            pixels = np.asarray(image).astype(int)
            assert (pixels == pixels[0, 0]).all(), "a record's pixels are not one image's"
            records.append((pixels[0, 0, 0] + 256 * pixels[0, 0, 1], label))
    return records


def _convert_both(root: Path, out: Path, workers: int) -> dict[str, dict]:
    scan_train, scan_val = data_splits(root, 0.2, 7)
    train = scan_train()
    reports = {"train": convert(train, out / "train.beton", compress_prob=0.0, workers=workers, page_size=1 << 21)}
    reports["val"] = convert(scan_val(train.classes), out / "val.beton", compress_prob=0.0, workers=workers,
                             page_size=1 << 21)
    return reports


def _reasons(reports) -> list[str]:
    """What was wrong with each skipped file, in words a test can match."""
    kinds = []
    for report in reports:
        for item in report["skipped"]:
            reason = item["reason"]
            kinds.append("cut" if "truncated" in reason else "notes" if "not an image" in reason else reason)
    return sorted(kinds)


def _value(name: str) -> int | None:
    tail = name.split("_")[1]
    return int(tail) if tail.isdigit() else None


@pytest.mark.slow  # 28 pairs of conversions, each forking its writer processes: about a minute
@pytest.mark.parametrize("workers, broken", [(1, True), (2, True), (4, True), (2, False)])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_decodable_image_once_with_its_label(tmp_path, layout, workers, broken):
    images = _images(broken)
    root = tmp_path / layout
    LAYOUTS[layout](root, images)
    reports = _convert_both(root, tmp_path / "betons", workers)

    want = {_value(name): (split, wnid) for split, items in images.items() for name, wnid, _ in items
            if _value(name) is not None}
    got = {}
    for split, report in reports.items():
        records = _beton_images(tmp_path / "betons" / f"{split}.beton")
        assert report["counts"]["written"] == len(records)
        for value, label in records:
            assert value not in got, f"image {value} written twice"
            got[value] = (split, WNIDS[label])  # the classes are the sorted WNIDs
    if layout == "class-folders":  # no split in the download: the kit holds val out of the same folders
        got = {value: ("?", wnid) for value, (_, wnid) in got.items()}
        want = {value: ("?", wnid) for value, (_, wnid) in want.items()}
    assert got == want  # each decodable image once, in its own split, with its own class
    # each broken member listed with what is wrong with it, train's and val's
    assert _reasons(reports.values()) == sorted(list(BROKEN) * 2) * broken
