"""Server jobs through real faults: PostgreSQL stopped and started under a running job (the API
answers a clean 503 meanwhile; the job carries on), and a job FAILED by a full disk resumed
through the REST endpoint `:resume` (or `batchpredict jobs resume --server`) once there is
space again."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli_env
from tests.faults.conftest import (
    CHUNK_ROWS,
    ROWS,
    PgCluster,
    check_every_row_once,
    check_no_row_twice,
    check_no_traceback,
    write_input,
)
from tests.server.conftest import ProcessServer, job_body, predictions, server_env

pytestmark = pytest.mark.timeout(150)


@pytest.fixture
def start_server(tmp_path: Path, model) -> Iterator[Any]:
    servers: list[ProcessServer] = []

    def start(**env: str) -> ProcessServer:
        environ = server_env(model.registry, BATCHPREDICT_CHUNK_ROWS=str(CHUNK_ROWS),
                             BATCHPREDICT_CHUNK_SECONDS="600", **env)
        servers.append(ProcessServer(tmp_path / "data", environ))
        return servers[-1]

    yield start
    for server in servers:
        server.terminate()


def done_rows(job: dict[str, Any]) -> int:
    return int(job["progress"]["doneCount"])


def test_postgres_restarted_mid_job(tmp_path, model, start_server, pg_cluster: PgCluster) -> None:
    server = start_server(BATCHPREDICT_STORE_URL=pg_cluster.url,
                          BATCHPREDICT_OUTAGE_DEADLINE_SECONDS="60")
    job = server.create(job_body(write_input(tmp_path / "in.jsonl"), tmp_path / "out",
                                 model="echo-small"))
    server.wait(job, lambda j: done_rows(j) >= 2 * CHUNK_ROWS)
    pg_cluster.stop()
    try:
        reply = server.call("GET", f"/v1/{job['name']}")
        assert reply.status == 503, reply
        error = reply.json["error"]
        assert error["status"] == "UNAVAILABLE"
        assert error["message"].startswith(f"The job store {pg_cluster.url} cannot be used now")
        time.sleep(4)
    finally:
        pg_cluster.start()
    final = server.wait(job, timeout=90)
    assert final["state"] == "JOB_STATE_SUCCEEDED", final
    assert final["completionStats"]["successfulCount"] == str(ROWS)
    check_every_row_once(predictions(final))
    check_no_row_twice(model)
    server.terminate()
    log = server.log.read_text()
    check_no_traceback(log)
    assert "waiting for the job store" in log and "is back after" in log


@pytest.mark.parametrize("through", ["REST", "CLI"])
def test_a_server_job_failed_by_its_disk_resumes(tmp_path, model, start_server, small_disk,
                                                 through: str) -> None:
    disk = small_disk("32k")
    server = start_server(BATCHPREDICT_OUTAGE_DEADLINE_SECONDS="1")
    job = server.create(job_body(write_input(tmp_path / "in.jsonl"), disk.path / "out",
                                 model="echo-small"))
    failed = server.wait(job, timeout=90)
    assert failed["state"] == "JOB_STATE_FAILED", failed
    assert failed["error"]["resumable"] is True
    assert "No space left" in failed["error"]["message"]
    committed = int(failed["completionStats"]["successfulCount"])
    assert 0 < committed < ROWS

    resume = f"/batchpredict/v1/{job['name']}:resume"
    disk.grow("4m")
    if through == "REST":
        reply = server.call("POST", resume, {})
        assert reply.status == 200, reply
        assert reply.json["state"] == "JOB_STATE_RUNNING" and "error" not in reply.json
    else:
        done = subprocess.run([sys.executable, "-m", "batchpredict", "jobs", "resume", "1",
                               "--server", server.url, "--project", "p"], capture_output=True,
                              text=True, env=cli_env(tmp_path / "cli"), timeout=60)
        assert done.returncode == 0, done.stderr
        assert "Resumed job 1" in done.stderr
    final = server.wait(job, timeout=90)
    assert final["state"] == "JOB_STATE_SUCCEEDED", final
    check_every_row_once(predictions(final))
    check_no_row_twice(model, committed_before=set(range(committed)))
    again = server.call("POST", resume, {})  # only a resumable FAILED job resumes
    assert again.status == 400 and again.json["error"]["status"] == "FAILED_PRECONDITION"
    server.terminate()
    check_no_traceback(server.log.read_text())
