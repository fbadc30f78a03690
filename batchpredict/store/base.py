"""The job store interface. Implementations: `sqlite.SQLiteJobStore` (default), PostgreSQL.

Rules every implementation keeps:
- `transition` is the only way a job's state changes. It compares and sets in one statement, so
  two processes (a server and a CLI, two API replicas) can never both move a job, and it refuses
  any pair not in `jobs.ALLOWED_TRANSITIONS`.
- `claim` gives a job to one runner: only when nobody holds it or its holder's heartbeat is
  older than `stale_after` seconds (or the holder is a dead process on this host).
- `claim_next` gives the oldest pending scheduler job to one runner only while fewer than
  `limit` scheduler jobs are held in the whole store (counted and claimed in one transaction):
  the running limit holds across every server sharing the store.
- `commit_chunk` is the one way a job's rows count as done: in one transaction it records the
  chunk (refusing one that overlaps a committed chunk) and writes the job's counts, and only
  while the caller still holds the job. A chunk reported twice is never counted twice.
- Lists, recovery scans and metrics are answered by the database (indexed columns, LIMIT, GROUP
  BY), never by reading every job.
"""

from __future__ import annotations

import abc
import builtins
import os
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum

from batchpredict.errors import FailedPrecondition, Outage
from batchpredict.jobs import Job, JobState, RowCounts, transition_allowed, utcnow

__all__ = ["ChunkRecord", "Commit", "JobStore", "StoreTotals", "owner_is_gone", "store_outage"]


def store_outage(where: str, exc: Exception, check: str) -> Outage:
    """A store driver's error (sqlite3's or psycopg's OperationalError) as ours: one line that
    names the store and what to `check`. A running job waits it out (outages.py)."""
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return Outage(f"The job store {where} cannot be used now: {detail}. {check}",
                  resource=f"the job store {where}")


def owner_is_gone(owner: str | None, heartbeat_age: timedelta | None, stale_after: float) -> bool:
    """True when a job's runner is known dead, or silent for longer than `stale_after`."""
    if not owner:
        return True
    host, _, pid = owner.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        if int(pid) == os.getpid():
            return False
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    return heartbeat_age is None or heartbeat_age.total_seconds() > stale_after


@dataclass(frozen=True)
class ChunkRecord:
    """A committed chunk of a job's output: rows first..last (inclusive) and their counts."""

    first: int
    last: int
    counts: RowCounts


class Commit(Enum):
    """What `commit_chunk` did."""

    COMMITTED = "committed"
    #: This very chunk was committed before: nothing changed.
    DUPLICATE = "duplicate"
    #: It overlaps another committed chunk: refused (its rows are already counted).
    OVERLAP = "overlap"
    #: The caller no longer holds the job (cancelled and ended, or taken over).
    LOST = "lost"


@dataclass
class StoreTotals:
    """What /metrics shows: jobs by state, and rows and tokens over every job."""

    jobs: dict[JobState, int]
    counts: RowCounts
    incomplete: int


