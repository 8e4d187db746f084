import pytest

from imagenet_kit.config import RunConfig, config_from_dict, load_config
from imagenet_kit.config.recipes import RECIPES_DIR
from imagenet_kit.errors import ConfigError


def test_precedence_defaults_recipe_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  epochs: 7\n  batch_size: 64\noptim:\n  lr: 0.2\n")
    cfg = load_config(str(recipe), ["train.epochs=3"])
    assert cfg.train.epochs == 3  # CLI beats recipe
    assert cfg.train.batch_size == 64  # recipe beats default
    assert cfg.optim.lr == 0.2
    assert cfg.optim.momentum == RunConfig().optim.momentum  # default kept


def test_unknown_override_key_is_named_with_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config("sample", ["train.nope=1"])
    assert "train.nope" in str(err.value) and "train.epochs" in str(err.value)


def test_unknown_recipe_key_names_file_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(recipe))
    assert "optim.learning_rate" in str(err.value) and "bad.yaml" in str(err.value)


@pytest.mark.parametrize("item, message", [
    ("train.epochs=abc", "train.epochs: expected int"),
    ("train.epochs=2.5", "train.epochs: expected int"),
    ("train.precision=fp8", "train.precision"),
    ("model.arch=vgg16", "model.arch: 'vgg16' is not one of resnet18, resnet34, resnet50, resnet101, resnet50v2, "
                         "resnet50d, resnext50d$"),
    ("model.arch=resnet5O", "model.arch: 'resnet5O' is not one of .*; did you mean resnet50\\?"),
    ("optim.optimizer=adam", "optim.optimizer: 'adam' is not one of sgd, adamw, radam"),
    ("optim.schedule=cosine", "optim.schedule: 'cosine' is not one of onecycle, linear, step, flat_cos"),
    ("model.activation=gelu", "model.activation: 'gelu' is not one of relu, mish, silu"),
    ("train.crop=center", "train.crop: 'center' is not one of random_resized, random_square"),
    ("train.val_crop_ratio=0", r"train.val_crop_ratio must be in \(0, 1\], got 0"),
    ("train.val_crop_ratio=1.2", r"train.val_crop_ratio must be in \(0, 1\], got 1.2"),
    ("model.channels_last=maybe", "model.channels_last: expected bool"),
    ("model.se_reduction=-4", "model.se_reduction must be 0 \\(off\\) or a channel divisor such as 16, got -4"),
    ("model.self_attention=yes please", "model.self_attention: expected bool"),
    ("epochs", "section.key=value"),
])
def test_bad_values_are_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        load_config("sample", [item])


def test_se_and_attention_need_a_post_activation_arch():
    with pytest.raises(ConfigError, match="model.arch resnet50v2 has its own"):
        load_config("sample", ["model.arch=resnet50v2", "model.self_attention=true"])
    assert load_config("sample", ["model.arch=resnext50d", "model.se_reduction=16"]).model.se_reduction == 16


def test_lr_auto_and_numbers():
    assert load_config("sample", ["optim.lr=auto"]).optim.lr == "auto"
    assert load_config("sample", ["optim.lr=1e-2"]).optim.lr == pytest.approx(0.01)


def test_every_recipe_loads_and_roundtrips():
    names = sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))
    assert {"sample", "mini", "mini-finetune", "full", "g4dn-t4", "imagenette"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert config_from_dict(cfg.to_dict()) == cfg


def test_missing_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match="sample"):
        load_config("does-not-exist")


def test_full_recipe_is_ffcvs_rn50_16_epochs_after_batch_scaling():
    """libffcv/ffcv-imagenet rn50_configs/rn50_16_epochs.yaml: lr 1.7 at 8 GPUs x 512, wd 1e-4, ..."""
    from imagenet_kit.optim.optimizers import scaled_lr
    cfg = load_config("full")
    assert scaled_lr(cfg.optim.lr, cfg.optim.lr_batch, 8 * 512) == pytest.approx(1.7)
    assert (cfg.model.arch, cfg.model.blurpool, cfg.train.epochs) == ("resnet50", True, 16)
    assert (cfg.optim.schedule, cfg.optim.peak_epoch) == ("linear", 2)
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.label_smoothing) == (0.9, 1e-4, 0.1)
    assert (cfg.train.min_res, cfg.train.max_res, cfg.train.start_ramp, cfg.train.end_ramp) == (160, 192, 11, 13)
    assert (cfg.train.val_res, cfg.train.flip_tta) == (256, True)
    assert (cfg.data.max_res, cfg.data.compress_prob, cfg.data.jpeg_quality) == (500, 0.5, 90)


def test_t4_recipe_is_the_full_recipe_with_data_and_batch_for_one_t4():
    """recipes/g4dn-t4.yaml: the full recipe's network and schedule; JPEG-only 320 px data; 256 per step, with the LR
    the linear scaling rule gives FFCV's 1.7 per 4096 at that batch."""
    from imagenet_kit.optim.optimizers import scaled_lr
    t4, full = load_config("g4dn-t4"), load_config("full")
    assert t4.model == full.model
    assert t4.optim == full.optim
    same = ("epochs", "min_res", "max_res", "start_ramp", "end_ramp", "val_res", "flip_tta")
    assert [getattr(t4.train, k) for k in same] == [getattr(full.train, k) for k in same]
    assert t4.train.precision == "fp16"  # the t4 profile: Turing has no bf16
    assert (t4.data.max_res, t4.data.compress_prob, t4.data.jpeg_quality, t4.data.in_memory) == (320, 1.0, 90, True)
    assert t4.data.name != full.data.name  # other settings, other betons
    assert t4.train.batch_size == 256 and scaled_lr(t4.optim.lr, t4.optim.lr_batch, 256) == pytest.approx(0.10625)
