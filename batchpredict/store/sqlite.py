"""SQLite job store: one file in the data directory, WAL mode, safe across processes.

A job is one row: a few indexed columns for lookups plus the whole record as JSON, written in one
statement; `_compare_and_set` is an UPDATE guarded by the expected state (and owner).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import orjson

from batchpredict.errors import FailedPrecondition, NotFound
from batchpredict.jobs import Job, JobState
from batchpredict.store.base import JobStore

__all__ = ["SQLiteJobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    fingerprint TEXT,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project, id);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint);
"""


class SQLiteJobStore(JobStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30
        )
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _dump(job: Job) -> bytes:
        return orjson.dumps(job.to_record())

    def create(self, job: Job) -> Job:
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO jobs (project, state, owner, fingerprint, data) VALUES (?,?,?,?,?)",
                (job.project, job.state.value, job.owner, job.fingerprint, b"{}"),
            )
            job.id = int(cur.lastrowid or 0)
            self._db.execute("UPDATE jobs SET data=? WHERE id=?", (self._dump(job), job.id))
        return job

    def get(self, job_id: int) -> Job:
        with self._lock:
            row = self._db.execute("SELECT data FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"BatchPredictionJob {job_id} was not found.")
        return Job.from_record(orjson.loads(row[0]))

    def list(self, project: str | None = None) -> list[Job]:
        with self._lock:
            if project is None:
                rows = self._db.execute("SELECT data FROM jobs ORDER BY id DESC").fetchall()
            else:
                rows = self._db.execute(
                    "SELECT data FROM jobs WHERE project=? ORDER BY id DESC", (project,)
                ).fetchall()
        return [Job.from_record(orjson.loads(r[0])) for r in rows]

    def delete(self, job_id: int) -> None:
        job = self.get(job_id)
        if not job.state.is_terminal:
            raise FailedPrecondition(
                f"Job {job_id} is {job.state.value}; only a finished job can be deleted. "
                "Cancel it first."
            )
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def _compare_and_set(self, job: Job, expected: JobState, owner: str | None | bool) -> bool:
        sql = "UPDATE jobs SET state=?, owner=?, fingerprint=?, data=? WHERE id=? AND state=?"
        args: list[object] = [
            job.state.value,
            job.owner,
            job.fingerprint,
            self._dump(job),
            job.id,
            expected.value,
        ]
        if owner is not False:
            sql += " AND owner IS ?"
            args.append(owner)
        with self._lock:
            cur = self._db.execute(sql, args)
        return cur.rowcount == 1

    def find_by_fingerprint(self, fingerprint: str) -> Job | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM jobs WHERE fingerprint=? AND state IN (?,?,?) "
                "ORDER BY id DESC LIMIT 1",
                (
                    fingerprint,
                    JobState.JOB_STATE_PENDING.value,
                    JobState.JOB_STATE_RUNNING.value,
                    JobState.JOB_STATE_CANCELLING.value,
                ),
            ).fetchone()
        return None if row is None else Job.from_record(orjson.loads(row[0]))
