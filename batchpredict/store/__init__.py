"""Job stores. `open_store(settings)` picks the one the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchpredict.store.base import JobStore
from batchpredict.store.sqlite import SQLiteJobStore

if TYPE_CHECKING:
    from batchpredict.config import Settings

__all__ = ["JobStore", "SQLiteJobStore", "open_store"]


def open_store(settings: Settings) -> JobStore:
    url = settings.store_url
    if not url or url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///") if url else settings.sqlite_path
        return SQLiteJobStore(path)
    if url.startswith(("postgresql://", "postgres://")):
        from batchpredict.store.postgres import PostgresJobStore

        return PostgresJobStore(url)
    from batchpredict.errors import InvalidArgument

    raise InvalidArgument(
        f"BATCHPREDICT_STORE_URL={url!r} is not supported. Use sqlite:///PATH or postgresql://..."
    )
