"""The job store keeps the same promises on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from batchpredict.errors import FailedPrecondition, NotFound
from batchpredict.jobs import Job, JobState
from batchpredict.store.base import JobStore
from tests.conftest import job_service, read_predictions, submit_and_run, text_request, write_jsonl
from tests.doubles.instant import InstantTestDouble

S = JobState


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory: each call opens a new connection to the same store."""
    if request.param == "sqlite":
        from batchpredict.store.sqlite import SQLiteJobStore

        return lambda: SQLiteJobStore(tmp_path / "jobs.sqlite3")
    from batchpredict.store.postgres import PostgresJobStore

    url = request.getfixturevalue("postgres_url")
    PostgresJobStore(url)._query("DROP TABLE IF EXISTS jobs, job_chunks")
    return lambda: PostgresJobStore(url)


def test_jobs_round_trip_with_numeric_ids(open_store) -> None:
    store: JobStore = open_store()
    a = store.create(Job("a", "m", ["in"], "out", project="p1", labels={"team": "ml"}))
    b = store.create(Job("b", "m", ["in"], "out", project="p2"))
    assert b.id > a.id > 0
    got = store.get(a.id)
    assert (got.display_name, got.labels, got.state) == ("a", {"team": "ml"}, S.JOB_STATE_PENDING)
    assert got.to_record() == a.to_record()
    assert [j.id for j in store.list()] == [b.id, a.id]
    assert [j.id for j in store.list("p1")] == [a.id]
    with pytest.raises(NotFound, match=f"BatchPredictionJob {b.id + 1} was not found."):
        store.get(b.id + 1)


def test_only_finished_jobs_can_be_deleted(open_store) -> None:
    store: JobStore = open_store()
    job = store.create(Job("a", "m", ["in"], "out"))
    with pytest.raises(FailedPrecondition, match="only a finished job can be deleted"):
        store.delete(job.id)
    store.transition(job.id, S.JOB_STATE_CANCELLED)
    store.delete(job.id)
    with pytest.raises(NotFound):
        store.get(job.id)


def test_two_connections_racing_one_transition_one_wins(open_store) -> None:
    first: JobStore = open_store()
    job = first.create(Job("a", "m", ["in"], "out"))
    first.transition(job.id, S.JOB_STATE_RUNNING)
    results: list[str] = []

    def cancel(store: JobStore) -> None:
        try:
            store.transition(job.id, S.JOB_STATE_CANCELLING)
            results.append("won")
        except FailedPrecondition:
            results.append("refused")

    threads = [threading.Thread(target=cancel, args=(open_store(),)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["refused", "refused", "refused", "won"]


def test_unfinished_job_is_found_by_fingerprint(open_store) -> None:
    store: JobStore = open_store()
    done = store.create(Job("a", "m", ["in"], "out", fingerprint="f"))
    store.transition(done.id, S.JOB_STATE_CANCELLED)
    assert store.find_by_fingerprint("f") is None
    live = store.create(Job("b", "m", ["in"], "out", fingerprint="f"))
    found = store.find_by_fingerprint("f")
    assert found is not None and found.id == live.id


def test_a_whole_job_runs_on_the_store(open_store, tmp_path: Path) -> None:
    store: JobStore = open_store()
    src = write_jsonl(tmp_path / "in.jsonl",
                      [{"key": i, "request": text_request("hi")} for i in range(50)])
    service = job_service(store, InstantTestDouble(batch_size=4), tmp_path, chunk_rows=8)
    done = asyncio.run(submit_and_run(service, [str(src)], str(tmp_path / "out")))
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert open_store().get(done.id).counts.succeeded == 50
    assert [line["key"] for line in read_predictions(tmp_path / "out")] == list(range(50))


def test_unfinished_jobs_are_listed_oldest_first(open_store) -> None:
    store: JobStore = open_store()
    a = store.create(Job("a", "m", ["in"], "out"))
    b = store.create(Job("b", "m", ["in"], "out"))
    c = store.create(Job("c", "m", ["in"], "out"))
    store.transition(b.id, S.JOB_STATE_CANCELLED)
    store.transition(c.id, S.JOB_STATE_RUNNING)
    assert [j.id for j in store.list_unfinished()] == [a.id, c.id]
