"""A recipe's ``subset``: the same classes and images taken in place from every download layout, recorded in the
betons' reports, the betons named after it; only the chosen images are converted."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, make_env
from test_ingestion import LAYOUTS, TRAIN_PER_CLASS, VAL_PER_CLASS, WNIDS, _beton_images, _images

from imagenet_kit.config import SubsetConfig, load_config
from imagenet_kit.data.archives import TarMember
from imagenet_kit.data.gzip_shards import GzipMember
from imagenet_kit.data.prepare import prepare
from imagenet_kit.data.selection import choose_classes, image_key, take_subset
from imagenet_kit.data.sources import Source
from imagenet_kit.errors import ConfigError

SUBSET = ["subset.classes=2", "subset.per_class=7", "subset.seed=3"]


def test_an_image_has_one_key_in_every_layout(tmp_path):
    keys = {image_key(tmp_path / "train" / "n01440764" / "n01440764_10026.JPEG"),
            image_key(TarMember("ILSVRC2012_img_train.tar", 0, 1, "n01440764.tar/n01440764_10026.JPEG")),
            image_key(GzipMember("train_images_0.tar.gz", 0, 1, "n01440764_10026_n01440764.JPEG")),
            image_key("imagenet-object-localization-challenge.zip:ILSVRC/Data/CLS-LOC/train/n01440764/"
                      "n01440764_10026.JPEG")}
    assert keys == {"n01440764_10026"}
    assert image_key(tmp_path / "ILSVRC2012_val_00000001.JPEG") == "ILSVRC2012_val_00000001"


def _source(per_class: int) -> Source:
    items = [(f"/x/{w}/{w}_{k:04d}.JPEG", label) for label, w in enumerate(WNIDS) for k in range(per_class)]
    return Source("/x", list(WNIDS), items=items)


def test_the_draw_depends_on_the_seed_and_the_names_only():
    subset = SubsetConfig(classes="2", per_class=3, seed=5)
    classes = choose_classes(subset, list(reversed(WNIDS)), "/x")
    assert classes == sorted(classes) and classes == choose_classes(subset, WNIDS, "/x")
    taken = take_subset(_source(10), classes, 3, 5)
    shuffled = _source(10)
    shuffled.items.reverse()
    assert take_subset(shuffled, classes, 3, 5).items == taken.items  # listing order plays no part
    assert [label for _, label in taken.items] == [0, 0, 0, 1, 1, 1]
    assert all(f"/{classes[label]}/" in path for path, label in taken.items)  # relabelled to the subset's order
    assert taken.subset == {"seed": 5, "per_class": 3, "classes": classes, "left_out": 34}
    assert take_subset(_source(10), classes, 3, 6).items != taken.items  # another seed, other images


def test_a_subset_that_cannot_be_taken_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="subset.classes 0"):
        choose_classes(SubsetConfig(classes="0"), WNIDS, "/x")
    wnid_file = tmp_path / "classes.txt"
    wnid_file.write_text(f"{WNIDS[1]}  # goldfish\nn99999999\n")
    with pytest.raises(ConfigError, match=r"subset.classes=.*classes.txt: 1 of its WNIDs are not classes of /x "
                                          r"\(the first: n99999999\)"):
        choose_classes(SubsetConfig(classes=str(wnid_file)), WNIDS, "/x")
    wnid_file.write_text(f"{WNIDS[1]}  # goldfish\n\n{WNIDS[0]}\n")
    assert choose_classes(SubsetConfig(classes=str(wnid_file)), WNIDS, "/x") == sorted(WNIDS[:2])
    assert choose_classes(SubsetConfig(classes="100"), WNIDS, "/x") == sorted(WNIDS)  # fewer here: all of them
    named = load_config("mini", [f"subset.classes={wnid_file}", "subset.per_class=0"]).betons[0].name
    assert named == "mini-cclasses-pall-s0-train-256.beton"


@pytest.mark.slow  # 16 conversions: each layout at 1 and 2 writer processes
@pytest.mark.parametrize("workers", [1, 2])
def test_the_same_subset_from_every_download(tmp_path, workers):
    images = _images(broken=False)  # broken members: tests/test_ingestion.py
    got = {}
    for layout in ("imagefolder", "official-tars-devkit", "kaggle-zip", "hf-shards"):
        LAYOUTS[layout](tmp_path / layout, images)
        cfg = load_config("mini", [f"data.root={tmp_path / layout}", f"data.beton_dir={tmp_path / 'b' / layout}",
                                   "data.max_res=32", "data.compress_prob=0", f"data.workers={workers}",
                                   "train.batch_size=4", *SUBSET])  # raw pixels: each image tells its number
        prepare(cfg)
        assert [b.name for b in cfg.betons] == ["mini-c2-p7-s3-train-32.beton", "mini-c2-p7-s3-val-32.beton"]
        got[layout] = [sorted(_beton_images(beton)) for beton in cfg.betons]
        reports = [json.loads(Path(f"{beton}.report.json").read_text()) for beton in cfg.betons]
        chosen = reports[0]["subset"]["classes"]
        assert len(chosen) == 2 and set(chosen) < set(WNIDS)
        assert reports[0]["subset"] == {"seed": 3, "per_class": 7, "classes": chosen,
                                        "left_out": len(WNIDS) * TRAIN_PER_CLASS - 14}
        assert reports[1]["subset"]["left_out"] == (len(WNIDS) - 2) * VAL_PER_CLASS
    first = got["imagefolder"]
    assert all(betons == first for betons in got.values()), {k: v[0][:3] for k, v in got.items()}
    train, val = first
    assert len(train) == 14 and len(val) == 2 * VAL_PER_CLASS
    wnid_of = {int(name.split("_")[1]): wnid for items in images.values() for name, wnid, _ in items
               if name.split("_")[1].isdigit()}
    assert [wnid_of[value] for value, _ in train + val] == [chosen[label] for _, label in train + val]  # own class


@pytest.mark.slow
def test_make_mini_takes_its_subset_straight_from_a_download(tmp_path):
    """`make mini DATA=<Hugging Face's shards>`: the mini recipe's subset, converted in place and trained (at test
    size). The other layouts give the same betons (test_the_same_subset_from_every_download)."""
    layout = "hf-shards"
    LAYOUTS[layout](tmp_path / layout, _images(broken=False))
    out = tmp_path / "out"
    args = (f"--output-dir {out} --set data.beton_dir={out}/betons --arch resnet18 -b 2 --epochs 1 --lr 0.05 "
            "--set train.min_res=32 --set train.max_res=32 --set train.val_res=32 --set train.val_batch_size=4 "
            "--set train.precision=fp32 --set data.max_res=32 " + " ".join(f"--set {s}" for s in SUBSET))
    proc = subprocess.run(["make", "-C", str(REPO), "mini", f"DATA={tmp_path / layout}", f"ARGS={args}"],
                          capture_output=True, text=True, timeout=900, env=make_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((out / "betons" / f"mini-c2-p7-s3-{split}-32.beton.report.json").read_text())
               for split in ("train", "val")]
    assert [r["counts"]["written"] for r in reports] == [14, 2 * VAL_PER_CLASS]
    assert reports[0]["subset"]["classes"] == reports[1]["subset"]["classes"]
    assert json.loads((out / "mini" / "eval.json").read_text())["count"] == 2 * VAL_PER_CLASS


def _written(folder: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (class folder, the number the image's pixels spell) of an ImageFolder subset."""
    from PIL import Image

    found = {}
    for path in sorted(folder.glob("*/*/*.JPEG")):
        red, green, _ = Image.open(path).convert("RGB").getpixel((0, 0))
        found[str(path.relative_to(folder))] = (path.parent.name, red + 256 * green)
    return found


