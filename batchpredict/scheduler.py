"""The scheduler: which jobs run in this process, and when. The only place that builds a runner.

    submit ──> JOB_STATE_PENDING ──(a slot is free: claim, load the backend)──> JobRunner.run
    run_here(job): claim, load the backend, run now (`batchpredict run`; no slot, no loop)
    cancel:    PENDING ──> CANCELLED at once;  RUNNING ──> CANCELLING, the runner ends it CANCELLED

At most `max_running_jobs` runners at once; pending jobs start oldest first. Each pass of the loop
(on a wake-up: create, cancel, a runner ending; else every `SCAN_SECONDS`) also recovers jobs whose
runner has died (a crash, a killed server, another replica gone silent for `stale_after_seconds`):
RUNNING ones resume from their committed chunks, CANCELLING ones finish cancelling. The job store's
`claim` makes sure one runner holds a job, even with several processes on one store.

Jobs that run in their command (`Job.runs_in` is COMMAND: `batchpredict run`) are run by that
command through `run_here`, and resumed when it runs again: the loop leaves them alone.

Shutdown sets the runners' shared `interrupt` event: each writes its completed rows, releases its
job (still RUNNING) and returns; the next server start resumes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from batchpredict.backends.base import Backend
from batchpredict.config import Settings
from batchpredict.errors import (
    BatchPredictError,
    Cancelled,
    FailedPrecondition,
    Internal,
    NotFound,
    Outage,
)
from batchpredict.jobs import Job, JobState, RunsIn, owner_id, utcnow
from batchpredict.runner import JobRunner, Progress
from batchpredict.store.base import JobStore, owner_is_gone

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)
S = JobState
#: Without a wake-up, look this often for work this process was not told about: jobs created by
#: another replica, runners that died elsewhere. (Each pass reads the whole job list.)
SCAN_SECONDS = 5.0


class _NoBackend(Backend):
    """Stands in for the model when a runner only has to finish cancelling (no rows to run)."""

    async def generate(self, requests: list[Any]) -> list[Any]:
        raise Internal("A cancelling job asked for predictions.")


class Scheduler:
    def __init__(self, store: JobStore, registry: Any, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.capacity = max(1, settings.max_running_jobs)
        self.runner_settings = settings.runner_settings()
        self.scan_seconds = max(settings.poll_seconds, SCAN_SECONDS)
        self.owner = owner_id()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._interrupt = asyncio.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        #: The data gate (data_gate.py; set by the job service): rechecks a job's URIs before it
        #: runs and scopes its fileData to its project's policy.
        self.gate: Any = None
        #: A project runs at most this many jobs here at once (0: no cap).
        self.per_project = max(0, settings.max_running_jobs_per_project)
        self._projects: dict[int, str] = {}

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover unfinished jobs and start running pending ones."""
        self._loop = asyncio.create_task(self._run_loop(), name="batchpredict-scheduler")

    async def stop(self, grace_seconds: float = 30.0) -> None:
        """Interrupt every runner: each writes its completed rows and releases its job."""
        self._interrupt.set()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        tasks = list(self._tasks.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace_seconds)
            for task in late:  # their jobs stay RUNNING and resume at the next start
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)

    def wake(self) -> None:
        """Look for work now (a job was created or cancelled, a slot freed)."""
        self._wake.set()

    @property
    def running(self) -> list[int]:
        return sorted(self._tasks)

    @property
    def alive(self) -> bool:
        """The loop that starts jobs is running."""
        return self._loop is not None and not self._loop.done()

    # -- cancel ---------------------------------------------------------------------------
    async def cancel(self, job_id: int) -> Job:
        """Cancel a job: a pending one ends CANCELLED now; a running one becomes CANCELLING and
        its runner ends it CANCELLED, keeping every completed row."""
        for _ in range(10):
            job = await asyncio.to_thread(self.store.get, job_id)
            if job.state.is_terminal:
                raise FailedPrecondition(
                    f"Job {job_id} is already {job.state.value}; only a pending or running job "
                    "can be cancelled."
                )
            try:
                if job.state == S.JOB_STATE_PENDING:
                    job = await asyncio.to_thread(
                        self.store.transition, job_id, S.JOB_STATE_CANCELLED, _cancelled
                    )
                elif job.state == S.JOB_STATE_RUNNING:
                    job = await asyncio.to_thread(
                        self.store.transition, job_id, S.JOB_STATE_CANCELLING
                    )
            except FailedPrecondition:
                current = await asyncio.to_thread(self.store.get, job_id)
                if current.state != job.state and not current.state.is_terminal:
                    continue  # it moved on (e.g. PENDING -> RUNNING) between get and transition
                raise
            self.wake()
            return job
        raise FailedPrecondition(f"Job {job_id} kept changing state; try cancelling again.")

    # -- the loop -------------------------------------------------------------------------
    async def _run_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self._fill()
            except BatchPredictError as exc:  # the store away: one line, no traceback
                log.warning("scheduler pass failed (%s); retrying in %.1fs", exc.message,
                            self.scan_seconds)
            except Exception:
                log.exception("scheduler pass failed; retrying in %.1fs", self.scan_seconds)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.scan_seconds)

    async def _fill(self) -> None:
        """Start runners for recoverable and pending jobs while slots are free."""
        if self._interrupt.is_set():
            return
        jobs = await asyncio.to_thread(self.store.list_unfinished)
        for job in self._candidates(jobs):
            if job.id in self._tasks:
                continue
            # Finishing a cancel is quick and needs no model: it does not wait for a slot.
            if job.state != S.JOB_STATE_CANCELLING and self._busy() >= self.capacity:
                break
            if job.state != S.JOB_STATE_CANCELLING and self._project_full(job.project):
                continue  # fairness: later jobs of other projects may start
            self._projects[job.id] = job.project
            self._tasks[job.id] = asyncio.create_task(
                self._run_job(job), name=f"batchpredict-job-{job.id}"
            )

    def _busy(self) -> int:
        return len(self._tasks)

    def _project_full(self, project: str) -> bool:
        """The project already runs BATCHPREDICT_MAX_RUNNING_JOBS_PER_PROJECT jobs here."""
        if not self.per_project:
            return False
        return sum(p == project for p in self._projects.values()) >= self.per_project

    def _candidates(self, jobs: list[Job]) -> list[Job]:
        """Jobs this process should run, in order: orphaned cancels, orphaned runs (they
        already hold a slot's worth of progress), then pending jobs, oldest first."""
        now = utcnow()
        stale = self.runner_settings.stale_after_seconds
        cancelling, running, pending = [], [], []
        for job in jobs:  # oldest first
            if job.runs_in != RunsIn.SCHEDULER or job.state.is_terminal:
                continue
            age = now - job.heartbeat if job.heartbeat else None
            if job.owner not in (None, self.owner) and not owner_is_gone(job.owner, age, stale):
                continue
            if job.state == S.JOB_STATE_CANCELLING:
                cancelling.append(job)
            elif job.state == S.JOB_STATE_RUNNING:
                running.append(job)
            elif job.state == S.JOB_STATE_PENDING:
                pending.append(job)
        return cancelling + running + pending

    # -- one job --------------------------------------------------------------------------
    async def _run_job(self, job: Job) -> None:
        try:
            await self._claim_and_run(job)
        except FailedPrecondition as exc:
            # Lost a race: cancelled while starting, or another process took it.
            log.info("job %s: %s", job.id, exc.message)
        except NotFound:
            log.info("job %s was deleted before it ran", job.id)
        except Outage as exc:  # the store away past the deadline: left for recovery
            log.warning("job %s: %s", job.id, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s: runner failed", job.id)
            await self._fail(job.id, Internal(f"The job's runner failed: {type(exc).__name__}: "
                                              f"{exc}. Completed rows are in its output folder."))
        finally:
            self._tasks.pop(job.id, None)
            self._projects.pop(job.id, None)
            self.wake()

    async def _claim_and_run(self, job: Job) -> None:
        claimed = await asyncio.to_thread(
            self.store.claim, job.id, self.owner, self.runner_settings.stale_after_seconds
        )
        if claimed is None:
            return
        final = await self._run_claimed(claimed, None, self._interrupt)
        log.info("job %s ended %s", job.id, final.state.value)

    async def run_here(
        self,
        job_id: int,
        on_progress: Callable[[Progress], None] | None = None,
        interrupt: asyncio.Event | None = None,
        on_loading: Callable[[str | None], None] | None = None,
    ) -> Job:
        """Run one job in this process now, to its end or to `interrupt` (then it stays
        RUNNING, released, for the next run to resume): what `batchpredict run` does."""
        claimed = await asyncio.to_thread(
            self.store.claim, job_id, self.owner, self.runner_settings.stale_after_seconds
        )
        if claimed is None:
            holder = (await asyncio.to_thread(self.store.get, job_id)).owner
            raise FailedPrecondition(
                f"Job {job_id} is being run by another process ({holder}); wait for it to end, "
                "or stop that process first."
            )
        return await self._run_claimed(claimed, on_progress, interrupt or self._interrupt,
                                       on_loading)

    async def _run_claimed(
        self,
        job: Job,
        on_progress: Callable[[Progress], None] | None,
        interrupt: asyncio.Event,
        on_loading: Callable[[str | None], None] | None = None,
    ) -> Job:
        """Load the job's backend and run it; a backend that cannot load fails the job."""
        if job.state == S.JOB_STATE_CANCELLING:
            backend: Backend = _NoBackend()
        else:
            if self.gate is not None:  # still allowed after its wait in PENDING?
                refused = await self.gate.recheck_job(job)
                if refused is not None:
                    return await self._fail(job.id, refused) or job
            if on_loading is not None:
                on_loading(job.model)
            try:
                backend = await self.registry.backend_for(job.model)
            except BatchPredictError as exc:
                return await self._fail(job.id, exc) or job
            finally:
                if on_loading is not None:
                    on_loading(None)
            if self.gate is not None:  # fileData under the project's data policy
                backend = self.gate.scoped_backend(backend, job.project)
        if interrupt.is_set():  # interrupted while the model loaded
            await asyncio.to_thread(self.store.release, job)
            return job
        runner = JobRunner(self.store, job, backend, self.runner_settings,
                           on_progress=on_progress, interrupt=interrupt)
        return await runner.run()

    async def _fail(self, job_id: int, error: BatchPredictError) -> Job | None:
        def mutate(j: Job) -> None:
            j.error = error.to_job_error()

        try:
            return await asyncio.to_thread(
                self.store.transition, job_id, S.JOB_STATE_FAILED, mutate
            )
        except BatchPredictError as exc:  # gone, moved on, or the store away (then recovered)
            log.warning("job %s could not be marked FAILED (%s): %s", job_id, exc.message,
                        error.message)
            return None


def _cancelled(job: Job) -> None:
    job.error = Cancelled("The job was cancelled before it started.").to_job_error()
