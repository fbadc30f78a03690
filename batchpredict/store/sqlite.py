"""SQLite job store: one file in the data directory, WAL mode, safe across processes (the
guarded UPDATEs of `SQLJobStore` are atomic in SQLite too)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from batchpredict.store.base import store_outage
from batchpredict.store.files import FILES_SCHEMA
from batchpredict.store.sql import SQLJobStore

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
CREATE INDEX IF NOT EXISTS jobs_project ON jobs (project, id);
CREATE INDEX IF NOT EXISTS jobs_fingerprint ON jobs (fingerprint);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state);
"""


_CHECK = "Check that its disk has space and that the file and its folder are writable."


class SQLiteJobStore(SQLJobStore):
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
                self._db.executescript(_SCHEMA + FILES_SCHEMA)
        except sqlite3.OperationalError as exc:
            raise store_outage(str(self.path), exc, _CHECK) from None

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
