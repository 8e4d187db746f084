"""Fine-tuning: model.init (kit checkpoint, export folder, torchvision offline), freeze_epochs, head_lr_mult."""
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from conftest import tiny_overrides  # tests/ is on sys.path (pytest's rootdir-less import)
from test_export import IMAGENETTE, make_fake_run

import imagenet_kit.engine.train as train_module
from imagenet_kit.config import ModelConfig, OptimConfig, load_config
from imagenet_kit.config.schema import choices
from imagenet_kit.data.imagenet_meta import wnid_to_index, wnid_to_name
from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.engine.init_weights import InitError, init_model
from imagenet_kit.engine.train import train
from imagenet_kit.errors import ConfigError
from imagenet_kit.models.factory import create_model
from imagenet_kit.optim.optimizers import param_groups
from imagenet_kit.optim.schedule import create_scheduler
from imagenet_kit.runtime import Runtime
from imagenet_kit.serve.export import export_model

CPU = Runtime(torch.device("cpu"))
TARGET = ["n01440764", "n02102040", "n02979186", "n03000684"]  # the tiny betons' classes
# The source run's classes: three of the target's in another order, among three the target lacks.
# n02102040 is not among them, so its head row must stay freshly initialised.
SOURCE = ["n03888257", "n02979186", "n01440764", "n03445777", "n03000684", "n03394916"]


def class_table(wnids):
    return [{"index": i, "wnid": w, "name": wnid_to_name(w)} for i, w in enumerate(wnids)]


def backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def source(tiny_data, tmp_path_factory) -> Path:
    """A kit checkpoint trained on other classes: a real tiny run's backbone (trained weights and BatchNorm
    statistics) with a head over SOURCE's classes."""
    tmp = tmp_path_factory.mktemp("source")
    cfg = load_config("sample", tiny_overrides(tiny_data, tmp / "runs") + ["name=source", "train.epochs=1"])
    train(cfg, CPU)
    state = load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")
    assert [c["wnid"] for c in state["classes"]] == TARGET
    generator = torch.Generator().manual_seed(1)
    state["model"]["fc.weight"] = 0.01 * torch.randn(len(SOURCE), 512, generator=generator)
    state["model"]["fc.bias"] = 0.01 * torch.randn(len(SOURCE), generator=generator)
    state["classes"] = class_table(SOURCE)
    torch.save(state, tmp / "source.pt")
    return tmp / "source.pt"


@pytest.fixture
def first_step(monkeypatch) -> dict:
    """The model's weights and the optimiser's groups when train() takes its first step."""
    seen = {}
    real_step = train_module.train_step

    def spy(model, images, labels, criterion, optimizer, *args):
        if not seen:
            seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            seen["head"] = {id(p) for p in model.fc.parameters()}
            seen["groups"] = [(group["lr"], {id(p) for p in group["params"]}) for group in optimizer.param_groups]
        return real_step(model, images, labels, criterion, optimizer, *args)

    monkeypatch.setattr(train_module, "train_step", spy)
    return seen


def test_init_from_a_checkpoint_of_other_classes_is_bit_exact_at_the_first_step(tiny_config, source, first_step):
    tiny_config.model.init, tiny_config.train.max_steps = str(source), 1
    train(tiny_config, CPU)
    src, start = torch.load(source, weights_only=False)["model"], first_step["state"]
    assert backbone(start).keys() == backbone(src).keys()
    for key, value in backbone(src).items():  # weights and BatchNorm buffers
        assert torch.equal(start[key], value), key
    assert start["fc.weight"].shape == (len(TARGET), 512)  # the head was replaced for the 4 target classes
    for row, wnid in enumerate(TARGET):
        if wnid in SOURCE:
            assert torch.equal(start["fc.weight"][row], src["fc.weight"][SOURCE.index(wnid)]), wnid
            assert torch.equal(start["fc.bias"][row], src["fc.bias"][SOURCE.index(wnid)]), wnid


