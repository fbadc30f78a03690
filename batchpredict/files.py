"""A file in a project's file store, as the job store keeps it and every face reads it.

Two kinds share one id space per server (`file-...`, valid as an OpenAI file id and as a Gemini
`files/{id}` name):

- an upload: bytes someone sent (`POST /v1/files`, the Gemini resumable upload, the console's
  upload, a Gemini batch's inlined requests), stored at `uri` under `Settings.uploads_uri`;
- a job's output file: a view of one finished job's output (`uri` is its output folder), its
  succeeded rows ("output"), its failed rows ("errors") or every line ("responses"). Its id is
  derived from the job's, so asking twice makes one file. Deleting it leaves a tombstone (the job's
  output folder stays, as a Vertex delete leaves it).

The bytes of an upload live in storage; this record is the file's metadata (`store/files.py`).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from batchpredict.jobs import format_time, parse_time, utcnow

__all__ = ["FileState", "StoredFile", "new_file_id", "output_file_id"]

#: Output part of a job -> the suffix of its file id.
OUTPUT_SUFFIX = {"succeeded": "output", "failed": "errors", "all": "responses"}


class FileState(StrEnum):
    #: A resumable upload under way: not listed, not usable.
    UPLOADING = "uploading"
    ACTIVE = "active"
    #: A deleted output file: kept so the job's output is not offered again.
    DELETED = "deleted"


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def output_file_id(job_id: int, part: str) -> str:
    return f"file-batch{job_id}-{OUTPUT_SUFFIX[part]}"


@dataclass
class StoredFile:
    id: str
    project: str
    filename: str
    #: OpenAI's purposes ("batch", "batch_output", "user_data", ...); Gemini files: "user_data".
    purpose: str
    size_bytes: int = 0
    mime_type: str = "application/jsonl"
    create_time: datetime = dataclasses.field(default_factory=utcnow)
    update_time: datetime = dataclasses.field(default_factory=utcnow)
    expire_time: datetime | None = None
    state: FileState = FileState.ACTIVE
    #: An upload: where its bytes are. An output file: the job's output folder.
    uri: str = ""
    sha256: str | None = None
    #: An output file: its job, that job's line format, and which rows ("succeeded" | "failed" |
    #: "all").
    job_id: int | None = None
    line_format: str | None = None
    part: str | None = None
    #: A resumable upload's secret (the upload URL carries it) and the size it announced.
    upload_secret: str | None = None
    declared_size: int | None = None

    @property
    def is_output(self) -> bool:
        return self.job_id is not None

    def expired(self, now: datetime | None = None) -> bool:
        return self.expire_time is not None and self.expire_time <= (now or utcnow())

    def to_record(self) -> dict[str, Any]:
        rec = dataclasses.asdict(self)
        rec["state"] = self.state.value
        for key in ("create_time", "update_time", "expire_time"):
            rec[key] = format_time(getattr(self, key))
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> StoredFile:
        rec = dict(rec)
        rec["state"] = FileState(rec.get("state") or FileState.ACTIVE)
        for key in ("create_time", "update_time", "expire_time"):
            rec[key] = parse_time(rec.get(key))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in rec.items() if k in known})
