"""Running one job: rows stream from storage through the backend into chunked output.

    reader thread ──batches of Rows──> dispatcher ──backend.generate (≤ max_concurrency)──>
    OrderedChunkBuffer (row order) ──> watcher: chunk objects + checkpoint + heartbeat

Only the scheduler builds a runner, for a job it has claimed (the store's `claim`), after the job
service checked the job's model, inputs and output prefix at submit. The lifecycle of
`JobRunner.run`:

    start    the output folder; where to resume (the committed chunks are the truth); RUNNING
    stream   rows in, lines out, chunks committed as they fill, until a `StopReason`
    conclude DONE: assemble predictions.jsonl, SUCCEEDED (FAILED when no row succeeded)
             CANCEL: keep every completed row, CANCELLED     TIME_LIMIT: the same, FAILED
             INTERRUPT (Ctrl-C, server shutdown): commit the gap-free rows, release the job
             (still RUNNING: the next runner resumes it)     LOST: another runner took it over

Every stop that ends the job first writes every completed row; no stop writes a row twice.
Memory: at most `window_rows` rows are between the reader and the chunk writer at any time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from batchpredict import bounded_io, outages, output
from batchpredict.backends import dedupe
from batchpredict.backends.base import Backend, generate_per_row
from batchpredict.config import RunnerSettings
from batchpredict.errors import (
    BatchPredictError,
    Cancelled,
    DeadlineExceeded,
    InvalidArgument,
    Outage,
    plural,
)
from batchpredict.formats import codec_for
from batchpredict.input import Row, estimate_rows, iter_rows, recount_rows
from batchpredict.jobs import MAX_PARTIAL_FAILURES, Job, JobState, RowCounts, utcnow
from batchpredict.store.base import JobStore

__all__ = ["JobRunner", "Progress", "StopReason"]

log = logging.getLogger(__name__)
S = JobState


class StopReason(Enum):
    """Why rows stopped flowing."""

    DONE = "done"
    CANCEL = "cancel"
    TIME_LIMIT = "time limit"
    INTERRUPT = "interrupt"
    LOST = "lost"


@dataclass
class Progress:
    """What a progress bar shows: rows answered so far (committed or not)."""

    done: int
    total: int | None
    succeeded: int
    failed: int
    tokens: int
    waiting: str | None = None  # "waiting for gs://... since 12:03:04" (outages.py)


class JobRunner:
    def __init__(
        self,
        store: JobStore,
        job: Job,
        backend: Backend,
        settings: RunnerSettings,
        on_progress: Callable[[Progress], None] | None = None,
        interrupt: asyncio.Event | None = None,
    ) -> None:
        """`job` as claimed by its scheduler (`job.owner`); `on_progress` may run in a thread."""
        self.job = job
        self.interrupt = interrupt or asyncio.Event()
        #: store, storage and disk outages are waited out, up to the deadline (outages.py)
        self.patience = outages.Patience(settings.outage_deadline_seconds, self._waiting,
                                         interrupt=self.interrupt)
        self.patience.on_retry = lambda: asyncio.to_thread(self.store.save_progress, self.job)
        self.store: JobStore = outages.PatientStore(store, self.patience)
        self.owner = job.owner
        self.backend = dedupe.for_job(backend)  # identical temperature-0 requests sent once
        self.settings = settings
        self.on_progress = on_progress
        self.out: output.ChunkedOutput | None = None
        self.live = RowCounts()  # rows answered, committed or not
        self.read_all = False
        #: set when the rows stop: reader threads stuck on slow storage stop at their next read
        self.stop_reading = threading.Event()
        self.codec = codec_for(job.line_format)  # the job's input and output lines

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> Job:
        """Run the job to its end (or to an interrupt) and return it as stored."""
        if self.job.state == S.JOB_STATE_CANCELLING:
            return await self._conclude(StopReason.CANCEL)
        try:
            await self.patience.call(self._start)
        except BatchPredictError as exc:
            return await self._fail(exc)
        try:
            if self.job.checkpoint.phase == "assembling":
                # a runner died after the last chunk: finish as it would have, no row runs again
                return await self._conclude(StopReason(self.job.checkpoint.stop_reason or "done"))
            return await self._conclude(await self._stream())
        except BatchPredictError as exc:  # an Outage past the deadline: FAILED, resumable
            return await self._fail(exc, keep_rows=hasattr(self, "buffer"))

    def _start(self) -> None:
        """The output folder and where to resume; then RUNNING (blocking: runs in a thread)."""
        job = self.job
        if not job.output_dir:
            job.output_dir = output.make_output_dir(job.output_prefix)
        self.out = output.job_output(job)
        if job.checkpoint.phase == "assembling":
            committed = job.checkpoint.committed_rows  # the chunks may be assembled away
        else:
            committed, chunks = self.out.committed()
        if committed != job.checkpoint.committed_rows:
            # The chunks are the truth: a crash came between a chunk and its checkpoint.
            job.counts = output.ChunkedOutput.recount(chunks, self.codec)
            job.checkpoint.committed_rows = committed

        def start(j: Job) -> None:
            j.checkpoint, j.counts, j.output_dir = job.checkpoint, job.counts, job.output_dir
            j.partial_failures = job.partial_failures
            j.owner, j.heartbeat, j.error = self.owner, utcnow(), None

        self.job = self.store.transition(job.id, S.JOB_STATE_RUNNING, start)

    async def _stream(self) -> StopReason:
        """Rows in, lines out, until the input ends or something stops the job."""
        self.buffer = output.OrderedChunkBuffer(self.job.checkpoint.committed_rows)
        #: errors of failed rows not yet committed, for partialFailures (bounded)
        self.failures: dict[int, dict[str, Any]] = {}
        self.live = RowCounts()
        self.live.add(self.job.counts)
        self.progressed = asyncio.Event()
        self.last_flush = self.last_check = time.monotonic()
        counter = asyncio.ensure_future(self._count_rows())
        dispatcher = asyncio.ensure_future(self._dispatch())
        try:
            reason = await self._watch(dispatcher)
        finally:
            self.stop_reading.set()
            counter.cancel()
            if not dispatcher.done():
                dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await dispatcher
        return reason

    async def _count_rows(self) -> None:
        """A quick total for the progress bar; exact once the reader reaches the end."""

        def estimate() -> int:
            bounded_io.guard_reads(stop=self.stop_reading)
            return estimate_rows(self.job.checkpoint.inputs)

        try:
            total = await bounded_io.run_io(estimate, pool=bounded_io.JOB_POOL)
        except Exception:  # stopped, or storage away: the reader gives the exact count later
            return
        if not self.read_all:
            self.job.total_rows = total
            self._report()

    async def _recount(self, fallback: int | None) -> int | None:
        """The exact row count, or `fallback` (the estimate) if the input does not read again
        in time: a stuck input must not hang a cancel."""
        return await recount_rows(self.job, self.settings.max_line_bytes, fallback)

    async def _watch(self, dispatcher: asyncio.Future[Any]) -> StopReason:
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
                return StopReason.DONE
            if self.interrupt.is_set():
                return StopReason.INTERRUPT
            if (utcnow() - started).total_seconds() >= st.time_limit_seconds:
                return StopReason.TIME_LIMIT
            due = time.monotonic() - self.last_flush >= st.chunk_seconds
            if len(self.buffer) >= st.chunk_rows or (due and len(self.buffer)):
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

    async def _why_lost(self) -> StopReason:
        stored = await asyncio.to_thread(self.store.get, self.job.id)
        if stored.state == S.JOB_STATE_CANCELLING and stored.owner == self.owner:
            self.job.state = stored.state
            return StopReason.CANCEL
        log.warning("job %s was taken over by %s; this runner stops", stored.id, stored.owner)
        return StopReason.LOST

    # -- rows in --------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        st, backend, buffer = self.settings, self.backend, self.buffer
        inputs, fmt = self.job.checkpoint.inputs, self.job.line_format
        rows = outages.ResumableRows(  # read again from the next row after a storage outage
            lambda skip: iter_rows(inputs, skip, st.max_line_bytes, fmt),
            self.job.checkpoint.committed_rows, where=inputs[0] if inputs else "the input")
        batch_size = max(1, backend.batch_size)
        read_batch = max(st.read_batch_rows, batch_size)
        slots = asyncio.Semaphore(max(1, backend.max_concurrency))
        tasks: set[asyncio.Task[None]] = set()
        next_read = buffer.next_index

        def read() -> list[Row]:
            bounded_io.guard_reads(stop=self.stop_reading)  # files opened here stop on cancel
            return rows.read(read_batch)  # type: ignore[no-any-return]

        try:
            while True:
                while next_read - buffer.next_index > st.window_rows:
                    self.progressed.clear()
                    await self.progressed.wait()
                batch = await self.patience.call(read, resource=rows.where)
                if not batch:
                    break
                next_read = batch[-1].index + 1
                good = []
                for row in batch:
                    if row.error is not None:
                        self._deliver(row, row.error)
                    else:
                        good.append(row)
                for i in range(0, len(good), batch_size):
                    await slots.acquire()
                    task = asyncio.ensure_future(self._generate(good[i : i + batch_size], slots))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                self._delivered()
            if tasks:
                await asyncio.gather(*tasks)
            self.read_all = True
            self.job.total_rows = next_read
        finally:
            for task in tasks:
                task.cancel()
            rows.close()

    async def _generate(self, batch: list[Row], slots: asyncio.Semaphore) -> None:
        try:
            results = await generate_per_row(
                self.backend, [row.parsed for row in batch]  # type: ignore[misc]
            )
            for row, result in zip(batch, results, strict=True):
                self._deliver(row, result)
            self._delivered()
        finally:
            slots.release()

    # -- lines out ------------------------------------------------------------------------
    def _deliver(self, row: Row, result: dict[str, Any] | BatchPredictError) -> None:
        """One row's output line, stamped with when it was processed."""
        live, when = self.live, output.processed_time()
        if isinstance(result, BatchPredictError):
            line = self.codec.error_line(row.extras, row.request, result, when)
            self.buffer.add(row.index, (line, False, 0, 0))
            live.failed += 1
            if len(self.job.partial_failures) + len(self.failures) < MAX_PARTIAL_FAILURES:
                status = result.to_job_error()
                status["message"] = f"Output line {row.index + 1}: {status['message']}"
                self.failures[row.index] = status
            return
        usage = result.get("usageMetadata") or {}
        prompt = int(usage.get("promptTokenCount") or 0)
        cand = int(usage.get("candidatesTokenCount") or 0)
        line = self.codec.success_line(row.extras, row.request, result, when)
        self.buffer.add(row.index, (line, True, prompt, cand))
        live.succeeded += 1
        live.prompt_tokens += prompt
        live.candidates_tokens += cand

    def _delivered(self) -> None:
        self.buffer.advance()
        self.progressed.set()
        self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            live = self.live if self.live.done else self.job.counts
            waiting = self.patience.waiting
            self.on_progress(
                Progress(live.done, self.job.total_rows, live.succeeded, live.failed,
                         live.total_tokens, str(waiting) if waiting else None)
            )

    def _waiting(self, waiting: outages.Waiting | None) -> None:
        """An outage began, changed or ended (any thread): the job and the progress bar say so."""
        outages.show_waiting(self.job, waiting)
        self._report()

    async def _flush(self, contiguous_only: bool) -> bool:
        """Write buffered rows as chunks and checkpoint them. With `contiguous_only` False, also
        the rows answered past a gap (a job ending early keeps every completed row). False when
        the job is no longer ours to save."""
        self.last_flush = time.monotonic()
        job = self.job
        for first, lines, counts in (runs := self.buffer.take(contiguous_only)):
            last = first + len(lines) - 1
            await self._write_chunk(first, last, b"".join(lines))
            job.counts.add(counts)
            for index in sorted(i for i in self.failures if first <= i <= last):
                job.partial_failures.append(self.failures.pop(index))
            if first == job.checkpoint.committed_rows:
                job.checkpoint.committed_rows = first + len(lines)
        if self.out is not None and self.out.publishes:  # a BigQuery output: into its table
            await bounded_io.run_io(self.out.publish, runs, pool=bounded_io.JOB_POOL)
        job.record_progress(utcnow())  # the console's throughput charts read this history
        return await asyncio.to_thread(self.store.save_progress, job)

    async def _write_chunk(self, first: int, last: int, data: bytes) -> None:
        """One chunk, written through outages of its storage (or disk) up to the deadline."""
        assert self.out is not None
        await self.patience.call(self.out.write_chunk, first, last, data,
                                 resource=self.job.output_dir)

    # -- endings --------------------------------------------------------------------------
    async def _conclude(self, reason: StopReason) -> Job:
        """Act on why the rows stopped: end the job, or hand it back."""
        if reason == StopReason.LOST:
            return self.job
        if reason == StopReason.INTERRUPT:
            await self._flush(contiguous_only=True)
            await asyncio.to_thread(self.store.release, self.job)
            return self.job
        if hasattr(self, "buffer"):
            if not self.read_all:  # ended early: the exact count, for incompleteCount
                self.job.total_rows = await self._recount(self.job.total_rows)
            await self._flush(contiguous_only=reason == StopReason.DONE)
        await self._assemble(reason)
        state, error = self._verdict(reason)
        if state == S.JOB_STATE_CANCELLED and self.job.state == S.JOB_STATE_RUNNING:
            await asyncio.to_thread(self.store.transition, self.job.id, S.JOB_STATE_CANCELLING)
        return await self._end(state, error)

    async def _assemble(self, reason: StopReason) -> None:
        job = self.job
        if self.out is None and job.output_dir:
            self.out = output.job_output(job)
        job.checkpoint.phase = "assembling"
        job.checkpoint.stop_reason = reason.value
        await asyncio.to_thread(self.store.save_progress, job)
        if self.out is not None:
            await self.patience.call(self.out.assemble, resource=job.output_dir)
        if job.total_rows is None and job.checkpoint.inputs:
            job.total_rows = await self._recount(None)

    def _verdict(self, reason: StopReason) -> tuple[JobState, BatchPredictError | None]:
        """The final state and error of a job whose rows stopped for `reason`."""
        job = self.job
        if reason == StopReason.CANCEL:
            return S.JOB_STATE_CANCELLED, Cancelled("The job was cancelled.")
        if reason == StopReason.TIME_LIMIT:
            hours = self.settings.time_limit_seconds / 3600
            return S.JOB_STATE_FAILED, DeadlineExceeded(
                f"The job did not finish within its time limit of {hours:g} hours after it "
                f"started running; {plural(job.counts.done, 'completed row')} exported and "
                f"{plural(self._incomplete(), 'row')} not processed."
            )
        if not job.total_rows:
            return S.JOB_STATE_FAILED, InvalidArgument(
                f"The input has no rows: {', '.join(job.checkpoint.inputs)}. Each line must be a "
                f"JSON object such as {self.codec.example}."
            )
        if job.counts.succeeded == 0:
            n = job.counts.failed
            return S.JOB_STATE_FAILED, InvalidArgument(
                ("The only row failed" if n == 1 else f"All {n} rows failed") + "; see the status "
                f"field of each line in {job.output_dir}/predictions.jsonl."
            )
        return S.JOB_STATE_SUCCEEDED, None

    def _incomplete(self) -> int:
        return max(0, (self.job.total_rows or 0) - self.job.counts.done)

    async def _fail(self, exc: BatchPredictError, keep_rows: bool = False) -> Job:
        """FAILED; by its store, storage or disk (an Outage), resumable: chunks kept unassembled."""
        if (resumable := isinstance(exc, Outage)) and self.interrupt.is_set():
            await asyncio.to_thread(self.store.release, self.job)  # Ctrl-C while waiting
            return self.job
        if keep_rows:
            with contextlib.suppress(BatchPredictError):  # a resumable job's chunks stay gap-free
                if not resumable or self.buffer.first == self.job.checkpoint.committed_rows:
                    await self._flush(contiguous_only=resumable)
            if self.out is not None and not resumable:
                with contextlib.suppress(BatchPredictError):
                    await asyncio.to_thread(self.out.assemble)
        return await self._end(S.JOB_STATE_FAILED, exc)

    async def _end(self, state: JobState, error: BatchPredictError | None) -> Job:
        job = self.job
        incomplete = self._incomplete()

        def finish(j: Job) -> None:
            j.counts, j.checkpoint, j.total_rows = job.counts, job.checkpoint, job.total_rows
            j.output_dir, j.incomplete = job.output_dir, incomplete
            j.partial_failures = job.partial_failures
            j.error = outages.job_error(error, job.id)  # an Outage: resumable
            outages.show_waiting(j, None)

        self.job = await asyncio.to_thread(self.store.transition, job.id, state, finish)
        self._report()
        return self.job
