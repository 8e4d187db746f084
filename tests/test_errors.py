"""Every command reports an expected error the same way: one ``error:`` line that names the value or file, exit
code 2, no traceback."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from imagenet_kit import cli
from imagenet_kit.errors import EXIT_CODE


def _cases(tmp):
    """(command line, text the error must name) for one bad input of every command; ``tmp`` holds the files."""
    empty, junk = tmp / "empty", tmp / "junk.pt"
    empty.mkdir()
    junk.write_bytes(b"not a checkpoint")
    (tmp / "no-markers.md").write_text("# a README without the results block\n")
    (tmp / "unfinished-run").mkdir()
    betons = f"data.beton_dir={empty}"
    return {
        "subset": (["subset", str(tmp / "missing"), str(tmp / "dst"), "--classes", "2"], "missing"),
        "convert": (["convert", str(tmp / "missing"), str(tmp / "out.beton")], "missing: not a folder"),
        "prepare": (["prepare", "--set", betons, "--data", str(tmp / "nowhere")], "nowhere"),
        "verify": (["verify", str(tmp / "missing.beton")], "missing.beton not found: verify reads a beton"),
        "lr-find": (["lr-find", "--set", betons], "imagenette-sample-train-160.beton not found"),
        "train": (["train", "--recipe", "no-such-recipe"], "no-such-recipe"),
        "eval": (["eval", "--checkpoint", str(junk), "--data", str(empty)], "junk.pt: unreadable checkpoint"),
        "export": (["export", "--output-dir", str(empty)], "no trained run found"),
        "demo": (["demo", "--output-dir", str(empty)], "no exported model found"),
        "space": (["space", "--output-dir", str(empty)], "no run with an export found"),
        "run": (["run", "--set", "train.epochs=abc"], "train.epochs: expected int"),
        "plan": (["plan", "--target", "99"], "no recipe has a published top-1 of 99%"),
        "keys": (["keys", "model.arch"], "unexpected extra argument (model.arch)"),
        "preflight": (["preflight", "--recipe", "sample", "--set", "train.batch_size=0"],
                      "train.batch_size must be at least 1"),
        "launch": (["launch", "--nnodes=2"], "torchrun: the following arguments are required: training_script"),
        "bench train": (["bench", "train", "--set", "model.arch=resnet18"], "model.arch"),
        "bench data": (["bench", "data", "--src", str(empty), "--out", str(tmp / "bench-betons")], "empty"),
        "bench convert": (["bench", "convert", "--src", str(empty), "--settings", "256:1"],
                          "MAX_RES:COMPRESS_PROB:JPEG_QUALITY"),
        "bench demo": (["bench", "demo", "--output-dir", str(empty)], "no exported model found"),
        "bench run": (["bench", "run", str(tmp / "unfinished-run")], "metrics.jsonl not found"),
        "bench report": (["bench", "report", "--doc", str(tmp / "no-markers.md"), "--results-dir", str(empty)],
                         "results:begin"),
        "bench lr-sweep": (["bench", "lr-sweep", "--recipe", "imagenette"], "optim.lr is 0.008, not auto"),
        "bench profiles": (["bench", "profiles", "--data", str(empty), "--arms", "reference,fp8"],
                           "--arms: unknown arm 'fp8'"),
        "bench gpu-evidence": (["bench", "gpu-evidence", "--smoke", "--bundle", str(empty), "--results-dir",
                                str(tmp / "results")], "not a GPU bundle (no manifest.json)"),
        "usage": (["train", "--epochs", "many"], "'many' is not a valid integer"),
    }


COMMANDS = ["subset", "convert", "prepare", "verify", "lr-find", "train", "eval", "export", "demo", "space", "run",
            "plan", "keys", "preflight", "launch", "bench train", "bench data", "bench convert", "bench demo",
            "bench run", "bench report", "bench lr-sweep",
            "bench profiles", "bench gpu-evidence", "usage"]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_expected_error_is_one_line_and_exit_2(command, tmp_path, monkeypatch):
    cases = _cases(tmp_path)
    assert sorted(cases) == sorted(COMMANDS)
    args, named = cases[command]
    monkeypatch.chdir(tmp_path)  # nothing may land in the caller's folder
    result = CliRunner().invoke(cli.cli, args)
    assert result.exit_code == EXIT_CODE, (result.output, result.exception)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert named in errors[0]
    assert "Traceback" not in result.output


def test_every_registered_command_has_a_case(tmp_path):
    registered = set(cli.COMMANDS) | {f"bench {name}" for name in cli.BENCH_COMMANDS}
    assert registered <= set(_cases(tmp_path))
