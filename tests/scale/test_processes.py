"""The `processes` executor: a job's ranges on worker processes, every row exactly once and in
order, even when a worker is killed mid-job; a worker that cannot start fails the job."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from batchpredict.jobs import Job, JobState
from tests.conftest import read_predictions
from tests.doubles.instant import InstantTestDouble
from tests.scale.conftest import (
    assert_every_row_once_in_order,
    kill_one,
    processes_named,
    run_job,
    slow_double,
    wait_for_rows,
)

S = JobState
WORKER = "batchpredict.executors.processes"


async def test_a_job_runs_on_two_worker_processes(store, tmp_path: Path) -> None:
    done = await run_job(store, tmp_path, 500, InstantTestDouble(batch_size=16), chunk_rows=40,
                         executor="processes", workers=2)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    assert (done.counts.succeeded, done.counts.failed, done.incomplete) == (500, 0, 0)
    assert_every_row_once_in_order(tmp_path / "out", 500)
    assert store.chunks(done.id) == []  # commit records go once the job ends
    assert processes_named(WORKER, children_of=os.getpid()) == []


async def test_a_killed_worker_loses_only_its_uncommitted_rows(store, tmp_path: Path) -> None:
    killed: list[int] = []

    async def kill_a_worker(job: Job) -> None:
        await wait_for_rows(store, job, 40)
        killed.append(kill_one(WORKER, children_of=os.getpid()))

    done = await run_job(store, tmp_path, 400, slow_double(), kill_a_worker, chunk_rows=20,
                         chunk_seconds=0.2, executor="processes", workers=2)
    assert killed
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    assert (done.counts.succeeded, done.incomplete) == (400, 0)
    assert_every_row_once_in_order(tmp_path / "out", 400)


async def test_cancel_stops_dispatching_and_keeps_every_committed_row(store, tmp_path) -> None:
    async def cancel(job: Job) -> None:
        await wait_for_rows(store, job, 30)
        store.transition(job.id, S.JOB_STATE_CANCELLING)

    done = await run_job(store, tmp_path, 2000, slow_double(), cancel, chunk_rows=10,
                         executor="processes", workers=2)
    assert done.state == S.JOB_STATE_CANCELLED
    keys = [line["key"] for line in read_predictions(tmp_path / "out")]
    assert keys == sorted(set(keys)) and len(keys) == done.counts.done
    assert 30 <= done.counts.done < 2000
    assert done.incomplete == 2000 - done.counts.done


class Unloadable(InstantTestDouble):
    async def start(self) -> None:
        raise RuntimeError("no such weights")


class Hangs(InstantTestDouble):
    async def start(self) -> None:
        await asyncio.sleep(3600)


async def test_a_worker_that_cannot_start_fails_the_job(store, tmp_path: Path) -> None:
    done = await run_job(store, tmp_path, 10, Unloadable(), executor="processes", workers=2)
    assert done.state == S.JOB_STATE_FAILED
    assert "could not start: RuntimeError: no such weights" in done.error["message"]


async def test_a_worker_that_hangs_at_start_fails_the_job_at_the_deadline(store, tmp_path):
    done = await run_job(store, tmp_path, 10, Hangs(), executor="processes", workers=1,
                         worker_start_seconds=2)
    assert done.state == S.JOB_STATE_FAILED
    assert "did not load model test-double within 2 s" in done.error["message"]
    assert processes_named(WORKER, children_of=os.getpid()) == []