def test_the_subset_command_writes_the_same_folder_from_every_download(tmp_path):
    """It took Hugging Face's data/ folder for a class ("has 1 classes"); now every layout gives the same files,
    the archives' members copied out (and only those), the folder's linked."""
    from click.testing import CliRunner

    from imagenet_kit.cli import cli

    got = {}
    for layout in LAYOUTS:
        if layout == "class-folders":  # one split, no val: the single-split form of the command
            continue
        LAYOUTS[layout](tmp_path / layout, _images(broken=False))
        result = CliRunner().invoke(cli, ["subset", str(tmp_path / layout), str(tmp_path / "out" / layout),
                                          "--classes", "2", "--per-class", "5", "--seed", "4"])
        assert result.exit_code == 0, result.output
        got[layout] = _written(tmp_path / "out" / layout)
    train = {layout: {k: v for k, v in files.items() if k.startswith("train/")} for layout, files in got.items()}
    assert len(train["imagefolder"]) == 10 and all(t == train["imagefolder"] for t in train.values())
    val = {layout: {k: v for k, v in files.items() if k.startswith("val/")} for layout, files in got.items()}
    assert len(val["imagefolder"]) == 2 * VAL_PER_CLASS
    assert all(sorted(v.values()) == sorted(val["imagefolder"].values()) for v in val.values())  # same images
    archives = [v for layout, v in val.items() if layout != "imagefolder"]  # the same ILSVRC2012_val names
    assert all(v == archives[0] for v in archives)
    wnid_of = {int(name.split("_")[1]): wnid for items in _images(False).values() for name, wnid, _ in items}
    assert all(wnid_of[value] == wnid for files in got.values() for wnid, value in files.values())


def test_the_subset_command_names_the_layouts_it_reads(tmp_path):
    from click.testing import CliRunner

    from imagenet_kit.cli import cli

    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "photo.JPEG").write_bytes(b"x")
    result = CliRunner().invoke(cli, ["subset", str(tmp_path / "odd"), str(tmp_path / "dst"), "--classes", "2"])
    assert result.exit_code == 2
    assert "not a layout this command reads; it reads an ImageFolder root" in " ".join(result.output.split())
    assert "Hugging Face's imagenet-1k shards" in " ".join(result.output.split())
    assert not (tmp_path / "dst").exists()
