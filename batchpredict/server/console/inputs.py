"""Checking and storing a job's input before it is submitted: what the console's create page and
`POST /batchpredict/v1/uploads[:validate]` / `inputs:validate` do.

Every line is checked with `batchpredict.rows.parse_line`, the function the runner applies to each
input line, so a problem reported here is exactly the `status` the runner would write for that row
(blank lines are skipped and over-long lines refused as the runner does). A report names each bad
line by its 1-based line number in its file.

Uploads are stored under `Settings.uploads_uri` (a folder, gs:// or s3://), one folder per upload:
`{root}/{project}/{UTC time}-{random}/{file name}`, written with `storage.open_atomic_writer` (the
streaming form of `storage.write_atomic`), so a reader never sees half a file.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from batchpredict import storage
from batchpredict.errors import InvalidArgument
from batchpredict.rows import file_rows

__all__ = ["MAX_PROBLEMS", "InputReport", "check_stream", "check_uris", "store_upload"]

#: A report lists at most this many bad lines (and counts them all).
MAX_PROBLEMS = 100


@dataclass
class InputReport:
    """What a validation found: rows, how many are valid, and the first bad lines."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    invalid: int = 0
    size_bytes: int = 0
    problems: list[dict[str, Any]] = field(default_factory=list)
    #: True when the check stopped at `max_rows` before the end of the input.
    truncated: bool = False

    def to_api(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "rowCount": self.rows,
            "validRowCount": self.rows - self.invalid,
            "invalidRowCount": self.invalid,
            "sizeBytes": self.size_bytes,
            "problems": self.problems,
            "problemsTruncated": self.invalid > len(self.problems),
            "truncated": self.truncated,
        }

    def summary(self) -> str:
        """One sentence for an error reply: how many lines are bad, and the first of them."""
        first = self.problems[0] if self.problems else None
        example = f" First: {first['message']}" if first else ""
        return (
            f"{self.invalid} of {self.rows} lines are not valid requests.{example} Fix them, or "
            "upload with allowInvalidLines=true: each then becomes a failed row of the job."
        )


def check_stream(
    f: IO[bytes],
    name: str,
    report: InputReport,
    max_line_bytes: int,
    max_rows: int | None = None,
) -> InputReport:
    """Check every line of one file (binary, read line by line) into `report`."""
    report.files.append(name)
    for number, size, row in file_rows(f, name, report.rows, 0, max_line_bytes):
        report.size_bytes += size
        if max_rows is not None and report.rows >= max_rows:
            report.truncated = True
            return report
        # the runner's own reading of the line: the same Row, the same words
        message = row.error.message if row is not None and row.error is not None else None
        if message is not None:
            report.invalid += 1
            if len(report.problems) < MAX_PROBLEMS:
                report.problems.append(
                    {"file": name, "line": number, "row": report.rows, "message": message}
                )
        report.rows += 1
    return report


def check_uris(uris: list[str], max_line_bytes: int, max_rows: int | None) -> InputReport:
    """Check the files that input URIs (wildcards allowed) name, in the order a job reads them."""
    report = InputReport()
    for uri in storage.expand_inputs(uris):
        with storage.open_read(uri) as f:
            check_stream(f, uri, report, max_line_bytes, max_rows)
        if report.truncated:
            break
    return report


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


def require_rows(report: InputReport, name: str) -> None:
    if report.rows == 0:
        raise InvalidArgument(
            f"{name} has no rows. Each line must be one JSON object such as "
            '{"request": {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}}.'
        )
