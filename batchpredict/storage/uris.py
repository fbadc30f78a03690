"""URIs: which schemes batchpredict reads and writes, and the small string rules of each.

Pure functions, no I/O: `scheme_of`, `check_uri` (refuses what no part of batchpredict can use,
naming what is supported), `join`, `is_local`, `bucket_of`, `glob_base`.
"""

from __future__ import annotations

import os
import posixpath

from batchpredict.errors import InvalidArgument

__all__ = [
    "GLOB_CHARS",
    "OBJECT_STORES",
    "SUPPORTED_SCHEMES",
    "SUPPORTED_TEXT",
    "bucket_of",
    "check_uri",
    "glob_base",
    "is_local",
    "join",
    "scheme_of",
]

SUPPORTED_SCHEMES = ("file", "gs", "s3", "memory")


_ALIASES = {"gcs": "gs", "s3a": "s3"}


OBJECT_STORES = ("gs", "s3")


GLOB_CHARS = "*?["


SUPPORTED_TEXT = "a local path, file://, gs://, s3:// or memory://"


def scheme_of(uri: str) -> str:
    """'gs' for gs://b/k (and gcs://), 's3' for s3://, 'file' for a path or file://."""
    if "://" not in uri:
        return "file"
    scheme = uri.split("://", 1)[0].lower()
    return _ALIASES.get(scheme, scheme)


def check_uri(uri: str, role: str = "") -> None:
    """Refuse a URI batchpredict cannot use as an "input" or "output" (or either, role "").

    Raises InvalidArgument naming what is supported, e.g. for BigQuery (bq://: a table, which
    batchpredict/bigquery reads and writes, never a file).
    """
    what = f"{role} URI" if role else "URI"
    if not uri or not uri.strip():
        raise InvalidArgument(f"The {what} is empty. Give {SUPPORTED_TEXT}.")
    scheme = scheme_of(uri)
    if scheme == "bq":  # tables are read and written by batchpredict/bigquery, not as files
        kind, field = {
            "input": ("sources", " in gcsSource.uris"),
            "output": ("destinations", " in gcsDestination.outputUriPrefix"),
        }.get(role, ("tables", ""))
        raise InvalidArgument(
            f"BigQuery {kind} ({uri}) are tables, not files: give one as a job's whole input "
            "(bigquerySource) or output (bigqueryDestination). Files are JSONL in Cloud "
            f"Storage (gs://), S3 (s3://) or local paths{field}."
        )
    if scheme not in SUPPORTED_SCHEMES:
        raise InvalidArgument(
            f"Unsupported URI scheme '{scheme}://' in the {what} {uri}. Use {SUPPORTED_TEXT}."
        )
    if scheme in OBJECT_STORES and not bucket_of(uri):
        raise InvalidArgument(
            f"The {what} {uri} names no bucket. Write it as {scheme}://BUCKET/path."
        )


def is_local(uri: str) -> bool:
    return scheme_of(uri) == "file"


def bucket_of(uri: str) -> str:
    return uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else ""


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    if is_local(base):
        return os.path.join(base.removeprefix("file://"), *parts)
    return posixpath.join(base, *parts)


def glob_base(path: str) -> str:
    """The folder part of a glob path before its first wildcard."""
    first = min(path.index(c) for c in GLOB_CHARS if c in path)
    return path[:first].rsplit("/", 1)[0]
