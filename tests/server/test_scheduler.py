"""The scheduler in a real server: capacity, cancel, time limit, shutdown, crash recovery."""

from __future__ import annotations

from pathlib import Path

from tests.server.conftest import (
    ProcessServer,
    ThreadServer,
    job_body,
    predictions,
    server_env,
    stats,
)


def done_at_least(n: int):
    return lambda j: int(j["progress"]["doneCount"]) >= n or j["state"].endswith("ED")


def test_jobs_wait_pending_while_capacity_is_full(start_server, make_input,
                                                  tmp_path: Path) -> None:
    server: ThreadServer = start_server(max_running_jobs=1)
    first = server.create(job_body(make_input(30), tmp_path / "a", model="slow-model"))
    server.wait(first, lambda j: j["state"] == "JOB_STATE_RUNNING")
    second = server.create(job_body(make_input(3), tmp_path / "b"))
    assert second["state"] == "JOB_STATE_PENDING"
    assert "completionStats" not in second and "startTime" not in second
    assert server.get(second)["state"] == "JOB_STATE_PENDING"
    assert server.get(first)["state"] == "JOB_STATE_RUNNING"

    first, second = server.wait(first), server.wait(second)
    assert first["state"] == second["state"] == "JOB_STATE_SUCCEEDED"
    assert second["startTime"] >= first["endTime"]


def test_two_slots_run_two_jobs_at_once(start_server, make_input, tmp_path: Path) -> None:
    server: ThreadServer = start_server(max_running_jobs=2)
    jobs = [server.create(job_body(make_input(20), tmp_path / str(i), model="slow-model"))
            for i in range(3)]
    server.wait(jobs[1], lambda j: j["state"] == "JOB_STATE_RUNNING")
    assert server.get(jobs[0])["state"] == "JOB_STATE_RUNNING"
    assert server.get(jobs[2])["state"] == "JOB_STATE_PENDING"
    assert server.call("POST", f"/v1/{jobs[2]['name']}:cancel", {}).json == {}
    cancelled = server.get(jobs[2])  # a pending job is cancelled at once
    assert cancelled["state"] == "JOB_STATE_CANCELLED"
    assert cancelled["error"]["code"] == 1 and "startTime" not in cancelled


def test_cancel_mid_run_keeps_completed_rows(server: ThreadServer, make_input,
                                             tmp_path: Path) -> None:
    job = server.create(job_body(make_input(200), tmp_path, model="slow-model"))
    server.wait(job, done_at_least(12))
    assert server.call("POST", f"/v1/{job['name']}:cancel", {}).json == {}
    job = server.wait(job, timeout=10)
    assert job["state"] == "JOB_STATE_CANCELLED"
    assert job["error"] == {"code": 1, "message": "The job was cancelled."}
    ok, failed, incomplete = stats(job)
    assert ok >= 12 and failed == 0
    assert ok + failed + incomplete == 200 and incomplete > 0
    lines = predictions(job)
    assert len(lines) == ok + failed
    assert len({line["key"] for line in lines}) == len(lines)
    # A cancelled job went through CANCELLING quickly: nowhere near the 10 s it had left.
    assert incomplete > 100


def test_time_limit_fails_the_job_keeping_rows(start_server, make_input, tmp_path: Path) -> None:
    server: ThreadServer = start_server(time_limit_seconds=1.0)
    job = server.wait(server.create(job_body(make_input(200), tmp_path, model="slow-model")))
    assert job["state"] == "JOB_STATE_FAILED"
    assert job["error"]["code"] == 4  # DEADLINE_EXCEEDED
    assert "time limit" in job["error"]["message"]
    ok, failed, incomplete = stats(job)
    assert ok > 0 and incomplete > 0 and ok + failed + incomplete == 200
    assert len(predictions(job)) == ok + failed


def test_graceful_shutdown_resumes_at_next_start(start_server, make_input,
                                                 tmp_path: Path) -> None:
    first: ThreadServer = start_server()
    job = first.create(job_body(make_input(60), tmp_path, model="slow-model"))
    first.wait(job, done_at_least(10))
    first.stop()
    again: ThreadServer = start_server()
    stopped = again.get(job)
    assert stopped["state"] in ("JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")
    job = again.wait(job)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and stats(job) == (60, 0, 0)
    assert sorted(line["key"] for line in predictions(job)) == list(range(60))


def test_sigkill_mid_job_then_restart_finishes_every_row_once(models_file: Path, make_input,
                                                              tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = server_env(models_file)
    server = ProcessServer(data_dir, env)
    try:
        job = server.create(job_body(make_input(80), tmp_path / "out", model="slow-model"))
        server.wait(job, done_at_least(20))
        server.kill()
        server = ProcessServer(data_dir, env, port=server.port)
        job = server.wait(job, timeout=60)
    finally:
        server.terminate()
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert stats(job) == (80, 0, 0)
    keys = [line["key"] for line in predictions(job)]
    assert keys == list(range(80))  # every row exactly once, in input order
    assert job["progress"]["totalTokenCount"] == str(80 * 4)
