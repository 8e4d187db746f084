"""ImageNet-1K class table and the devkit / Kaggle validation label readers."""
from __future__ import annotations

import pytest

from imagenet_kit.data.imagenet_meta import (
    ilsvrc_id_to_wnid,
    imagenet_classes,
    read_devkit_ground_truth,
    read_kaggle_val_solution,
    wnid_to_index,
    wnid_to_name,
)


def test_table_is_complete_and_sorted():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert [c["index"] for c in classes] == list(range(1000))
    wnids = [c["wnid"] for c in classes]
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert sorted(c["ilsvrc2012_id"] for c in classes) == list(range(1, 1001))
    assert all(c["name"] for c in classes)


@pytest.mark.parametrize("index, wnid, name", [
    (0, "n01440764", "tench"),
    (65, "n01751748", "sea snake"),
    (217, "n02102040", "English springer"),
    (482, "n02979186", "cassette player"),
    (701, "n03888257", "parachute"),
])
def test_sorted_index_spot_values(index, wnid, name):
    assert wnid_to_index()[wnid] == index
    assert wnid_to_name(wnid) == name
    assert imagenet_classes()[index]["wnid"] == wnid


def test_names_match_torchvision_order():
    torchvision = pytest.importorskip("torchvision")
    categories = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert [c["name"] for c in imagenet_classes()] == categories


@pytest.mark.parametrize("ilsvrc_id, wnid", [
    (1, "n02119789"),    # kit fox
    (2, "n02100735"),    # English setter
    (449, "n01440764"),  # tench
    (490, "n01751748"),  # sea snake
    (1000, "n03255030"),  # dumbbell
])
def test_devkit_ids(ilsvrc_id, wnid):
    assert ilsvrc_id_to_wnid()[ilsvrc_id] == wnid


def test_unknown_wnid_has_no_name():
    assert wnid_to_name("n99999999") is None


def test_cached_table_cannot_be_mutated_by_callers():
    imagenet_classes()[0]["name"] = "changed"
    assert imagenet_classes()[0]["name"] == "tench"


def test_devkit_ground_truth_maps_to_wnids(tmp_path):
    # The first five lines of the real ILSVRC2012_validation_ground_truth.txt, plus a trailing blank line.
    path = tmp_path / "ILSVRC2012_validation_ground_truth.txt"
    path.write_text("490\n361\n171\n822\n297\n\n")
    wnids = read_devkit_ground_truth(path)
    assert wnids == ["n01751748", "n09193705", "n02105855", "n04263257", "n03125729"]
    assert [wnid_to_index()[w] for w in wnids] == [65, 970, 230, 809, 516]


@pytest.mark.parametrize("content, message", [
    ("490\nsea snake\n", ":2: expected an ILSVRC2012 class ID"),
    ("490\n361\n1001\n", ":3: class ID 1001 is outside 1..1000"),
    ("0\n", ":1: class ID 0 is outside"),
    ("490\n\n361\n", ":2: expected an ILSVRC2012 class ID"),
])
def test_devkit_ground_truth_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "gt.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_devkit_ground_truth(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_kaggle_val_solution(tmp_path):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(
        "ImageId,PredictionString\n"
        "ILSVRC2012_val_00008726,n02119789 255 142 454 329 n02119789 44 21 322 295 \n"
        "ILSVRC2012_val_00000001,n01751748 160 123 356 400 n01751748 1 2 3 4 \n"
        "\n"
        "ILSVRC2012_val_00000003,n02105855 4 25 500 375 \n")
    assert read_kaggle_val_solution(path) == {
        "ILSVRC2012_val_00008726": "n02119789",
        "ILSVRC2012_val_00000001": "n01751748",
        "ILSVRC2012_val_00000003": "n02105855",
    }


@pytest.mark.parametrize("content, message", [
    ("ImageId,Label\nx,n01751748 1 2 3 4\n", "expected header 'ImageId,PredictionString'"),
    ("", "expected header"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001,\n", ":2: expected 'ImageId,PredictionString'"),
    ("ImageId,PredictionString\nILSVRC2012_val_00000001,n01751748 1 2 3 4\n"
     "ILSVRC2012_val_00000002,n00000000 1 2 3 4\n", ":3: 'n00000000' is not an ImageNet-1K WNID"),
])
def test_kaggle_errors_name_file_and_row(tmp_path, content, message):
    path = tmp_path / "LOC_val_solution.csv"
    path.write_text(content)
    with pytest.raises(ValueError) as err:
        read_kaggle_val_solution(path)
    assert str(path) in str(err.value) and message in str(err.value)
