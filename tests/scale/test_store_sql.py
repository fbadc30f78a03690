"""The store answers lists, claims, chunk commits and metrics in SQL, the same on SQLite and on a
real PostgreSQL: a page of a store with 20,000 jobs is one indexed query that reads one page of
rows; the running limit holds across connections; a chunk is never counted twice."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchpredict.config import Settings
from batchpredict.jobs import Job, JobState, RowCounts, RunsIn
from batchpredict.scheduler import Scheduler
from batchpredict.server.vertex.filters import compile_filter
from batchpredict.service import Caller, JobService, Scope
from batchpredict.store.base import ChunkRecord, Commit, JobStore

S = JobState
MANY = 20_000


@pytest.fixture(params=["sqlite", "postgres"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory: each call opens a new connection to the same (empty) store."""
    if request.param == "sqlite":
        from batchpredict.store.sqlite import SQLiteJobStore

        return lambda: SQLiteJobStore(tmp_path / "jobs.sqlite3")
    from batchpredict.store.postgres import PostgresJobStore

    url = request.getfixturevalue("postgres_url")
    PostgresJobStore(url)._query("DROP TABLE IF EXISTS jobs, job_chunks")
    return lambda: PostgresJobStore(url)


def insert_many(store: Any, n: int) -> None:
    """`n` jobs in two projects, every tenth SUCCEEDED, written in one transaction."""
    template = Job("bulk", "m", ["in"], "out")
    with store._transaction() as q:
        for i in range(n):
            template.project = "p" if i % 2 else "q"
            template.state = S.JOB_STATE_SUCCEEDED if i % 10 == 1 else S.JOB_STATE_PENDING
            template.counts = RowCounts(i % 7, 1, 2, 3)
            template.runs_in = RunsIn.COMMAND
            q("INSERT INTO jobs (project, location, state, runs_in, owner, fingerprint, data) "
              "VALUES (?,?,?,?,?,?,?)", store._values(template))


class Recorder:
    """Every statement the store runs, with how many rows it read back."""

    def __init__(self, store: Any) -> None:
        self.calls: list[tuple[str, int]] = []
        inner = store._query

        def query(sql: str, args: tuple[Any, ...] = ()) -> Any:
            rows, count = inner(sql, args)
            self.calls.append((sql, len(rows)))
            return rows, count

        store._query = query


async def test_a_page_of_many_jobs_is_one_query_reading_one_page(open_store,
                                                                  tmp_path: Path) -> None:
    store = open_store()
    insert_many(store, MANY)
    settings = Settings(data_dir=str(tmp_path / "data"))
    service = JobService(store, None, Scheduler(store, None, settings), settings)
    recorder = Recorder(store)
    scope = Scope(Caller(None, "p"), "p", "us-central1")
    page, token = await service.list(scope, page_size=10)
    assert len(page) == 10 and token
    assert [j.project for j in page] == ["p"] * 10
    assert [j.id for j in page] == sorted((j.id for j in page), reverse=True)
    [(sql, read)] = recorder.calls
    assert "LIMIT" in sql and "project IN" in sql and read == 11

    recorder.calls.clear()
    nxt, _ = await service.list(scope, page_size=10, page_token=token)
    assert nxt[0].id < page[-1].id
    [(sql, read)] = recorder.calls
    assert "id<" in sql and read == 11

    recorder.calls.clear()
    text = 'state="JOB_STATE_SUCCEEDED" AND display_name="bulk"'
    done, _ = await service.list(scope, compile_filter(text), page_size=10, filter_text=text)
    assert len(done) == 10 and {j.state for j in done} == {S.JOB_STATE_SUCCEEDED}
    [(sql, read)] = recorder.calls
    assert "state IN" in sql and read == 11  # the state went to SQL, not to a scan


def test_metrics_and_projects_are_aggregated_by_the_database(open_store) -> None:
    store = open_store()
    insert_many(store, 1000)
    recorder = Recorder(store)
    totals = store.totals()
    assert totals.jobs == {S.JOB_STATE_SUCCEEDED: 100, S.JOB_STATE_PENDING: 900}
    assert totals.counts.succeeded == sum(i % 7 for i in range(1000))
    assert (totals.counts.failed, totals.counts.prompt_tokens) == (1000, 2000)
    assert store.projects() == ["p", "q"]
    assert all(read <= 2 for _, read in recorder.calls)


def pending_jobs(store: JobStore, n: int) -> list[Job]:
    return [store.create(Job(f"j{i}", "m", ["in"], "out")) for i in range(n)]


def test_claims_hold_the_running_limit_across_connections(open_store) -> None:
    stores = [open_store() for _ in range(4)]
    pending_jobs(stores[0], 6)
    claimed: list[Job | None] = []
    barrier = threading.Barrier(len(stores))

    def claim(store: JobStore, owner: str) -> None:
        barrier.wait()
        claimed.append(store.claim_next(owner, limit=2))

    threads = [threading.Thread(target=claim, args=(s, f"host:{i}")) for i, s in
               enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [j for j in claimed if j is not None]
    assert len(won) == 2 and len({j.id for j in won}) == 2
    assert stores[0].claim_next("host:9", limit=2) is None
    stores[0].transition(won[0].id, S.JOB_STATE_RUNNING)
    stores[0].transition(won[0].id, S.JOB_STATE_SUCCEEDED)
    again = stores[0].claim_next("host:9", limit=2)
    assert again is not None and again.owner == "host:9"
    assert {j.id for j in stores[1].list_held()} == {won[1].id, again.id}


def test_a_claim_skips_projects_at_their_cap_here(open_store) -> None:
    """BATCHPREDICT_MAX_RUNNING_JOBS_PER_PROJECT: the scheduler names the projects it already
    runs enough jobs of; the oldest pending job of another project is claimed instead."""
    store = open_store()
    a1, _, b1 = (store.create(Job(n, "m", ["in"], "out", project=p))
                  for n, p in (("a1", "a"), ("a2", "a"), ("b1", "b")))
    first = store.claim_next("host:1", limit=5, skip_projects=["a"])
    assert first is not None and first.id == b1.id
    assert store.claim_next("host:1", limit=5, skip_projects=["a", "b"]) is None
    second = store.claim_next("host:1", limit=5)
    assert second is not None and second.id == a1.id


def test_a_chunk_is_committed_once_and_only_by_the_jobs_owner(open_store) -> None:
    store = open_store()
    [job] = pending_jobs(store, 1)
    job = store.claim(job.id, "host:1")
    assert job is not None

    def add(counts: RowCounts):
        return lambda j: j.counts.add(counts)

    one = ChunkRecord(0, 9, RowCounts(9, 1, 90, 30))
    assert store.commit_chunk(job, one, add(one.counts)) is Commit.COMMITTED
    assert store.commit_chunk(job, one, add(one.counts)) is Commit.DUPLICATE
    overlapping = ChunkRecord(5, 14, RowCounts(10, 0, 0, 0))
    assert store.commit_chunk(job, overlapping, add(overlapping.counts)) is Commit.OVERLAP
    stored = store.get(job.id)
    assert (stored.counts.succeeded, stored.counts.failed) == (9, 1)
    assert store.chunks(job.id) == [one]
    intruder = store.get(job.id)
    intruder.owner = "host:2"
    assert store.commit_chunk(intruder, ChunkRecord(10, 19, RowCounts(10)), None) is Commit.LOST
    assert store.chunks(job.id) == [one]
    store.forget_chunks(job.id)
    assert store.chunks(job.id) == []
    assert orjson.loads(orjson.dumps(stored.to_record()))["counts"]["succeeded"] == 9
