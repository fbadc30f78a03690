"""Running one job: the driver. Workers run row ranges; only the driver commits their chunks.

    planner (job pool) ──ranges──> Dispatch ──> executor's workers (in this process, worker
    processes or Ray actors): read the range, answer it, write chunk objects (executors/)
                                  │ ChunkDone reports
                                  ▼
    driver: commit each chunk in one store transaction, never twice (executors/commits.py) ──
    heartbeat, cancel, time limit ── assemble predictions.jsonl from the committed chunks

Only the scheduler builds a runner, for a job it has claimed (the store's `claim`), with the
executor the job runs on, after the job service checked the job's model, inputs and output
prefix at submit. The lifecycle of `JobRunner.run`:

    start    the output folder; the committed chunks, reconciled with the chunk objects on
             storage (the objects are the truth); the workers start; RUNNING
    stream   ranges of the rows not yet committed go to the workers, chunks come back and are
             committed (and published to a BigQuery output table), until a `StopReason`
    conclude DONE: assemble predictions.jsonl, SUCCEEDED (FAILED when no row succeeded)
             CANCEL: keep every completed row, CANCELLED     TIME_LIMIT: the same, FAILED
             INTERRUPT (Ctrl-C, server shutdown): commit the answered rows, release the job
             (still RUNNING: the next runner resumes it)     LOST: another runner took it over

A job whose runner died while assembling (`checkpoint.phase`) is finished from its assembled
state the way it was ending (`checkpoint.stop_reason`): no row runs again. The driver's store and
storage calls wait out outages (outages.py: `Patience`), as do its workers; past the deadline the
job fails resumable, its chunks and commit records kept for the run that resumes it.
Every stop that ends the job first writes and commits every answered row; no row is written or
counted twice.
Memory: each worker holds at most `window_rows` rows; the driver holds the committed intervals
(a few per range in flight) and no rows. The driver's own reads (planning, counting) run on
`bounded_io.JOB_POOL` and stop at their next read once the rows stop.
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
from batchpredict.config import RunnerSettings
from batchpredict.errors import (
    BatchPredictError,
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    Outage,
    plural,
)
from batchpredict.executors.base import (
    Answered,
    ChunkDone,
    Dispatch,
    Executor,
    RangeSource,
    Report,
    WorkerHandle,
    WorkerSpec,
)
from batchpredict.executors.commits import Commits
from batchpredict.executors.ranges import plan_ranges
from batchpredict.formats import codec_for
from batchpredict.input import estimate_rows, recount_rows
from batchpredict.jobs import Job, JobState, RowCounts, utcnow
from batchpredict.store.base import JobStore

__all__ = ["JobRunner", "Progress", "StopReason"]

log = logging.getLogger(__name__)
S = JobState
#: After a stop, workers get this long to write their answered rows.
STOP_GRACE_SECONDS = 30.0


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
        executor: Executor | None,
        registry: Any,
        settings: RunnerSettings,
        on_progress: Callable[[Progress], None] | None = None,
        interrupt: asyncio.Event | None = None,
        on_loading: Callable[[str | None], None] | None = None,
        scope: Any = None,
    ) -> None:
        """`job` as claimed by its scheduler (`job.owner`); `on_progress` may run in a thread.
        `executor` is None only for a job that is CANCELLING (no rows to run). `scope`: the
        (DataPolicy, MediaPolicy) of the job's project, under which workers read fileData."""
        self.job = job
        self.interrupt = interrupt or asyncio.Event()
        #: store, storage and disk outages are waited out, up to the deadline (outages.py)
        self.patience = outages.Patience(settings.outage_deadline_seconds, self._waiting,
                                         interrupt=self.interrupt)
        self.patience.on_retry = lambda: asyncio.to_thread(self.store.save_progress, self.job)
        self.store: JobStore = outages.PatientStore(store, self.patience)
        self.owner = job.owner
        self.executor = executor
        self.registry = registry
        self.settings = settings
        self.on_progress = on_progress
        self.on_loading = on_loading
        self.scope = scope
        self.codec = codec_for(job.line_format)  # the job's input and output lines
        self.out: output.ChunkedOutput | None = None
        self.commits: Commits | None = None
        self.live = RowCounts()  # rows answered, committed or not
        self.source: RangeSource | None = None
        self.progressed = asyncio.Event()
        #: set when the rows stop: the driver's reads stuck on slow storage stop at the next
        self.stop_reading = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    async def run(self) -> Job:
        """Run the job to its end (or to an interrupt) and return it as stored."""
        executor = self.executor
        try:
            if self.job.state == S.JOB_STATE_CANCELLING or executor is None:
                return await self._conclude(StopReason.CANCEL)
            try:
                await self.patience.call(self._start)
                if self.job.checkpoint.phase == "assembling":
                    # a runner died after the last chunk: finish as it was ending, no row runs
                    await self.patience.call(self._running)
                    return await self._conclude(
                        StopReason(self.job.checkpoint.stop_reason or "done"))
                workers = await self._start_workers(executor)
                if workers is None:  # interrupted while the workers started
                    await asyncio.to_thread(self.store.release, self.job)
                    return self.job
                await self.patience.call(self._running)  # RUNNING once the model is loaded
                reason = await self._stream(workers)
            finally:
                await executor.close()
            return await self._conclude(reason)
        except BatchPredictError as exc:  # a worker's error, or an Outage past the deadline
            return await self._fail(exc, keep_rows=self.out is not None)

    def _start(self) -> None:
        """The output folder and the committed chunks (blocking: a thread)."""
        job = self.job
        if not job.output_dir:
            job.output_dir = output.make_output_dir(job.output_prefix)
        self.out = output.job_output(job)
        self.commits = Commits(self.store, self.out, self.codec)
        if job.checkpoint.phase != "assembling":  # (assembling: the chunks may be gone)
            self.commits.reconcile(job)

    def _running(self) -> None:
        """The job RUNNING, with what `_start` found (blocking: a thread)."""
        job = self.job

        def start(j: Job) -> None:
            j.checkpoint, j.counts, j.output_dir = job.checkpoint, job.counts, job.output_dir
            j.partial_failures = job.partial_failures
            j.owner, j.heartbeat, j.error = self.owner, utcnow(), None

        self.job = self.store.transition(job.id, S.JOB_STATE_RUNNING, start)

    async def _start_workers(self, executor: Executor) -> list[WorkerHandle] | None:
        job = self.job
        assert job.output_dir is not None
        spec = WorkerSpec(job.id, job.model, job.output_dir, self.settings,
                          line_format=job.line_format, scope=self.scope)
        executor.on_waiting = self._waiting  # in-process workers show their waits on the job
        if self.on_loading is not None:
            self.on_loading(job.model)
        beat = asyncio.ensure_future(self._heartbeat_while_starting())
        try:
            workers = await executor.start(spec, self.registry)
        finally:
            beat.cancel()
            if self.on_loading is not None:
                self.on_loading(None)
        return None if self.interrupt.is_set() else workers

    async def _heartbeat_while_starting(self) -> None:
        """Loading a model can outlast `stale_after_seconds`: prove the job is alive."""
        while True:
            await asyncio.sleep(self.settings.poll_seconds)
            await asyncio.to_thread(self.store.save_progress, self.job)

    # -- the stream of ranges -------------------------------------------------------------
    async def _stream(self, workers: list[WorkerHandle]) -> StopReason:
        st, commits = self.settings, self.commits
        assert commits is not None
        plan = plan_ranges(self.job.checkpoint.inputs, st.chunk_rows, commits.committed.intervals,
                           st.max_line_bytes)
        self.source = RangeSource(plan, self.stop_reading, self.patience, lambda done: plan_ranges(
            self.job.checkpoint.inputs, st.chunk_rows, done, st.max_line_bytes),
            commits.committed.intervals)
        dispatch = Dispatch(workers, self.source, self._on_report)
        self.live = RowCounts()
        self.live.add(self.job.counts)
        self.last_check = time.monotonic()
        execution = asyncio.ensure_future(dispatch.run())
        counter = asyncio.ensure_future(self._count_rows())
        try:
            reason = await self._watch(execution)
        finally:
            self.stop_reading.set()
            counter.cancel()
            if not execution.done():
                await dispatch.stop(STOP_GRACE_SECONDS)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await execution
        if reason != StopReason.LOST and not await commits.commit_pending(self.job):
            reason = await self._why_lost()
        if self.source.total is not None:
            self.job.total_rows = self.source.total
        return reason

    async def _count_rows(self) -> None:
        """A quick total for the progress bar; exact once planning reaches the end."""

        def estimate() -> int:
            bounded_io.guard_reads(stop=self.stop_reading)
            return estimate_rows(self.job.checkpoint.inputs)

        try:
            total = await bounded_io.run_io(estimate, pool=bounded_io.JOB_POOL)
        except Exception:  # stopped, or storage away: planning gives the exact count later
            return
        if self.source is not None and self.source.total is None:
            self.job.total_rows = total
            self._report()

    async def _recount(self, fallback: int | None) -> int | None:
        """The exact row count, or `fallback` (the estimate) if the input does not read again
        in time: a stuck input must not hang a cancel."""
        return await recount_rows(self.job, self.settings.max_line_bytes, fallback)

    async def _watch(self, execution: asyncio.Future[Any]) -> StopReason:
        """Commit chunks as they come, heartbeat, and notice cancel, time limit, interrupt."""
        st, commits = self.settings, self.commits
        assert commits is not None
        started = self.job.start_time or utcnow()
        while True:
            waits = [asyncio.ensure_future(e.wait()) for e in (self.progressed, self.interrupt)]
            await asyncio.wait([*waits, execution], timeout=st.poll_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            self.progressed.clear()
            if not await commits.commit_pending(self.job):
                return await self._why_lost()
            if execution.done():
                execution.result()  # re-raise a worker's error
                return StopReason.DONE
            if self.interrupt.is_set():
                return StopReason.INTERRUPT
            if (utcnow() - started).total_seconds() >= st.time_limit_seconds:
                return StopReason.TIME_LIMIT
            if time.monotonic() - self.last_check >= st.poll_seconds:
                # Heartbeat; a failed save is how a runner learns of a cancel (CANCELLING).
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

    # -- reports --------------------------------------------------------------------------
    def _on_report(self, report: Report) -> None:
        if isinstance(report, ChunkDone):
            assert self.commits is not None
            self.commits.pending.append(report)
            self.progressed.set()
        elif isinstance(report, Answered):
            self.live.add(report.counts)
            self._report()

    def _report(self) -> None:
        if self.on_progress is not None:
            live = self.live if self.live.done else self.job.counts
            total = self.job.total_rows
            done = min(live.done, total) if total else live.done
            waiting = self.patience.waiting
            self.on_progress(Progress(done, total, live.succeeded, live.failed,
                                      live.total_tokens, str(waiting) if waiting else None))

    def _waiting(self, waiting: outages.Waiting | None) -> None:
        """An outage began, changed or ended (any thread): the job and the progress bar say so."""
        outages.show_waiting(self.job, waiting)
        self._report()

    # -- endings --------------------------------------------------------------------------
    async def _conclude(self, reason: StopReason) -> Job:
        """Act on why the rows stopped: end the job, or hand it back."""
        if reason == StopReason.LOST:
            return self.job
        if reason == StopReason.INTERRUPT:
            await asyncio.to_thread(self.store.save_progress, self.job)
            await asyncio.to_thread(self.store.release, self.job)
            return self.job
        if self.source is not None and self.source.total is None:
            # ended early: the exact count, for incompleteCount
            self.job.total_rows = await self._recount(self.job.total_rows)
        await self._assemble(reason)
        state, error = self._verdict(reason)
        if state == S.JOB_STATE_CANCELLED and self.job.state == S.JOB_STATE_RUNNING:
            await asyncio.to_thread(self.store.transition, self.job.id, S.JOB_STATE_CANCELLING)
        return await self._end(state, error)

    async def _assemble(self, reason: StopReason) -> None:
        job = self.job
        job.checkpoint.phase = "assembling"
        job.checkpoint.stop_reason = reason.value
        await asyncio.to_thread(self.store.save_progress, job)
        await self._assemble_chunks()
        if job.total_rows is None and job.checkpoint.inputs:
            job.total_rows = await self._recount(None)

    async def _assemble_chunks(self) -> None:
        """predictions.jsonl from the committed chunks (the store's records), in row order."""
        job = self.job
        if self.out is None and job.output_dir:
            self.out = output.job_output(job)
        out = self.out
        if out is not None:
            chunks = [output.Chunk(c.first, c.last, out.chunk_uri(c.first, c.last))
                      for c in await asyncio.to_thread(self.store.chunks, job.id)]
            await self.patience.call(out.assemble, chunks, resource=job.output_dir)

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
        if job.counts.done != job.total_rows:
            return S.JOB_STATE_FAILED, Internal(
                f"The job ended with {job.counts.done} of {job.total_rows} rows committed; "
                "the committed rows are in its output folder."
            )
        if job.counts.succeeded == 0:
            return S.JOB_STATE_FAILED, InvalidArgument(
                f"{_all_failed(job.counts.failed)}; see the status field of each line in "
                f"{job.output_dir}/predictions.jsonl."
            )
        return S.JOB_STATE_SUCCEEDED, None

    def _incomplete(self) -> int:
        return max(0, (self.job.total_rows or 0) - self.job.counts.done)

    async def _fail(self, exc: BatchPredictError, keep_rows: bool = False) -> Job:
        """FAILED; by its store, storage or disk (an Outage), resumable: its chunks and their
        commit records are kept, unassembled, for the run that resumes it."""
        if (resumable := isinstance(exc, Outage)) and self.interrupt.is_set():
            await asyncio.to_thread(self.store.release, self.job)  # Ctrl-C while waiting
            return self.job
        if keep_rows:
            if self.commits is not None:
                with contextlib.suppress(BatchPredictError):
                    await self.commits.commit_pending(self.job)
            if not resumable:
                with contextlib.suppress(BatchPredictError):
                    await self._assemble_chunks()
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

        try:
            self.job = await asyncio.to_thread(self.store.transition, job.id, state, finish)
        except FailedPrecondition:
            stored = await asyncio.to_thread(self.store.get, job.id)
            if stored.state != S.JOB_STATE_CANCELLING or state == S.JOB_STATE_CANCELLED:
                raise
            # cancelled as the last rows were committed: it ends CANCELLED, every row kept
            error = Cancelled("The job was cancelled.")
            self.job = await asyncio.to_thread(
                self.store.transition, job.id, S.JOB_STATE_CANCELLED, finish
            )
        if not isinstance(error, Outage):  # (resumable: its chunks are still the output)
            # the committed chunks are in predictions.jsonl now: their records are not needed
            await asyncio.to_thread(self.store.forget_chunks, job.id)
        self._report()
        return self.job


def _all_failed(n: int) -> str:
    return "The only row failed" if n == 1 else f"All {n} rows failed"
