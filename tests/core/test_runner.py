"""The runner's promises, with test-double backends so each test takes well under a second:
order, exactly-once, cancel, time limit, failures, and the state machine."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchpredict.errors import BatchPredictError, FailedPrecondition, Unavailable
from batchpredict.jobs import Job, JobState
from batchpredict.output import ChunkedOutput, make_output_dir
from batchpredict.schema import GenerateContentRequest
from batchpredict.server.vertex.resource import job_resource
from batchpredict.store.sqlite import SQLiteJobStore
from tests.conftest import (
    job_service,
    read_predictions,
    submit_and_run,
    submit_job,
    text_request,
    write_jsonl,
)
from tests.doubles.instant import RESPONSE, InstantTestDouble

S = JobState


class ShuffledTestDouble(InstantTestDouble):
    """Answers after a random delay, so batches finish out of order; fails rows that say so."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.rng = random.Random(7)

    async def generate(self, requests: list[GenerateContentRequest]) -> list[Any]:
        await asyncio.sleep(self.rng.random() * 0.01)
        self.requests += len(requests)
        return [
            Unavailable("model overloaded") if r.contents[0].parts[0].text == "fail" else RESPONSE
            for r in requests
        ]


@pytest.fixture
def store(tmp_path: Path) -> SQLiteJobStore:
    return SQLiteJobStore(tmp_path / "jobs.sqlite3")


async def run_rows(store: SQLiteJobStore, tmp_path: Path, rows: list[Any], backend: Any,
                   **settings: Any) -> Job:
    """Submit a job of `rows` through the job service and run it here, as `batchpredict run`."""
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    service = job_service(store, backend, tmp_path, **settings)
    return await submit_and_run(service, [str(src)], str(tmp_path / "out"))


def keyed(n: int, text: str = "hi") -> list[dict]:
    return [{"key": i, "request": text_request(text)} for i in range(n)]


async def test_out_of_order_answers_are_written_in_order_once(store, tmp_path) -> None:
    rows = keyed(200)
    rows[13]["request"] = text_request("fail")
    backend = ShuffledTestDouble(batch_size=3, max_concurrency=8)
    done = await run_rows(store, tmp_path, rows, backend)
    assert done.state == S.JOB_STATE_SUCCEEDED
    lines = read_predictions(tmp_path / "out")
    assert [line["key"] for line in lines] == list(range(200))
    assert lines[13]["status"] == (
        'Service Unavailable: {"error": {"code": 503, "message": "model overloaded", '
        '"status": "UNAVAILABLE"}}'
    )
    assert (done.counts.succeeded, done.counts.failed, done.incomplete) == (199, 1, 0)
    assert done.counts.prompt_tokens == 199 * 2  # failed rows are not billed
    stored = store.get(done.id)
    assert job_resource(stored)["completionStats"] == {
        "successfulCount": "199", "failedCount": "1", "incompleteCount": "0"}


async def test_cancel_keeps_every_completed_row(store, tmp_path) -> None:
    backend = InstantTestDouble(batch_size=5, max_concurrency=2, delay_seconds=0.02)
    service = job_service(store, backend, tmp_path)
    src = write_jsonl(tmp_path / "in.jsonl", keyed(400))
    job = await submit_job(service, [str(src)], str(tmp_path / "out"))
    task = asyncio.ensure_future(service.scheduler.run_here(job.id))
    while store.get(job.id).counts.done < 20:
        await asyncio.sleep(0.01)
    store.transition(job.id, S.JOB_STATE_CANCELLING)
    done = await task
    assert done.state == S.JOB_STATE_CANCELLED
    assert done.error == {"code": 1, "message": "The job was cancelled."}
    lines = read_predictions(tmp_path / "out")
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys)) == done.counts.done
    assert 20 <= done.counts.done < 400
    assert done.incomplete == 400 - done.counts.done
    api = job_resource(done)
    assert api["completionStats"]["incompleteCount"] == str(400 - len(keys))


