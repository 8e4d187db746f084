"""train.mirror: a run's checkpoints and records copied to a folder or an S3 bucket (a local S3-compatible server,
moto's, as s3fs tests itself), and a fresh instance, its run folder empty, resuming from there."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from imagenet_kit.engine.checkpoint import load_checkpoint
from imagenet_kit.engine.mirror import Mirror
from imagenet_kit.engine.train import train
from imagenet_kit.runtime import Runtime

CPU = Runtime(torch.device("cpu"))


def _stopped_then_resumed_on_a_fresh_instance(cfg, url: str, capsys) -> dict:
    """Train until step 6 (epoch 2, step 2 of 4), lose the instance (the run folder), resume with the mirror."""
    cfg.train.mirror, cfg.train.max_steps = url, 6
    train(cfg, CPU)
    shutil.rmtree(cfg.run_dir)
    capsys.readouterr()
    cfg.train.max_steps = 0
    train(cfg, CPU, resume="auto")
    err = capsys.readouterr().err
    assert "mirror: fetched" in err and "resuming from" in err and "(epoch 1, step 2)" in err
    return load_checkpoint(cfg.run_dir / "checkpoints" / "last.pt")


def test_a_fresh_instance_resumes_from_a_folder_mirror_at_the_same_step(tiny_config, tmp_path, capsys):
    state = _stopped_then_resumed_on_a_fresh_instance(tiny_config, f"file://{tmp_path / 'mirror'}", capsys)
    assert (state["epoch"], state["global_step"]) == (2, 8)  # no step redone: 2 epochs x 4
    rows = [json.loads(line) for line in (tiny_config.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]  # epoch 0's line came back with the checkpoint
    mirrored = tmp_path / "mirror" / tiny_config.name
    assert {p.name for p in (mirrored / "checkpoints").iterdir()} >= {"last.pt", "last.pt.json", "last.prev.pt",
                                                                      "last.prev.pt.json", "best.pt", "best.pt.json"}
    assert not list(mirrored.rglob("*.partial"))
    assert (mirrored / "config.yaml").is_file() and (mirrored / "metrics.jsonl").is_file()


def test_a_copy_cut_off_halfway_is_passed_by_for_the_previous_one(tiny_config, tmp_path, capsys):
    tiny_config.train.mirror = f"file://{tmp_path / 'mirror'}"
    train(tiny_config, CPU)  # 2 epochs: last.pt (epoch 2), last.prev.pt (epoch 1), best.pt
    checkpoints = tmp_path / "mirror" / tiny_config.name / "checkpoints"
    (checkpoints / "best.pt").unlink()
    (checkpoints / "best.pt.json").unlink()
    last = checkpoints / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a store that tore the copy, record intact
    (checkpoints / ".last.pt.partial").write_bytes(b"half of a newer one")  # a copy cut before its rename
    shutil.rmtree(tiny_config.run_dir)
    capsys.readouterr()
    tiny_config.train.epochs = 2
    train(tiny_config, CPU, resume="auto")
    err = capsys.readouterr().err
    assert "skipping checkpoints/last.pt" in err and "(epoch 1, step 0)" in err
    assert load_checkpoint(tiny_config.run_dir / "checkpoints" / "last.pt")["global_step"] == 8


def test_a_mirror_that_cannot_be_written_is_a_warning_and_training_goes_on(tiny_config, tmp_path, capsys):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the mirror's folder would be")
    tiny_config.train.mirror, tiny_config.train.epochs = f"file://{blocked}", 1
    assert train(tiny_config, CPU).metrics["epoch"] == 0
    assert "warning: mirror: could not copy last.pt" in " ".join(capsys.readouterr().err.split())


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free local port, with a bucket; s3fs reaches it through AWS_ENDPOINT_URL."""
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="spot-runs")
        yield "s3://spot-runs/runs"
    server.stop()


@pytest.mark.slow  # moto's S3 server and two trainings: 15 s on 2 cores
def test_a_fresh_instance_resumes_from_an_s3_mirror_at_the_same_step(s3_server, tiny_config, capsys):
    state = _stopped_then_resumed_on_a_fresh_instance(tiny_config, s3_server, capsys)
    assert (state["epoch"], state["global_step"]) == (2, 8)
    records = Mirror(s3_server, tiny_config.run).complete_checkpoints()
    assert [r["name"] for r in records][:1] == ["last.pt"] and records[0]["global_step"] == 8


@pytest.mark.parametrize("url, named", [("nosuch://bucket/runs", "nosuch"), ("s3://bucket/runs", "s3fs")])
def test_a_mirror_url_the_kit_cannot_use_is_one_error_before_training(tiny_config, monkeypatch, url, named):
    from imagenet_kit.errors import ConfigError

    if url.startswith("s3"):  # as on a machine without s3fs
        import sys

        monkeypatch.setitem(sys.modules, "s3fs", None)  # its import fails
        monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    tiny_config.train.mirror = url
    with pytest.raises(ConfigError, match=rf"train.mirror {url}: .*{named}"):
        train(tiny_config, CPU)
    assert not tiny_config.run_dir.exists()
