"""The model card: every field from the run's own files (through the export's model.json), an older export completed
from its run folder, GMACs as torchvision publishes them, and load code that runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_export import PHOTO, make_fake_run  # tests/ is on sys.path (pytest's rootdir-less import)
from torchvision.models import ResNet18_Weights, ResNet50_Weights, resnet18, resnet50

from imagenet_kit.config import config_from_dict, dump_config
from imagenet_kit.environment import environment, write_json
from imagenet_kit.images import load_rgb
from imagenet_kit.runs import ExportFolder
from imagenet_kit.serve.card import NOT_RECORDED, card_markdown, headline
from imagenet_kit.serve.demo import torchvision_predictor
from imagenet_kit.serve.export import export_model
from imagenet_kit.serve.model_card import card_info, model_cost
from imagenet_kit.serve.predict import load_exported

PEAK_LR, LR_RULE = 0.17, "LR range test, rule turn_x3"
EVAL = {"top1": 0.59, "top5": 0.91, "count": 40, "res": 64, "flip_tta": True, "arch": "resnet18",
        "checkpoint": "runs/fake/checkpoints/best.pt", "data": "/data/betons/imagenette-sample-val-160.beton"}


def write_run_records(run: Path, **env) -> dict:
    """config.yaml, env.json and eval.json as `imagenet-kit run` leaves them (env.json with the precision `auto`
    resolved to, the peak LR and its rule; ``env`` overrides); returns env.json's content."""
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    dump_config(config_from_dict(state["config"]), run / "config.yaml")
    record = {**environment(world_size=2), "precision": "bf16", "peak_lr": PEAK_LR, "lr_rule": LR_RULE,
              "command": "imagenet-kit run --recipe sample --name fake", **env}
    write_json(run / "env.json", record)
    write_json(run / "eval.json", EVAL)
    return record


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = make_fake_run(tmp_path_factory.mktemp("card"))
    write_run_records(run)
    export_model(run / "checkpoints" / "best.pt", run / "export")  # every format: the card shows ONNX code too
    return run


def _info(run: Path) -> dict:
    return json.loads((run / "export" / "model.json").read_text())


def _card(export: Path, info: dict | None = None) -> str:
    classes = json.loads((export / "classes.json").read_text())
    spec = json.loads((export / "preprocess.json").read_text())
    return card_markdown(info or json.loads((export / "model.json").read_text()), classes, spec)


@pytest.mark.parametrize("build, weights", [(resnet18, ResNet18_Weights.IMAGENET1K_V1),
                                            (resnet50, ResNet50_Weights.IMAGENET1K_V2)])
def test_model_cost_matches_torchvisions_published_figures(build, weights):
    cost = model_cost(build(), 224)
    assert cost["params"] == weights.meta["num_params"]
    assert cost["gmacs"] == pytest.approx(weights.meta["_ops"], abs=5e-4)  # torchvision's GFLOPS are MACs


def test_export_records_what_the_card_needs_from_the_run_and_the_checkpoint(run):
    info, env = _info(run), json.loads((run / "env.json").read_text())
    cfg = torch.load(run / "checkpoints" / "best.pt", weights_only=False)["config"]
    assert {"params": info["params"], "gmacs": info["gmacs"]} == model_cost(load_exported(run / "export").model, 64)
    recipe = info["recipe"]
    assert (recipe["name"], recipe["epochs"], recipe["batch_size"]) == (cfg["name"], cfg["train"]["epochs"],
                                                                       cfg["train"]["batch_size"])
    assert (recipe["peak_lr"], recipe["lr_rule"], recipe["precision"], recipe["world_size"]) == (PEAK_LR, LR_RULE,
                                                                                                  "bf16", 2)
    assert (recipe["min_res"], recipe["max_res"], recipe["optim"]) == (cfg["train"]["min_res"],
                                                                       cfg["train"]["max_res"], cfg["optim"])
    assert info["evaluation"] == {"top1": 0.59, "top5": 0.91, "count": 40, "res": 64, "flip_tta": True,
                                  "data": "betons/imagenette-sample-val-160.beton"}
    assert info["train_git"] == env["git"] and info["git"] == environment()["git"]


