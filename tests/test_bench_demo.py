"""CPU batch-1 latency of the demo's predictor, appended to a JSON-lines results file."""
from __future__ import annotations

import json

from click.testing import CliRunner
from test_export import make_fake_run  # tests/ is on sys.path (pytest's rootdir-less import)

from imagenet_kit.bench.demo import bench_demo, bench_demo_command
from imagenet_kit.serve.export import export_model

REQUIRED = {"date", "host", "cpu", "torch", "torchvision", "python", "command", "arch", "res", "backend",
            "n", "p50_ms", "p95_ms", "mean_ms"}


def test_bench_demo_appends_a_record(tmp_path):
    run = make_fake_run(tmp_path)
    export_model(run / "checkpoints" / "best.pt", run / "export", formats=("torchscript",))
    results = tmp_path / "results" / "demo.jsonl"
    record = bench_demo(run / "export", n=5, results=results)
    lines = results.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0]) == record
    assert REQUIRED <= record.keys()
    assert 0 < record["p50_ms"] <= record["p95_ms"] and record["mean_ms"] > 0
    assert (record["arch"], record["res"], record["backend"], record["n"]) == ("resnet18", 64, "torchscript", 5)

    result = CliRunner().invoke(bench_demo_command, ["--model", str(run / "export"), "-n", "3",
                                                     "--results", str(results)])
    assert result.exit_code == 0, result.output
    assert "p50" in result.output and len(results.read_text().splitlines()) == 2
