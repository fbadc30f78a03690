"""SQLite job store: one file in the data directory, WAL mode, safe across processes (the
guarded UPDATEs of `SQLJobStore` are atomic in SQLite too, and its transactions start with
BEGIN IMMEDIATE, which takes the database's one write lock)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from batchpredict.store.base import store_outage
from batchpredict.store.files import FILES_SCHEMA
from batchpredict.store.sql import Query, SQLJobStore

__all__ = ["SQLiteJobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    fingerprint TEXT,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS job_chunks (
    job_id INTEGER NOT NULL,
    first_row INTEGER NOT NULL,
    last_row INTEGER NOT NULL,
    succeeded INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    candidates_tokens INTEGER NOT NULL,
    PRIMARY KEY (job_id, first_row)
);
"""
#: Columns added after the first release, with how to fill them from the record.
_ADDED = {
    "location": "json_extract(data, '$.location')",
    "runs_in": "COALESCE(json_extract(data, '$.runs_in'), "
               "CASE WHEN fingerprint IS NULL THEN 'scheduler' ELSE 'command' END)",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project, id);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint);
CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_held ON jobs (runs_in, state, owner);
"""


_CHECK = "Check that its disk has space and that the file and its folder are writable."


class SQLiteJobStore(SQLJobStore):
    _HELD_INDEX = " INDEXED BY jobs_held"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._create_schema()
        except sqlite3.OperationalError as exc:
            raise store_outage(str(self.path), exc, _CHECK) from None

    def _create_schema(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in (_SCHEMA + FILES_SCHEMA).split(";")[:-1]:
                self._db.execute(statement)
            have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
            for column, fill in _ADDED.items():
                if column not in have:
                    self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} TEXT")
                    self._db.execute(f"UPDATE jobs SET {column} = {fill}")
            for statement in _INDEXES.split(";")[:-1]:
                self._db.execute(statement)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        with self._lock:
            try:
                cur = self._db.execute(sql, args)
                rows = cur.fetchall()
            except sqlite3.OperationalError as exc:  # disk I/O error, read-only, locked, full
                raise store_outage(str(self.path), exc, _CHECK) from None
            return rows, cur.rowcount

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Query]:
        def q(sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
            cur = self._db.execute(sql, args)
            return cur.fetchall(), cur.rowcount

        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield q
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # disk I/O error, read-only, locked, full
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise store_outage(str(self.path), exc, _CHECK) from None

    def _json_int(self, path: str) -> str:
        return f"COALESCE(json_extract(data, '$.{path}'), 0)"
