"""Executors retry a failed job once and keep going; the study lock admits one driver."""

from __future__ import annotations

import pytest

from midtrain.errors import MidtrainError
from midtrain.study import executors
from midtrain.study.runner import study_lock


def test_failed_job_is_retried_once_then_reported_and_the_rest_go_on(monkeypatch):
    calls: dict[str, int] = {}

    def fake_run_job(job, threads=0):
        calls[job["name"]] = calls.get(job["name"], 0) + 1
        if job["name"] == "flaky" and calls["flaky"] == 1:
            raise RuntimeError("worker hiccup")
        if job["name"] == "broken":
            raise RuntimeError("loss is nan")
        return {"name": job["name"], "dir": job["dir"], "status": "done"}

    monkeypatch.setattr(executors, "run_job", fake_run_job)
    jobs = [{"name": n, "dir": f"/tmp/{n}"} for n in ("ok", "flaky", "broken", "after")]
    seen = []
    outcomes = executors.LocalExecutor().run(jobs, seen.append)
    by = {o["name"]: o for o in outcomes}
    assert calls == {"ok": 1, "flaky": 2, "broken": 2, "after": 1}
    assert by["flaky"]["status"] == "done" and by["flaky"]["attempts"] == 2
    assert by["broken"]["status"] == "failed" and "loss is nan" in by["broken"]["error"]
    assert by["after"]["status"] == "done"
    assert [o["name"] for o in seen] == ["ok", "flaky", "broken", "after"]


def test_study_lock_admits_one_driver(tmp_path):
    with study_lock(tmp_path / "s"):
        with pytest.raises(MidtrainError, match="another midtrain process"):
            with study_lock(tmp_path / "s"):
                pass
    with study_lock(tmp_path / "s"):  # released afterwards
        pass


def test_unknown_executor_is_a_one_line_error():
    from midtrain.study.runner import _make_executor

    with pytest.raises(MidtrainError, match="--executor 'slurm' is unknown"):
        _make_executor("slurm", 1, None)
