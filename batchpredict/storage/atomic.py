"""Atomic writes: a reader sees the old state or the new one, never half an object.

A local file is written beside its final name and renamed into place; an object store gets one
PUT (or one resumable/multipart upload), which appears whole when it completes, and an upload that
fails part-way is discarded, never committed. Objects are never renamed on object stores (GCS
emulators answer moveTo with 501, and a rename there is a copy), and never appended to (gcsfs "ab"
overwrites): output is written as immutable chunk objects.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from typing import IO, Any

from batchpredict.storage.filesystems import filesystem, translate_error
from batchpredict.storage.uris import is_local, scheme_of

__all__ = [
    "append",
    "concat",
    "open_atomic_writer",
    "write_atomic",
]

def write_atomic(uri: str, data: bytes, if_absent: bool = False) -> bool:
    """Write a whole object so that readers see the old state or the new one, never half.

    With `if_absent`, the first writer wins where the storage can say so: a local file (a hard
    link, which fails when the name exists) or memory://; False when the object was there.
    Object stores are written unconditionally (GCS and S3 preconditions are not used yet)."""
    if if_absent and is_local(uri):
        return _write_local_if_absent(uri, data)
    if if_absent and scheme_of(uri) == "memory":
        fs, path = filesystem(uri)
        if fs.exists(path):
            return False
    with open_atomic_writer(uri) as f:
        f.write(data)
    return True


def _write_local_if_absent(uri: str, data: bytes) -> bool:
    _, path = filesystem(uri)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                return False
            return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    except OSError as exc:
        raise translate_error(uri, exc, writing=True) from exc


@contextlib.contextmanager
def open_atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """A binary writer whose object appears, whole, only when the block ends without error.

    If the block raises, nothing is written: a local temporary file is removed, an object
    store's upload is discarded (fsspec files commit on close, so they are never closed then).
    """
    fs, path = filesystem(uri)
    if is_local(uri):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            try:
                with open(tmp, "wb") as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        except OSError as exc:
            raise translate_error(uri, exc, writing=True) from exc
        return
    if scheme_of(uri) == "memory":
        # memory:// shows an object from the moment it is opened: buffer, then store it whole.
        buffer = io.BytesIO()
        yield buffer
        fs.pipe_file(path, buffer.getvalue())
        return
    try:
        f = fs.open(path, "wb")
    except Exception as exc:
        raise translate_error(uri, exc, fs, writing=True) from exc
    try:
        yield f
    except BaseException:
        _discard(f)
        raise
    try:
        f.close()  # one PUT, or the last part of a resumable/multipart upload: now it appears
    except Exception as exc:
        _discard(f)
        raise translate_error(uri, exc, fs, writing=True) from exc
    finally:
        fs.invalidate_cache(path)


def concat(sources: list[str], uri: str) -> None:
    """Write `uri` atomically as `sources` one after another (`append`)."""
    with open_atomic_writer(uri) as out:
        for source in sources:
            append(source, out, kernel=is_local(uri))


def append(source: str, out: IO[bytes], kernel: bool = False) -> None:
    """The bytes of `source` onto the end of `out`. With `kernel` (`out` is a local file) and a
    local `source`, the kernel copies them (os.copy_file_range: no bytes pass through Python);
    otherwise 4 MiB blocks."""
    from batchpredict.storage.files import open_read

    with open_read(source) as f:
        if kernel and is_local(source) and _kernel_copy(f, out):
            return
        while block := f.read(4 * 1024 * 1024):
            out.write(block)


def _kernel_copy(src: IO[bytes], dst: IO[bytes]) -> bool:
    """Copy the rest of `src` onto the end of `dst` in the kernel; False where it cannot
    (then nothing was copied)."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    dst.flush()
    fin, fout = src.fileno(), dst.fileno()
    copied = 0
    try:
        while n := copy(fin, fout, 1 << 30):
            copied += n
    except OSError:
        if copied:
            raise  # part of it went: not safe to start again from the top
        return False
    return True  # (both files' offsets moved on by what was copied)


def _discard(f: Any) -> None:
    """Drop an unfinished object-store upload without committing it."""
    if getattr(f, "mpu", None):  # s3fs: abort the multipart upload (its parts cost storage)
        with contextlib.suppress(Exception):
            f.discard()
    # gcsfs: a resumable upload never finalized is never an object, and GCS forgets it after a
    # week. Cancelling it is a DELETE that emulators answer 501, which gcsfs retries for ~30 s.
    f.buffer = None
    f.closed = True  # or fsspec's close() (and __del__) would commit what was written