async def test_time_limit_fails_the_job_with_rows_kept(store, tmp_path) -> None:
    backend = InstantTestDouble(batch_size=2, max_concurrency=1, delay_seconds=0.02)
    done = await run_rows(store, tmp_path, keyed(300), backend, chunk_rows=5,
                          time_limit_seconds=0.3)
    assert done.state == S.JOB_STATE_FAILED
    assert done.error is not None and done.error["code"] == 4
    assert "did not finish within its time limit" in done.error["message"]
    lines = read_predictions(tmp_path / "out")
    assert len(lines) == done.counts.done > 0
    assert done.incomplete == 300 - len(lines)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("{tmp}/nope.jsonl", "The input {tmp}/nope.jsonl does not exist."),
        ("{tmp}/*.none", "The wildcard {tmp}/*.none matches no file."),
        ("bq://project.dataset", "The BigQuery input URI 'bq://project.dataset' is not valid"),
    ],
)
async def test_unusable_input_is_refused_at_submit_and_makes_no_job(
    store, tmp_path, uri, message
) -> None:
    uri = uri.format(tmp=tmp_path)
    service = job_service(store, InstantTestDouble(), tmp_path)
    with pytest.raises(BatchPredictError) as err:
        await submit_job(service, [uri], str(tmp_path / "out"))
    assert err.value.message.startswith(message.format(tmp=tmp_path))
    assert store.list() == []


async def test_input_without_rows_fails(store, tmp_path) -> None:
    done = await run_rows(store, tmp_path, ["", "  "], InstantTestDouble())
    assert done.state == S.JOB_STATE_FAILED
    assert done.error["message"].startswith("The input has no rows:")


async def test_every_row_failing_fails_the_job_with_the_output_kept(store, tmp_path) -> None:
    done = await run_rows(store, tmp_path, [{"request": {"contents": []}}] * 3,
                          InstantTestDouble())
    assert done.state == S.JOB_STATE_FAILED
    assert done.error["message"].startswith("All 3 rows failed; see the status field")
    assert len(read_predictions(tmp_path / "out")) == 3


async def test_a_backend_that_raises_fails_its_rows_not_the_job(store, tmp_path) -> None:
    class Broken(InstantTestDouble):
        async def generate(self, requests):
            if any(r.contents[0].parts[0].text == "boom" for r in requests):
                raise RuntimeError("CUDA out of memory")
            return await super().generate(requests)

    rows = keyed(6)
    rows[4]["request"] = text_request("boom")
    done = await run_rows(store, tmp_path, rows, Broken(batch_size=1))
    assert done.state == S.JOB_STATE_SUCCEEDED
    status = read_predictions(tmp_path / "out")[4]["status"]
    assert status.startswith('Internal Server Error: {"error": {"code": 500, "message": '
                             '"The backend failed: RuntimeError: CUDA out of memory"')


async def test_chunks_written_before_a_crash_count_even_without_a_checkpoint(
    store, tmp_path
) -> None:
    """A crash between writing a chunk and saving the checkpoint: the chunk is the truth."""
    backend = InstantTestDouble()
    service = job_service(store, backend, tmp_path)
    src = write_jsonl(tmp_path / "in.jsonl", keyed(10))
    job = await submit_job(service, [str(src)], str(tmp_path / "out"))
    job.output_dir = make_output_dir(str(tmp_path / "out"))
    store.save_progress(job)
    earlier = b"".join(
        orjson.dumps({"key": i, "status": "", "processed_time": "t", "request": {},
                      "response": RESPONSE}) + b"\n" for i in range(4)
    )
    ChunkedOutput(job.output_dir).write_chunk(0, 3, earlier)
    done = await service.scheduler.run_here(job.id)
    assert backend.requests == 6  # rows 0-3 were not generated again
    assert done.counts.succeeded == 10
    lines = read_predictions(tmp_path / "out")
    assert [line["key"] for line in lines] == list(range(10))
    assert lines[0]["processed_time"] == "t"


