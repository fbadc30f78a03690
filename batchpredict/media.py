"""fileData parts: which URIs a backend may fetch, and fetching their bytes.

A request's `fileData{fileUri, mimeType}` points at media in storage. Backends that take media
inline (an OpenAI-compatible server takes images as data URLs) fetch it through here; the Gemini
API backend passes the URI through and needs nothing from this module.

    policy = MediaPolicy.from_settings(settings)     # BATCHPREDICT_MEDIA_ROOTS, _MAX_MEDIA_BYTES
    check_file_uri(uri, policy)                      # -> canonical URI, or InvalidArgument (400)
    data = await fetch_file_data(uri, mime_type)     # -> bytes, size-limited

A job's backend runs inside its project's media scope (data_gate.ProjectScopedBackend): the policy
built from the app's `Settings` and the project's data policy apply there. Nothing here reads the
environment: outside a job, the default policy (any gs:// or s3:// object, no local file) applies
unless a policy is given.

The policy, so that a request cannot make the server read what its author could not:
- Schemes: gs:// and s3:// (read with the service's own credentials, as Vertex reads fileData
  with its service agent), local files and memory:// only under configured roots. Never http(s)
  or any other scheme: no server-side request forgery against internal addresses.
- Roots: `BATCHPREDICT_MEDIA_ROOTS`, comma-separated URI prefixes (`gs://bucket/media/`,
  `s3://bucket`, `/srv/media`, `file:///srv/media`). Empty (the default): any gs:// or s3://
  object, and no local file. A root is a folder: `gs://b/media` allows `gs://b/media/x.png`, not
  `gs://b/media-private/x.png`.
- Local paths must be absolute and are resolved (symlinks, `..`) before the root check; object
  URIs with `.` or `..` segments are refused (stores treat them literally, people do not).
- Size: at most `BATCHPREDICT_MAX_MEDIA_BYTES` (20 MiB by default) per object.

Every refusal is an InvalidArgument (a 400 on that row's output line) whose message names the URI
and what to change; a missing object is NotFound.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from typing import Any

from batchpredict import storage
from batchpredict.config import Settings
from batchpredict.errors import BatchPredictError, InvalidArgument
from batchpredict.policy import media_scope

__all__ = [
    "DEFAULT_MAX_MEDIA_BYTES",
    "MediaPolicy",
    "check_allowed",
    "check_file_uri",
    "fetch_file_data",
]

DEFAULT_MAX_MEDIA_BYTES = Settings.max_media_bytes
_OBJECT_SCHEMES = ("gs", "s3")
_LOCAL_SCHEMES = ("file", "memory")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class MediaPolicy:
    """Where fileData may come from and how big it may be."""

    #: Allowed URI prefixes, canonical (local ones resolved). Empty: any gs:// or s3:// object.
    roots: tuple[str, ...] = ()
    max_bytes: int = DEFAULT_MAX_MEDIA_BYTES

    @classmethod
    def from_settings(cls, settings: Any) -> MediaPolicy:
        """From a `Settings` (or anything with `media_roots` and `max_media_bytes`)."""
        return cls.parse(
            getattr(settings, "media_roots", "") or "",
            int(getattr(settings, "max_media_bytes", DEFAULT_MAX_MEDIA_BYTES)),
        )

    @classmethod
    def parse(cls, roots: str, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES) -> MediaPolicy:
        """From a comma-separated list of root URIs."""
        parsed = tuple(_canonical_root(r.strip()) for r in roots.split(",") if r.strip())
        return cls(parsed, max_bytes)


def _canonical_root(root: str) -> str:
    scheme = storage.scheme_of(root)
    if scheme == "file":
        path = root.removeprefix("file://")
        if not os.path.isabs(path):
            raise InvalidArgument(
                f"Media root {root!r} is not an absolute path. Set BATCHPREDICT_MEDIA_ROOTS to "
                "absolute folders or gs:// / s3:// prefixes, separated by commas."
            )
        return os.path.realpath(path)
    if scheme not in (*_OBJECT_SCHEMES, "memory"):
        raise InvalidArgument(
            f"Media root {root!r} has an unsupported scheme. Use gs://, s3://, memory:// or an "
            "absolute local folder in BATCHPREDICT_MEDIA_ROOTS."
        )
    return f"{scheme}://{root.split('://', 1)[1]}"


def _scheme(uri: str) -> str:
    """The URI's scheme, also for scheme-only forms such as data:, mailto: or javascript:."""
    m = _SCHEME_RE.match(uri)
    if m and "://" not in uri:
        return m.group(1).lower()
    return storage.scheme_of(uri)


def _under(uri: str, root: str) -> bool:
    """Whether `uri` is `root` or inside it, treating `root` as a folder."""
    root = root.rstrip("/")
    return uri == root or uri.startswith(root + "/")


def _refuse(uri: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"fileData.fileUri {uri!r} is not allowed: {why}")


