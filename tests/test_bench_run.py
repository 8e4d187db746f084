import json
import re

import torch
from click.testing import CliRunner

from imagenet_kit.bench.report import load_rows, results_markdown
from imagenet_kit.bench.run import bench_run_command
from imagenet_kit.cli import cli
from imagenet_kit.engine.train import train
from imagenet_kit.models.architecture import ARCHITECTURE_KEYS
from imagenet_kit.runtime import Runtime


def test_a_finished_run_becomes_an_accuracy_row(tiny_config, tmp_path):
    tiny_config.train.crop, tiny_config.train.val_crop_ratio = "random_square", 1.0  # trains with them too
    result = train(tiny_config, Runtime(torch.device("cpu"))).metrics
    results = tmp_path / "results"
    out = CliRunner().invoke(bench_run_command, [str(tiny_config.run_dir), "--results-dir", str(results)])
    assert out.exit_code == 0, out.output
    record = json.loads((results / "accuracy.jsonl").read_text())
    assert record["top1"] == result["top1"] and record["epochs"] == 2 and record["arch"] == "resnet18"
    assert len(record["per_epoch_top1"]) == 2 and record["train_res"] == [32]
    assert (record["optimizer"], record["schedule"]) == ("sgd", tiny_config.optim.schedule)
    assert {key: record[key] for key in ARCHITECTURE_KEYS} == {
        "arch": "resnet18", "blurpool": False, "maxblurpool": False, "activation": "relu", "se_reduction": 0,
        "self_attention": False}
    assert (record["crop"], record["min_scale"], record["val_crop_ratio"]) == ("random_square", 0.08, 1.0)
    assert record["lookahead_k"] == 0
    assert record["precision"] == "fp32"  # from env.json: the precision the run actually trained in
    table = results_markdown(load_rows(results))
    assert f"{100 * result['top1']:.2f}%" in table and "resnet18 on tiny" in table
    assert re.search(r"\d+ threads?, fp32 \|", table)  # the hardware column names the precision
    optim = tiny_config.optim
    assert f"sgd {optim.schedule} LR {optim.lr} per {optim.lr_batch} images" in table


def test_an_unfinished_run_is_refused(tiny_config, tmp_path):
    tiny_config.train.max_steps = 2
    train(tiny_config, Runtime(torch.device("cpu")))
    (tiny_config.run_dir / "metrics.jsonl").write_text("")
    out = CliRunner().invoke(cli, ["bench", "run", str(tiny_config.run_dir), "--results-dir", str(tmp_path)])
    assert out.exit_code == 2 and "finished" in out.output
