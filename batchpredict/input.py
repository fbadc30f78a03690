"""Reading a job's input: JSONL streamed from storage into `Row`s, in flat memory.

Rows are numbered across all input files in order (0-based), blank lines skipped. A line that
cannot become a request (over the size limit, not UTF-8, not JSON, not an object, no `request`,
an invalid request) is still a row: it carries the error that its output line will report, so
one bad line never stops a job.

An input may instead be one BigQuery table (`bq://`, bigquery/tables.py): its rows come in table
order, each `request` cell read as a line's request and the other columns echoed.

A job's line format (`formats/`: Vertex, OpenAI or Gemini lines) decides how a JSON object
becomes a request; reading, numbering and the limits are the same for every format.

The same reading checks input before a job is submitted (`check_stream`, `check_uris`: the
console's create page, `uploads:validate`, `inputs:validate`), so a problem reported there is
exactly the `status` the runner would write for that row. A report names each bad line by its
1-based line number in its file.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import msgspec
import orjson

from batchpredict import storage
from batchpredict.bigquery import tables
from batchpredict.config import RunnerSettings
from batchpredict.errors import BatchPredictError, InvalidArgument, plural
from batchpredict.formats import LineCodec, codec_for, detect_format
from batchpredict.jobs import Job, LineFormat
from batchpredict.schema import GenerateContentRequest, parse_request_json

log = logging.getLogger(__name__)

__all__ = [
    "InputReport",
    "Row",
    "check_stream",
    "check_uris",
    "count_rows",
    "detect_line_format",
    "estimate_rows",
    "file_rows",
    "iter_rows",
    "parse_line",
    "parse_valid_line",
    "recount_rows",
    "require_rows",
    "too_long",
]

DEFAULT_MAX_LINE_BYTES = RunnerSettings.max_line_bytes
_VERTEX = codec_for(LineFormat.VERTEX)


@dataclass(slots=True)
class Row:
    index: int
    #: Top-level fields of the input line other than `request` (e.g. `key`), echoed on output
    #: (values as parsed, or as raw JSON: `orjson.Fragment`).
    extras: dict[str, Any] | None
    #: The `request` as given, echoed on output (parsed, or raw JSON: `orjson.Fragment`); {}
    #: when the line had none.
    request: Any
    parsed: GenerateContentRequest | None = None
    error: BatchPredictError | None = None


def _lines(
    f: IO[bytes], max_bytes: int, first_line: int = 1
) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, line or None when over the limit, its length), lines numbered from
    `first_line`. Never holds more than `max_bytes` of one line in memory."""
    number = first_line - 1
    while True:
        raw = f.readline(max_bytes + 1)
        if not raw:
            return
        number += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            size = len(raw)
            while raw and not raw.endswith(b"\n"):  # skip the rest of the long line
                raw = f.readline(1024 * 1024)
                size += len(raw)
            yield number, None, size
        else:
            yield number, raw, len(raw)


def _bad(index: int, message: str, extras: dict[str, Any] | None = None) -> Row:
    return Row(index, extras, {}, error=InvalidArgument(message))


def _json_problem(raw: bytes, where: str, example: str) -> str:
    """Why a line is not JSON, by column within the line (its newline left out)."""
    line = raw.rstrip(b"\r\n")
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"{where} is not valid UTF-8 (byte {exc.start + 1}). Save the file as UTF-8."
    try:
        orjson.loads(line)
        reason = "it could not be parsed"  # pragma: no cover - loads failed on the same bytes
    except orjson.JSONDecodeError as exc:
        reason = f"{exc.msg} at column {exc.colno}"
    return (
        f"{where} is not valid JSON: {reason}. Each line must be one JSON object such as "
        f"{example}."
    )


#: A line's top level, each value left as raw JSON.
_TOP_LEVEL = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _echo(raw: msgspec.Raw) -> orjson.Fragment:
    """A value echoed on output as it came, whitespace removed (orjson writes it unparsed)."""
    data = bytes(raw)
    if data[0] in _OPEN:  # only objects and arrays can hold whitespace between tokens
        data = msgspec.json.format(data, indent=-1)
    return orjson.Fragment(data)


