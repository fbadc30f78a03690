"""Every input URI and output prefix goes through here: fsspec for local paths, file://, gs://,
s3:// and memory://.

Filesystems: one cached instance per store and configuration (`filesystem`). Credentials come the
standard way for each store:
- gs://: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS naming a service
  account key file, `gcloud auth application-default login`, or the metadata server), through
  gcsfs's token="google_default"; anonymous against an emulator (STORAGE_EMULATOR_HOST).
- s3://: botocore's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, instance
  roles); the endpoint from BATCHPREDICT_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL_S3, else
  AWS_ENDPOINT_URL (MinIO, moto, other S3-compatible stores), else AWS.
Listing caches are off: jobs read objects that other processes write, and a stale listing would
hide an uploaded input or a committed chunk.

Writes never show a reader half an object: a local file is written beside its final name and
renamed into place; an object store gets one PUT (or one resumable/multipart upload), which
appears whole when it completes, and an upload that fails part-way is discarded, never
committed. Objects are never renamed on object stores (GCS emulators answer moveTo with 501, and
a rename there is a copy), and never appended to (gcsfs "ab" overwrites): output is written as
immutable chunk objects.

Errors from the storage clients become ours at this boundary (`_translate`): NotFound for a
missing bucket or object, InvalidArgument for a URI we cannot use, PermissionDenied-style
problems as InvalidArgument naming the URI and what to grant, FailedPrecondition when no
credentials are configured; each message names the URI and what to do.
"""

from __future__ import annotations

import contextlib
import io
import os
import posixpath
import threading
import uuid
from collections.abc import Iterator
from typing import IO, Any

# gcsfs asks each bucket over gRPC whether it is hierarchical and waits 60 s against emulators.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec
from fsspec.implementations.local import LocalFileSystem

