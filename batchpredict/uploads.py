"""The file store: files people upload and the output files of jobs, one area per project.

Bytes live under `Settings.uploads_uri` (a folder, gs:// or s3://), one folder per file,
`{root}/{project}/{file id}/{file name}`, written with `storage.open_atomic_writer` so a reader
never sees half a file. Metadata (`files.StoredFile`: id, name, size, purpose, expiry, sha256)
is a row of the job store's `files` table (`store/files.py`), so every server sharing the store
sees the same files.

- A file belongs to one project, the caller's target project; a caller that may not use that
  project gets NotFound for it, never PermissionDenied.
- A resumable upload (the Gemini Files API) is a file in state UPLOADING whose chunks are part
  objects `{folder}/parts/{offset}`, joined into the file when the client finalizes; the upload URL
  carries a secret, as Google's upload URLs do, so chunks need no other credential.
- A job's output files are views of its output folder (`OutputReader.part`), made the first time
  a face asks for them once the job is finished; their sizes come from one pass over the output.
- An expired file is refused at once (NotFound) and its bytes removed when next touched.

The job service hands this out as `JobService.files`; faces never reach storage themselves.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterator
from datetime import timedelta
from typing import IO, TYPE_CHECKING

from batchpredict import storage
from batchpredict.config import Settings
from batchpredict.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from batchpredict.files import (
    OUTPUT_SUFFIX,
    FileState,
    StoredFile,
    new_file_id,
    output_file_id,
)
from batchpredict.jobs import Job, utcnow
from batchpredict.output import OutputReader
from batchpredict.policy import area_name

if TYPE_CHECKING:
    from batchpredict.service import Scope
    from batchpredict.store.files import SQLFileTable

__all__ = ["FileStore", "safe_file_name"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
BLOCK = 4 * 1024 * 1024


def safe_file_name(name: str | None) -> str:
    """The last path segment of an uploaded file's name, reduced to [A-Za-z0-9._-]."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip("._")[:100]
    return base or "input.jsonl"


def _content_uri(root: str, project: str, file_id: str, filename: str) -> str:
    # the project's own uploads area, as the data policy names it (policy.area_name)
    uri = storage.join(root, area_name(project), file_id, safe_file_name(filename))
    storage.check_uri(uri, "output")
    if storage.is_local(uri):  # a job reads it later, maybe from another working directory
        uri = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return uri


def _copy(blocks: Iterator[bytes], uri: str) -> tuple[int, str]:
    """Write `blocks` to `uri` atomically; (bytes written, sha256 hex)."""
    digest, size = hashlib.sha256(), 0
    with storage.open_atomic_writer(uri) as out:
        for block in blocks:
            out.write(block)
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _read_blocks(src: IO[bytes]) -> Iterator[bytes]:
    src.seek(0)
    while block := src.read(BLOCK):
        yield block


def _stream(uri: str) -> Iterator[bytes]:
    with storage.open_read(uri) as f:
        while block := f.read(BLOCK):
            yield block


