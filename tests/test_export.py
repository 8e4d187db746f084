"""Export to TorchScript / ONNX / safetensors, the parity gate, and the exported predictor."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from click.testing import CliRunner

from imagenet_kit.cli import cli
from imagenet_kit.config import RunConfig
from imagenet_kit.data.imagenet_meta import wnid_to_name
from imagenet_kit.images import load_rgb
from imagenet_kit.models.factory import create_model, model_kwargs
from imagenet_kit.runs import MODEL_FILES as FILES
from imagenet_kit.runs import RunNotFound, resolve_export
from imagenet_kit.serve import export
from imagenet_kit.serve.export import FORMATS, TOLERANCES, export_command, export_model
from imagenet_kit.serve.predict import ExportError, load_exported, preprocess

IMAGENETTE = ("n01440764 n02102040 n02979186 n03000684 n03028079 n03394916 n03417042 n03425413 n03445777 "
              "n03888257").split()
EXAMPLES = Path(__file__).resolve().parent.parent / "imagenet_kit" / "serve" / "examples"
# The photo the tests classify: with the fixture's model its top-1 leads the runner-up by a wide margin,
# so comparisons of top-1 are not decided by rounding.
PHOTO = EXAMPLES / "n07873807_pizza.jpg"


def make_fake_run(root: Path, arch: str = "resnet18", **model_options) -> Path:
    """``root/run`` as training leaves it: checkpoints/best.pt of a random ``arch`` (with other ``model:``
    keys from ``model_options``) for the 10 Imagenette classes, evaluated at 64 px. Shared by the export,
    app, bench, resnet50v2 and fine-tuning tests."""
    torch.manual_seed(0)
    cfg = RunConfig(name="fake")
    cfg.model.arch, cfg.train.val_res, cfg.data.name = arch, 64, "imagenette-sample"
    for key, value in model_options.items():
        setattr(cfg.model, key, value)
    model = create_model(**{**model_kwargs(cfg.model), "channels_last": False}, num_classes=len(IMAGENETTE))
    with torch.no_grad():
        # Default init gives near-uniform probabilities (top-1 a near tie); a larger head makes the random
        # model decisive and image-dependent, and puts logits on the scale of a trained model's.
        model.fc.weight.mul_(100)
    model = model.to(memory_format=torch.channels_last)  # as training saves it
    state = {
        "model": model.state_dict(), "config": cfg.to_dict(),
        "classes": [{"index": i, "wnid": w, "name": wnid_to_name(w)} for i, w in enumerate(IMAGENETTE)],
        "metrics": {"epoch": 3, "top1": 0.625, "top5": 0.9375}, "best_top1": 0.625,
        "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {}, "epoch": 4, "step": 0, "global_step": 40,
        "max_lr": 0.1,
    }
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save(state, run / "checkpoints" / "best.pt")
    return run


def eager_model(run: Path) -> torch.nn.Module:
    model = create_model("resnet18", len(IMAGENETTE))
    model.load_state_dict(torch.load(run / "checkpoints" / "best.pt", weights_only=False)["model"])
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("export"))
    info = export_model(run / "checkpoints" / "best.pt", run / "export")
    return run, run / "export", info


def _logits_of(fmt: str, out: Path, batch: torch.Tensor) -> torch.Tensor:
    """Run the written file with its own runtime, independently of export.py's check."""
    path = out / FILES[fmt]
    if fmt == "torchscript":
        with torch.inference_mode():
            return torch.jit.load(str(path))(batch)
    if fmt == "onnx":
        import onnxruntime
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return torch.from_numpy(session.run(None, {"input": batch.numpy()})[0])
    from safetensors.torch import load_file
    model = create_model("resnet18", len(IMAGENETTE)).eval()
    model.load_state_dict(load_file(path))
    with torch.inference_mode():
        return model(batch)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("fmt", FORMATS)
def test_parity_per_format(exported, fmt):
    run, out, info = exported
    spec = json.loads((out / "preprocess.json").read_text())
    # Batch of 3, not the export's 1-image trace: the dynamic batch axis must work too.
    batch = torch.cat([preprocess(load_rgb(p), spec) for p in sorted(EXAMPLES.glob("*.jpg"))[:3]])
    with torch.inference_mode():
        expected = eager_model(run)(batch)
    delta = float((_logits_of(fmt, out, batch) - expected).abs().max())
    assert delta <= TOLERANCES[fmt]
    recorded = info["formats"][fmt]
    assert recorded["max_abs_diff"] <= recorded["tolerance"] == TOLERANCES[fmt]
    assert recorded["bytes"] == (out / FILES[fmt]).stat().st_size > 0


