"""Bad input is refused before any work, in one line: exit 2, ``error:`` naming the value or file, no traceback,
and nothing left behind (no run folder, no beton)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from conftest import SAMPLE

from imagenet_kit import cli


def _cases(tmp, tiny, tiny_root):
    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    existing = tmp / "out.beton"
    existing.write_bytes(b"")
    tiny_betons = ["--data", str(tiny_root), "--set", f"data.beton_dir={tiny}", "--set", "data.name=tiny", "--set",
                   "data.max_res=64"]
    fresh = ["--set", f"data.beton_dir={tmp / 'betons'}"]  # the sample's betons, not built yet
    return {
        "negative lr": (["train", "--lr", "-1", *fresh], "optim.lr must be positive or auto (e.g. --lr 0.1"),
        "zero batch": (["train", "-b", "0", *fresh], "train.batch_size must be at least 1, got 0"),
        "zero epochs": (["run", "--epochs", "0", *fresh], "train.epochs must be at least 1 (e.g. --epochs 5), got 0"),
        "batch over the data, before converting": (
            ["run", "-b", "600", *fresh], f"train.batch_size 600 is more than the 500 training images of "
                                          f"{SAMPLE / 'train'}"),
        "batch over a beton": (["train", "-b", "40", *tiny_betons],
                               f"train.batch_size 40 is more than the 32 training images of {tiny}/tiny-train-64"),
        "lr-find batch over a beton": (["lr-find", *tiny_betons, "--set", "lr_find.batch_size=33"],
                                       "lr_find.batch_size 33 is more than the 32 training images"),
        "unknown key": (["train", "--set", "train.epoch=3", *fresh],
                        "unknown config key 'train.epoch'; did you mean train.epochs?"),
        "unknown section": (["train", "--set", "trian.epochs=3"], "did you mean train.epochs?"),
        "unreadable resume checkpoint": (["train", "--resume", str(junk), *tiny_betons],
                                         f"{junk}: unreadable checkpoint, not a file torch.save wrote"),
        "unreadable eval checkpoint": (["eval", "--checkpoint", str(junk), "--data", str(tiny)],
                                       f"{junk}: unreadable checkpoint"),
        "unreadable export checkpoint": (["export", "--checkpoint", str(junk)], f"{junk}: unreadable checkpoint"),
        "precision": (["train", "--set", "train.precision=fp64"], "train.precision: 'fp64' is not one of"),
        "lr not a number": (["train", "--set", "optim.lr=fast"], "optim.lr: expected float, got 'fast'"),
        "negative weight decay": (["train", "--wd", "-1", *fresh], "optim.weight_decay must be 0 or more, got -1.0"),
        "warm-up share": (["train", "--set", "optim.pct_start=1.5"], "optim.pct_start must be in (0, 1), got 1.5"),
        "range test length": (["lr-find", "--set", "lr_find.num_iter=1"], "lr_find.num_iter must be at least 2"),
        "range test bounds": (["lr-find", "--set", "lr_find.end_lr=1e-8"], "lr_find.end_lr (1e-08) must exceed"),
        "jpeg quality": (["run", "--set", "data.jpeg_quality=0", *fresh], "data.jpeg_quality must be in 1..100, got 0"),
        "resolution": (["train", "--set", "train.min_res=8"], "train.min_res must be at least 16 (pixels), got 8"),
        "missing recipe": (["run", "--recipe", "imagenet-21k"], "recipe not found"),
        "beton exists": (["convert", str(SAMPLE / "val"), str(existing)], f"{existing} exists; pass --force"),
    }



@pytest.fixture
def cases(tmp_path, tiny_data):
    return _cases(tmp_path, tiny_data["beton_dir"], tiny_data["root"])


NAMES = ["negative lr", "zero batch", "zero epochs", "batch over the data, before converting", "batch over a beton",
         "lr-find batch over a beton", "unknown key", "unknown section", "unreadable resume checkpoint",
         "unreadable eval checkpoint", "unreadable export checkpoint", "precision", "lr not a number",
         "negative weight decay", "warm-up share", "range test length", "range test bounds", "jpeg quality",
         "resolution", "missing recipe", "beton exists"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_error_line_exit_2_and_leaves_nothing(name, cases, tmp_path, tiny_data, monkeypatch):
    assert sorted(cases) == sorted(NAMES)
    args, named = cases[name]
    runs = tmp_path / "runs"
    before = sorted(p.name for p in tiny_data["beton_dir"].iterdir())
    recipe_options = ["--output-dir", str(runs)] if args[0] in ("train", "run", "lr-find") else []
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.cli, [*args, *recipe_options])
    out = result.output
    assert result.exit_code == 2, (out, result.exception)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and named in errors[0], out
    assert "Traceback" not in out
    assert not runs.exists() and not (tmp_path / "betons").exists()  # no run folder, no half conversion
    assert sorted(p.name for p in tiny_data["beton_dir"].iterdir()) == before