class JobStore(abc.ABC):
    """Where jobs live. Methods are synchronous and quick; call them from a thread in async code."""

    @abc.abstractmethod
    def create(self, job: Job) -> Job:
        """Store a new job and return it with its numeric id."""

    @abc.abstractmethod
    def get(self, job_id: int) -> Job:
        """The job, or NotFound."""

    @abc.abstractmethod
    def list(self, project: str | None = None) -> list[Job]:
        """Every job newest first, all projects when `project` is None (small stores, tests:
        `page` is what faces use)."""

    @abc.abstractmethod
    def page(
        self,
        limit: int,
        before_id: int | None = None,
        projects: Collection[str] | None = None,
        location: str | None = None,
        states: Collection[JobState] | None = None,
    ) -> builtins.list[Job]:
        """At most `limit` jobs newest first with ids below `before_id`, in `projects` (None:
        all), `location` and `states` (None: any), read with one indexed query."""

    @abc.abstractmethod
    def projects(self) -> builtins.list[str]:
        """The projects that have jobs."""

    @abc.abstractmethod
    def totals(self) -> StoreTotals:
        """Jobs by state and rows and tokens over all jobs, aggregated by the database."""

    @abc.abstractmethod
    def list_unfinished(self) -> builtins.list[Job]:
        """PENDING, RUNNING and CANCELLING jobs of every project, oldest first."""

    @abc.abstractmethod
    def list_held(self) -> builtins.list[Job]:
        """Scheduler jobs that hold a running slot, oldest first: RUNNING, CANCELLING, and
        PENDING ones already claimed. What a recovery scan looks at (at most the running limit
        of jobs, plus any whose runner died)."""

    @abc.abstractmethod
    def claim_next(self, owner: str, limit: int,
                   skip_projects: Collection[str] = ()) -> Job | None:
        """Claim the oldest unclaimed PENDING scheduler job for `owner` (of a project not in
        `skip_projects`), if fewer than `limit` scheduler jobs are held store-wide; None
        otherwise. One transaction."""

    @abc.abstractmethod
    def delete(self, job_id: int) -> None:
        """Remove a finished job; FailedPrecondition when it is not finished."""

    @abc.abstractmethod
    def _compare_and_set(self, job: Job, expected: JobState, owner: str | bool | None) -> bool:
        """Write `job` whole if its stored state is `expected` (and, unless `owner` is False,
        its stored owner is `owner`). True when written."""

    @abc.abstractmethod
    def find_by_fingerprint(self, fingerprint: str) -> Job | None:
        """The newest unfinished job with this fingerprint, or a resumable FAILED one."""

    # -- committed chunks ---------------------------------------------------------------
    @abc.abstractmethod
    def commit_chunk(
        self, job: Job, chunk: ChunkRecord, apply: Callable[[Job], None] | None = None
    ) -> Commit:
        """Record `chunk` as committed and write `job` (after `apply`, which adds the chunk's
        counts), in one transaction, if `job.owner` still holds the job."""

    @abc.abstractmethod
    def chunks(self, job_id: int) -> builtins.list[ChunkRecord]:
        """The job's committed chunks in row order."""

    @abc.abstractmethod
    def forget_chunks(self, job_id: int, firsts: Collection[int] | None = None) -> None:
        """Drop committed chunks (those starting at `firsts`; all when None)."""

    # -- shared logic -------------------------------------------------------------------
    def transition(
        self, job_id: int, to: JobState, mutate: Callable[[Job], None] | None = None
    ) -> Job:
        """Move a job to `to`, applying `mutate` to it in the same write. Retries on a race."""
        for _ in range(20):
            job = self.get(job_id)
            if not transition_allowed(job, to):
                raise FailedPrecondition(
                    f"Job {job_id} is {job.state.value}; it cannot become {to.value}."
                )
            expected = job.state
            job.state = to
            now = utcnow()
            job.update_time = now
            if to == JobState.JOB_STATE_RUNNING and job.start_time is None:
                job.start_time = now
            if to.is_terminal:
                job.end_time = now
                job.owner = None
            if mutate is not None:
                mutate(job)
            if self._compare_and_set(job, expected, owner=False):
                return job
        raise FailedPrecondition(f"Job {job_id} kept changing; try again.")

    def claim(self, job_id: int, owner: str, stale_after: float = 30.0) -> Job | None:
        """Make `owner` the job's runner, if nobody live holds it. None when someone does."""
        job = self.get(job_id)
        if job.state.is_terminal:
            return None
        age = utcnow() - job.heartbeat if job.heartbeat else None
        if job.owner != owner and not owner_is_gone(job.owner, age, stale_after):
            return None
        previous = job.owner
        job.owner = owner
        job.heartbeat = utcnow()
        return job if self._compare_and_set(job, job.state, owner=previous) else None

    def save_progress(self, job: Job) -> bool:
        """Write a running job's counts and checkpoint, if `job.owner` still holds it and its
        state is unchanged. False when it lost the job (cancelled, or taken over)."""
        job.heartbeat = job.update_time = utcnow()
        return self._compare_and_set(job, job.state, owner=job.owner)

    def release(self, job: Job) -> None:
        """Give up a job without finishing it (Ctrl-C, server shutdown): it stays resumable."""
        owner = job.owner
        job.owner = None
        self._compare_and_set(job, job.state, owner=owner)
