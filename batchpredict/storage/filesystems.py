"""Filesystems and their errors: one cached fsspec instance per store and configuration, with
each store's standard credentials, and the translation of every storage client's errors into ours.

- gs://: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS naming a service
  account key file, `gcloud auth application-default login`, or the metadata server), through
  gcsfs's token="google_default"; anonymous against an emulator (STORAGE_EMULATOR_HOST).
- s3://: botocore's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws, instance
  roles); the endpoint from BATCHPREDICT_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL_S3, else
  AWS_ENDPOINT_URL (MinIO, moto, other S3-compatible stores), else AWS.
Listing caches are off: jobs read objects that other processes write, and a stale listing would
hide an uploaded input or a committed chunk.

`translate_error` is the one boundary where a client's exception becomes a BatchPredictError:
an Outage for a failure that may pass (no connection, 5xx, timeouts, no space left: `outages.py`),
NotFound for a missing bucket or object, FailedPrecondition when no credentials are configured
(`CREDENTIAL_ERRORS`, by class name: botocore and google-auth), InvalidArgument naming the URI and
what to grant for a permission problem, InvalidArgument otherwise.
"""

from __future__ import annotations

import os
import threading
from typing import Any

# gcsfs asks each bucket over gRPC whether it is hierarchical and waits 60 s against emulators.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import fsspec
from fsspec.implementations.local import LocalFileSystem

from batchpredict.errors import BatchPredictError, FailedPrecondition, InvalidArgument, NotFound
from batchpredict.outages import storage_outage
from batchpredict.storage.uris import OBJECT_STORES, bucket_of, check_uri, is_local, scheme_of

__all__ = [
    "CREDENTIAL_ERRORS",
    "bucket_exists",
    "clear_filesystem_cache",
    "credentials_error",
    "filesystem",
    "s3_endpoint_url",
    "translate_error",
    "unstrip",
]

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
                raise credentials_error(scheme, uri, exc) from exc
            _cache[key] = fs
        return fs


def clear_filesystem_cache() -> None:
    """Forget every cached filesystem: the next call reads the environment again (tests)."""
    with _cache_lock:
        _cache.clear()


def credentials_error(scheme: str, uri: str, exc: Exception) -> BatchPredictError:
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


def unstrip(uri: str, fs: Any, path: str) -> str:
    """Turn a filesystem path back into a URI of the same scheme as `uri`."""
    if is_local(uri):
        return str(path)
    return str(fs.unstrip_protocol(path))


#: botocore's and google-auth's "no usable credentials" errors, by name (no import needed).
CREDENTIAL_ERRORS = frozenset({
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


def bucket_exists(fs: Any, uri: str) -> bool | None:
    """Whether the bucket of `uri` exists; None when that cannot be learnt."""
    try:
        fs.info(bucket_of(uri))
        return True
    except FileNotFoundError:
        return False
    except Exception:
        return None


def translate_error(
    uri: str, exc: Exception, fs: Any = None, writing: bool = False
) -> BatchPredictError:
    """A storage client's error, as ours: what went wrong with which URI, and what to do.
    `writing`: the error came from writing `uri`, and is worded as a write failure."""
    if isinstance(exc, BatchPredictError):
        return exc
    # No connection, 5xx, timeouts, a full disk: an Outage a running job waits out (outages.py)
    if (outage := storage_outage(uri, exc)) is not None:
        return outage
    if type(exc).__name__ in CREDENTIAL_ERRORS:
        return credentials_error(scheme_of(uri), uri, exc)
    if writing and not (
        isinstance(exc, FileNotFoundError) and fs is not None
        and scheme_of(uri) in OBJECT_STORES and bucket_exists(fs, uri) is False
    ):
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return InvalidArgument(
            f"Cannot write {uri}: {type(exc).__name__}: {detail}. Check that the output prefix "
            "is a folder or bucket batchpredict may write to, and that there is space left."
        )
    if isinstance(exc, FileNotFoundError):
        if fs is not None and scheme_of(uri) in OBJECT_STORES and bucket_exists(fs, uri) is False:
            return NotFound(
                f"The bucket {scheme_of(uri)}://{bucket_of(uri)} (in {uri}) does not exist. "
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