def check_file_uri(uri: str, policy: MediaPolicy | None = None) -> str:
    """The canonical form of an allowed fileData URI (a local one resolved to its real path);
    InvalidArgument saying why and what to do when the policy refuses it."""
    policy = policy if policy is not None else MediaPolicy()
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidArgument("fileData.fileUri is empty. Give a gs:// or s3:// URI.")
    if any(ord(c) < 32 for c in uri):
        raise _refuse(uri, "it contains control characters.")
    scheme = _scheme(uri)
    roots_hint = (
        f"the allowed roots are {', '.join(policy.roots)} (BATCHPREDICT_MEDIA_ROOTS)"
        if policy.roots else "set BATCHPREDICT_MEDIA_ROOTS to allow a folder"
    )
    if scheme not in (*_OBJECT_SCHEMES, *_LOCAL_SCHEMES):
        raise _refuse(
            uri,
            f"batchpredict reads fileData from gs:// and s3:// only (and local files under "
            f"configured roots), never from {scheme}:// URLs. Upload the file to a bucket and "
            "give its gs:// or s3:// URI, or send it inline as inlineData.",
        )
    if scheme in _OBJECT_SCHEMES:
        rest = uri.split("://", 1)[1]
        bucket, _, key = rest.partition("/")
        if not bucket or not key:
            raise _refuse(uri, f"it names no object. Write it as {scheme}://BUCKET/path/file.")
        if any(seg in (".", "..") for seg in key.split("/")):
            raise _refuse(uri, "'.' and '..' segments are not allowed in object paths.")
        canonical = f"{scheme}://{rest}"
        if policy.roots and not any(_under(canonical, r) for r in policy.roots):
            raise _refuse(uri, f"it is outside the allowed media roots; {roots_hint}.")
        return canonical
    if scheme == "memory":
        canonical = "memory://" + uri.split("://", 1)[1]
        if not any(_under(canonical, r) for r in policy.roots):
            raise _refuse(uri, f"memory:// media must be under an allowed root; {roots_hint}.")
        return canonical
    # A local file: only under a local root, judged on the real path.
    if uri.startswith("file://"):
        path = uri[len("file://"):]
        if not path.startswith("/"):  # file://host/path
            host = path.split("/", 1)[0]
            if host != "localhost":
                raise _refuse(uri, "file:// URIs must name a local absolute path (file:///...).")
            path = path[len("localhost"):]
    else:
        path = uri
    if not os.path.isabs(path):
        raise _refuse(uri, "local paths must be absolute (file:///path/to/file).")
    local_roots = [r for r in policy.roots if storage.scheme_of(r) == "file"]
    if not local_roots:
        raise _refuse(
            uri,
            "reading local files is off. Set BATCHPREDICT_MEDIA_ROOTS to the folders that "
            "fileData may read, or upload the file to gs:// or s3://.",
        )
    real = os.path.realpath(path)
    if not any(os.path.commonpath([real, r]) == r for r in local_roots):
        raise _refuse(uri, f"it resolves outside the allowed media roots; {roots_hint}.")
    return real


def _read_limited(uri: str, max_bytes: int) -> bytes:
    """Read a whole object, refusing one over `max_bytes` before and while reading it."""
    def too_big(size: int | str) -> InvalidArgument:
        return InvalidArgument(
            f"fileData {uri} is {size} bytes; the limit is {max_bytes} bytes "
            "(BATCHPREDICT_MAX_MEDIA_BYTES). Send a smaller file."
        )

    size = storage.size(uri)
    if size > max_bytes:
        raise too_big(size)
    with storage.open_read(uri) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise too_big(f"more than {max_bytes}")
    return data


def _job_policy() -> MediaPolicy:
    scope = media_scope()
    return scope.media if scope is not None else MediaPolicy()


def check_allowed(uri: str, policy: MediaPolicy | None = None) -> str:
    """A fileData URI checked, without reading it, against the media policy (`policy`, else the
    job's) and the job's project's data policy; its canonical form. What an engine asks first,
    so a refused URI is reported as refused, whatever else the model could not take."""
    canonical = check_file_uri(uri, policy if policy is not None else _job_policy())
    scope = media_scope()
    if scope is not None:
        scope.policy.check_file_data(canonical)
    return canonical


async def fetch_file_data(uri: str, mime_type: str | None = None, *,
                          policy: MediaPolicy | None = None) -> bytes:
    """The bytes of a fileData part, if the policy allows its URI and it is not too large.

    The policy: `policy` if given, else the job's (its project's media scope), else the default.
    Raises InvalidArgument (refused, too large, unreadable), PermissionDenied (the project's data
    policy refuses it) or NotFound (no such object): errors for that row's output line.
    """
    policy = policy if policy is not None else _job_policy()
    canonical = check_allowed(uri, policy)
    try:
        return await asyncio.to_thread(_read_limited, canonical, policy.max_bytes)
    except BatchPredictError as exc:
        if canonical != uri and uri not in exc.message:
            exc.message = f"{exc.message} (fileData.fileUri {uri})"
            exc.args = (exc.message,)
        raise
