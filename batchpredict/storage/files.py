"""Reading and managing files: expanding input wildcards, opening for reading, listing,
removing, and checking that an output prefix can be written.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from typing import IO

from batchpredict import bounded_io
from batchpredict.errors import InvalidArgument, NotFound
from batchpredict.storage.filesystems import bucket_exists, filesystem, translate_error, unstrip
from batchpredict.storage.uris import (
    GLOB_CHARS,
    OBJECT_STORES,
    bucket_of,
    check_uri,
    glob_base,
    is_local,
    join,
    scheme_of,
)

__all__ = [
    "check_output_writable",
    "exists",
    "expand_inputs",
    "list_files",
    "open_read",
    "read_bytes",
    "remove",
    "remove_empty_dir",
    "size",
]

def expand_inputs(uris: list[str]) -> list[str]:
    """Resolve input URIs and wildcards to the list of files they name, in the order given
    (each wildcard's matches sorted), without duplicates.

    A missing bucket or object, or a wildcard that matches nothing, raises NotFound naming that
    URI; a URI we cannot read raises InvalidArgument saying why and what to fix.
    """
    if not uris:
        raise InvalidArgument("No input URI given. Pass at least one JSONL file or wildcard.")
    out: list[str] = []
    for uri in uris:
        check_uri(uri, "input")
        fs, path = filesystem(uri)
        try:
            if any(c in path for c in GLOB_CHARS):
                fs.invalidate_cache(glob_base(path))
                try:
                    found = fs.glob(path, detail=True)
                except ValueError as exc:
                    raise InvalidArgument(
                        f"The wildcard {uri} is not valid: {exc}. Use * within a name, and ** "
                        "only as a whole path segment (gs://bucket/dir/**/*.jsonl)."
                    ) from exc
                matches = sorted(p for p, info in found.items() if info.get("type") != "directory")
                if not matches:
                    if scheme_of(uri) in OBJECT_STORES and bucket_exists(fs, uri) is False:
                        raise FileNotFoundError(uri)
                    raise NotFound(
                        f"The wildcard {uri} matches no file. Check the path and pattern, and "
                        "that the files were uploaded."
                    )
                out.extend(unstrip(uri, fs, p) for p in matches)
                continue
            fs.invalidate_cache(path)
            info = fs.info(path)
            if info.get("type") == "directory":
                raise InvalidArgument(
                    f"The input {uri} is a folder, not a file. Give a JSONL file, or a wildcard "
                    f"such as {join(uri, '*.jsonl')}."
                )
            out.append(unstrip(uri, fs, path))
        except FileNotFoundError as exc:
            err = translate_error(uri, exc, fs)
            if not isinstance(err, NotFound) or "bucket" not in err.message:
                err = NotFound(
                    f"The input {uri} does not exist. Check the path and that it was uploaded."
                )
            raise err from exc
        except Exception as exc:
            raise translate_error(uri, exc, fs) from exc
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]  # type: ignore[func-returns-value]


def open_read(uri: str) -> IO[bytes]:
    """A binary reader with the standard file API (`readline(size)` included, which fsspec's
    object-store files lack)."""
    fs, path = filesystem(uri)
    if is_local(uri):
        # regular files only, opened without blocking (bounded_io.open_regular_file); reads go
        # through the context's read guard (deadline, byte cap, cancel)
        try:
            return bounded_io.guarded(bounded_io.open_regular_file(path))
        except OSError as exc:
            raise translate_error(uri, exc) from exc
    try:
        fs.invalidate_cache(path)
        f = fs.open(path, "rb", block_size=4 * 1024 * 1024)
    except Exception as exc:
        raise translate_error(uri, exc, fs) from exc
    if not isinstance(f, io.BufferedIOBase):
        f = io.BufferedReader(f, buffer_size=1024 * 1024)
    return bounded_io.guarded(f)  # the context's read guard


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def size(uri: str) -> int:
    """The size of a file in bytes (NotFound when it does not exist)."""
    fs, path = filesystem(uri)
    try:
        fs.invalidate_cache(path)
        info = fs.info(path)
    except Exception as exc:
        raise translate_error(uri, exc, fs) from exc
    if info.get("type") == "directory":
        raise InvalidArgument(f"{uri} is a folder, not a file.")
    return int(info.get("size") or 0)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        fs.invalidate_cache(path)
        return bool(fs.exists(path))
    except Exception as exc:
        raise translate_error(uri, exc, fs) from exc


def list_files(prefix: str) -> list[str]:
    """Files directly under `prefix` (a folder), as URIs; empty when it does not exist."""
    fs, path = filesystem(prefix)
    try:
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise translate_error(prefix, exc, fs) from exc
    return sorted(unstrip(prefix, fs, e["name"]) for e in entries if e.get("type") == "file")


def check_output_writable(prefix: str) -> None:
    """Raise a clear error unless batchpredict can write (and delete) objects under `prefix`.

    Every store gets a real probe: a small object is written under the prefix and deleted
    (chunks are deleted after assembly, so both rights are needed). A local prefix's folders are
    made first, as the job would make them; a permission check alone would pass where writes
    fail (root in /proc, a read-only mount).
    """
    check_uri(prefix, "output")
    if is_local(prefix):
        _check_local_writable(prefix)
        return
    probe = join(prefix, f".batchpredict-write-check-{uuid.uuid4().hex[:12]}")
    fs, path = filesystem(probe)
    try:
        fs.pipe_file(path, b"")
    except FileNotFoundError as exc:
        if bucket_exists(fs, prefix) is False:
            raise NotFound(
                f"The output bucket {scheme_of(prefix)}://{bucket_of(prefix)} does not exist "
                f"(output prefix {prefix}). Create the bucket or fix the output URI prefix."
            ) from exc
        raise NotFound(
            f"Cannot write under the output prefix {prefix}: it does not exist."
        ) from exc
    except Exception as exc:
        raise InvalidArgument(
            f"Cannot write under the output prefix {prefix}: "
            f"{translate_error(prefix, exc, fs).message}"
        ) from exc
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise InvalidArgument(
            f"batchpredict can write under the output prefix {prefix} but not delete there "
            f"({type(exc).__name__}). It removes its incremental chunks when a job ends: grant "
            "delete rights too (storage.objects.delete / s3:DeleteObject)."
        ) from exc


def _check_local_writable(prefix: str) -> None:
    path = os.path.abspath(os.path.expanduser(prefix.removeprefix("file://")))
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        raise InvalidArgument(
            f"The output prefix {prefix} is under {existing}, which is a file, not a folder. "
            "Give a folder."
        )
    probe = os.path.join(path, f".batchpredict-write-check-{uuid.uuid4().hex[:12]}")
    try:
        os.makedirs(path, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"probe")
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise InvalidArgument(
            f"Cannot write under the output prefix {prefix}: {reason} ({exc.filename or path}). "
            "Choose a folder this user can write to."
        ) from exc


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise translate_error(uri, exc, fs) from exc
    finally:
        fs.invalidate_cache(path)


def remove_empty_dir(uri: str) -> None:
    """Remove a local folder if empty; object stores have no folders to remove."""
    if is_local(uri):
        with contextlib.suppress(OSError):
            os.rmdir(uri.removeprefix("file://"))