from batchpredict import bounded_io
from batchpredict.errors import (
    BatchPredictError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

__all__ = [
    "SUPPORTED_SCHEMES",
    "check_output_writable",
    "check_uri",
    "clear_filesystem_cache",
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
    "s3_endpoint_url",
    "scheme_of",
    "size",
    "write_atomic",
]

SUPPORTED_SCHEMES = ("file", "gs", "s3", "memory")
_ALIASES = {"gcs": "gs", "s3a": "s3"}
_OBJECT_STORES = ("gs", "s3")
_GLOB_CHARS = "*?["
_SUPPORTED_TEXT = "a local path, file://, gs://, s3:// or memory://"


def scheme_of(uri: str) -> str:
    """'gs' for gs://b/k (and gcs://), 's3' for s3://, 'file' for a path or file://."""
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    return _ALIASES.get(scheme, scheme)


def check_uri(uri: str, role: str = "") -> None:
    """Refuse a URI batchpredict cannot use as an "input" or "output" (or either, role "").

    Raises InvalidArgument naming what is supported, e.g. for BigQuery (bq://).
    """
    what = f"{role} URI" if role else "URI"
    if not uri or not uri.strip():
        raise InvalidArgument(f"The {what} is empty. Give {_SUPPORTED_TEXT}.")
    scheme = scheme_of(uri)
    if scheme == "bq":
        kind, field = {
            "input": ("sources", " in gcsSource.uris"),
            "output": ("destinations", " in gcsDestination.outputUriPrefix"),
        }.get(role, ("tables", ""))
        raise InvalidArgument(
            f"BigQuery {kind} ({uri}) are not supported. Use JSONL files in Cloud Storage "
            f"(gs://), S3 (s3://) or local paths{field}."
        )
    if scheme not in SUPPORTED_SCHEMES:
        raise InvalidArgument(
            f"Unsupported URI scheme '{scheme}://' in the {what} {uri}. Use {_SUPPORTED_TEXT}."
        )
    if scheme in _OBJECT_STORES and not _bucket_of(uri):
        raise InvalidArgument(
            f"The {what} {uri} names no bucket. Write it as {scheme}://BUCKET/path."
        )


# -- filesystems --------------------------------------------------------------------------------
_cache: dict[tuple[str, ...], Any] = {}
_cache_lock = threading.Lock()


def s3_endpoint_url() -> str | None:
    """The S3 endpoint: BATCHPREDICT_S3_ENDPOINT_URL, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL."""
    for var in ("BATCHPREDICT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        if os.environ.get(var):
            return os.environ[var]
    return None


def _gcs_emulator() -> str | None:
    host = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if host in ("", "default"):
        return None
    return host if host.startswith(("http://", "https://")) else f"http://{host}"


def _config_key(scheme: str) -> tuple[str, ...]:
    """What the instance for `scheme` depends on: a new value makes a new instance."""
    if scheme == "gs":
        return (scheme, _gcs_emulator() or "", os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", ""))
    if scheme == "s3":
        return (scheme, s3_endpoint_url() or "", os.environ.get("AWS_PROFILE", ""),
                os.environ.get("AWS_ACCESS_KEY_ID", ""))
    return (scheme,)


def _new_filesystem(scheme: str) -> Any:
    if scheme == "gs":
        import gcsfs

        emulator = _gcs_emulator()
        if emulator:
            return gcsfs.GCSFileSystem(
                token="anon", endpoint_url=emulator, use_listings_cache=False,
                skip_instance_cache=True,
            )
        return gcsfs.GCSFileSystem(
            token="google_default", use_listings_cache=False, skip_instance_cache=True
        )
    if scheme == "s3":
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=s3_endpoint_url(), use_listings_cache=False, skip_instance_cache=True
        )
    if scheme == "memory":
        return fsspec.filesystem("memory")
    return LocalFileSystem()


def _filesystem_for(scheme: str, uri: str) -> Any:
    key = _config_key(scheme)
    with _cache_lock:
        fs = _cache.get(key)
        if fs is None:
            try:
                fs = _new_filesystem(scheme)
            except Exception as exc:
                raise _credentials_error(scheme, uri, exc) from exc
            _cache[key] = fs
        return fs


def clear_filesystem_cache() -> None:
    """Forget every cached filesystem: the next call reads the environment again (tests)."""
    with _cache_lock:
        _cache.clear()


def _credentials_error(scheme: str, uri: str, exc: Exception) -> BatchPredictError:
    if scheme == "gs":
        return FailedPrecondition(
            f"No usable Google Cloud credentials to access {uri}: {exc}. Set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service account key file or run `gcloud auth "
            "application-default login` (or set STORAGE_EMULATOR_HOST for an emulator)."
        )
    if scheme == "s3":
        return FailedPrecondition(
            f"No usable AWS credentials to access {uri}: {exc}. Set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE (and AWS_ENDPOINT_URL or "
            "BATCHPREDICT_S3_ENDPOINT_URL for an S3-compatible store)."
        )
    return InvalidArgument(f"Cannot open {uri}: {type(exc).__name__}: {exc}")


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) for a URI or local path."""
    check_uri(uri)
    scheme = scheme_of(uri)
    if scheme == "file":
        path = uri[len("file://"):] if uri.startswith("file://") else uri
        return LocalFileSystem(), os.path.abspath(os.path.expanduser(path))
    fs = _filesystem_for(scheme, uri)
    return fs, fs._strip_protocol(uri)


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def _bucket_of(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else ""


def _unstrip(uri: str, fs: Any, path: str) -> str:
    """Turn a filesystem path back into a URI of the same scheme as `uri`."""
    if is_local(uri):
        return str(path)
    return str(fs.unstrip_protocol(path))


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    if is_local(base):
        return os.path.join(base.removeprefix("file://"), *parts)
    return posixpath.join(base, *parts)


# -- errors -------------------------------------------------------------------------------------
#: botocore's and google-auth's "no usable credentials" errors, by name (no import needed).
_CREDENTIAL_ERRORS = frozenset({
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
    "DefaultCredentialsError", "RefreshError",
})


def _is_permission_error(exc: Exception) -> bool:
    if isinstance(exc, PermissionError):
        return True
    text = str(exc)
    code = getattr(exc, "code", None)
    return code in (401, 403) or text.startswith(("Forbidden", "Unauthorized")) or (
        "AccessDenied" in text or "InvalidAccessKeyId" in text
        or "SignatureDoesNotMatch" in text
    )


def _bucket_exists(fs: Any, uri: str) -> bool | None:
    """Whether the bucket of `uri` exists; None when that cannot be learnt."""
    try:
        fs.info(_bucket_of(uri))
        return True
    except FileNotFoundError:
        return False
    except Exception:
        return None


def _translate(uri: str, exc: Exception, fs: Any = None) -> BatchPredictError:
    """A storage client's error, as ours: what went wrong with which URI, and what to do."""
    if isinstance(exc, BatchPredictError):
        return exc
    if type(exc).__name__ in _CREDENTIAL_ERRORS:
        return _credentials_error(scheme_of(uri), uri, exc)
    if isinstance(exc, FileNotFoundError):
        if fs is not None and scheme_of(uri) in _OBJECT_STORES and _bucket_exists(fs, uri) is False:
            return NotFound(
                f"The bucket {scheme_of(uri)}://{_bucket_of(uri)} (in {uri}) does not exist. "
                "Check the bucket name, or create the bucket."
            )
        return NotFound(f"{uri} does not exist. Check the path and that the object was uploaded.")
    if _is_permission_error(exc):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return InvalidArgument(
            f"Permission denied for {uri} ({detail}). Grant the credentials batchpredict runs "
            "with access to it (read for inputs; write and delete for the output prefix)."
        )
    detail = str(exc).splitlines()[0] if str(exc) else ""
    return InvalidArgument(f"Cannot access {uri}: {type(exc).__name__}: {detail}".rstrip(": "))


# -- inputs -------------------------------------------------------------------------------------
def _glob_base(path: str) -> str:
    """The folder part of a glob path before its first wildcard."""
    first = min(path.index(c) for c in _GLOB_CHARS if c in path)
    return path[:first].rsplit("/", 1)[0]


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
            if any(c in path for c in _GLOB_CHARS):
                fs.invalidate_cache(_glob_base(path))
                try:
                    found = fs.glob(path, detail=True)
                except ValueError as exc:
                    raise InvalidArgument(
                        f"The wildcard {uri} is not valid: {exc}. Use * within a name, and ** "
                        "only as a whole path segment (gs://bucket/dir/**/*.jsonl)."
                    ) from exc
                matches = sorted(p for p, info in found.items() if info.get("type") != "directory")
                if not matches:
                    if scheme_of(uri) in _OBJECT_STORES and _bucket_exists(fs, uri) is False:
                        raise FileNotFoundError(uri)
                    raise NotFound(
                        f"The wildcard {uri} matches no file. Check the path and pattern, and "
                        "that the files were uploaded."
                    )
                out.extend(_unstrip(uri, fs, p) for p in matches)
                continue
            fs.invalidate_cache(path)
            info = fs.info(path)
            if info.get("type") == "directory":
                raise InvalidArgument(
                    f"The input {uri} is a folder, not a file. Give a JSONL file, or a wildcard "
                    f"such as {join(uri, '*.jsonl')}."
                )
            out.append(_unstrip(uri, fs, path))
        except FileNotFoundError as exc:
            err = _translate(uri, exc, fs)
            if not isinstance(err, NotFound) or "bucket" not in err.message:
                err = NotFound(
                    f"The input {uri} does not exist. Check the path and that it was uploaded."
                )
            raise err from exc
        except Exception as exc:
            raise _translate(uri, exc, fs) from exc
    seen: set[str] = set()
    return [u for u in out if not (u in seen or seen.add(u))]  # type: ignore[func-returns-value]


def open_read(uri: str) -> IO[bytes]:
    """A binary reader with the standard file API (`readline(size)` included, which fsspec's
    object-store files lack)."""
    fs, path = filesystem(uri)
    if is_local(uri):
        # security: regular files only, opened without blocking (bounded_io.open_regular_file);
        # reads go through the context's read guard (deadline, byte cap, cancel).
        try:
            return bounded_io.guarded(bounded_io.open_regular_file(path))
        except OSError as exc:
            raise _translate(uri, exc) from exc
    try:
        fs.invalidate_cache(path)
        f = fs.open(path, "rb", block_size=4 * 1024 * 1024)
    except Exception as exc:
        raise _translate(uri, exc, fs) from exc
    if not isinstance(f, io.BufferedIOBase):
        f = io.BufferedReader(f, buffer_size=1024 * 1024)
    return bounded_io.guarded(f)  # security: the context's read guard


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
        raise _translate(uri, exc, fs) from exc
    if info.get("type") == "directory":
        raise InvalidArgument(f"{uri} is a folder, not a file.")
    return int(info.get("size") or 0)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    try:
        fs.invalidate_cache(path)
        return bool(fs.exists(path))
    except Exception as exc:
        raise _translate(uri, exc, fs) from exc


def list_files(prefix: str) -> list[str]:
    """Files directly under `prefix` (a folder), as URIs; empty when it does not exist."""
    fs, path = filesystem(prefix)
    try:
        fs.invalidate_cache(path)
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise _translate(prefix, exc, fs) from exc
    return sorted(_unstrip(prefix, fs, e["name"]) for e in entries if e.get("type") == "file")


# -- outputs ------------------------------------------------------------------------------------
def check_output_writable(prefix: str) -> None:
    """Raise a clear error unless batchpredict can write (and delete) objects under `prefix`.

    Object stores get a real probe: a small object is written under the prefix and deleted
    (chunks are deleted after assembly, so both rights are needed). A local prefix is checked
    without writing: its nearest existing folder must be a writable folder.
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
        if _bucket_exists(fs, prefix) is False:
            raise NotFound(
                f"The output bucket {scheme_of(prefix)}://{_bucket_of(prefix)} does not exist "
                f"(output prefix {prefix}). Create the bucket or fix the output URI prefix."
            ) from exc
        raise NotFound(
            f"Cannot write under the output prefix {prefix}: it does not exist."
        ) from exc
    except Exception as exc:
        raise InvalidArgument(
            f"Cannot write under the output prefix {prefix}: "
            f"{_translate(prefix, exc, fs).message}"
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
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidArgument(
            f"Cannot write under the output prefix {prefix}: permission denied on {existing}. "
            "Choose a folder this user can write to."
        )


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        raise _translate(uri, exc, fs) from exc
    finally:
        fs.invalidate_cache(path)


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
            raise _translate(uri, exc) from exc
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
        raise _translate(uri, exc, fs) from exc
    try:
        yield f
    except BaseException:
        _discard(f)
        raise
    try:
        f.close()  # one PUT, or the last part of a resumable/multipart upload: now it appears
    except Exception as exc:
        _discard(f)
        raise _translate(uri, exc, fs) from exc
    finally:
        fs.invalidate_cache(path)


def _discard(f: Any) -> None:
    """Drop an unfinished object-store upload without committing it."""
    if getattr(f, "mpu", None):  # s3fs: abort the multipart upload (its parts cost storage)
        with contextlib.suppress(Exception):
            f.discard()
    # gcsfs: a resumable upload never finalized is never an object, and GCS forgets it after a
    # week. Cancelling it is a DELETE that emulators answer 501, which gcsfs retries for ~30 s.
    f.buffer = None
    f.closed = True  # or fsspec's close() (and __del__) would commit what was written
