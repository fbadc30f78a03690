"""Files people upload to use as a job's input, one area per project.

Uploads are stored under `Settings.uploads_uri` (a folder, gs:// or s3://), one folder per upload:
`{root}/{project}/{UTC time}-{random}/{file name}`, written with `storage.open_atomic_writer`, so
a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
import secrets
from datetime import UTC, datetime
from typing import IO

from batchpredict import storage

__all__ = ["safe_file_name", "store_upload"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_file_name(name: str | None) -> str:
    """The last path segment of an uploaded file's name, reduced to [A-Za-z0-9._-]."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip("._")[:100]
    return base or "input.jsonl"


def store_upload(src: IO[bytes], file_name: str, root: str, project: str) -> str:
    """Copy an uploaded file into its own folder under `root`; returns its URI."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    folder = storage.join(root, safe_file_name(project), f"{stamp}-{secrets.token_hex(6)}")
    uri = storage.join(folder, safe_file_name(file_name))
    storage.check_uri(uri, "output")
    if storage.is_local(uri):  # a job reads it later, maybe from another working directory
        uri = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    src.seek(0)
    with storage.open_atomic_writer(uri) as out:
        while block := src.read(4 * 1024 * 1024):
            out.write(block)
    return uri
