"""One declaration per key (config/schema.py): the flags, validation, --help, --dry-run and the resume rules all
read it, and every value reaches its key as what it is."""
from __future__ import annotations

import dataclasses
import subprocess
import types

import pytest
import yaml
from click.testing import CliRunner

from imagenet_kit.cli import cli
from imagenet_kit.config import ModelConfig, load_config
from imagenet_kit.config.flags import FLAGS, build_config
from imagenet_kit.config.schema import choices, declaration, declared_keys, fixed_keys
from imagenet_kit.engine.resume import check_resumable
from imagenet_kit.errors import ConfigError


def _dry_run(*args: str) -> dict:
    run = CliRunner().invoke(cli, ["train", "--recipe", "sample", *args, "--dry-run"])
    assert run.exit_code == 0, run.output
    return yaml.safe_load(run.output)


@pytest.mark.parametrize("text", ["yes", "007", "1e3", "on", "null", "no", "3.50"])
def test_every_flag_that_takes_text_keeps_it_as_written(text):
    text_flags = [f for f in FLAGS if type(declaration(f.key).default) is str and not choices(f.key)]
    assert {f.key for f in text_flags} == {"data.root", "name", "output_dir"}
    for flag in text_flags:
        tree = _dry_run(flag.names[-1], text)
        section, _, key = flag.key.rpartition(".")
        value = tree[section][key] if section else tree[key]
        assert value == text or value.endswith(f"/{text}"), (flag.key, value)  # --data resolves a relative path


def test_set_keeps_text_and_reads_numbers_and_words_by_the_keys_type():
    cfg = load_config("sample", ["data.name=null", "name=007", "train.epochs=1e1", "data.in_memory=off",
                                 "optim.lr=auto", "subset.classes=100"])
    assert (cfg.data.name, cfg.name, cfg.train.epochs, cfg.data.in_memory) == ("null", "007", 10, False)
    assert (cfg.optim.lr, cfg.subset.classes) == ("auto", "100")
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got '2.5'"):
        load_config("sample", ["train.epochs=2.5"])


def test_a_named_flag_reaches_its_key_typed(tmp_path):
    cfg = build_config("sample", name="yes", epochs=3, lr="0.2", compile_=False, data_root="on", workers=0)
    assert (cfg.name, cfg.train.epochs, cfg.optim.lr, cfg.train.compile, cfg.data.workers) == ("yes", 3, 0.2, False, 0)
    assert cfg.data.root == "on"  # a relative path, kept as given (nothing named on exists here)


def _add_choice(monkeypatch, name: str, value: str) -> None:
    """A choice added at the key's declaration, as a developer adding an arch would (the only place)."""
    f = declaration(name)
    metadata = {**f.metadata, "choices": (*choices(name), value)}
    monkeypatch.setattr(f, "metadata", types.MappingProxyType(metadata))


def test_a_choice_added_at_the_declaration_is_in_validation_help_and_the_resume_rules(monkeypatch):
    with pytest.raises(ConfigError, match="model.arch: 'resnet_x' is not one of"):
        load_config("sample", ["model.arch=resnet_x"])
    _add_choice(monkeypatch, "model.arch", "resnet_x")
    assert load_config("sample", ["model.arch=resnet_x"]).model.arch == "resnet_x"  # validation
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "resnet_x" in " ".join(help_text.split())  # --arch's choices in the help
    run = CliRunner().invoke(cli, ["train", "--recipe", "sample", "--arch", "resnet_x", "--dry-run"])
    assert run.exit_code == 0 and yaml.safe_load(run.output)["model"]["arch"] == "resnet_x"  # the flag takes it
    assert "model.arch" in fixed_keys()  # a network key: a resume keeps it
    old = load_config("sample").to_dict()
    with pytest.raises(ConfigError, match=r"model.arch 'resnet18' -> 'resnet_x'"):
        check_resumable({"config": old, "epoch": 1}, load_config("sample", ["model.arch=resnet_x"]), "last.pt")


def test_every_key_has_help_and_its_rules_come_from_the_declaration():
    for name in declared_keys():
        assert declaration(name).metadata["help"], name
    assert {f"model.{f.name}" for f in dataclasses.fields(ModelConfig) if f.metadata["network"]} == {
        "model.arch", "model.blurpool", "model.activation", "model.se_reduction", "model.self_attention",
        "model.maxblurpool"}
    assert {"data.name", "train.batch_size", "optim.schedule", "model.arch"} <= fixed_keys()
    assert not {"data.workers", "train.precision", "train.checkpoint_minutes", "data.preread"} & fixed_keys()


def test_dry_run_comments_each_key_with_its_declaration():
    run = CliRunner().invoke(cli, ["train", "--recipe", "sample", "--dry-run"])
    lines = run.output.splitlines()
    arch = next(line for line in lines if line.strip().startswith("arch:"))
    assert arch.startswith("  arch: resnet18  # the network; one of resnet18, resnet34") and "a resume keeps it" in arch
    workers = next(line for line in lines if line.strip().startswith("workers:"))
    assert "a resume keeps it" not in workers
    assert yaml.safe_load(run.output) == load_config("sample").to_dict() | {
        "data": {**load_config("sample").to_dict()["data"], "root": yaml.safe_load(run.output)["data"]["root"]}}


def test_version_prints_the_package_version_and_the_commit():
    run = CliRunner().invoke(cli, ["--version"])
    assert run.exit_code == 0 and run.output.startswith("imagenet-kit 0.1.0")
    assert "commit" in run.output  # run from a checkout


def test_a_tree_is_dirty_for_changed_code_not_for_appended_result_rows(tmp_path, monkeypatch):
    from imagenet_kit import revision

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "accuracy.jsonl").write_text("{}\n")
    (tmp_path / "train.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "first")
    monkeypatch.setattr(revision, "ROOT", tmp_path)
    monkeypatch.delenv("IMAGENET_KIT_GIT", raising=False)
    head = revision.git_revision()
    assert len(head) == 40
    (tmp_path / "bench" / "results" / "accuracy.jsonl").write_text("{}\n{}\n")  # the row of seed 0
    assert revision.git_revision() == head
    (tmp_path / "train.py").write_text("x = 2\n")
    assert revision.git_revision() == head + "-dirty"


def test_mini_finetune_reads_the_same_subset_and_betons_as_mini():
    mini, finetune = load_config("mini"), load_config("mini-finetune")
    assert dataclasses.asdict(finetune.subset) == dataclasses.asdict(mini.subset) and mini.subset.classes
    assert finetune.betons == mini.betons


def test_the_docs_key_table_is_the_declarations():
    from imagenet_kit.config.load import key_table
    from tests.conftest import REPO

    text = (REPO / "docs" / "configuration.md").read_text()
    block = text.split("<!-- keys:begin -->\n")[1].split("\n<!-- keys:end -->")[0]
    assert block == key_table(), "docs/configuration.md is out of date: imagenet-kit keys --markdown"
    assert block.count("\n| `") == len(declared_keys())