def test_unmatched_head_rows_keep_their_fresh_init(source):
    torch.manual_seed(0)
    model = create_model("resnet18", len(TARGET))
    fresh = model.fc.weight.detach().clone()
    message = init_model(model, ModelConfig(arch="resnet18", init=str(source)), class_table(TARGET))
    assert "3 of 4 classes copied by WNID, 1 fresh" in message
    new = TARGET.index("n02102040")
    assert torch.equal(model.fc.weight[new], fresh[new])
    src = torch.load(source, weights_only=False)["model"]
    assert not torch.equal(model.fc.weight[0], fresh[0])
    assert torch.equal(model.fc.weight[0], src["fc.weight"][SOURCE.index(TARGET[0])])


def test_export_folder_and_same_class_checkpoint_as_sources(tmp_path):
    run = make_fake_run(tmp_path)
    checkpoint = run / "checkpoints" / "best.pt"
    export_model(checkpoint, run / "export", formats=("safetensors",))
    saved = torch.load(checkpoint, weights_only=False)["model"]

    same = create_model("resnet18", len(IMAGENETTE))  # same classes, same order: everything comes back
    init_model(same, ModelConfig(arch="resnet18", init=str(checkpoint)), class_table(IMAGENETTE))
    assert all(torch.equal(same.state_dict()[k], v) for k, v in saved.items())

    reordered = IMAGENETTE[::-2]  # 5 of the 10, in reverse order
    model = create_model("resnet18", len(reordered))
    init_model(model, ModelConfig(arch="resnet18", init=str(run / "export")), class_table(reordered))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone(saved).items())
    for row, wnid in enumerate(reordered):
        assert torch.equal(model.fc.weight[row], saved["fc.weight"][IMAGENETTE.index(wnid)]), wnid


def test_torchvision_offline_names_the_file_to_place_and_a_placed_file_works(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / "resnet18-f37072fd.pth"
    assert tmp_path in cached.parents  # never the real cache
    cfg = ModelConfig(arch="resnet18", init="torchvision")
    with pytest.raises(InitError) as err:
        init_model(create_model("resnet18", len(TARGET)), cfg, class_table(TARGET))
    assert "ResNet18_Weights.IMAGENET1K_V1" in str(err.value) and f"place it at {cached}" in str(err.value)

    torch.manual_seed(2)
    published = create_model("resnet18", 1000).state_dict()  # stands in for torchvision's file
    torch.save(published, cached)
    model = create_model("resnet18", len(TARGET))
    init_model(model, cfg, class_table(TARGET))  # still offline: the placed file is used
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone(published).items())
    for row, wnid in enumerate(TARGET):  # rows of torchvision's head by ImageNet-1K index
        assert torch.equal(model.fc.weight[row], published["fc.weight"][wnid_to_index()[wnid]]), wnid


@pytest.mark.parametrize("arch, blurpool, init, message", [
    ("resnet50v2", False, "torchvision", "torchvision publishes no weights for resnet50v2"),
    ("resnet18", True, "torchvision", "weights are for a plain resnet18; set model.blurpool=false$"),
    ("resnet18", False, "missing.pt", "no such file or folder"),
    ("resnet34", False, "FAKE_RUN", "holds resnet18 weights, this run trains resnet34"),
    ("resnet18", True, "FAKE_RUN", "holds resnet18 weights, this run trains resnet18 with blurpool"),
])
def test_unusable_sources_are_clear_errors(tmp_path, monkeypatch, arch, blurpool, init, message):
    monkeypatch.chdir(tmp_path)
    if init == "FAKE_RUN":
        init = str(make_fake_run(tmp_path) / "checkpoints" / "best.pt")
    with pytest.raises(InitError, match=message):
        init_model(create_model(arch, 4, blurpool=blurpool), ModelConfig(arch=arch, blurpool=blurpool, init=init),
                   class_table(TARGET))


