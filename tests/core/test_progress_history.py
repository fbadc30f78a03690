"""A job keeps a bounded history of its progress, so throughput can be drawn after it ran."""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from pathlib import Path

from batchpredict.jobs import PROGRESS_HISTORY_MAX, PROGRESS_HISTORY_STEP, Job, utcnow
from batchpredict.store.sqlite import SQLiteJobStore
from tests.conftest import job_service, submit_and_run, text_request, write_jsonl
from tests.doubles.instant import InstantTestDouble


def test_history_is_sparse_bounded_and_keeps_both_ends() -> None:
    job = Job("t", "m", ["in"], "out")
    start = job.start_time = utcnow()
    for i in range(1, 50_001):  # a flush every 0.2 s for 10 000 s, 3 rows and 7 tokens each
        job.counts.succeeded = 3 * i
        job.counts.prompt_tokens = 7 * i
        job.record_progress(start + timedelta(seconds=0.2 * i))
        assert len(job.progress_history) <= PROGRESS_HISTORY_MAX
    history = job.progress_history
    assert history[0] == [round(start.timestamp(), 3), 0, 0]  # the run's start, seeded
    assert history[-1] == [round((start + timedelta(seconds=10_000)).timestamp(), 3),
                           150_000, 350_000]  # the newest sample is always the latest
    assert len(history) >= PROGRESS_HISTORY_MAX // 2
    times = [t for t, _, _ in history]
    gaps = [b - a for a, b in pairwise(times[1:-1])]  # past the start; the newest floats
    assert min(gaps) >= PROGRESS_HISTORY_STEP
    assert max(gaps) < 1.1 * min(gaps)  # evenly thinned: no dense tail beside a sparse past
    assert all(done * 7 == tokens * 3 for _, done, tokens in history)


def test_a_sample_younger_than_the_step_replaces_the_newest() -> None:
    job = Job("t", "m", ["in"], "out")
    start = job.start_time = utcnow()
    for seconds, done in ((0.5, 1), (1.0, 2), (1.5, 3), (2.5, 4), (3.0, 5)):
        job.counts.succeeded = done
        job.record_progress(start + timedelta(seconds=seconds))
    assert [(round(t - start.timestamp(), 1), d) for t, d, _ in job.progress_history] == [
        (0.0, 0), (2.5, 4), (3.0, 5)]


async def test_the_runner_records_history_that_survives_in_the_store(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    rows = [{"key": i, "request": text_request("hi")} for i in range(60)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    backend = InstantTestDouble(batch_size=2, max_concurrency=1, delay_seconds=0.02)
    service = job_service(store, backend, tmp_path, chunk_rows=5)
    job = await submit_and_run(service, [str(src)], str(tmp_path / "out"))
    stored = store.get(job.id)
    history = stored.progress_history
    assert stored.start_time is not None and stored.end_time is not None
    assert history[0][1:] == [0, 0] and history[-1][1:] == [60, 60 * 4]
    assert stored.start_time.timestamp() - 0.01 <= history[0][0] <= history[-1][0]
    assert history[-1][0] <= stored.end_time.timestamp() + 0.01
    assert [d for _, d, _ in history] == sorted(d for _, d, _ in history)