_OPEN = frozenset(b"{[")


def parse_valid_line(index: int, raw: bytes) -> Row | None:
    """The fast path, for a Vertex line that is a valid request: validate the request straight
    from its JSON and keep `request` and the extras as raw JSON to echo (no dicts built, nothing
    serialised twice). None for anything else: `parse_line` then words the row's error."""
    try:
        top = _TOP_LEVEL.decode(raw)
        request = top.pop("request")
        parsed = parse_request_json(request)
    except Exception:  # not JSON, no request, an invalid one
        return None
    return Row(index, {key: _echo(value) for key, value in top.items()} if top else None,
               _echo(request), parsed)


def parse_line(index: int, raw: bytes, number: int, name: str,
               codec: LineCodec | None = None) -> Row:
    """Line `number` of `name` as a Row. Vertex's valid lines take the fast path; other
    formats, and bad lines, their codec's `decode` (and only they word where the line is)."""
    codec = codec or _VERTEX
    if codec.format == LineFormat.VERTEX and (row := parse_valid_line(index, raw)) is not None:
        return row
    where = f"Line {number} of {name}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _bad(index, _json_problem(raw, where, codec.example))
    if not isinstance(obj, dict):
        return _bad(
            index,
            f"{where} is a JSON {type(obj).__name__}, not an object. Each line must be one "
            f"JSON object such as {codec.example}.",
        )
    extras, request, parsed = codec.decode(obj, where)
    if isinstance(parsed, BatchPredictError):
        return Row(index, extras, request, error=parsed)
    return Row(index, extras, request, parsed=parsed)


def too_long(index: int, number: int, name: str, size: int, max_line_bytes: int) -> Row:
    """The error row of a line over the size limit."""
    return _bad(
        index,
        f"Line {number} of {name} is {size} bytes; the limit is {max_line_bytes} bytes. "
        "Shorten the request (send large media as fileData URIs) or raise "
        "BATCHPREDICT_MAX_LINE_BYTES.",
    )


def file_rows(
    f: IO[bytes], name: str, first_index: int = 0, skip: int = 0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, line_format: str = LineFormat.VERTEX,
    first_line: int = 1,
) -> Iterator[tuple[int, int, Row | None]]:
    """(line number, bytes, Row) for each row of one open file (or of a range of it whose
    first line is number `first_line`), rows numbered from `first_index`. Rows numbered below
    `skip` are counted but not parsed: their Row is None. Workers (executors/ranges.py) and the
    console's upload check both read input through this."""
    codec = codec_for(line_format)
    index = first_index
    for number, raw, size in _lines(f, max_line_bytes, first_line):
        if raw is not None and not raw.strip():
            continue
        if index < skip:
            yield number, size, None
        elif raw is None:
            yield number, size, too_long(index, number, name, size, max_line_bytes)
        else:
            yield number, size, parse_line(index, raw, number, name, codec)
        index += 1


def _table(inputs: list[str]) -> str | None:
    """A job's input that is one BigQuery table (bigquery/tables.py), or None for files."""
    return inputs[0] if len(inputs) == 1 and tables.is_table(inputs[0]) else None


def iter_rows(
    inputs: list[str], skip: int = 0, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    line_format: str = LineFormat.VERTEX,
) -> Generator[Row, None, None]:
    """Every row of `inputs` from row number `skip` on."""
    if (table := _table(inputs)) is not None:
        yield from tables.iter_rows(table, skip)
        return
    index = 0
    for uri in inputs:
        with storage.open_read(uri) as f:
            for _, _, row in file_rows(f, uri, index, skip, max_line_bytes, line_format):
                index += 1
                if row is not None:
                    yield row


