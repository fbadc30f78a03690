"""One project cannot hold every slot: BATCHPREDICT_MAX_RUNNING_JOBS_PER_PROJECT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.server.conftest import job_body


def test_a_project_runs_at_most_its_share(start_server: Any, make_input: Any,
                                          tmp_path: Path) -> None:
    server = start_server(max_running_jobs=2, max_running_jobs_per_project=1)
    slow = make_input(60)
    hog = [server.create(job_body(slow, tmp_path / "a", model="slow-model"), project="hog")
           for _ in range(3)]
    other = server.create(job_body(slow, tmp_path / "b", model="slow-model"), project="other")
    running = lambda j: j["state"] == "JOB_STATE_RUNNING"  # noqa: E731
    server.wait(other, until=running, timeout=30)
    states = [server.get(j)["state"] for j in hog]
    assert states.count("JOB_STATE_RUNNING") == 1, states
    assert states.count("JOB_STATE_PENDING") == 2, states
    for job in [*hog, other]:
        server.call("POST", f"/v1/{job['name']}:cancel", {})
    for job in [*hog, other]:
        assert server.wait(job)["state"] in ("JOB_STATE_CANCELLED", "JOB_STATE_SUCCEEDED")
