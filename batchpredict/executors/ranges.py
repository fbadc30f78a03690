"""Row ranges: how a job's input is cut for its workers, and how a worker reads its range.

The driver scans the input once, at C speed (newline counts over 1 MiB blocks), and cuts it
into ranges of at most `chunk_rows` rows (and about `MAX_RANGE_BYTES`), each inside one file,
aligned to line starts:

    Range(uri, start byte, end byte, first_row, rows, first_line, skip)

Row numbers are global (across every input file, blank lines skipped), so a worker reading
bytes start..end of one file knows the number of each row it reads, and the line number each
error message names. Rows already committed (`committed`: the job's chunks) are skipped: no
range covers them, and a range never crosses one. A range whose worker died after committing
its first rows comes back with `skip` past them: its worker reads those rows but does not run
them. The scan is lazy: ranges are planned as workers ask for them, so driver memory does not
grow with the input.

A BigQuery input table (`bq://`, pinned at create) is one source of row positions: its ranges are
cut from its row count, `start`..`end` being row positions instead of bytes, and a worker reads
its range's rows by position (`tables.iter_rows`). Rows are parsed by the job's line format
(`formats/`; a table holds Vertex's rows).
"""

from __future__ import annotations

import bisect
import io
import itertools
import re
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import IO

from batchpredict import storage
from batchpredict.bigquery import tables
from batchpredict.bigquery.client import ROW_CALLS
from batchpredict.errors import InvalidArgument
from batchpredict.formats import LineCodec, codec_for
from batchpredict.input import Row, file_rows, parse_line, too_long

__all__ = [
    "MAX_RANGE_BYTES", "CommittedRows", "Range", "open_range", "plan_ranges", "read_range",
]

#: A range is cut before it grows past this many bytes (a single longer line is a range alone).
MAX_RANGE_BYTES = 64 * 1024 * 1024
_BLOCK = 1024 * 1024
_WS = b" \t\r\n\x0b\x0c"
#: A block where no line starts with whitespace has no blank line (one C pass).
_MAYBE_BLANK = re.compile(rb"\n[ \t\r\n\x0b\x0c]")


@dataclass(frozen=True, slots=True)
class Range:
    uri: str
    #: Byte offset of its first line, and just past its last line, in `uri`.
    start: int
    end: int
    #: Global index of its first row, and how many rows it holds.
    first_row: int
    rows: int
    #: 1-based line number of its first line in `uri` (error messages name lines).
    first_line: int
    #: Rows numbered below this are committed already: read, not run.
    skip: int

    @property
    def last_row(self) -> int:
        return self.first_row + self.rows - 1

    def rest(self, done_to: int) -> Range:
        """This range with rows up to `done_to` (inclusive) committed."""
        return replace(self, skip=done_to + 1)


@dataclass(slots=True)
class _Span:
    """The range being cut: where it starts, and the row where it must end."""

    start: int
    line: int
    first_row: int
    boundary: int
    run: bool
    bytes: int = 0


