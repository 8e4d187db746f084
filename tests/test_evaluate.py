import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from imagenet_kit.cli import cli
from imagenet_kit.data.loaders import create_val_loader
from imagenet_kit.data.pixels import normalize
from imagenet_kit.engine.evaluate import evaluate
from imagenet_kit.models.factory import create_model

CPU = torch.device("cpu")


def test_evaluate_matches_a_hand_computed_top1_top5(tiny_data):
    beton = str(tiny_data["beton_dir"] / "tiny-val-64.beton")
    torch.manual_seed(3)
    model = create_model("resnet18", 4, zero_init_residual=False).eval()
    result = evaluate(model, create_val_loader(beton, 5, 32, CPU, 1), 4, CPU, None, flip_tta=False,
                      channels_last=False)
    logits, labels = [], []
    with torch.no_grad():
        for images, y in create_val_loader(beton, 16, 32, CPU, 1):
            logits.append(model(normalize(images, False)).numpy())
            labels.append(y.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    order = np.argsort(-logits, axis=1)
    assert result["count"] == len(labels) == 16
    assert result["top1"] == np.mean(order[:, 0] == labels)
    assert result["top5"] == 1.0  # 4 classes: the true class is always among the top 5
    shifted = logits - logits.max(1, keepdims=True)
    nll = -(shifted[np.arange(16), labels] - np.log(np.exp(shifted).sum(1)))
    assert abs(result["loss"] - nll.mean()) < 1e-5
    assert result["per_class_total"] == [4, 4, 4, 4]
    assert result["per_class_correct"] == [int(np.sum((order[:, 0] == labels) & (labels == c))) for c in range(4)]


@pytest.mark.parametrize("swap", [False, True])
def test_eval_refuses_a_beton_of_other_classes_before_scoring(tiny_data, tmp_path, swap):
    """A 4-class beton for a 10-class model ended in an IndexError; the same count in another order would be
    scored silently and wrongly. Both are one error line naming the two sides, and nothing is written."""
    from test_export import IMAGENETTE, make_fake_run

    run = make_fake_run(tmp_path)
    beton = tmp_path / "val.beton"
    shutil.copy(tiny_data["beton_dir"] / "tiny-val-64.beton", beton)
    classes = json.loads((tiny_data["beton_dir"] / "tiny-val-64.beton.classes.json").read_text())
    if swap:  # the model's ten WNIDs, the first two swapped
        wnids = [IMAGENETTE[1], IMAGENETTE[0], *IMAGENETTE[2:]]
        classes = [{"index": i, "wnid": w, "name": w} for i, w in enumerate(wnids)]
    Path(f"{beton}.classes.json").write_text(json.dumps(classes))
    result = CliRunner().invoke(cli, ["eval", "--checkpoint", str(run), "--data", str(beton)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output
    said = " ".join(result.output.split())
    if swap:
        assert f"has 10 classes and {beton} 10: 2 of the first 10 differ by WNID (#0 {IMAGENETTE[0]} vs " \
               f"{IMAGENETTE[1]}, #1 {IMAGENETTE[1]} vs {IMAGENETTE[0]})" in said
    else:
        assert f"has 10 classes and {beton} 4: 0 of the first 4 differ by WNID" in said
    assert "--classes-from" in said and not (run / "eval.json").exists()
