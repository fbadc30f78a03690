"""The job store and the driver at scale: the figures docs/SCALING.md builds on.

    commits      chunk commits per second on PostgreSQL (and SQLite): one driver, and 4 drivers
                 at once (one job each), every commit one transaction (`commit_chunk`)
    chunk rows   what a job's commit records cost: bytes per row in the table, and the time to
                 read 100,000 of them (a resumed driver reads them all)
    list         a page of 10 jobs from a store of 100,000, with and without a state filter,
                 against reading every job (`store.list()`, what the list did before)
    claim        claim_next with 100,000 pending jobs
    driver       memory of the driver per planned range and per committed interval; the
                 planner's scan (rows/s, MB/s) and the final assembly (MB/s), on local disk

PostgreSQL is a throwaway server (initdb + pg_ctl on loopback) unless --postgres-url is given.

    python bench/store_scale.py [--jobs 100000] [--commits 2000] [--postgres-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from batchpredict.jobs import Job, JobState, RowCounts, RunsIn  # noqa: E402
from batchpredict.store.base import ChunkRecord, Commit  # noqa: E402


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "store_scale", **fields}), flush=True)


@contextmanager
def throwaway_postgres() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    subprocess.run([*as_pg, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, "pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w", "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_pg, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def open_store(kind: str, where: str) -> Any:
    if kind == "sqlite":
        from batchpredict.store.sqlite import SQLiteJobStore

        return SQLiteJobStore(where)
    from batchpredict.store.postgres import PostgresJobStore

    return PostgresJobStore(where)


def running_job(store: Any, owner: str) -> Job:
    job = store.create(Job("bench", "m", ["in"], "out"))
    job.owner = owner
    store.claim(job.id, owner)
    return store.transition(job.id, JobState.JOB_STATE_RUNNING, lambda j: setattr(j, "owner",
                                                                                  owner))


def commits(kind: str, where: str, n: int, drivers: int) -> None:
    stores = [open_store(kind, where) for _ in range(drivers)]
    jobs = [running_job(s, f"bench:{i}") for i, s in enumerate(stores)]
    counts = RowCounts(10_000, 0, 140_000, 20_000)

    def drive(store: Any, job: Job) -> None:
        for i in range(n):
            chunk = ChunkRecord(i * 10_000, i * 10_000 + 9_999, counts)
            assert store.commit_chunk(job, chunk, lambda j: j.counts.add(counts)) \
                is Commit.COMMITTED

    threads = [threading.Thread(target=drive, args=(s, j)) for s, j in zip(stores, jobs,
                                                                          strict=True)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    emit(part="commits", store=kind, drivers=drivers, commits=n * drivers,
         commits_per_s=round(n * drivers / wall), ms_per_commit=round(wall / n * 1000, 2))
    t0 = time.perf_counter()
    got = stores[0].chunks(jobs[0].id)
    emit(part="chunk rows", store=kind, rows=len(got),
         read_all_ms=round((time.perf_counter() - t0) * 1000, 1))
    for s, j in zip(stores, jobs, strict=True):
        s.forget_chunks(j.id)


def chunk_row_bytes(where: str, rows: int) -> None:
    store = open_store("postgres", where)
    job = running_job(store, "bench:size")
    counts = RowCounts(10_000, 0, 1, 1)
    with store._transaction() as q:
        for i in range(rows):
            q("INSERT INTO job_chunks VALUES (?,?,?,?,?,?,?)",
              (job.id, i * 10_000, i * 10_000 + 9_999, *vars(counts).values()))
    store._query("ANALYZE job_chunks")
    size = store._query("SELECT pg_total_relation_size('job_chunks')")[0][0][0]
    t0 = time.perf_counter()
    got = store.chunks(job.id)
    emit(part="chunk rows", store="postgres", rows=len(got), bytes_per_row=round(size / rows),
         read_all_ms=round((time.perf_counter() - t0) * 1000, 1))
    store.forget_chunks(job.id)


def many_jobs(kind: str, where: str, n: int) -> None:
    store = open_store(kind, where)
    template = Job("bulk", "m", ["in"], "out")
    t0 = time.perf_counter()
    with store._transaction() as q:
        for i in range(n):
            template.project = f"p{i % 10}"
            template.state = (JobState.JOB_STATE_PENDING if i % 2 == 0 else
                              JobState.JOB_STATE_FAILED if i % 100 == 1 else
                              JobState.JOB_STATE_SUCCEEDED)
            template.runs_in = RunsIn.SCHEDULER
            q("INSERT INTO jobs (project, location, state, runs_in, owner, fingerprint, data) "
              "VALUES (?,?,?,?,?,?,?)", store._values(template))
    if kind == "postgres":
        store._query("ANALYZE jobs")
    emit(part="list", store=kind, jobs=n, insert_s=round(time.perf_counter() - t0, 1))

    def timed(label: str, call: Any, repeat: int = 20) -> None:
        call()
        t0 = time.perf_counter()
        for _ in range(repeat):
            got = call()
        ms = (time.perf_counter() - t0) / repeat * 1000
        emit(part="list", store=kind, jobs=n, query=label, ms=round(ms, 2), rows=len(got))

    timed("page of 10, one project", lambda: store.page(11, projects=["p3"]))
    timed("page of 10, state=FAILED (1% of jobs)", lambda: store.page(
        11, projects=["p1"], states=[JobState.JOB_STATE_FAILED]))
    timed("every job (the old list)", lambda: store.list(), repeat=2)
    timed("metrics totals", lambda: list(store.totals().jobs), repeat=5)
    timed("recovery scan (list_held)", lambda: store.list_held())
    t0 = time.perf_counter()
    for i in range(20):
        job = store.claim_next(f"bench:{i}", limit=10**9)
        assert job is not None
    emit(part="claim", store=kind, pending=n // 2,
         ms_per_claim=round((time.perf_counter() - t0) / 20 * 1000, 2))


def driver_memory() -> None:
    from batchpredict.executors.ranges import CommittedRows, Range

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    held = [Range(f"gs://bucket/input/part-{i // 1000:05d}.jsonl", i * 5_000_000,
                  (i + 1) * 5_000_000, i * 10_000, 10_000, 1 + (i % 1000) * 10_000, i * 10_000)
            for i in range(100_000)]
    per_range = (tracemalloc.get_traced_memory()[0] - before) / len(held)
    before = tracemalloc.get_traced_memory()[0]
    rows = CommittedRows((i * 20_000, i * 20_000 + 9_999) for i in range(100_000))
    per_interval = (tracemalloc.get_traced_memory()[0] - before) / len(rows.intervals)
    tracemalloc.stop()
    emit(part="driver", bytes_per_range=round(per_range),
         bytes_per_committed_interval=round(per_interval))


def planner_and_assembly(rows: int) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    import runner_overhead

    from batchpredict.executors.ranges import plan_ranges
    from batchpredict.output import ChunkedOutput

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        runner_overhead.make_input(src, rows)
        size = src.stat().st_size
        t0 = time.perf_counter()
        ranges = list(plan_ranges([str(src)], 10_000))
        wall = time.perf_counter() - t0
        emit(part="driver", planner_rows_per_s=round(rows / wall),
             planner_mb_per_s=round(size / wall / 1e6), ranges=len(ranges))
        out = ChunkedOutput(str(Path(tmp) / "out"))
        data = src.read_bytes()
        for i, rng in enumerate(ranges):
            out.write_chunk(rng.first_row, rng.last_row, data[rng.start:rng.end])
            assert i < 10_000
        t0 = time.perf_counter()
        out.assemble()
        wall = time.perf_counter() - t0
        emit(part="driver", assembly_mb_per_s=round(size / wall / 1e6), chunks=len(ranges))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--commits", type=int, default=2000)
    parser.add_argument("--postgres-url")
    args = parser.parse_args()
    driver_memory()
    planner_and_assembly(500_000)
    with tempfile.TemporaryDirectory() as tmp:
        for drivers in (1, 4):
            commits("sqlite", f"{tmp}/commits-{drivers}.sqlite3", args.commits, drivers)
        many_jobs("sqlite", f"{tmp}/jobs.sqlite3", args.jobs)
    with (throwaway_postgres() if not args.postgres_url
          else _given(args.postgres_url)) as url:
        open_store("postgres", url)._query("DROP TABLE IF EXISTS jobs, job_chunks")
        for drivers in (1, 4):
            commits("postgres", url, args.commits, drivers)
        chunk_row_bytes(url, 100_000)
        open_store("postgres", url)._query("DROP TABLE IF EXISTS jobs, job_chunks")
        many_jobs("postgres", url, args.jobs)


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    main()
