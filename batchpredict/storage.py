"""Every input URI and output prefix goes through here: fsspec for local paths, file://, gs://,
s3:// and memory://.

Writes never show a reader half an object: a local file is written beside its final name and
renamed into place; an object store gets one PUT (or one multipart upload), which appears whole.
Objects are never renamed on object stores (GCS emulators answer moveTo with 501), and never
appended to (GCS has no append): output is written as immutable chunk objects.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import IO, Any

# gcsfs asks each bucket over gRPC whether it is hierarchical and waits 60 s against emulators.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec  # noqa: E402
from fsspec.implementations.local import LocalFileSystem  # noqa: E402

from batchpredict.errors import BatchPredictError, InvalidArgument, NotFound  # noqa: E402

__all__ = [
    "SUPPORTED_SCHEMES",
    "exists",
    "expand_inputs",
    "filesystem",
    "is_local",
    "join",
    "list_files",
    "open_atomic_writer",
    "open_read",
    "read_bytes",
    "remove",
    "remove_empty_dir",
    "write_atomic",
]

SUPPORTED_SCHEMES = ("file", "gs", "s3", "memory")
_GLOB_CHARS = "*?["


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0] if "://" in uri else "file"


def _check_scheme(uri: str) -> None:
    scheme = scheme_of(uri)
    if scheme == "bq":
        raise InvalidArgument(
            f"BigQuery ({uri}) is not supported yet. Use a JSONL file in Cloud Storage (gs://), "
            "S3 (s3://) or a local path."
        )
    if scheme not in SUPPORTED_SCHEMES and scheme != "gcs":
        raise InvalidArgument(
            f"Unsupported URI scheme '{scheme}://' in {uri}. "
            f"Use one of: local path, {', '.join(s + '://' for s in SUPPORTED_SCHEMES)}."
        )


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a URI or local path."""
    _check_scheme(uri)
    if scheme_of(uri) == "file":
        path = uri.removeprefix("file://")
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def _unstrip(uri: str, fs: Any, path: str) -> str:
    """Turn a filesystem path back into a URI of the same scheme as `uri`."""
    if is_local(uri):
        return path
    return fs.unstrip_protocol(path)


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    if is_local(base):
        return os.path.join(base.removeprefix("file://"), *parts)
    return posixpath.join(base, *parts)


def _translate(uri: str, exc: Exception) -> BatchPredictError:
    """A storage client's error, as ours: what went wrong with which URI, and what to do."""
    if isinstance(exc, BatchPredictError):
        return exc
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"{uri} does not exist. Check the path and that the object was uploaded.")
    if isinstance(exc, PermissionError):
        return InvalidArgument(
            f"Permission denied for {uri}: {exc}. Grant the credentials batchpredict runs with "
            "access to it."
        )
    return InvalidArgument(f"Cannot access {uri}: {type(exc).__name__}: {exc}")


def expand_inputs(uris: list[str]) -> list[str]:
    """Resolve input URIs and wildcards to a sorted, de-duplicated list of files.

    A missing file or a wildcard that matches nothing raises NotFound naming that URI.
    """
    if not uris:
        raise InvalidArgument("No input URI given. Pass at least one JSONL file or wildcard.")
    out: list[str] = []
    for uri in uris:
        fs, path = filesystem(uri)
        try:
            if any(c in path for c in _GLOB_CHARS):
                matches = sorted(p for p in fs.glob(path) if not fs.isdir(p))
                if not matches:
                    raise NotFound(f"The wildcard {uri} matches no file.")
                out.extend(_unstrip(uri, fs, p) for p in matches)
            else:
                if fs.isdir(path):
                    raise InvalidArgument(
                        f"{uri} is a directory. Give a JSONL file, or a wildcard such as "
                        f"{join(uri, '*.jsonl')}."
                    )
                if not fs.exists(path):
                    raise NotFound(
                        f"The input {uri} does not exist. Check the path and that it was uploaded."
                    )
                out.append(_unstrip(uri, fs, path))
        except Exception as exc:
            raise _translate(uri, exc) from exc
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]


def open_read(uri: str) -> IO[bytes]:
    fs, path = filesystem(uri)
    try:
        return fs.open(path, "rb", block_size=4 * 1024 * 1024)  # type: ignore[no-any-return]
    except Exception as exc:
        raise _translate(uri, exc) from exc


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as f:
        return f.read()


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return bool(fs.exists(path))


def list_files(prefix: str) -> list[str]:
    """Files directly under `prefix` (a folder), as URIs; empty when it does not exist."""
    fs, path = filesystem(prefix)
    try:
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(_unstrip(prefix, fs, e["name"]) for e in entries if e.get("type") == "file")


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.rm_file(path)


def remove_empty_dir(uri: str) -> None:
    """Remove a local folder if empty; object stores have no folders to remove."""
    if is_local(uri):
        with contextlib.suppress(OSError):
            os.rmdir(uri.removeprefix("file://"))


def write_atomic(uri: str, data: bytes) -> None:
    """Write a whole object so that readers see the old state or the new one, never half."""
    with open_atomic_writer(uri) as f:
        f.write(data)


@contextlib.contextmanager
def open_atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """A binary writer whose object appears, whole, only when the block ends without error."""
    fs, path = filesystem(uri)
    try:
        if is_local(uri):
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
        else:
            # One PUT or one multipart upload: the object appears when the upload completes.
            with fs.open(path, "wb") as f:
                yield f
            fs.invalidate_cache(path)
    except BatchPredictError:
        raise
    except OSError as exc:
        raise _translate(uri, exc) from exc