def test_every_field_of_the_card_comes_from_the_runs_files(run):
    info = _info(run)
    card = _card(run / "export")
    cfg = torch.load(run / "checkpoints" / "best.pt", weights_only=False)["config"]
    expected = [
        "resnet18, trained from scratch (random init), 10-way classifier head",
        f"{info['params'] / 1e6:.2f} M parameters, {info['gmacs']:.3g} GMACs per image at 64×64 px",
        f"trained at {cfg['train']['min_res']}→{cfg['train']['max_res']} px (progressive resizing); evaluated and "
        "served at 64×64 px (shorter side resized to 73",
        f"`fake`: {cfg['train']['epochs']} epochs, SGD (momentum 0.9, weight decay 5e-05, label smoothing 0.1), "
        f"onecycle schedule, peak LR 0.17, set by {LR_RULE}, precision bf16, batch 256 × 2 processes = 512",
        "**59.0%** top-1, 91.0% top-5 on 40 validation images of imagenette-sample "
        "(`betons/imagenette-sample-val-160.beton`) at 64 px with flip TTA",
        "imagenette-sample, 10 classes: tench, English springer",
        f"run `fake`, checkpoint `{info['checkpoint']}`, trained at kit commit `{info['train_git'][:12]}`",
        f"exported {info['date']} at kit commit `{info['git'][:12]}`",
        "torch.jit.load(\"model.ts\")", "onnxruntime.InferenceSession(\"model.onnx\"",
        "top-1 above is known to about ±15.2 points",
    ]
    for words in expected:
        assert words in card, words
    assert NOT_RECORDED not in card
    assert headline(info).startswith("## imagenet-kit demo: resnet18, 10 classes\n**59.0%** top-1 on imagenette")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_the_cards_code_loads_the_export_without_the_kit(run, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", _card(run / "export"), re.S)
    assert len(blocks) == 2  # TorchScript, then ONNX Runtime on the same input
    monkeypatch.chdir(run / "export")
    namespace: dict = {}
    for block in blocks:
        exec(block.replace("photo.jpg", str(PHOTO)), namespace)  # the card's own code, as a reader runs it
    torchscript, onnx = capsys.readouterr().out.splitlines()
    expected = load_exported(run / "export").predict(load_rgb(PHOTO))[0]
    assert torchscript.rsplit(" ", 1)[0] == onnx == expected[0]
    assert float(torchscript.rsplit(" ", 1)[1]) == pytest.approx(expected[1], abs=1e-4)


def test_an_older_export_is_completed_from_its_run_folder(run, tmp_path):
    """model.json as exports wrote it before the card's fields: make space fills them from the run's files."""
    dropped = ("params", "gmacs", "recipe", "evaluation", "train_git", "git")
    old = {k: v for k, v in _info(run).items() if k not in dropped}
    filled = card_info(run, ExportFolder(run / "export"), old)
    assert {k: filled[k] for k in ("params", "gmacs", "recipe", "evaluation")} == \
        {k: _info(run)[k] for k in ("params", "gmacs", "recipe", "evaluation")}

    # a run from before env.json held the peak LR: the best checkpoint's max_lr, else "not recorded"
    older = tmp_path / "older"
    make_fake_run(tmp_path / "older-run").rename(older)
    env = write_run_records(older)
    del env["peak_lr"], env["lr_rule"]
    write_json(older / "env.json", env)
    (older / "export").symlink_to(run / "export")
    card = _card(run / "export", card_info(older, ExportFolder(older / "export"), old))
    assert "peak LR 0.1, precision bf16" in card  # make_fake_run's checkpoint trained at max_lr 0.1
    (older / "checkpoints" / "best.pt").unlink()
    card = _card(run / "export", card_info(older, ExportFolder(older / "export"), old))
    assert f"peak LR {NOT_RECORDED}, precision bf16" in card
    assert f"exported {old['date']} (export commit {NOT_RECORDED})" in card


def test_torchvisions_weights_get_a_card_of_their_published_figures(monkeypatch):
    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", lambda *args, **kwargs: resnet50().state_dict())  # offline
    predictor = torchvision_predictor()
    meta = ResNet50_Weights.IMAGENET1K_V2.meta
    card = card_markdown(predictor.info, [{"name": name} for name in predictor.names], predictor.spec)
    assert (f"resnet50, 1000-way classifier head; {meta['num_params'] / 1e6:.2f} M parameters, {meta['_ops']:.3g} "
            "GMACs per image at 224×224 px") in card and "as published" in card
    assert (f"**{meta['_metrics']['ImageNet-1K']['acc@1']:.1f}%** top-1, "
            f"{meta['_metrics']['ImageNet-1K']['acc@5']:.1f}% top-5 on ImageNet-1K: torchvision's") in card
    assert f"**Recipe:** {NOT_RECORDED} (torchvision's ResNet50_Weights.IMAGENET1K_V2 (published figures; recipe " \
           f"{meta['recipe']}))" in card
    assert "## Use it without the kit" not in card  # no export files to load
