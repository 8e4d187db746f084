"""`imagenet-kit launch`'s ending of a stop: exit 0 only when every worker of the node exited 0 after it."""
from __future__ import annotations

import signal

import pytest

from imagenet_kit.launch import EXIT_REPORTS, _after_stop, report_exit


def test_each_worker_reports_its_exit_status_under_launch(tmp_path, monkeypatch):
    monkeypatch.setenv(EXIT_REPORTS, str(tmp_path))
    for rank, code in (("0", 0), ("1", 2), ("2", None), ("3", "a message")):
        monkeypatch.setenv("LOCAL_RANK", rank)
        report_exit(code)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"rank0": "0", "rank1": "2", "rank2": "0",
                                                                    "rank3": "1"}


def test_outside_launch_nothing_is_reported(tmp_path, monkeypatch):
    monkeypatch.delenv(EXIT_REPORTS, raising=False)
    monkeypatch.chdir(tmp_path)
    report_exit(0)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("reports, workers, code", [
    ({"rank0": "0", "rank1": "0"}, 2, 0),
    ({"rank0": "0"}, 2, 128 + signal.SIGTERM),  # one worker was killed before it could report
    ({"rank0": "0", "rank1": "1"}, 2, 128 + signal.SIGTERM),
])
def test_a_stop_ends_in_0_only_when_every_worker_here_exited_cleanly(tmp_path, capsys, reports, workers, code):
    for name, status in reports.items():
        (tmp_path / name).write_text(status)
    assert _after_stop(signal.SIGTERM, tmp_path, workers) == code
    err = " ".join(capsys.readouterr().err.split())
    assert ("exited cleanly after the checkpoint" in err) is (code == 0)
    assert ("error: stopped by SIGTERM" in err) is (code != 0)