def test_transitions_outside_the_table_are_refused(store, tmp_path) -> None:
    job = store.create(Job("t", "m", ["x"], "y"))
    store.transition(job.id, S.JOB_STATE_RUNNING)
    store.transition(job.id, S.JOB_STATE_SUCCEEDED)
    with pytest.raises(FailedPrecondition) as err:
        store.transition(job.id, S.JOB_STATE_RUNNING)
    assert err.value.message == (
        f"Job {job.id} is JOB_STATE_SUCCEEDED; it cannot become JOB_STATE_RUNNING."
    )
    assert store.get(job.id).state == S.JOB_STATE_SUCCEEDED


def test_only_one_live_runner_may_claim_a_job(store) -> None:
    job = store.create(Job("t", "m", ["x"], "y"))
    assert store.claim(job.id, "otherhost:1") is not None
    assert store.claim(job.id, "thishost:2", stale_after=30) is None  # fresh heartbeat
    assert store.claim(job.id, "thishost:2", stale_after=0) is not None  # silent: taken over


def test_every_error_renders_as_vertex_does() -> None:
    err = BatchPredictError("x")
    assert err.to_json() == {"error": {"code": 500, "message": "x", "status": "INTERNAL"}}
    assert err.row_status() == (
        'Internal Server Error: {"error": {"code": 500, "message": "x", "status": "INTERNAL"}}'
    )


async def test_a_runner_dead_after_assembly_is_finished_without_rerunning_rows(
    store, tmp_path
) -> None:
    """Killed after predictions.jsonl was assembled, before the job's end was written: the
    next runner finishes from the assembled state; no row goes to the model again."""
    first = InstantTestDouble()
    service = job_service(store, first, tmp_path)
    src = write_jsonl(tmp_path / "in.jsonl", keyed(10))
    job = await submit_job(service, [str(src)], str(tmp_path / "out"))
    job.output_dir = make_output_dir(str(tmp_path / "out"))
    lines = b"".join(
        orjson.dumps({"key": i, "status": "", "processed_time": "t", "request": {},
                      "response": RESPONSE}) + b"\n" for i in range(10)
    )
    out = ChunkedOutput(job.output_dir)
    out.write_chunk(0, 9, lines)
    out.assemble()

    def assembled(j: Job) -> None:
        j.output_dir, j.total_rows = job.output_dir, 10
        j.checkpoint.committed_rows, j.checkpoint.phase = 10, "assembling"
        j.checkpoint.stop_reason = "done"
        j.counts.succeeded, j.counts.prompt_tokens = 10, 20

    store.transition(job.id, S.JOB_STATE_RUNNING, assembled)
    again = InstantTestDouble()
    done = await job_service(store, again, tmp_path).scheduler.run_here(job.id)
    assert again.requests == 0
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert (done.counts.succeeded, done.counts.failed, done.incomplete) == (10, 0, 0)
    assert [line["processed_time"] for line in read_predictions(tmp_path / "out")] == ["t"] * 10


async def test_temporary_files_of_a_killed_chunk_writer_are_cleaned_on_resume(
    store, tmp_path
) -> None:
    service = job_service(store, InstantTestDouble(), tmp_path)
    src = write_jsonl(tmp_path / "in.jsonl", keyed(10))
    job = await submit_job(service, [str(src)], str(tmp_path / "out"))
    job.output_dir = make_output_dir(str(tmp_path / "out"))
    store.save_progress(job)
    incremental = Path(job.output_dir) / "incremental_predictions"
    incremental.mkdir(parents=True)
    stale = incremental / "predictions_000000000000-000000000004.jsonl.tmp-0a1b2c3d"
    stale.write_bytes(b'{"half": ')
    early = incremental / "predictions.jsonl.tmp-0badf00d"  # a driver's, put together early
    early.write_bytes(b'{"key": 0}\n')
    done = await service.scheduler.run_here(job.id)
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert not stale.exists() and not early.exists() and not incremental.exists()
    assert [line["key"] for line in read_predictions(tmp_path / "out")] == list(range(10))
