"""The job store in SQL, shared by SQLite and PostgreSQL: one row per job, a few indexed columns
for lookups (project, location, state, runs_in, owner, fingerprint) and the whole record as JSON,
each change one guarded UPDATE; one row per committed chunk of a running job. The file store's
table sits beside it (`files.py`, mixed in).

    jobs        (id, project, location, state, runs_in, owner, fingerprint, data)
    job_chunks  (job_id, first_row, last_row, succeeded, failed, prompt_tokens,
                 candidates_tokens)      primary key (job_id, first_row)

A dialect supplies `_query` (run one statement, return its rows and rowcount), `_transaction`
(several statements, all or none), its schema, `_LOCK_JOB` (lock one job row for the rest of a
transaction), `_claim_lock` (serialise claims store-wide) and `_json_int` (a number in the
record); the statements are written once, with `?` placeholders.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
from collections.abc import Callable, Collection
from typing import Any

import orjson

from batchpredict.errors import FailedPrecondition, NotFound
from batchpredict.jobs import Job, JobState, RowCounts, RunsIn, utcnow
from batchpredict.store.base import ChunkRecord, Commit, JobStore, StoreTotals
from batchpredict.store.files import SQLFileTable

__all__ = ["SQLJobStore"]

S = JobState
Query = Callable[..., tuple[list[tuple[Any, ...]], int]]
_UNFINISHED = (S.JOB_STATE_PENDING.value, S.JOB_STATE_RUNNING.value, S.JOB_STATE_CANCELLING.value)
#: Jobs that hold a running slot: RUNNING, CANCELLING, and PENDING ones a runner has claimed.
#: Two conditions, each a range of the (runs_in, state, owner) index (an OR of them is not).
_HELD = (
    ("runs_in=? AND state IN (?,?)",
     (RunsIn.SCHEDULER.value, S.JOB_STATE_RUNNING.value, S.JOB_STATE_CANCELLING.value)),
    ("runs_in=? AND state=? AND owner IS NOT NULL",
     (RunsIn.SCHEDULER.value, S.JOB_STATE_PENDING.value)),
)
_HELD_ARGS = _HELD[0][1] + _HELD[1][1]
_COLUMNS = "project, location, state, runs_in, owner, fingerprint, data"


class SQLJobStore(SQLFileTable, JobStore):
    #: Appended to a SELECT of one job inside a transaction to lock its row ("" in SQLite,
    #: whose transactions take the write lock at BEGIN).
    _LOCK_JOB = ""
    #: After `FROM jobs` in the held-jobs queries: SQLite's planner, without statistics, picks
    #: the state index and scans every pending job.
    _HELD_INDEX = ""

    @abc.abstractmethod
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        """Run one statement (with `?` placeholders); (rows, rowcount)."""

    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Query]:
        """A function that runs statements in one transaction, committed when the block ends
        (rolled back if it raises)."""

    def _claim_lock(self, q: Query) -> None:
        """Serialise `claim_next` across every process on the store (SQLite: BEGIN IMMEDIATE
        already does)."""

    @abc.abstractmethod
    def _json_int(self, path: str) -> str:
        """An SQL expression: the integer at `path` (dotted) in the `data` column, 0 if absent."""

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

    def _values(self, job: Job) -> tuple[Any, ...]:
        return (job.project, job.location, job.state.value, job.runs_in.value, job.owner,
                job.fingerprint, self._dump(job))

    def create(self, job: Job) -> Job:
        # One statement: no reader ever sees the row without its record.
        rows, _ = self._query(
            f"INSERT INTO jobs ({_COLUMNS}) VALUES (?,?,?,?,?,?,?) RETURNING id",
            self._values(job),
        )
        job.id = int(rows[0][0])
        return job

    def get(self, job_id: int) -> Job:
        rows, _ = self._query("SELECT id, data FROM jobs WHERE id=?", (job_id,))
        if not rows:
            raise NotFound(f"BatchPredictionJob {job_id} was not found.")
        return self._load(rows[0])

    def list(self, project: str | None = None) -> list[Job]:
        return self.page(limit=2**62, projects=None if project is None else [project])

    def page(
        self,
        limit: int,
        before_id: int | None = None,
        projects: Collection[str] | None = None,
        location: str | None = None,
        states: Collection[JobState] | None = None,
    ) -> builtins.list[Job]:
        where: builtins.list[str] = []
        args: builtins.list[Any] = []
        if before_id is not None:
            where.append("id<?")
            args.append(before_id)
        for column, values in (("project", projects),
                               ("state", None if states is None else [s.value for s in states])):
            if values is None:
                continue
            if not values:
                return []
            where.append(f"{column} IN ({','.join('?' * len(values))})")
            args.extend(sorted(values))
        if location is not None:
            where.append("location=?")
            args.append(location)
        clause = f"WHERE {' AND '.join(where)} " if where else ""
        rows, _ = self._query(
            f"SELECT id, data FROM jobs {clause}ORDER BY id DESC LIMIT ?", (*args, limit)
        )
        return [self._load(r) for r in rows]

    def projects(self) -> builtins.list[str]:
        rows, _ = self._query("SELECT DISTINCT project FROM jobs ORDER BY project")
        return [r[0] for r in rows]

    def totals(self) -> StoreTotals:
        fields = ("counts.succeeded", "counts.failed", "counts.prompt_tokens",
                  "counts.candidates_tokens", "incomplete")
        sums = ", ".join(f"SUM({self._json_int(f)})" for f in fields)
        rows, _ = self._query(f"SELECT state, COUNT(*), {sums} FROM jobs GROUP BY state")
        jobs: dict[JobState, int] = {}
        counts, incomplete = RowCounts(), 0
        for state, n, ok, failed, prompt, cand, inc in rows:
            jobs[JobState(state)] = int(n)
            counts.add(RowCounts(int(ok or 0), int(failed or 0), int(prompt or 0),
                                 int(cand or 0)))
            incomplete += int(inc or 0)
        return StoreTotals(jobs, counts, incomplete)

    def list_unfinished(self) -> builtins.list[Job]:
        rows, _ = self._query(
            "SELECT id, data FROM jobs WHERE state IN (?,?,?) ORDER BY id", _UNFINISHED
        )
        return [self._load(r) for r in rows]

    def list_held(self) -> builtins.list[Job]:
        (a, _), (b, _) = _HELD
        held = f"FROM jobs{self._HELD_INDEX} WHERE"
        rows, _ = self._query(
            f"SELECT id, data {held} {a} UNION ALL SELECT id, data {held} {b} ORDER BY id",
            _HELD_ARGS,
        )
        return [self._load(r) for r in rows]

    def claim_next(self, owner: str, limit: int,
                   skip_projects: Collection[str] = ()) -> Job | None:
        with self._transaction() as q:
            self._claim_lock(q)
            (a, _), (b, _) = _HELD
            where = f"FROM jobs{self._HELD_INDEX} WHERE"
            held = q(f"SELECT (SELECT COUNT(*) {where} {a}) + (SELECT COUNT(*) {where} {b})",
                     _HELD_ARGS)[0][0][0]
            if int(held) >= limit:
                return None
            skip = sorted(skip_projects)
            others = f" AND project NOT IN ({','.join('?' * len(skip))})" if skip else ""
            rows, _ = q(
                "SELECT id, data FROM jobs WHERE state=? AND runs_in=? AND owner IS NULL"
                f"{others} ORDER BY id LIMIT 1{self._LOCK_JOB}",
                (S.JOB_STATE_PENDING.value, RunsIn.SCHEDULER.value, *skip),
            )
            if not rows:
                return None
            job = self._load(rows[0])
            job.owner, job.heartbeat = owner, utcnow()
            _, n = q("UPDATE jobs SET owner=?, data=? WHERE id=? AND state=? AND owner IS NULL",
                     (owner, self._dump(job), job.id, S.JOB_STATE_PENDING.value))
            return job if n == 1 else None

    def delete(self, job_id: int) -> None:
        job = self.get(job_id)
        if not job.state.is_terminal:
            raise FailedPrecondition(
                f"Job {job_id} is {job.state.value}; only a finished job can be deleted. "
                "Cancel it first."
            )
        self._query("DELETE FROM jobs WHERE id=?", (job_id,))
        self.forget_chunks(job_id)

    def _compare_and_set(self, job: Job, expected: JobState, owner: str | bool | None) -> bool:
        sql = ("UPDATE jobs SET state=?, owner=?, fingerprint=?, runs_in=?, data=? "
               "WHERE id=? AND state=?")
        args: tuple[Any, ...] = (
            job.state.value, job.owner, job.fingerprint, job.runs_in.value, self._dump(job),
            job.id, expected.value,
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

    # -- committed chunks ---------------------------------------------------------------
    def commit_chunk(
        self, job: Job, chunk: ChunkRecord, apply: Callable[[Job], None] | None = None
    ) -> Commit:
        with self._transaction() as q:
            rows, _ = q(f"SELECT state, owner FROM jobs WHERE id=?{self._LOCK_JOB}", (job.id,))
            if not rows or rows[0][1] != job.owner or JobState(rows[0][0]).is_terminal:
                return Commit.LOST
            found, _ = q(
                "SELECT first_row, last_row FROM job_chunks WHERE job_id=? AND first_row<=? "
                "AND last_row>=? LIMIT 1",
                (job.id, chunk.last, chunk.first),
            )
            if found:
                same = (int(found[0][0]), int(found[0][1])) == (chunk.first, chunk.last)
                return Commit.DUPLICATE if same else Commit.OVERLAP
            c = chunk.counts
            q("INSERT INTO job_chunks (job_id, first_row, last_row, succeeded, failed, "
              "prompt_tokens, candidates_tokens) VALUES (?,?,?,?,?,?,?)",
              (job.id, chunk.first, chunk.last, c.succeeded, c.failed, c.prompt_tokens,
               c.candidates_tokens))
            if apply is not None:
                apply(job)
            job.heartbeat = job.update_time = utcnow()
            # A cancel may have come: the record keeps the stored state (the runner learns of
            # the cancel from its next heartbeat, which finds the state changed).
            mine, job.state = job.state, JobState(rows[0][0])
            try:
                q("UPDATE jobs SET data=? WHERE id=?", (self._dump(job), job.id))
            finally:
                job.state = mine
            return Commit.COMMITTED

    def chunks(self, job_id: int) -> builtins.list[ChunkRecord]:
        rows, _ = self._query(
            "SELECT first_row, last_row, succeeded, failed, prompt_tokens, candidates_tokens "
            "FROM job_chunks WHERE job_id=? ORDER BY first_row",
            (job_id,),
        )
        return [ChunkRecord(int(a), int(b), RowCounts(int(s), int(f), int(p), int(c)))
                for a, b, s, f, p, c in rows]

    def forget_chunks(self, job_id: int, firsts: Collection[int] | None = None) -> None:
        if firsts is None:
            self._query("DELETE FROM job_chunks WHERE job_id=?", (job_id,))
            return
        with self._transaction() as q:
            for first in firsts:
                q("DELETE FROM job_chunks WHERE job_id=? AND first_row=?", (job_id, first))

