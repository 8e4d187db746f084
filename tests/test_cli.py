import json
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from imagenet_kit.cli import cli
from tests.conftest import REPO, make_env


def test_train_help_lists_options_with_defaults():
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0
    for text in ("--lr", "--epochs", "--batch-size", "--wd", "--resume", "--output-dir", "--set",
                 "[default: sample]"):
        assert text in result.output


def test_unknown_override_exits_nonzero_naming_the_key():
    result = CliRunner().invoke(cli, ["train", "--set", "train.nope=1"])
    assert result.exit_code == 2
    assert "train.nope" in result.output and "train.epochs" in result.output


@pytest.mark.parametrize("command", ["train", "run", "lr-find"])
@pytest.mark.parametrize("args, key, suggestion", [
    (["--arch", "resnet5O"], "model.arch", "did you mean resnet50?"),
    (["--set", "optim.schedule=cosine"], "optim.schedule", ""),
    (["--set", "train.crop=zoom"], "train.crop", ""),
    (["--set", "model.activation=mesh"], "model.activation", "did you mean mish?"),
])
def test_a_bad_choice_is_one_error_line_before_any_file(tmp_path, monkeypatch, command, args, key, suggestion):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, [command, "--recipe", "sample", *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: ") and suggestion in lines[0]
    assert "is not one of" in lines[0] and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no run folder, no betons


@pytest.mark.parametrize("recipe", ["imagenette", "imagenette-resnet18"])
def test_an_imagenette_recipe_without_data_says_where_imagenette_comes_from(tmp_path, monkeypatch, recipe):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", "--recipe", recipe])
    assert result.exit_code == 2
    assert result.output.startswith("error: no data: give --data ROOT") and len(result.output.splitlines()) == 1
    assert "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz" in result.output
    assert "--data imagenette2" in result.output
    assert not (tmp_path / "runs").exists()


def test_missing_data_root_names_path_and_layout(tmp_path):
    result = CliRunner().invoke(cli, ["run", "--recipe", "mini", "--data", "/does/not/exist",
                                      "--set", f"data.beton_dir={tmp_path}"])
    assert result.exit_code == 2
    assert "/does/not/exist" in result.output and "train/<class>" in result.output


@pytest.mark.slow
def test_make_mini_with_missing_data_fails_with_layout(tmp_path):
    proc = subprocess.run(["make", "-s", "mini", "DATA=/does/not/exist"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=make_env())
    assert proc.returncode != 0
    assert "/does/not/exist" in proc.stdout + proc.stderr
    assert "val/<class>" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_make_full_with_a_gpu_profile_resolves_in_a_dry_run():
    """`make full RECIPE=full-24 GPU=a10g` as a user types it, --dry-run: one resolved config, nothing converted."""
    proc = subprocess.run(["make", "-s", "full", "RECIPE=full-24", "GPU=a10g", "DATA=/mnt/imagenet", "ARGS=--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=make_env())
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)  # one YAML document: prepare is skipped in a dry run
    assert (resolved["name"], resolved["train"]["epochs"], resolved["train"]["profile"]) == ("full-24", 24, "a10g")
    assert (resolved["train"]["batch_size"], resolved["train"]["precision"]) == (256, "bf16")
    assert resolved["data"]["root"] == "/mnt/imagenet" and resolved["data"]["name"] == "imagenet-jpg"


@pytest.mark.slow
def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "imagenet_kit", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    for command in ("convert", "subset", "lr-find", "train", "eval", "export", "demo", "run"):
        assert command in proc.stdout


@pytest.mark.slow
def test_run_end_to_end_on_a_tiny_imagefolder(tiny_data, tmp_path):
    """convert -> LR range test -> one-cycle training -> eval -> export, then a rerun skips every stage."""
    args = ["run", "--recipe", "sample", "--data", str(tiny_data["root"]), "--output-dir", str(tmp_path / "runs"),
            "--name", "e2e", "--arch", "resnet18", "--epochs", "1", "-b", "8", "-j", "1",
            "--set", f"data.beton_dir={tmp_path / 'betons'}", "--set", "data.name=e2e", "--set", "data.max_res=64",
            "--set", "train.min_res=32", "--set", "train.max_res=32", "--set", "train.val_res=32",
            "--set", "lr_find.num_iter=10"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "e2e"
    for name in ("config.yaml", "env.json", "metrics.jsonl", "lr_find.png", "lr_find.json", "schedule.png",
                 "curves.png", "checkpoints/last.pt", "checkpoints/best.pt", "eval.json", "eval.per_class.csv",
                 "export/model.json"):
        assert (run / name).is_file(), name
    report = json.loads((tmp_path / "betons" / "e2e-train-64.beton.report.json").read_text())
    assert report["counts"]["seen"] == report["counts"]["written"] == 32
    evaluation = json.loads((run / "eval.json").read_text())
    last_epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert evaluation["top1"] == last_epoch["top1"]  # eval of best.pt (the only epoch) reproduces training's
    assert evaluation["count"] == 16
    rerun = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert rerun.exit_code == 0
    assert "skipped" in rerun.output


@pytest.mark.slow
def test_make_full_without_data_explains_where_imagenet_comes_from():
    proc = subprocess.run(["make", "-s", "full"], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=make_env())
    assert proc.returncode != 0
    assert "DATA=/path/to/imagenet" in proc.stdout and "image-net.org" in proc.stdout
    assert "ILSVRC2012_validation_ground_truth.txt" in proc.stdout


@pytest.mark.slow
def test_make_full_with_nproc_runs_torchrun():
    proc = subprocess.run(["make", "-n", "full", "DATA=x", "NPROC=8"], cwd=REPO, capture_output=True, text=True,
                          env=make_env())
    assert proc.returncode == 0
    assert "prepare --recipe full --data \"x\"" in proc.stdout  # conversion outside torchrun
    assert "imagenet-kit launch --nnodes=1 --nproc_per_node=8 --standalone --max-restarts=3" in proc.stdout
    assert "-m imagenet_kit run --recipe full --data \"x\"" in proc.stdout


@pytest.mark.slow
def test_make_full_on_several_nodes_needs_the_address_of_node_0():
    proc = subprocess.run(["make", "full", "DATA=x", "NNODES=2"], cwd=REPO, capture_output=True, text=True,
                          env=make_env())
    assert proc.returncode == 2
    assert "NNODES=2 needs MASTER_ADDR=" in proc.stdout


# prepare and run found this before; train and lr-find trained on the betons of another root without a word
@pytest.mark.parametrize("command", ["prepare", "run", "train", "lr-find"])
def test_betons_of_another_root_are_refused(tiny_data, tmp_path, command):
    import shutil
    betons = tmp_path / "betons"
    shutil.copytree(tiny_data["beton_dir"], betons)
    other = tmp_path / "other"
    shutil.copytree(tiny_data["root"], other)
    result = CliRunner().invoke(cli, [command, "--data", str(other), "--set", f"data.beton_dir={betons}",
                                      "--set", "data.name=tiny", "--set", "data.max_res=64",
                                      "--output-dir", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "data.name" in result.output and f"which is not in {other}" in result.output.replace("\n", "")
    assert not (tmp_path / "runs").exists()
    if command != "prepare":
        return
    same = CliRunner().invoke(cli, ["prepare", "--data", str(tiny_data["root"]), "--set", f"data.beton_dir={betons}",
                                    "--set", "data.name=tiny", "--set", "data.max_res=64"])
    assert same.exit_code == 0 and "skipped" in same.output