@pytest.mark.parametrize("options, words, fix", [
    ({"activation": "mish"}, "resnet18 with mish", "model.activation=relu"),
    ({"se_reduction": 16, "self_attention": True}, "resnet18 with SE 1/16 and self-attention",
     "model.se_reduction=0, model.self_attention=false"),
])
def test_the_whole_architecture_must_match_the_source(tmp_path, options, words, fix):
    with pytest.raises(InitError, match=f"weights are for a plain resnet18; set {fix}$"):
        init_model(create_model("resnet18", 4, **options), ModelConfig(arch="resnet18", init="torchvision", **options),
                   class_table(TARGET))
    source = str(make_fake_run(tmp_path, **options) / "checkpoints" / "best.pt")
    with pytest.raises(InitError, match=f"holds {words} weights, this run trains resnet18$"):
        init_model(create_model("resnet18", 4), ModelConfig(arch="resnet18", init=source), class_table(TARGET))
    # the same architecture loads
    init_model(create_model("resnet18", 4, **options), ModelConfig(arch="resnet18", init=source, **options),
               class_table(TARGET))


def test_freeze_epochs_trains_only_the_head_in_epoch_one(tiny_config, source):
    tiny_config.model.init, tiny_config.train.freeze_epochs = str(source), 1
    train(tiny_config, CPU)
    src = torch.load(source, weights_only=False)["model"]
    checkpoints = tiny_config.run_dir / "checkpoints"
    after_1, after_2 = load_checkpoint(checkpoints / "last.prev.pt"), load_checkpoint(checkpoints / "last.pt")
    assert (after_1["epoch"], after_2["epoch"]) == (1, 2)
    for key, value in backbone(src).items():  # parameters and BatchNorm statistics alike
        assert torch.equal(after_1["model"][key], value), key
    first_row = SOURCE.index(TARGET[0])
    assert not torch.equal(after_1["model"]["fc.weight"][0], src["fc.weight"][first_row])  # the head trained
    for key in ("conv1.weight", "layer4.1.conv2.weight", "layer1.0.bn1.weight", "layer1.0.bn1.running_mean"):
        assert not torch.equal(after_2["model"][key], src[key]), key  # thawed in epoch 2


def test_head_lr_mult_gives_the_head_groups_mult_times_the_lr(tiny_config, first_step):
    tiny_config.optim.head_lr_mult, tiny_config.train.max_steps = 10.0, 1
    train(tiny_config, CPU)
    head = first_step["head"]
    head_lrs = [lr for lr, ids in first_step["groups"] if ids and ids <= head]
    backbone_lrs = [lr for lr, ids in first_step["groups"] if not ids & head]
    assert len(head_lrs) == len(backbone_lrs) == 2 and len(first_step["groups"]) == 4
    assert set(backbone_lrs) == {backbone_lrs[0]} and backbone_lrs[0] > 0
    assert head_lrs == pytest.approx([10 * backbone_lrs[0]] * 2, rel=1e-12)


@pytest.mark.parametrize("schedule", choices("optim.schedule"))
def test_every_schedule_keeps_the_head_multiplier(schedule):
    model = create_model("resnet18", 4)
    optimizer = torch.optim.SGD(param_groups(model, 5e-5, head_lr_mult=3.0), lr=0.1, momentum=0.9)
    scheduler = create_scheduler(optimizer, OptimConfig(schedule=schedule, peak_epoch=1, step_epochs=1), 0.1,
                                 epochs=2, steps_per_epoch=5)
    for _ in range(10):
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs[2:] == pytest.approx([3 * lrs[0]] * 2, rel=1e-12) and lrs[1] == lrs[0]
        optimizer.step()
        scheduler.step()


def test_resume_ignores_model_init(tiny_config):
    tiny_config.train.max_steps = 1
    train(tiny_config, CPU)
    tiny_config.model.init = str(tiny_config.run_dir / "gone.pt")  # reading it would fail
    tiny_config.train.max_steps = 2
    result = train(tiny_config, CPU, resume="auto")
    assert (result.epoch, result.step) == (0, 2)


def test_config_keys_and_recipe():
    cfg = load_config("mini-finetune")
    assert (cfg.model.arch, cfg.model.init, cfg.train.freeze_epochs, cfg.optim.head_lr_mult) == (
        "resnet50", "torchvision", 1, 10.0)
    assert cfg.optim.schedule == "onecycle" and cfg.train.epochs <= 5
    defaults = load_config(None)
    assert (defaults.model.init, defaults.train.freeze_epochs, defaults.optim.head_lr_mult) == ("", 0, 1.0)
    for bad in ("train.freeze_epochs=-1", "optim.head_lr_mult=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])