def test_files_and_metadata(exported):
    run, out, info = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.ts", "model.onnx", "model.safetensors", "classes.json", "preprocess.json", "model.json"])
    assert json.loads((out / "preprocess.json").read_text()) == {
        "resize": 73, "crop": 64, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear", "input": "RGB float NCHW /255 then normalized"}  # 73 = round(64 * 256/224)
    classes = json.loads((out / "classes.json").read_text())
    assert [c["wnid"] for c in classes] == IMAGENETTE and classes[0]["name"] == "tench"
    model_json = json.loads((out / "model.json").read_text())
    assert model_json == info
    assert (info["arch"], info["num_classes"], info["run"], info["data"]) == ("resnet18", 10, "fake",
                                                                              "imagenette-sample")
    assert (info["top1"], info["top5"], info["epoch"]) == (0.625, 0.9375, 3)
    # as runs/<name>/checkpoints/best.pt: no path of the exporting machine reaches the demo's card
    assert info["checkpoint"] == f"{run.parent.name}/{run.name}/checkpoints/best.pt"
    assert info["date"] and info["device"] and info["cpu"]
    assert info["parity"]["images"] == export.PARITY_IMAGES  # the embedded sample's val photos


def test_predictor_top5_matches_eager(exported):
    run, out, _ = exported
    image = load_rgb(PHOTO)
    # The eager reference preprocesses with torchvision's standard eval pipeline, not export.preprocess.
    reference = T.Compose([T.Resize(73), T.CenterCrop(64), T.ToTensor(),
                           T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with torch.inference_mode():
        probs = eager_model(run)(reference(image)[None])[0].softmax(0)
    top = probs.topk(5)
    names = [c["name"] for c in json.loads((out / "classes.json").read_text())]
    predictor = load_exported(out)
    assert predictor.backend == "torchscript"
    got = predictor.predict(image, k=5)
    assert [name for name, _ in got] == [names[i] for i in top.indices.tolist()]
    np.testing.assert_allclose([p for _, p in got], top.values.tolist(), atol=1e-5)


def test_safetensors_only_export_loads_into_create_model(exported, tmp_path):
    run, out, _ = exported
    export_model(run / "checkpoints" / "best.pt", tmp_path, formats=("safetensors",))
    predictor = load_exported(tmp_path)
    assert predictor.backend == "safetensors"
    image = load_rgb(PHOTO)
    got, expected = predictor.predict(image), load_exported(out).predict(image)
    assert [name for name, _ in got] == [name for name, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], abs=1e-6)


@pytest.mark.parametrize("options, formats", [
    ({"activation": "mish"}, ("safetensors",)),
    ({"se_reduction": 16, "self_attention": True, "maxblurpool": True}, FORMATS),
])
def test_models_beyond_plain_resnets_export_and_reload_as_they_are(tmp_path, options, formats):
    # Every residual branch live (no zero-init) and the attention's gamma off zero: the parity checks and
    # the comparison below then see the SE, attention and activation at work.
    run = make_fake_run(tmp_path, zero_init_residual=False, **options)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    gammas = [key for key in state["model"] if key.endswith(".gamma")]
    assert gammas == (["layer1.1.bn2.2.gamma"] if options.get("self_attention") else [])
    for key in gammas:
        state["model"][key].fill_(0.5)
    torch.save(state, run / "checkpoints" / "best.pt")

    info = export_model(run / "checkpoints" / "best.pt", tmp_path / "out", formats=formats)
    assert {key: info[key] for key in options} == options
    assert list(info["formats"]) == list(formats)  # each passed its parity check against eager
    eager = create_model("resnet18", len(IMAGENETTE), **options).eval()
    eager.load_state_dict(state["model"])
    predictor = load_exported(tmp_path / "out")
    image = load_rgb(PHOTO)
    with torch.inference_mode():
        probs = eager(preprocess(image, predictor.spec)).softmax(-1)[0]
    top = probs.topk(3)
    assert [p for _, p in predictor.predict(image, k=3)] == pytest.approx(top.values.tolist(), abs=1e-5)


def test_preprocess_crops_the_share_of_the_shorter_side_that_validation_used(tmp_path):
    run = make_fake_run(tmp_path)
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    state["config"]["train"]["val_crop_ratio"] = 1.0  # a random_square run validates on the whole shorter side
    torch.save(state, run / "checkpoints" / "best.pt")
    export_model(run / "checkpoints" / "best.pt", tmp_path / "out", formats=("safetensors",))
    spec = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert (spec["resize"], spec["crop"]) == (64, 64)
    assert load_exported(tmp_path / "out").spec == spec


def test_parity_failure_raises_and_leaves_no_model_json(exported, tmp_path, monkeypatch):
    run, _, _ = exported
    monkeypatch.setitem(TOLERANCES, "torchscript", -1)
    with pytest.raises(ExportError, match=r"torchscript parity failed: max \|Δlogit\| .* tolerance -1"):
        export_model(run / "checkpoints" / "best.pt", tmp_path, formats=("torchscript",))
    assert not (tmp_path / "model.json").exists()


def test_cli_exports_a_run_folder_to_its_export_folder(tmp_path):
    run = make_fake_run(tmp_path)
    result = CliRunner().invoke(export_command, ["--checkpoint", str(run), "--format", "safetensors", "--res", "96"])
    assert result.exit_code == 0, result.output
    assert "model.safetensors" in result.output and "max |Δlogit|" in result.output
    assert json.loads((run / "export" / "preprocess.json").read_text())["crop"] == 96
    bad = CliRunner().invoke(cli, ["export", "--checkpoint", str(run), "--format", "tflite"])
    assert bad.exit_code != 0 and "unknown format(s) tflite" in bad.output


def test_default_model_dir_is_the_newest_export(tmp_path):
    with pytest.raises(RunNotFound, match=r"looked for .*/\*/export/model.json.*make mini"):
        resolve_export(None, tmp_path)
    for name, mtime in (("old", 1_000_000), ("new", 2_000_000)):
        (tmp_path / name / "export").mkdir(parents=True)
        (tmp_path / name / "export" / "model.json").write_text("{}")
        os.utime(tmp_path / name / "export" / "model.json", (mtime, mtime))
    (tmp_path / "newest-but-unfinished" / "export").mkdir(parents=True)  # no model.json: not an export
    assert resolve_export(None, tmp_path).root == tmp_path / "new" / "export"
