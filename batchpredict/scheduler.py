"""The scheduler: which jobs run in this process, and when. The only place that builds a runner.

    submit ──> JOB_STATE_PENDING ──(store-wide slot free: claim_next)──> executor + JobRunner.run
    run_here(job): claim, run now on the configured executor (`batchpredict run`; no slot)
    cancel:    PENDING ──> CANCELLED at once;  RUNNING ──> CANCELLING, the runner ends it CANCELLED

At most `max_running_jobs` scheduler jobs run at once across every server sharing the store: the
store's `claim_next` counts the held jobs and claims the oldest pending one in one transaction
(an advisory lock on PostgreSQL, the write lock on SQLite); a project already running
`max_running_jobs_per_project` jobs here is skipped. Each pass of the loop (on a wake-up: create,
cancel, a runner ending; else every `SCAN_SECONDS`) first recovers held jobs whose runner has died
(a crash, a killed server, another replica gone silent for `stale_after_seconds`): RUNNING ones
resume from their committed chunks, CANCELLING ones finish cancelling. The recovery scan reads
only held jobs (`list_held`, indexed), never the whole store.

Before a job runs, the data gate rechecks its URIs (time passes in PENDING). Each job gets a fresh
executor (`executors.make_executor`: local, processes or ray, from the settings; a BigQuery input
table always runs `local`, in this process, where its client is) and its project's data policy,
under which every worker reads fileData; the runner starts the workers.

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

from batchpredict.bigquery import tables
from batchpredict.config import Settings
from batchpredict.errors import (
    BatchPredictError,
    Cancelled,
    FailedPrecondition,
    Internal,
    NotFound,
    Outage,
)
from batchpredict.executors import EXECUTORS, Executor, make_executor
from batchpredict.jobs import Job, JobState, owner_id, utcnow
from batchpredict.runner import JobRunner, Progress
from batchpredict.store.base import JobStore, owner_is_gone

__all__ = ["Scheduler"]

log = logging.getLogger(__name__)
S = JobState
#: Without a wake-up, look this often for work this process was not told about: jobs created by
#: another replica, runners that died elsewhere.
SCAN_SECONDS = 5.0


class Scheduler:
    def __init__(self, store: JobStore, registry: Any, settings: Settings) -> None:
        self.store = store
        self.registry = registry
        self.capacity = max(1, settings.max_running_jobs)
        self.runner_settings = settings.runner_settings()
        if settings.executor not in EXECUTORS:
            make_executor(settings.executor)  # raises: names the executors there are
        self.settings = settings
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
        """Resume held jobs whose runner died, then claim pending jobs while slots are free."""
        if self._interrupt.is_set():
            return
        held = await asyncio.to_thread(self.store.list_held)
        for job in self._orphans(held):
            if job.id not in self._tasks:
                self._start_task(job, claimed=False)
        while self._busy() < self.capacity and not self._interrupt.is_set():
            claimed = await asyncio.to_thread(self.store.claim_next, self.owner, self.capacity,
                                              self._full_projects())
            if claimed is None:
                return
            self._start_task(claimed, claimed=True)

    def _start_task(self, job: Job, claimed: bool) -> None:
        self._projects[job.id] = job.project
        self._tasks[job.id] = asyncio.create_task(
            self._run_job(job, claimed), name=f"batchpredict-job-{job.id}"
        )

    def _busy(self) -> int:
        return len(self._tasks)

    def _full_projects(self) -> list[str]:
        """Projects already running BATCHPREDICT_MAX_RUNNING_JOBS_PER_PROJECT jobs here."""
        if not self.per_project:
            return []
        running = list(self._projects.values())
        return sorted({p for p in running if running.count(p) >= self.per_project})

    def _orphans(self, held: list[Job]) -> list[Job]:
        """Held jobs whose runner is gone, to resume here: cancels first (quick, no model;
        they do not wait for a slot), then runs, oldest first. A resumed job already holds
        a slot of the store-wide limit."""
        now = utcnow()
        stale = self.runner_settings.stale_after_seconds
        full = set(self._full_projects())
        cancelling: list[Job] = []
        running: list[Job] = []
        for job in held:
            age = now - job.heartbeat if job.heartbeat else None
            if job.owner == self.owner or not owner_is_gone(job.owner, age, stale):
                continue
            if job.state == S.JOB_STATE_CANCELLING:
                cancelling.append(job)
            elif self._busy() + len(running) < self.capacity and job.project not in full:
                running.append(job)
        return cancelling + running

    # -- one job --------------------------------------------------------------------------
    async def _run_job(self, job: Job, claimed: bool) -> None:
        try:
            await self._claim_and_run(job, claimed)
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

    async def _claim_and_run(self, job: Job, claimed: bool) -> None:
        if not claimed:
            got = await asyncio.to_thread(
                self.store.claim, job.id, self.owner, self.runner_settings.stale_after_seconds
            )
            if got is None:
                return
            job = got
        final = await self._run_claimed(job, None, self._interrupt)
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
        """Run the job on a fresh executor (none for a job that only has to finish
        cancelling); workers that cannot start fail the job."""
        executor: Executor | None = None
        scope = None
        if job.state != S.JOB_STATE_CANCELLING:
            if self.gate is not None:  # still allowed after its wait in PENDING?
                refused = await self.gate.recheck_job(job)
                if refused is not None:
                    return await self._fail(job.id, refused) or job
                # fileData under the project's data policy, in every worker
                scope = (self.gate.policy(job.project), self.gate.media)
            executor = self._executor_for(job)
        runner = JobRunner(self.store, job, executor, self.registry, self.runner_settings,
                           on_progress=on_progress, interrupt=interrupt, on_loading=on_loading,
                           scope=scope)
        return await runner.run()

    def _executor_for(self, job: Job) -> Executor:
        st = self.settings
        name = st.executor
        if any(map(tables.is_table, job.checkpoint.inputs)):
            name = "local"  # a BigQuery input: read here, by row position, with its client
        return make_executor(name, st.workers, st.worker_start_seconds, st.ray_address)

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