class FileStore:
    def __init__(self, table: SQLFileTable | None, settings: Settings) -> None:
        self._table = table
        self.settings = settings

    @property
    def table(self) -> SQLFileTable:
        if self._table is None:
            raise Unavailable("This job store keeps no files; use the SQLite or PostgreSQL store.")
        return self._table

    # -- uploads --------------------------------------------------------------------------
    async def upload(
        self, scope: Scope, src: IO[bytes], filename: str | None, purpose: str,
        mime_type: str = "application/jsonl", expires_after: float | None = None,
    ) -> StoredFile:
        """Store a whole file (a multipart upload, inlined requests) in the caller's project."""
        f = self._new(scope, filename, purpose, mime_type, expires_after)

        def write() -> StoredFile:
            f.size_bytes, f.sha256 = _copy(_read_blocks(src), f.uri)
            self.table.create_file(f)
            return f

        return await asyncio.to_thread(write)

    async def start_upload(self, scope: Scope, filename: str | None, mime_type: str,
                           size: int | None) -> tuple[StoredFile, str]:
        """Begin a resumable upload; the file and the token its upload URL carries."""
        f = self._new(scope, filename, "user_data", mime_type, None)
        f.state, f.declared_size = FileState.UPLOADING, size
        secret = secrets.token_hex(16)
        f.upload_secret = hashlib.sha256(secret.encode()).hexdigest()
        await asyncio.to_thread(self.table.create_file, f)
        return f, f"{f.id}.{secret}"

    async def append_upload(self, token: str, offset: int, data: bytes,
                            finalize: bool) -> StoredFile:
        """One chunk of a resumable upload at `offset`; with `finalize`, the file is complete."""
        file_id, _, secret = token.partition(".")
        try:
            f = await asyncio.to_thread(self.table.get_file, file_id)
        except NotFound:
            f = None
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if (f is None or f.state != FileState.UPLOADING or f.upload_secret is None
                or not hmac.compare_digest(f.upload_secret, digest)):
            raise NotFound("No upload in progress has this upload_id; start the upload again.")
        return await asyncio.to_thread(self._append, f, offset, data, finalize)

    def _append(self, f: StoredFile, offset: int, data: bytes, finalize: bool) -> StoredFile:
        parts_dir = storage.join(f.uri.rsplit("/", 1)[0], "parts")
        parts = storage.list_files(parts_dir)
        if finalize and offset == 0 and not parts:  # the whole file in one chunk: no parts
            self._check_size(f, len(data))
            f.size_bytes, f.sha256 = _copy(iter([data]), f.uri)
            return self._activate(f)
        if data or not finalize:
            storage.write_atomic(storage.join(parts_dir, f"{offset:016d}"), data)
        if not finalize:
            return f
        parts = storage.list_files(parts_dir)
        expected = 0
        for uri in parts:  # the chunks must cover the file without gaps
            start = int(uri.rsplit("/", 1)[1])
            if start != expected:
                raise InvalidArgument(f"The upload is missing bytes {expected}-{start - 1}; "
                                      "send every chunk, in order, before finalizing.")
            expected += storage.size(uri)
        self._check_size(f, expected)
        f.size_bytes, f.sha256 = _copy((b for uri in parts for b in _stream(uri)), f.uri)
        for uri in parts:
            storage.remove(uri)
        storage.remove_empty_dir(parts_dir)
        return self._activate(f)

    @staticmethod
    def _check_size(f: StoredFile, size: int) -> None:
        if f.declared_size is not None and size != f.declared_size:
            raise InvalidArgument(f"The upload has {size} bytes but announced "
                                  f"{f.declared_size} (X-Goog-Upload-Header-Content-Length).")

    def _activate(self, f: StoredFile) -> StoredFile:
        f.state, f.upload_secret, f.update_time = FileState.ACTIVE, None, utcnow()
        self.table.save_file(f)
        return f

    def _new(self, scope: Scope, filename: str | None, purpose: str, mime_type: str,
             expires_after: float | None) -> StoredFile:
        project = scope.target[0]
        scope.check_parent()
        file_id = new_file_id()
        name = safe_file_name(filename)
        f = StoredFile(id=file_id, project=project, filename=name, purpose=purpose,
                       mime_type=mime_type,
                       uri=_content_uri(self.settings.uploads_uri, project, file_id, name))
        if expires_after is not None:
            f.expire_time = f.create_time + timedelta(seconds=expires_after)
        return f

    # -- reading --------------------------------------------------------------------------
    async def get(self, scope: Scope, file_id: str) -> StoredFile:
        """A usable file the caller may see, else NotFound."""
        try:
            f = await asyncio.to_thread(self.table.get_file, file_id)
        except NotFound:
            f = None
        if f is None or f.state != FileState.ACTIVE or not scope.caller.may_use(f.project):
            raise NotFound(f"No such File object: {file_id}")
        if f.expired():
            await asyncio.to_thread(self._remove, f)
            raise NotFound(f"File {file_id} expired at {f.expire_time}.")
        return f

    async def list(self, scope: Scope, limit: int, after: str | None = None,
                   purpose: str | None = None) -> tuple[builtins.list[StoredFile], bool]:
        """The caller's files, newest first, after the file `after`; and whether more follow."""
        cursor = None
        if after:
            last = await self.get(scope, after)
            cursor = (int(last.create_time.timestamp() * 1_000_000), last.id)
        projects = scope.caller.projects
        names = None if projects is None else sorted(projects)
        now = int(utcnow().timestamp() * 1_000_000)
        found: builtins.list[StoredFile] = []
        while True:  # a purpose filter may drop rows: read on until the page is full
            rows = await asyncio.to_thread(self.table.list_files, names, now, limit + 1, cursor)
            for f in rows:
                if purpose is None or f.purpose == purpose:
                    found.append(f)
            if len(rows) <= limit or len(found) > limit:
                break
            cursor = (int(rows[-1].create_time.timestamp() * 1_000_000), rows[-1].id)
        return found[:limit], len(found) > limit

    async def head(self, f: StoredFile, lines: int) -> builtins.list[bytes]:
        """The first `lines` non-blank lines of an upload (each cut at the line size limit)."""
        limit = self.settings.max_line_bytes

        def read() -> builtins.list[bytes]:
            found: builtins.list[bytes] = []
            with storage.open_read(f.uri) as src:
                while len(found) < lines and (raw := src.readline(limit)):
                    if raw.strip():
                        found.append(raw)
            return found

        return await asyncio.to_thread(read)

    async def content(self, scope: Scope, file_id: str) -> tuple[StoredFile, Iterator[bytes]]:
        """A file and its bytes, as blocks (an output file: the lines of its part)."""
        f = await self.get(scope, file_id)
        if f.is_output:
            assert f.part is not None
            return f, OutputReader(f.uri, f.line_format or "vertex").blocks(f.part)
        return f, _stream(f.uri)

    async def delete(self, scope: Scope, file_id: str) -> StoredFile:
        """Delete a file: an upload's bytes go too; an output file leaves the job's output."""
        f = await self.get(scope, file_id)
        await asyncio.to_thread(self._remove, f)
        return f

    def _remove(self, f: StoredFile) -> None:
        if f.is_output:  # a tombstone, so the job does not offer this part again
            f.state = FileState.DELETED
            self.table.save_file(f)
            return
        storage.remove(f.uri)
        storage.remove_empty_dir(f.uri.rsplit("/", 1)[0])
        self.table.delete_file(f.id)

    # -- a job's output files -------------------------------------------------------------
    async def job_outputs(self, job: Job, parts: tuple[str, ...],
                          expires_after: float | None = None) -> dict[str, StoredFile]:
        """The output files of a finished job (`parts` of "succeeded", "failed", "all"), made
        the first time they are asked for; a part with no lines has no file."""
        if not job.state.is_terminal or not job.output_dir:
            return {}
        return await asyncio.to_thread(self._job_outputs, job, parts, expires_after)

    def _job_outputs(self, job: Job, parts: tuple[str, ...],
                     expires_after: float | None) -> dict[str, StoredFile]:
        found: dict[str, StoredFile] = {}
        missing = []
        for part in parts:
            try:
                found[part] = self.table.get_file(output_file_id(job.id, part))
            except NotFound:
                missing.append(part)
        if missing:
            assert job.output_dir is not None
            sizes = OutputReader(job.output_dir, job.line_format).part_sizes()
            for part in missing:
                if not sizes[part]:
                    continue
                f = StoredFile(
                    id=output_file_id(job.id, part), project=job.project,
                    filename=f"batch_{job.id}_{OUTPUT_SUFFIX[part]}.jsonl",
                    purpose="batch_output", size_bytes=sizes[part], uri=job.output_dir,
                    job_id=job.id, line_format=job.line_format.value, part=part)
                if expires_after is not None:
                    f.expire_time = f.create_time + timedelta(seconds=expires_after)
                self.table.create_file(f)  # a concurrent call may have made it: same file
                found[part] = self.table.get_file(f.id)
        return {part: f for part, f in found.items()
                if f.state == FileState.ACTIVE and not f.expired()}

    async def export(self, job: Job, part: str, uri: str) -> int:
        """Write one part of a job's output to `uri` (a path, gs:// or s3://); lines written."""
        if not job.output_dir:
            raise FailedPrecondition(f"Job {job.id} has no output yet.")
        reader = OutputReader(job.output_dir, job.line_format)

        def write() -> int:
            count = 0

            def lines() -> Iterator[bytes]:
                nonlocal count
                for raw in reader.part(part):
                    count += 1
                    yield raw if raw.endswith(b"\n") else raw + b"\n"

            _copy(lines(), uri)
            return count

        return await asyncio.to_thread(write)
