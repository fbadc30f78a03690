"""The file store's table, beside `jobs` in the same SQLite or PostgreSQL database: one row per
file (`files.StoredFile`), a few indexed columns for listing and expiry, the whole record as JSON.

Listing is newest first by (created, id), so a cursor is the last file seen; expired files and
unfinished uploads are never listed. Written once for both dialects, like `sql.py`.
"""

from __future__ import annotations

import builtins
from typing import Any

import orjson

from batchpredict.errors import NotFound
from batchpredict.files import FileState, StoredFile

__all__ = ["FILES_SCHEMA", "SQLFileTable"]

#: Portable DDL: both SQLite and PostgreSQL accept it as is.
FILES_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL,
    state TEXT NOT NULL,
    created BIGINT NOT NULL,
    expires BIGINT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS files_project ON files (project, created);
"""


def _micros(f: StoredFile) -> tuple[int, int | None]:
    created = int(f.create_time.timestamp() * 1_000_000)
    expires = int(f.expire_time.timestamp() * 1_000_000) if f.expire_time else None
    return created, expires


class SQLFileTable:
    """File methods of a SQL job store (`SQLJobStore` mixes this in)."""

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> tuple[list[tuple[Any, ...]], int]:
        raise NotImplementedError  # the dialect's

    @staticmethod
    def _load_file(data: Any) -> StoredFile:
        return StoredFile.from_record(data if isinstance(data, dict) else orjson.loads(data))

    def create_file(self, f: StoredFile) -> bool:
        """Store a new file; False (and nothing written) when its id exists already."""
        created, expires = _micros(f)
        _, count = self._query(
            "INSERT INTO files (id, project, state, created, expires, data) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (id) DO NOTHING",
            (f.id, f.project, f.state.value, created, expires,
             orjson.dumps(f.to_record()).decode()),
        )
        return count == 1

    def save_file(self, f: StoredFile) -> None:
        _, expires = _micros(f)
        self._query("UPDATE files SET state=?, expires=?, data=? WHERE id=?",
                    (f.state.value, expires, orjson.dumps(f.to_record()).decode(), f.id))

    def get_file(self, file_id: str) -> StoredFile:
        rows, _ = self._query("SELECT data FROM files WHERE id=?", (file_id,))
        if not rows:
            raise NotFound(f"No such File object: {file_id}")
        return self._load_file(rows[0][0])

    def delete_file(self, file_id: str) -> None:
        self._query("DELETE FROM files WHERE id=?", (file_id,))

    def list_files(
        self, projects: builtins.list[str] | None, now_micros: int, limit: int,
        after: tuple[int, str] | None = None,
    ) -> builtins.list[StoredFile]:
        """Active, unexpired files of `projects` (None: every project), newest first, from just
        after the cursor `after` = (created, id) of the last file of the previous page."""
        sql = "SELECT data FROM files WHERE state=? AND (expires IS NULL OR expires > ?)"
        args: tuple[Any, ...] = (FileState.ACTIVE.value, now_micros)
        if projects is not None:
            if not projects:
                return []
            sql += f" AND project IN ({','.join('?' * len(projects))})"
            args += tuple(projects)
        if after is not None:
            sql += " AND (created < ? OR (created = ? AND id < ?))"
            args += (after[0], after[0], after[1])
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        rows, _ = self._query(sql, (*args, limit))
        return [self._load_file(r[0]) for r in rows]