class _Planner:
    def __init__(self, chunk_rows: int, committed: Sequence[tuple[int, int]],
                 max_line_bytes: int, max_range_bytes: int) -> None:
        self.chunk_rows = max(1, chunk_rows)
        self.done = sorted(committed)
        self.d = 0
        self.row = 0
        self.max_line = max_line_bytes
        self.max_bytes = max_range_bytes
        self.span: _Span | None = None
        self.out: list[Range] = []
        self.uri = ""

    def _open(self, offset: int, line: int) -> None:
        done = self.done
        while self.d < len(done) and done[self.d][1] < self.row:
            self.d += 1
        if self.d < len(done) and done[self.d][0] <= self.row:
            self.span = _Span(offset, line, self.row, done[self.d][1] + 1, run=False)
            return
        nxt = done[self.d][0] if self.d < len(done) else self.row + self.chunk_rows
        self.span = _Span(offset, line, self.row, min(self.row + self.chunk_rows, nxt), True)

    def _close(self, offset: int) -> None:
        span = self.span
        if span is not None and span.run and self.row > span.first_row:
            self.out.append(Range(self.uri, span.start, offset, span.first_row,
                                  self.row - span.first_row, span.line, span.first_row))
        self.span = None

    def _row(self, offset: int, line: int, size: int) -> None:
        """A row (a non-blank line) at `offset`, line number `line`."""
        span = self.span
        if (span is None or self.row >= span.boundary
                or (span.run and span.bytes + size > self.max_bytes and self.row > span.first_row)):
            self._close(offset)
            self._open(offset, line)
            span = self.span
        assert span is not None
        span.bytes += size
        self.row += 1

    def file(self, f: IO[bytes], uri: str) -> Iterator[Range]:
        self.uri = uri
        offset = line = 0
        for piece in _pieces(f, self.max_line):
            if isinstance(piece, int):  # a line over the size limit: a row, never read whole
                self._row(offset, line + 1, piece)
                offset, line = offset + piece, line + 1
            else:
                lines = piece.count(b"\n") + (not piece.endswith(b"\n"))
                span = self.span
                if (_may_have_blank(piece)
                        or (span is not None and span.bytes + len(piece) > self.max_bytes)):
                    self._walk(piece, offset, line)  # line by line (rare)
                else:
                    self._jump(piece, offset, line, lines)  # every line is a row
                offset, line = offset + len(piece), line + lines
            if self.out:
                yield from self.out
                self.out.clear()
        self._close(offset)
        yield from self.out
        self.out.clear()

    def table(self, uri: str, rows: int) -> Iterator[Range]:
        """The ranges of a table of `rows` rows: positions instead of byte offsets."""
        self.uri = uri
        while self.row < rows:
            self._row(self.row, self.row, 1)
            span = self.span
            assert span is not None
            step = min(span.boundary, rows) - self.row
            self.row += step
            span.bytes += step
            if self.out:
                yield from self.out
                self.out.clear()
        self._close(rows)
        yield from self.out
        self.out.clear()

    def _jump(self, piece: bytes, offset: int, line: int, lines: int) -> None:
        """A piece whose every line is a row: skip to the cuts with C-speed searches."""
        pos = 0
        while lines:
            span = self.span
            room = span.boundary - self.row if span is not None else 0
            if span is not None and lines <= room:
                self.row += lines
                span.bytes += len(piece) - pos
                return
            if span is None or room <= 0:  # this line starts a new span
                end = piece.find(b"\n", pos) + 1 or len(piece)
                self._row(offset + pos, line + 1, end - pos)
                pos, line, lines = end, line + 1, lines - 1
                continue
            end = pos
            for _ in range(room):
                end = piece.find(b"\n", end) + 1
            self.row += room
            span.bytes += end - pos
            pos, line, lines = end, line + room, lines - room

    def _walk(self, piece: bytes, offset: int, line: int) -> None:
        pos, size = 0, len(piece)
        while pos < size:
            nl = piece.find(b"\n", pos)
            end = size if nl < 0 else nl + 1
            line += 1
            text = piece[pos:end]
            if text.strip(_WS) or end - pos - (nl >= 0) > self.max_line:
                self._row(offset + pos, line, end - pos)
            pos = end


def _may_have_blank(piece: bytes) -> bool:
    return piece[:1] in (b" ", b"\t", b"\r", b"\n", b"\x0b", b"\x0c") or bool(
        _MAYBE_BLANK.search(piece)
    )


def _pieces(f: IO[bytes], max_line: int) -> Iterator[bytes | int]:
    """Whole lines of `f` in blocks (the last line may lack its newline), or, for a line over
    `max_line` bytes, its length alone: memory stays under a block plus one allowed line."""
    carry = b""
    long = -1  # bytes so far of a line over the limit, -1 when not in one
    while block := f.read(_BLOCK):
        if long >= 0:
            nl = block.find(b"\n")
            if nl < 0:
                long += len(block)
                continue
            yield long + nl + 1
            long, block = -1, block[nl + 1 :]
        data = carry + block if carry else block
        cut = data.rfind(b"\n")
        if cut >= 0:
            yield data[: cut + 1]
            carry = data[cut + 1 :]
        else:
            carry = data
        if len(carry) > max_line:
            long, carry = len(carry), b""
    if long >= 0:
        yield long
    elif carry:
        yield carry


def plan_ranges(
    inputs: Sequence[str],
    chunk_rows: int,
    committed: Sequence[tuple[int, int]] = (),
    max_line_bytes: int = 16 * 1024 * 1024,
    max_range_bytes: int = MAX_RANGE_BYTES,
) -> Generator[Range, None, int]:
    """The ranges of rows still to run, in row order; returns the number of rows of the input."""
    planner = _Planner(chunk_rows, committed, max_line_bytes, max_range_bytes)
    if len(inputs) == 1 and tables.is_table(inputs[0]):
        yield from planner.table(inputs[0], tables.count_rows(inputs[0]))
        return planner.row
    for uri in inputs:
        with storage.open_read(uri) as f:
            yield from planner.file(f, uri)
    return planner.row


class _Bounded(io.RawIOBase):
    """The bytes of `f` up to `size` from its position: a range too big to read whole."""

    def __init__(self, f: IO[bytes], size: int) -> None:
        self.f, self.left = f, size

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        data = self.f.read(min(len(b), self.left))
        self.left -= len(data)
        b[: len(data)] = data
        return len(data)


