import numpy as np
import torch

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
