"""Running one job: rows stream from storage through the backend into chunked output.

    reader thread ──batches of Rows──> dispatcher ──backend.generate (≤ max_concurrency)──>
    collector (orders lines by row number) ──> flusher (chunk objects + checkpoint + heartbeat)

Lifecycle of `JobRunner.run`: claim the job (one runner per job, across processes), resolve its
inputs and output directory, learn from the committed chunks where to resume, stream the rest,
then finish: assemble predictions.jsonl and set the final state. It stops early on cancel
(CANCELLED), on the time limit (FAILED) or on an interrupt (Ctrl-C, server shutdown: the job stays
RUNNING and the next runner resumes it). Every stop that ends the job first writes every completed
row; no stop writes a row twice.

Memory: at most `window` rows are between the reader and the flusher at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from batchpredict import bounded_io, output, storage
from batchpredict.backends import dedupe
from batchpredict.backends.base import Backend, generate_per_row
from batchpredict.errors import (
    BatchPredictError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
)
from batchpredict.jobs import Job, JobState, RowCounts, owner_id, utcnow
from batchpredict.rows import DEFAULT_MAX_LINE_BYTES, Row, count_rows, estimate_rows, iter_rows
from batchpredict.store.base import JobStore

__all__ = ["JobRunner", "Progress", "RunnerSettings"]

log = logging.getLogger(__name__)
S = JobState
#: After a stop, how long the runner may spend reading its input again to count its rows (for
#: incompleteCount); a stuck or very slow input then gives the estimate instead.
RECOUNT_SECONDS = 10.0


@dataclass
class RunnerSettings:
    chunk_rows: int = 10_000
    chunk_seconds: float = 10.0
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    time_limit_seconds: float = 24 * 3600
    #: How often the runner checks for cancel and proves it is alive.
    poll_seconds: float = 1.0
    #: A runner silent for this long has died; another may take its job.
    stale_after_seconds: float = 30.0
    read_batch_rows: int = 256
    window_rows: int = 20_000


@dataclass
class Progress:
    """What a progress bar shows: rows answered so far (committed or not)."""

    done: int
    total: int | None
    succeeded: int
    failed: int
    tokens: int


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        job: Job,
        backend: Backend,
        settings: RunnerSettings | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        self.store = store
        self.job = job
        self.backend = dedupe.for_job(backend)  # identical temperature-0 requests sent once
        self.settings = settings or RunnerSettings()
        self.on_progress = on_progress
        self.interrupt = interrupt or asyncio.Event()
        self.owner = owner_id()
        #: security: set when the job stops; the reader threads stop at their next read.
        self.stop_reading = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> Job:
        """Run the job to its end (or to an interrupt) and return it as stored."""
        job = await asyncio.to_thread(
            self.store.claim, self.job.id, self.owner, self.settings.stale_after_seconds
        )
        if job is None:
            raise FailedPrecondition(
                f"Job {self.job.id} is being run by another process ({self.job.owner})."
            )
        self.job = job
        if job.state == S.JOB_STATE_CANCELLING:
            return await self._finish("cancel")
        try:
            await bounded_io.run_io(self._prepare, pool=bounded_io.JOB_POOL)
        except BatchPredictError as exc:
            return await self._fail(exc)
        return await self._stream()

    def _prepare(self) -> None:
        """Resolve inputs and output, then find where to resume (blocking: runs in a thread)."""
        job = self.job
        if not job.checkpoint.inputs:
            job.checkpoint.inputs = storage.expand_inputs(job.input_uris)
        if not job.output_dir:
            # Before any row runs: an unwritable prefix fails the job now, naming the URI.
            storage.check_output_writable(job.output_prefix)
            job.output_dir = output.make_output_dir(job.output_prefix)
        self.out = output.ChunkedOutput(job.output_dir)
        committed, chunks = self.out.committed()
        if committed != job.checkpoint.committed_rows:
            # The chunks are the truth: a crash came between a chunk and its checkpoint.
            job.counts = output.ChunkedOutput.recount(chunks)
            job.checkpoint.committed_rows = committed

        def start(j: Job) -> None:
            j.checkpoint, j.counts, j.output_dir = job.checkpoint, job.counts, job.output_dir
            j.owner, j.heartbeat, j.error = self.owner, utcnow(), None

        self.job = self.store.transition(job.id, S.JOB_STATE_RUNNING, start)

    async def _stream(self) -> Job:
        job = self.job
        self.next_index = job.checkpoint.committed_rows  # first row not yet in `buffer`
        self.pending: dict[int, tuple[bytes, bool, int, int]] = {}
        self.buffer: list[bytes] = []
        self.buffer_first = self.next_index
        self.buffer_counts = RowCounts()
        self.live = RowCounts()  # rows answered in this run, committed or not
        self.live.add(job.counts)
        self.progressed = asyncio.Event()
        self.last_flush = self.last_check = time.monotonic()
        self.read_all = False
        counter = asyncio.ensure_future(self._count_rows())
        dispatcher = asyncio.ensure_future(self._dispatch())
        reason = "done"
        try:
            reason = await self._watch(dispatcher)
        except BatchPredictError as exc:
            dispatcher.cancel()
            await self._drain(dispatcher)
            return await self._fail(exc, flush=True)
        finally:
            self.stop_reading.set()  # a reader stuck on slow storage must not hold the job
            if not dispatcher.done():
                dispatcher.cancel()
                await self._drain(dispatcher)
        counter.cancel()
        if reason == "interrupt":
            await self._flush(contiguous_only=True)
            await asyncio.to_thread(self.store.release, self.job)
            return self.job
        if reason == "lost":
            return self.job
        if not self.read_all:  # ended early: the exact count, for incompleteCount
            self.job.total_rows = await self._recount(self.job.total_rows)
        await self._flush(contiguous_only=reason == "done")
        return await self._finish(reason)

    async def _count_rows(self) -> None:
        """A quick total for the progress bar; exact once the reader reaches the end."""
        def estimate() -> int:
            bounded_io.guard_reads(stop=self.stop_reading)
            return estimate_rows(self.job.checkpoint.inputs)

        try:
            total = await bounded_io.run_io(estimate, pool=bounded_io.JOB_POOL)
        except bounded_io.ReadStopped:
            return
        if not self.read_all:
            self.job.total_rows = total
            self._report()

    async def _recount(self, fallback: int | None) -> int | None:
        """The exact row count if the input reads again within RECOUNT_SECONDS, else
        `fallback` (the estimate): a stuck input must not hang a cancel."""
        def count() -> int:
            bounded_io.guard_reads(RECOUNT_SECONDS)
            return count_rows(self.job.checkpoint.inputs, self.settings.max_line_bytes)

        try:
            return await bounded_io.run_io(count, pool=bounded_io.JOB_POOL,
                                           timeout=RECOUNT_SECONDS + 1)
        except (bounded_io.ReadStopped, TimeoutError):
            log.warning("job %s: its input could not be counted again in %gs; incompleteCount "
                        "uses the estimate", self.job.id, RECOUNT_SECONDS)
            return fallback

    @staticmethod
    async def _drain(task: asyncio.Future[Any]) -> None:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def _watch(self, dispatcher: asyncio.Future[Any]) -> str:
        """Flush chunks as they fill, heartbeat, and notice cancel, time limit and interrupt."""
        st = self.settings
        started = self.job.start_time or utcnow()
        while True:
            wait: asyncio.Future[Any] = asyncio.ensure_future(self.progressed.wait())
            stop: asyncio.Future[Any] = asyncio.ensure_future(self.interrupt.wait())
            await asyncio.wait(
                [wait, stop, dispatcher], timeout=st.poll_seconds, return_when="FIRST_COMPLETED"
            )
            wait.cancel()
            stop.cancel()
            self.progressed.clear()
            if dispatcher.done():
                dispatcher.result()  # re-raise a dispatcher error
                return "done"
            if self.interrupt.is_set():
                return "interrupt"
            if (utcnow() - started).total_seconds() >= st.time_limit_seconds:
                return "timeout"
            due = time.monotonic() - self.last_flush >= st.chunk_seconds
            if len(self.buffer) >= st.chunk_rows or (due and self.buffer):
                if not await self._flush(contiguous_only=True):
                    return await self._why_lost()
            elif due or time.monotonic() - self.last_check >= st.poll_seconds:
                # Heartbeat; a failed save is how a runner learns of a cancel (CANCELLING), so
                # it is due every poll_seconds, not only when a chunk is.
                if due:
                    self.last_flush = time.monotonic()
                self.last_check = time.monotonic()
                if not await asyncio.to_thread(self.store.save_progress, self.job):
                    return await self._why_lost()

    async def _why_lost(self) -> str:
        stored = await asyncio.to_thread(self.store.get, self.job.id)
        if stored.state == S.JOB_STATE_CANCELLING and stored.owner == self.owner:
            self.job.state = stored.state
            return "cancel"
        log.warning("job %s was taken over by %s; this runner stops", stored.id, stored.owner)
        return "lost"

    # -- rows in --------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        st, backend = self.settings, self.backend
        rows = iter_rows(
            self.job.checkpoint.inputs, self.job.checkpoint.committed_rows, st.max_line_bytes
        )
        batch_size = max(1, backend.batch_size)
        read_batch = max(st.read_batch_rows, batch_size)
        slots = asyncio.Semaphore(max(1, backend.max_concurrency))
        tasks: set[asyncio.Task[None]] = set()
        next_read = self.next_index

        def read() -> list[Row]:
            bounded_io.guard_reads(stop=self.stop_reading)  # files opened here stop on cancel
            return [row for _, row in zip(range(read_batch), rows, strict=False)]

        try:
            while True:
                while next_read - self.next_index > st.window_rows:
                    self.progressed.clear()
                    await self.progressed.wait()
                batch = await bounded_io.run_io(read, pool=bounded_io.JOB_POOL)
                if not batch:
                    break
                next_read = batch[-1].index + 1
                good = []
                when = output.processed_time()
                for row in batch:
                    if row.error is not None:
                        self._deliver(row, row.error, when)
                    else:
                        good.append(row)
                for i in range(0, len(good), batch_size):
                    await slots.acquire()
                    task = asyncio.ensure_future(self._generate(good[i : i + batch_size], slots))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                self._after_deliver()
            if tasks:
                await asyncio.gather(*tasks)
            self.read_all = True
            self.job.total_rows = next_read
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(ValueError):  # still running in a reader thread
                rows.close()

    async def _generate(self, batch: list[Row], slots: asyncio.Semaphore) -> None:
        try:
            results = await generate_per_row(
                self.backend, [row.parsed for row in batch]  # type: ignore[misc]
            )
            when = output.processed_time()  # one clock read per batch: they ended together
            for row, result in zip(batch, results, strict=True):
                self._deliver(row, result, when)
            self._after_deliver()
        finally:
            slots.release()

    # -- lines out ------------------------------------------------------------------------
    def _deliver(self, row: Row, result: dict[str, Any] | BatchPredictError, when: str) -> None:
        live = self.live
        if isinstance(result, BatchPredictError):
            line = output.error_line(row.extras, row.request, result, when)
            ok, prompt, cand = False, 0, 0
            live.failed += 1
        else:
            usage = result.get("usageMetadata") or {}
            prompt = int(usage.get("promptTokenCount") or 0)
            cand = int(usage.get("candidatesTokenCount") or 0)
            line = output.success_line(row.extras, row.request, result, when)
            ok = True
            live.succeeded += 1
            live.prompt_tokens += prompt
            live.candidates_tokens += cand
        if row.index == self.next_index:  # in order: straight into the chunk buffer
            self._buffer_line(line, ok, prompt, cand)
        else:
            self.pending[row.index] = (line, ok, prompt, cand)

    def _buffer_line(self, line: bytes, ok: bool, prompt: int, cand: int) -> None:
        self.buffer.append(line)
        counts = self.buffer_counts
        if ok:
            counts.succeeded += 1
            counts.prompt_tokens += prompt
            counts.candidates_tokens += cand
        else:
            counts.failed += 1
        self.next_index += 1

    def _after_deliver(self) -> None:
        """Move the rows that now follow without a gap into the chunk buffer."""
        pending = self.pending
        while self.next_index in pending:
            self._buffer_line(*pending.pop(self.next_index))
        self.progressed.set()
        self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            # A job that fails before streaming (missing input, unwritable output) has no `live`.
            live = getattr(self, "live", None) or self.job.counts
            self.on_progress(
                Progress(live.done, self.job.total_rows, live.succeeded, live.failed,
                         live.total_tokens)
            )

    async def _flush(self, contiguous_only: bool) -> bool:
        """Write buffered rows as a chunk and checkpoint them. With `contiguous_only` False,
        also the rows answered past a gap (a job ending early keeps every completed row).
        False when the job is no longer ours to save."""
        self.last_flush = time.monotonic()
        job = self.job
        runs: list[tuple[int, list[bytes], RowCounts]] = []
        if self.buffer:
            runs.append((self.buffer_first, self.buffer, self.buffer_counts))
        if not contiguous_only:
            for index in sorted(self.pending):
                line, ok, prompt, cand = self.pending.pop(index)
                if not runs or runs[-1][0] + len(runs[-1][1]) != index:
                    runs.append((index, [], RowCounts()))
                runs[-1][1].append(line)
                c = runs[-1][2]
                c.succeeded += ok
                c.failed += not ok
                c.prompt_tokens += prompt
                c.candidates_tokens += cand
        self.buffer, self.buffer_counts = [], RowCounts()
        self.buffer_first = self.next_index
        for first, lines, counts in runs:
            await self._write_chunk(first, first + len(lines) - 1, b"".join(lines))
            job.counts.add(counts)
            if first == job.checkpoint.committed_rows:
                job.checkpoint.committed_rows = first + len(lines)
        return await asyncio.to_thread(self.store.save_progress, job)

    async def _write_chunk(self, first: int, last: int, data: bytes) -> None:
        delay = 0.5
        for attempt in range(5):
            try:
                await asyncio.to_thread(self.out.write_chunk, first, last, data)
                return
            except BatchPredictError as exc:
                if attempt == 4:
                    raise InvalidArgument(
                        f"Could not write output to {self.job.output_dir}: {exc.message}"
                    ) from exc
                log.warning("chunk write failed (%s); retrying in %.1fs", exc.message, delay)
                await asyncio.sleep(delay)
                delay *= 2

    # -- endings --------------------------------------------------------------------------
    async def _finish(self, reason: str) -> Job:
        """Assemble predictions.jsonl and set the final state."""
        job = self.job
        if not hasattr(self, "out") and job.output_dir:
            self.out = output.ChunkedOutput(job.output_dir)
        job.checkpoint.phase = "assembling"
        await asyncio.to_thread(self.store.save_progress, job)
        if hasattr(self, "out"):
            await asyncio.to_thread(self.out.assemble)
        if job.total_rows is None and job.checkpoint.inputs:
            job.total_rows = await self._recount(None)
        total = job.total_rows or 0
        incomplete = max(0, total - job.counts.done)
        error: BatchPredictError | None = None
        state = S.JOB_STATE_SUCCEEDED
        if reason == "cancel":
            state, error = S.JOB_STATE_CANCELLED, Cancelled("The job was cancelled.")
            if job.state == S.JOB_STATE_RUNNING:
                await asyncio.to_thread(self.store.transition, job.id, S.JOB_STATE_CANCELLING)
        elif reason == "timeout":
            hours = self.settings.time_limit_seconds / 3600
            state, error = S.JOB_STATE_FAILED, DeadlineExceeded(
                f"The job did not finish within its time limit of {hours:g} hours after it "
                f"started running; {job.counts.done} completed rows were exported and "
                f"{incomplete} rows were not processed."
            )
        elif total == 0:
            state, error = S.JOB_STATE_FAILED, InvalidArgument(
                f"The input has no rows: {', '.join(job.checkpoint.inputs)}. Each line must be a "
                'JSON object such as {"request": {"contents": [...]}}.'
            )
        elif job.counts.succeeded == 0:
            state, error = S.JOB_STATE_FAILED, InvalidArgument(
                f"All {job.counts.failed} rows failed; see the status field of each line in "
                f"{job.output_dir}/predictions.jsonl."
            )
        return await self._end(state, error, incomplete)

    async def _fail(self, exc: BatchPredictError, flush: bool = False) -> Job:
        if flush:
            with contextlib.suppress(BatchPredictError):
                await self._flush(contiguous_only=False)
            if hasattr(self, "out"):
                with contextlib.suppress(BatchPredictError):
                    await asyncio.to_thread(self.out.assemble)
        incomplete = max(0, (self.job.total_rows or 0) - self.job.counts.done)
        return await self._end(S.JOB_STATE_FAILED, exc, incomplete)

    async def _end(self, state: JobState, error: BatchPredictError | None, incomplete: int) -> Job:
        job = self.job

        def finish(j: Job) -> None:
            j.counts, j.checkpoint, j.total_rows = job.counts, job.checkpoint, job.total_rows
            j.output_dir, j.incomplete = job.output_dir, incomplete
            j.error = error.to_job_error() if error else None

        self.job = await asyncio.to_thread(self.store.transition, job.id, state, finish)
        self._report()
        return self.job
