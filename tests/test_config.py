import pytest

from imagenet_kit.config import ConfigError, RunConfig, config_from_dict, load_config


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
    ("model.channels_last=maybe", "model.channels_last: expected bool"),
    ("epochs", "section.key=value"),
])
def test_bad_values_are_errors(item, message):
    with pytest.raises(ConfigError, match=message):
        load_config("sample", [item])


def test_lr_auto_and_numbers():
    assert load_config("sample", ["optim.lr=auto"]).optim.lr == "auto"
    assert load_config("sample", ["optim.lr=1e-2"]).optim.lr == pytest.approx(0.01)


def test_every_recipe_loads_and_roundtrips():
    for name in ("sample", "mini", "full", "imagenette"):
        cfg = load_config(name)
        assert config_from_dict(cfg.to_dict()) == cfg


def test_missing_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match="sample"):
        load_config("does-not-exist")