def open_range(rng: Range, max_line_bytes: int, line_format: str = "vertex") -> Iterator[Row]:
    """The rows of `rng` from `rng.skip` on, parsed and validated as they are taken (bad lines
    are error rows). Reads the range's bytes now (blocking: call it in a thread); parsing them
    lazily keeps few rows alive at once, which keeps Python's garbage collector cheap. A
    table's range is read whole, by position."""
    if tables.is_table(rng.uri):
        want = rng.last_row - rng.skip + 1
        with ROW_CALLS:  # one call at a time (bigquery/client.py)
            rows = tables.iter_rows(rng.uri, rng.skip, page_rows=max(1, min(want, 10_000)))
            read = list(itertools.islice(rows, want))
        if len(read) != want:
            raise _changed(rng, rng.skip - rng.first_row + len(read))
        return iter(read)
    codec = codec_for(line_format)
    with storage.open_read(rng.uri) as f:
        f.seek(rng.start)
        size = rng.end - rng.start
        if size <= MAX_RANGE_BYTES:
            return _rows_in(f.read(size), rng, max_line_bytes, codec)
    return _streamed_rows(rng, max_line_bytes, line_format)


def _rows_in(data: bytes, rng: Range, max_line_bytes: int, codec: LineCodec) -> Iterator[Row]:
    """`file_rows` over bytes in memory, flattened into one loop (the workers' hot path):
    the same rows, numbers and error messages."""
    index, number, skip, name = rng.first_row, rng.first_line - 1, rng.skip, rng.uri
    for raw in io.BytesIO(data):
        number += 1
        size = len(raw)
        if size - (raw[-1:] == b"\n") > max_line_bytes:
            if index >= skip:
                yield too_long(index, number, name, size, max_line_bytes)
        elif not raw.strip():
            continue
        elif index >= skip:
            yield parse_line(index, raw, number, name, codec)
        index += 1
    if index - rng.first_row != rng.rows:
        raise _changed(rng, index - rng.first_row)


def _streamed_rows(rng: Range, max_line_bytes: int, line_format: str) -> Iterator[Row]:
    with storage.open_read(rng.uri) as f:
        f.seek(rng.start)
        src = io.BufferedReader(_Bounded(f, rng.end - rng.start))
        yield from _rows(src, rng, max_line_bytes, line_format)


def _rows(src: IO[bytes], rng: Range, max_line_bytes: int, line_format: str) -> Iterator[Row]:
    seen = 0
    for _, _, row in file_rows(src, rng.uri, rng.first_row, rng.skip, max_line_bytes,
                               line_format, first_line=rng.first_line):
        seen += 1
        if row is not None:
            yield row
    if seen != rng.rows:
        raise _changed(rng, seen)


def _changed(rng: Range, seen: int) -> InvalidArgument:
    return InvalidArgument(
        f"{rng.uri} changed while the job ran: bytes {rng.start}-{rng.end} held {rng.rows} "
        f"rows when the job was planned and {seen} now. Inputs must not change until the "
        "job ends."
    )


def read_range(rng: Range, max_line_bytes: int, line_format: str = "vertex") -> list[Row]:
    """Every row of `rng` from `rng.skip` on (blocking)."""
    return list(open_range(rng, max_line_bytes, line_format))


class CommittedRows:
    """The committed chunks of a job as sorted, non-overlapping (first, last) intervals, and the
    gap-free prefix they make (rows 0..prefix-1)."""

    def __init__(self, chunks: Iterable[tuple[int, int]] = ()) -> None:
        self.intervals: list[tuple[int, int]] = []
        self.prefix = 0
        for first, last in sorted(chunks):
            self.add(first, last)

    def overlaps(self, first: int, last: int) -> bool:
        i = bisect.bisect_right(self.intervals, (last, 2**63))
        return i > 0 and self.intervals[i - 1][1] >= first

    def has(self, first: int, last: int) -> bool:
        i = bisect.bisect_left(self.intervals, (first, last))
        return i < len(self.intervals) and self.intervals[i] == (first, last)

    def prefix_with(self, first: int, last: int) -> int:
        """What `prefix` becomes once first..last is added."""
        prefix = last + 1 if first == self.prefix else self.prefix
        i = bisect.bisect_left(self.intervals, (prefix, -1))
        while i < len(self.intervals) and self.intervals[i][0] == prefix:
            prefix = self.intervals[i][1] + 1
            i += 1
        return prefix

    def add(self, first: int, last: int) -> None:
        self.prefix = self.prefix_with(first, last)
        bisect.insort(self.intervals, (first, last))
