"""The job store in SQL, shared by SQLite and PostgreSQL: one row per job, a few indexed columns
for lookups and the whole record as JSON, each change one guarded UPDATE. The file store's table
sits beside it (`files.py`, mixed in).

A dialect supplies `_query` (run one statement, return its rows and rowcount), its schema and its
placeholder; the statements are written once, with `?` placeholders.
"""

from __future__ import annotations

import abc
import builtins
from typing import Any

import orjson

from batchpredict.errors import FailedPrecondition, NotFound
from batchpredict.jobs import Job, JobState
from batchpredict.store.base import JobStore
from batchpredict.store.files import SQLFileTable

__all__ = ["SQLJobStore"]

_UNFINISHED = (
    JobState.JOB_STATE_PENDING.value,
    JobState.JOB_STATE_RUNNING.value,
    JobState.JOB_STATE_CANCELLING.value,
)


class SQLJobStore(SQLFileTable, JobStore):
    @abc.abstractmethod
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement (with `?` placeholders); (rows, rowcount)."""

    @staticmethod
    def _dump(job: Job) -> str:
        return orjson.dumps(job.to_record()).decode()

    @staticmethod
    def _load(row: tuple[Any, ...]) -> Job:
        """A job from (id, data): the id column is the truth (a new row's record says 0)."""
        job_id, data = row
        job = Job.from_record(data if isinstance(data, dict) else orjson.loads(data))
        job.id = int(job_id)
        return job

    def create(self, job: Job) -> Job:
        # One statement: no reader ever sees the row without its record.
        rows, _ = self._query(
            "INSERT INTO jobs (project, state, owner, fingerprint, data) VALUES (?,?,?,?,?) "
            "RETURNING id",
            (job.project, job.state.value, job.owner, job.fingerprint, self._dump(job)),
        )
        job.id = int(rows[0][0])
        return job

    def get(self, job_id: int) -> Job:
        rows, _ = self._query("SELECT id, data FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise NotFound(f"BatchPredictionJob {job_id} was not found.")
        return self._load(rows[0])

    def list(self, project: str | None = None) -> list[Job]:
        if project is None:
            rows, _ = self._query("SELECT id, data FROM jobs ORDER BY id DESC")
        else:
            rows, _ = self._query(
                "SELECT id, data FROM jobs WHERE project=? ORDER BY id DESC", (project,)
            )
        return [self._load(r) for r in rows]

    def list_unfinished(self) -> builtins.list[Job]:
        rows, _ = self._query(
            "SELECT id, data FROM jobs WHERE state IN (?,?,?) ORDER BY id", _UNFINISHED
        )
        return [self._load(r) for r in rows]

    def delete(self, job_id: int) -> None:
        job = self.get(job_id)
        if not job.state.is_terminal:
            raise FailedPrecondition(
                f"Job {job_id} is {job.state.value}; only a finished job can be deleted. "
                "Cancel it first."
            )
        self._query("DELETE FROM jobs WHERE id=?", (job_id,))

    def _compare_and_set(self, job: Job, expected: JobState, owner: str | bool | None) -> bool:
        sql = "UPDATE jobs SET state=?, owner=?, fingerprint=?, data=? WHERE id=? AND state=?"
        args: tuple[Any, ...] = (
            job.state.value, job.owner, job.fingerprint, self._dump(job), job.id, expected.value,
        )
        if owner is not False:
            sql += " AND owner IS NOT DISTINCT FROM ?"
            args += (owner,)
        _, count = self._query(sql, args)
        return count == 1

    def find_by_fingerprint(self, fingerprint: str) -> Job | None:
        rows, _ = self._query(
            "SELECT id, data FROM jobs WHERE fingerprint=? AND state IN (?,?,?,?) "
            "ORDER BY id DESC LIMIT 1",
            (fingerprint, *_UNFINISHED, JobState.JOB_STATE_FAILED.value),
        )
        job = self._load(rows[0]) if rows else None
        return job if job is not None and (not job.state.is_terminal or job.resumable) else None
