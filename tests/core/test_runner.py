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
from batchpredict.runner import JobRunner, RunnerSettings
from batchpredict.schema import GenerateContentRequest
from batchpredict.store.sqlite import SQLiteJobStore
from tests.conftest import read_predictions, text_request, write_jsonl
from tests.doubles.instant import RESPONSE, InstantTestDouble

S = JobState
FAST = RunnerSettings(chunk_rows=7, chunk_seconds=0.05, poll_seconds=0.02)


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


def new_job(store: SQLiteJobStore, tmp_path: Path, rows: list[Any], **kw: Any) -> Job:
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    return store.create(Job("t", "test-double", [str(src)], str(tmp_path / "out"), **kw))


def keyed(n: int, text: str = "hi") -> list[dict]:
    return [{"key": i, "request": text_request(text)} for i in range(n)]


async def test_out_of_order_answers_are_written_in_order_once(store, tmp_path) -> None:
    rows = keyed(200)
    rows[13]["request"] = text_request("fail")
    job = new_job(store, tmp_path, rows)
    backend = ShuffledTestDouble(batch_size=3, max_concurrency=8)
    done = await JobRunner(store, job, backend, FAST).run()
    assert done.state == S.JOB_STATE_SUCCEEDED
    lines = read_predictions(tmp_path / "out")
    assert [line["key"] for line in lines] == list(range(200))
    assert lines[13]["status"] == (
        'Service Unavailable: {"error": {"code": 503, "message": "model overloaded", '
        '"status": "UNAVAILABLE"}}'
    )
    assert (done.counts.succeeded, done.counts.failed, done.incomplete) == (199, 1, 0)
    assert done.counts.prompt_tokens == 199 * 2  # failed rows are not billed
    stored = store.get(job.id)
    assert stored.to_api()["completionStats"] == {
        "successfulCount": "199", "failedCount": "1", "incompleteCount": "0"}


async def test_cancel_keeps_every_completed_row(store, tmp_path) -> None:
    job = new_job(store, tmp_path, keyed(400))
    backend = InstantTestDouble(batch_size=5, max_concurrency=2, delay_seconds=0.02)
    task = asyncio.ensure_future(JobRunner(store, job, backend, FAST).run())
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
    api = done.to_api()
    assert api["completionStats"]["incompleteCount"] == str(400 - len(keys))


async def test_time_limit_fails_the_job_with_rows_kept(store, tmp_path) -> None:
    job = new_job(store, tmp_path, keyed(300))
    backend = InstantTestDouble(batch_size=2, max_concurrency=1, delay_seconds=0.02)
    settings = RunnerSettings(chunk_rows=5, chunk_seconds=0.05, poll_seconds=0.02,
                              time_limit_seconds=0.3)
    done = await JobRunner(store, job, backend, settings).run()
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
        ("bq://project.dataset.table",
         "BigQuery sources (bq://project.dataset.table) are not supported"),
    ],
)
async def test_unusable_input_fails_the_job_clearly(store, tmp_path, uri, message) -> None:
    uri = uri.format(tmp=tmp_path)
    job = store.create(Job("t", "m", [uri], str(tmp_path / "out")))
    done = await JobRunner(store, job, InstantTestDouble(), FAST).run()
    assert done.state == S.JOB_STATE_FAILED
    assert done.error is not None
    assert done.error["message"].startswith(message.format(tmp=tmp_path))


async def test_input_without_rows_fails(store, tmp_path) -> None:
    job = new_job(store, tmp_path, ["", "  "])
    done = await JobRunner(store, job, InstantTestDouble(), FAST).run()
    assert done.state == S.JOB_STATE_FAILED
    assert done.error["message"].startswith("The input has no rows:")


async def test_every_row_failing_fails_the_job_with_the_output_kept(store, tmp_path) -> None:
    job = new_job(store, tmp_path, [{"request": {"contents": []}}] * 3)
    done = await JobRunner(store, job, InstantTestDouble(), FAST).run()
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
    job = new_job(store, tmp_path, rows)
    done = await JobRunner(store, job, Broken(batch_size=1), FAST).run()
    assert done.state == S.JOB_STATE_SUCCEEDED
    status = read_predictions(tmp_path / "out")[4]["status"]
    assert status.startswith('Internal Server Error: {"error": {"code": 500, "message": '
                             '"The backend failed: RuntimeError: CUDA out of memory"')


async def test_chunks_written_before_a_crash_count_even_without_a_checkpoint(
    store, tmp_path
) -> None:
    """A crash between writing a chunk and saving the checkpoint: the chunk is the truth."""
    job = new_job(store, tmp_path, keyed(10))
    job.output_dir = make_output_dir(str(tmp_path / "out"))
    store.save_progress(job)
    earlier = b"".join(
        orjson.dumps({"key": i, "status": "", "processed_time": "t", "request": {},
                      "response": RESPONSE}) + b"\n" for i in range(4)
    )
    ChunkedOutput(job.output_dir).write_chunk(0, 3, earlier)
    backend = InstantTestDouble()
    done = await JobRunner(store, store.get(job.id), backend, FAST).run()
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
