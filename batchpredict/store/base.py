"""The job store interface. Implementations: `sqlite.SQLiteJobStore` (default), PostgreSQL.

Rules every implementation keeps:
- `transition` is the only way a job's state changes. It compares and sets in one statement, so
  two processes (a server and a CLI, two API replicas) can never both move a job, and it refuses
  any pair not in `jobs.ALLOWED_TRANSITIONS`.
- `claim` gives a job to one runner: only when nobody holds it or its holder's heartbeat is
  older than `stale_after` seconds (or the holder is a dead process on this host).
"""

from __future__ import annotations

import abc
import builtins
import os
import socket
from collections.abc import Callable
from datetime import timedelta

from batchpredict.errors import FailedPrecondition, Outage
from batchpredict.jobs import Job, JobState, transition_allowed, utcnow

__all__ = ["JobStore", "owner_is_gone", "store_outage"]


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
        """Jobs newest first, all projects when `project` is None."""

    @abc.abstractmethod
    def list_unfinished(self) -> builtins.list[Job]:
        """PENDING, RUNNING and CANCELLING jobs of every project, oldest first: what a
        scheduler looks at, without reading the finished ones."""

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
