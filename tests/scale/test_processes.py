"""The `processes` executor: a job's ranges on worker processes, every row exactly once and in
order, even when a worker is killed mid-job; a worker that cannot start fails the job."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from batchpredict.jobs import Job, JobState, LineFormat, RunsIn
from batchpredict.service import JobRequest, Scope
from tests.conftest import job_service, read_predictions, submit_job, text_request, write_jsonl
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


async def test_partial_failures_are_the_first_failed_rows_in_row_order(store, tmp_path) -> None:
    """Ranges commit in any order; partialFailures still hold the job's first 20 failed rows,
    in row order, each named by its output line."""
    rows: list[object] = [b"not json" if i % 7 == 3 else {"key": i, "request": text_request("hi")}
                          for i in range(400)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    service = job_service(store, slow_double(0.005), tmp_path, chunk_rows=10,
                          executor="processes", workers=2)
    job = await submit_job(service, [str(src)], str(tmp_path / "out"))
    done = await service.scheduler.run_here(job.id)
    failed = [i for i in range(400) if i % 7 == 3]
    assert (done.counts.failed, done.counts.succeeded) == (len(failed), 400 - len(failed))
    assert [f["message"].split(":")[0] for f in done.partial_failures] == [
        f"Output line {i + 1}" for i in failed[:20]]
    assert f"Line 4 of {src} is not valid JSON" in done.partial_failures[0]["message"]


async def test_openai_lines_run_on_worker_processes(store, tmp_path: Path) -> None:
    """The job's line format travels to the workers: OpenAI batch lines in, OpenAI out."""
    rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "m", "messages": [{"role": "user", "content": f"hi {i}"}]}}
            for i in range(120)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    service = job_service(store, InstantTestDouble(batch_size=8), tmp_path, chunk_rows=15,
                          executor="processes", workers=2)
    job = await service.submit(Scope.local(), JobRequest(
        "t", "test-double", [str(src)], str(tmp_path / "out"), runs_in=RunsIn.COMMAND,
        line_format=LineFormat.OPENAI))
    done = await service.scheduler.run_here(job.id)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    lines = read_predictions(tmp_path / "out")
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(120)]
    assert {line["response"]["status_code"] for line in lines} == {200}
    assert lines[0]["response"]["body"]["object"] == "chat.completion"


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


def test_the_cli_runs_a_job_on_worker_processes_by_flag_or_setting(run_cli, tmp_path) -> None:
    """`batchpredict run --executor processes --workers 2`, and the same through
    BATCHPREDICT_EXECUTOR and BATCHPREDICT_WORKERS: every row once, in order, answered by two
    processes (on `local`, the CLI's one process would answer them all)."""
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nname = "pids"\nbackend = "python"\n'
                      'class = "tests.doubles.instant:ProcessNamingTestDouble"\n'
                      "[models.options]\nbatch_size = 4\n")
    src = write_jsonl(tmp_path / "in.jsonl",
                      [{"key": i, "request": text_request(f"row {i}")} for i in range(40)])
    env = {"BATCHPREDICT_MODELS_FILE": str(models), "BATCHPREDICT_CHUNK_ROWS": "5"}
    ways = {"flags": (["--executor", "processes", "--workers", "2"], {}),
            "settings": ([], {"BATCHPREDICT_EXECUTOR": "processes", "BATCHPREDICT_WORKERS": "2"})}
    for name, (flags, settings) in ways.items():
        out = tmp_path / name
        done = run_cli("run", str(src), "--output", str(out), "-m", "pids", "-q", *flags,
                       env={**env, **settings})
        assert done.returncode == 0, done.stderr
        lines = assert_every_row_once_in_order(out, 40)
        answered_by = {line["response"]["modelVersion"] for line in lines}
        assert len(answered_by) == 2, (name, answered_by)
    assert processes_named(WORKER, children_of=os.getpid()) == []