def count_rows(inputs: list[str], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> int:
    """How many rows `iter_rows` will yield from the start, without parsing them."""
    if (table := _table(inputs)) is not None:
        return tables.count_rows(table)
    total = 0
    for uri in inputs:
        with storage.open_read(uri) as f:
            for _, raw, _ in _lines(f, max_line_bytes):
                if raw is None or raw.strip():
                    total += 1
    return total


def detect_line_format(inputs: list[str], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
                       ) -> LineFormat:
    """The line format of `inputs`, from the first non-blank line of the first file (a
    BigQuery table holds Vertex's rows)."""
    if _table(inputs) is not None:
        return LineFormat.VERTEX
    for uri in inputs:
        with storage.open_read(uri) as f:
            for _, raw, _ in _lines(f, max_line_bytes):
                if raw is not None and raw.strip():
                    return detect_format(raw)
    return LineFormat.VERTEX


def estimate_rows(inputs: list[str]) -> int:
    """Lines in `inputs`, counted at C speed: exact unless the input has blank lines that hold
    spaces (a progress bar's total; `count_rows` gives the exact count)."""
    if (table := _table(inputs)) is not None:
        return tables.estimate_rows(table)
    total = 0
    for uri in inputs:
        last = b"\n"
        with storage.open_read(uri) as f:
            while block := f.read(1024 * 1024):
                total += block.count(b"\n") - block.count(b"\n\n")
                if last == b"\n" and block[:1] == b"\n":
                    total -= 1  # an empty line that spans two blocks
                last = block[-1:]
        if last != b"\n":
            total += 1  # a last line without a newline
    return total


# -- checking input before a job is submitted ------------------------------------------------
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
        bad = ("1 is not a valid request" if self.invalid == 1
               else f"{self.invalid} are not valid requests")
        fix = "Fix it" if self.invalid == 1 else "Fix them"
        return (
            f"Of {plural(self.rows, 'line')}, {bad}.{example} {fix}, or upload with "
            "allowInvalidLines=true: each bad line then becomes a failed row of the job."
        )


def check_stream(
    f: IO[bytes],
    name: str,
    report: InputReport,
    max_line_bytes: int,
    max_rows: int | None = None,
    line_format: str = LineFormat.VERTEX,
) -> InputReport:
    """Check every line of one file (binary, read line by line) into `report`."""
    report.files.append(name)
    for number, size, row in file_rows(f, name, report.rows, 0, max_line_bytes, line_format):
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


def check_uris(uris: list[str], max_line_bytes: int, max_rows: int | None,
               line_format: str = LineFormat.VERTEX) -> InputReport:
    """Check the files that input URIs (wildcards allowed) name, in the order a job reads them."""
    report = InputReport()
    for uri in storage.expand_inputs(uris):
        with storage.open_read(uri) as f:
            check_stream(f, uri, report, max_line_bytes, max_rows, line_format)
        if report.truncated:
            break
    return report


def require_rows(report: InputReport, name: str) -> None:
    if report.rows == 0:
        raise InvalidArgument(
            f"{name} has no rows. Each line must be one JSON object such as "
            '{"request": {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}}.'
        )


#: After a stop, how long a runner may spend reading its input again to count its rows (for
#: incompleteCount); a stuck or very slow input then gives the estimate instead.
RECOUNT_SECONDS = 10.0


async def recount_rows(job: Job, max_line_bytes: int, fallback: int | None) -> int | None:
    """A job's exact row count if its input reads again within RECOUNT_SECONDS (on the jobs'
    bounded threads), else `fallback`."""
    from batchpredict import bounded_io

    def count() -> int:
        bounded_io.guard_reads(RECOUNT_SECONDS)
        return count_rows(job.checkpoint.inputs, max_line_bytes)

    try:
        return await bounded_io.run_io(count, pool=bounded_io.JOB_POOL,
                                       timeout=RECOUNT_SECONDS + 1)
    except (bounded_io.ReadStopped, TimeoutError, BatchPredictError):
        log.warning("job %s: its input could not be counted again in %gs; incompleteCount "
                    "uses the estimate", job.id, RECOUNT_SECONDS)
        return fallback
