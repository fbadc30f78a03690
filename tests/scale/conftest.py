"""Fixtures for scale-out tests: whole jobs through the job service on the `processes` and `ray`
executors, a real single-node Ray cluster for a module, and ways to kill a worker mid-job."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from batchpredict.jobs import Job
from batchpredict.store.sqlite import SQLiteJobStore
from tests.conftest import (
    REPO,
    job_service,
    read_predictions,
    submit_job,
    text_request,
    write_jsonl,
)
from tests.doubles.instant import InstantTestDouble


@pytest.fixture
def store(tmp_path: Path) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "jobs.sqlite3")


def keyed(n: int) -> list[dict[str, Any]]:
    return [{"key": i, "request": text_request(f"row {i}")} for i in range(n)]


def assert_every_row_once_in_order(out: Path, n: int) -> list[dict[str, Any]]:
    lines = read_predictions(out)
    assert [line["key"] for line in lines] == list(range(n))
    assert all(line["status"] == "" for line in lines)
    assert not list(out.glob("*/incremental_predictions/*.jsonl"))
    return lines


async def run_job(store: SQLiteJobStore, tmp_path: Path, rows: int, backend: Any,
                  during: Callable[[Job], Any] | None = None, **settings: Any) -> Job:
    """Run a job of `rows` keyed rows here; `during(job)` runs beside it (a coroutine)."""
    src = write_jsonl(tmp_path / "in.jsonl", keyed(rows))
    service = job_service(store, backend, tmp_path, **settings)
    job = await submit_job(service, [str(src)], str(tmp_path / "out"))
    task = asyncio.ensure_future(service.scheduler.run_here(job.id))
    if during is not None:
        await during(job)
    return await task


def slow_double(delay: float = 0.03) -> InstantTestDouble:
    return InstantTestDouble(batch_size=4, max_concurrency=2, delay_seconds=delay)


async def wait_for_rows(store: SQLiteJobStore, job: Job, rows: int, timeout: float = 60) -> None:
    """Until the job has `rows` committed rows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while store.get(job.id).counts.done < rows:
        assert loop.time() < deadline, f"the job never reached {rows} committed rows"
        await asyncio.sleep(0.02)


def processes_named(fragment: str, children_of: int | None = None) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if fragment in cmd and (children_of is None or proc.info["ppid"] == children_of):
            found.append(proc)
    return found


def kill_one(fragment: str, children_of: int | None = None) -> int:
    """SIGKILL one process whose command line holds `fragment`; its pid."""
    procs = processes_named(fragment, children_of)
    assert procs, f"no process named {fragment!r}"
    os.kill(procs[0].pid, signal.SIGKILL)
    return procs[0].pid


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A real single-node Ray cluster on loopback for the module (2 CPUs, a small object
    store); the ray executor joins it instead of starting its own."""
    ray = pytest.importorskip("ray")
    for key, value in (("RAY_USAGE_STATS_ENABLED", "0"), ("RAY_AUTH_MODE", "disabled"),
                       ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")):
        os.environ.setdefault(key, value)
    temp = tempfile.mkdtemp(prefix="bpray-", dir="/tmp")  # socket paths must stay short
    ray.init(num_cpus=2, object_store_memory=100_000_000, include_dashboard=False,
             _node_ip_address="127.0.0.1", _temp_dir=temp, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        yield ray
    finally:
        ray.shutdown()
