"""Output layout, as Vertex writes it, for every line format (`formats/` writes the lines).

    {outputUriPrefix}/prediction-model-{UTC time with microseconds}Z/
        incremental_predictions/predictions_{first row:012d}-{last row:012d}.jsonl   while running
        predictions.jsonl                                                           when done

Each chunk is an immutable object holding a run of consecutive output lines in input order,
written first-writer-wins; chunks may complete in any order (workers run row ranges). The chunks
that exist ARE the durable progress of a job: a driver that starts reconciles them with the
store's commit records (executors/commits.py), so a crash between writing a chunk and committing
it loses nothing and writes nothing twice. When the job ends, `assemble` streams the committed
chunks in row order into `predictions.jsonl`, written atomically, and removes every chunk object.

    OrderedChunkBuffer   output lines arrive in any order, leave as gap-free runs (chunks)
    ChunkedOutput        one job's output folder: write, list, recount and assemble chunks
    OutputReader         the one reader of a job's output for people (downloads, failed rows)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from batchpredict import storage
from batchpredict.errors import NotFound
from batchpredict.formats import LineCodec, codec_for
from batchpredict.formats.vertex import VertexLines
from batchpredict.jobs import Job, LineFormat, RowCounts

__all__ = [
    "Chunk",
    "ChunkedOutput",
    "EarlyAssembly",
    "OrderedChunkBuffer",
    "OutputPart",
    "OutputReader",
    "job_output",
    "make_output_dir",
    "processed_time",
]

PREDICTIONS = "predictions.jsonl"
INCREMENTAL = "incremental_predictions"
_CHUNK_RE = re.compile(r"predictions_(\d{12})-(\d{12})\.jsonl$")
#: A local chunk's temporary file (storage.atomic), or predictions.jsonl put together early
#: (`EarlyAssembly`), left behind by a writer or driver killed mid-write.
_STALE_TMP_RE = re.compile(r"predictions(_\d{12}-\d{12})?\.jsonl\.tmp-[0-9a-f]{8}$")
_VERTEX = VertexLines()
#: Which output lines a reader gives: every line, or those of succeeded or of failed rows.
OutputPart = str
PARTS = ("all", "succeeded", "failed")


def make_output_dir(prefix: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if storage.is_local(prefix):  # stored with the job: must not depend on the cwd
        prefix = os.path.abspath(os.path.expanduser(prefix.removeprefix("file://")))
    return storage.join(prefix, f"prediction-model-{stamp}")


_stamp: list[Any] = [0, ""]  # the last millisecond formatted, and its text


def processed_time() -> str:
    """Now as '2024-11-01T18:13:16.826+00:00': milliseconds and +00:00, as in Vertex's output
    lines. Each row is stamped when it was processed; rows within one millisecond share a text
    (formatting is the costly part, so it is done once a millisecond)."""
    ms = time.time_ns() // 1_000_000
    if ms != _stamp[0]:
        _stamp[0] = ms
        _stamp[1] = datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
    return _stamp[1]  # type: ignore[no-any-return]


#: A run of consecutive rows ready to be one chunk: (first row, lines, their counts).
Run = tuple[int, list[bytes], RowCounts]


class OrderedChunkBuffer:
    """Output lines arrive in runs of consecutive rows, in any order (batches finish out of
    order); they leave in row order.

    A run that follows the buffered rows without a gap goes straight into `lines`; others wait
    in `pending` (by first row) until the gap fills (`advance`). `take` hands over what is
    buffered as runs: the gap-free run only, or (a range ending early) every answered row, as
    separate runs around the gaps, so no completed row is lost.
    """

    __slots__ = ("counts", "first", "lines", "next_index", "pending")

    def __init__(self, next_index: int) -> None:
        #: The first row not yet in `lines`.
        self.next_index = next_index
        self.first = next_index
        self.lines: list[bytes] = []
        self.counts = RowCounts()
        self.pending: dict[int, tuple[list[bytes], RowCounts]] = {}

    def __len__(self) -> int:
        return len(self.lines)

    def add_run(self, first: int, lines: list[bytes], counts: RowCounts) -> None:
        """Rows first, first+1, ... answered: their lines and counts."""
        if first == self.next_index:
            self._append(lines, counts)
        else:
            self.pending[first] = (lines, counts)

    def advance(self) -> None:
        """Move the runs that now follow without a gap out of `pending`."""
        pending = self.pending
        while self.next_index in pending:
            self._append(*pending.pop(self.next_index))

    def _append(self, lines: list[bytes], counts: RowCounts) -> None:
        self.lines.extend(lines)
        self.counts.add(counts)
        self.next_index += len(lines)

    def take(self, contiguous_only: bool) -> list[Run]:
        runs: list[Run] = []
        if self.lines:
            runs.append((self.first, self.lines, self.counts))
        if not contiguous_only:
            for first in sorted(self.pending):
                lines, counts = self.pending.pop(first)
                if runs and runs[-1][0] + len(runs[-1][1]) == first:
                    runs[-1][1].extend(lines)
                    runs[-1][2].add(counts)
                else:
                    runs.append((first, list(lines), counts))
        self.lines, self.counts = [], RowCounts()
        self.first = self.next_index
        return runs


@dataclass(frozen=True)
class Chunk:
    first: int
    last: int
    uri: str

    @property
    def rows(self) -> int:
        return self.last - self.first + 1


log = logging.getLogger(__name__)
#: An early-assembled predictions.jsonl is synced to disk every this many bytes.
_SYNC_BYTES = 64 * 1024 * 1024


class EarlyAssembly:
    """predictions.jsonl put together while a job runs (local output): each committed chunk
    that continues the gap-free run from row 0 is appended to a temporary file beside the
    chunks, in the kernel, so the final assembly only syncs and renames it (the chunks stay
    until then: they are the truth). Only an optimisation: an error here abandons it, and
    `ChunkedOutput.assemble` copies every chunk as before."""

    def __init__(self, incremental_dir: str) -> None:
        self.path = os.path.join(incremental_dir, f"{PREDICTIONS}.tmp-{uuid.uuid4().hex[:8]}")
        self.file: Any = None
        #: The chunks appended, in row order; rows 0..next_row-1.
        self.uris: list[str] = []
        self.next_row = 0
        self.broken = False
        #: Bytes of the file already on disk (synced as it grows).
        self.synced = 0

    def extend(self, chunks: list[Chunk]) -> None:
        """Append the chunks (in row order) that continue the run; stop at the first gap."""
        try:
            for chunk in chunks:
                if self.broken or chunk.first > self.next_row:
                    return
                if chunk.first < self.next_row:
                    continue
                if self.file is None:
                    self.file = open(self.path, "xb")  # open until `finish`
                storage.append(chunk.uri, self.file, kernel=True)
                self.uris.append(chunk.uri)
                self.next_row = chunk.last + 1
            if self.file is not None and self.file.tell() - self.synced >= _SYNC_BYTES:
                os.fdatasync(self.file.fileno())  # here, not all at the end of the job
                self.synced = self.file.tell()
        except Exception as exc:  # an optimisation only: assemble copies every chunk instead
            log.warning("Putting predictions.jsonl together early stopped (%s); it will be "
                        "put together at the end", exc)
            self.discard()

    def finish(self, chunks: list[Chunk], uri: str) -> bool:
        """Rename the file to `uri` if it holds exactly `chunks`; True when it did."""
        self.extend(chunks)
        if self.broken or self.file is None or self.uris != [c.uri for c in chunks]:
            self.discard()
            return False
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.path, uri)
        except OSError:
            self.discard()
            return False
        return True

    def discard(self) -> None:
        self.broken = True
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class ChunkedOutput:
    """One job's output directory."""

    #: Whether `publish` does anything (a BigQuery output: bigquery/publish.py's TableOutput).
    publishes = False

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.incremental_dir = storage.join(output_dir, INCREMENTAL)
        self.predictions_uri = storage.join(output_dir, PREDICTIONS)
        self.early: EarlyAssembly | None = None

    @property
    def assembles_early(self) -> bool:
        """Whether `assemble_early` puts predictions.jsonl together as the job runs: for local
        output (object stores have no append)."""
        return not self.publishes and storage.is_local(self.output_dir)

    def assemble_early(self, chunks: list[Chunk]) -> None:
        """Committed chunks, in row order, that continue the gap-free run from row 0, appended
        to predictions.jsonl's temporary file (blocking; see `EarlyAssembly`)."""
        if self.assembles_early:
            if self.early is None:
                self.early = EarlyAssembly(self.incremental_dir)
            self.early.extend(chunks)

    def chunk_uri(self, first: int, last: int) -> str:
        return storage.join(self.incremental_dir, f"predictions_{first:012d}-{last:012d}.jsonl")

    def write_chunk(self, first: int, last: int, data: bytes) -> bool:
        """Write a chunk object; False when one of that name was there first (local storage
        refuses to replace it; object stores without preconditions replace it: same rows)."""
        return storage.write_atomic(self.chunk_uri(first, last), data, if_absent=True)

    def chunks(self, remove_stale: bool = False) -> list[Chunk]:
        """The chunk objects in row order. With `remove_stale` (only the job's runner, which
        holds the job: no other writer is alive), temporary files of killed writers go too."""
        found = []
        for uri in storage.list_files(self.incremental_dir):
            m = _CHUNK_RE.search(uri)
            if m:
                found.append(Chunk(int(m.group(1)), int(m.group(2)), uri))
            elif remove_stale and _STALE_TMP_RE.search(uri):
                storage.remove(uri)
        return sorted(found, key=lambda c: c.first)

    def committed_count(self) -> int:
        """Rows 0..n-1 that chunk objects cover without a gap (see `committed`)."""
        return self.committed()[0]

    def committed(self) -> tuple[int, list[Chunk]]:
        """Rows 0..n-1 that chunk objects cover without a gap, and those chunks: what is surely
        done, read from storage alone. Nothing is removed: chunks past a gap may be a worker's
        still filling it (the driver's commit records say which chunks count)."""
        n, kept = 0, []
        for chunk in self.chunks():
            if chunk.first == n:
                kept.append(chunk)
                n = chunk.last + 1
            elif chunk.first > n:
                break
        return n, kept

    def written(self) -> list[Chunk]:
        """The chunk objects that do not overlap one another, in row order (of two that
        overlap, a lost worker's and its range's rerun, the one that starts first is kept)."""
        kept: list[Chunk] = []
        for chunk in self.chunks():
            if not kept or chunk.first > kept[-1].last:
                kept.append(chunk)
        return kept

    @staticmethod
    def recount(chunks: list[Chunk], codec: LineCodec = _VERTEX) -> RowCounts:
        counts = RowCounts()
        for chunk in chunks:
            for raw in storage.read_bytes(chunk.uri).splitlines():
                if raw.strip():
                    codec.count(orjson.loads(raw), counts)
        return counts

    def publish(self, runs: list[Run], chunks: list[Chunk] | None = None) -> None:
        """Runs of committed lines that just became gap-free from row 0 (`chunks`: every
        committed chunk): a job writing elsewhere too (a BigQuery table) copies them there."""

    def assemble(self, chunks: list[Chunk] | None = None) -> str:
        """Stream `chunks` (the committed ones; default: `written()`), in row order, into
        predictions.jsonl; then remove every chunk object. Safe to repeat: predictions.jsonl
        appears whole, from every committed chunk, before any chunk is removed, so once it
        exists (a crash or an outage during the clean-up) only the chunks left are removed."""
        every = self.chunks()
        chunks = sorted(chunks, key=lambda c: c.first) if chunks is not None else self.written()
        early, self.early = self.early, None
        if not storage.exists(self.predictions_uri):
            if early is None and self.assembles_early:  # a driver that took over, or no commit
                early = EarlyAssembly(self.incremental_dir)
            if early is None or not early.finish(chunks, self.predictions_uri):
                storage.concat([chunk.uri for chunk in chunks], self.predictions_uri)
        elif early is not None:
            early.discard()
        # predictions.jsonl is whole: every chunk object goes (a lost worker's too)
        for chunk in reversed(every):
            storage.remove(chunk.uri)
        storage.remove_empty_dir(self.incremental_dir)
        return self.predictions_uri


def job_output(job: Job) -> ChunkedOutput:
    """The runner's output of `job`: its folder's chunks; for a job that writes a BigQuery
    table, chunks that are also published to the table (bigquery/publish.py)."""
    if job.output_table:
        from batchpredict.bigquery.publish import TableOutput

        return TableOutput(job)
    assert job.output_dir is not None
    return ChunkedOutput(job.output_dir)


class OutputReader:
    """A job's output as people read it: predictions.jsonl when it exists, else (while the job
    runs) its incremental chunks in row order. Read as a stream, never whole. A chunk can vanish
    while it is read (the job ends and assembles them): the reader then starts again from
    predictions.jsonl, skipping the lines it already gave."""

    BLOCK = 1024 * 1024

    def __init__(self, output_dir: str | None, line_format: str = LineFormat.VERTEX) -> None:
        self.output = ChunkedOutput(output_dir) if output_dir else None
        self.codec = codec_for(line_format)

    def files(self) -> list[str]:
        """predictions.jsonl when it exists, else the incremental chunks in row order."""
        if self.output is None:
            return []
        if storage.exists(self.output.predictions_uri):
            return [self.output.predictions_uri]
        return [chunk.uri for chunk in self.output.written()]

    def lines(self) -> Iterator[bytes]:
        """Every output line so far, once each, in output order."""
        given = 0
        for _attempt in range(3):
            seen = 0
            try:
                for uri in self.files():
                    with storage.open_read(uri) as f:
                        for raw in f:
                            if not raw.strip():
                                continue
                            seen += 1
                            if seen > given:
                                given += 1
                                yield raw
                return
            except NotFound:
                continue  # a chunk was assembled away under us: read again from the start

    def part(self, part: OutputPart) -> Iterator[bytes]:
        """The lines of rows that succeeded, or failed, or all of them ("all")."""
        if part not in PARTS:
            raise ValueError(f"unknown output part {part!r}")
        for raw in self.lines():
            if part == "all" or self._failed(raw) == (part == "failed"):
                yield raw

    def part_sizes(self) -> dict[OutputPart, int]:
        """Bytes of each part (lines with their newlines), from one pass over the output."""
        sizes = dict.fromkeys(PARTS, 0)
        for raw in self.lines():
            size = len(raw) + (not raw.endswith(b"\n"))
            sizes["all"] += size
            sizes["failed" if self._failed(raw) else "succeeded"] += size
        return sizes

    def _failed(self, raw: bytes) -> bool:
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return True
        return not isinstance(line, dict) or self.codec.failed(line)

    def blocks(self, part: OutputPart = "all") -> Iterator[bytes]:
        """The output so far as blocks of whole lines (a download's body)."""
        buffer: list[bytes] = []
        size = 0
        for raw in self.part(part):
            buffer.append(raw if raw.endswith(b"\n") else raw + b"\n")
            size += len(raw)
            if size >= self.BLOCK:
                yield b"".join(buffer)
                buffer, size = [], 0
        if buffer:
            yield b"".join(buffer)

    def first_failed(self, limit: int) -> tuple[list[dict[str, Any]], int]:
        """The first `limit` output lines of failed rows (Vertex: whose `status` is not empty),
        each with `outputLine` (1-based line of the output), and how many lines were read."""
        found: list[dict[str, Any]] = []
        read = 0
        for raw in self.lines():
            read += 1
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(line, dict) and self.codec.failed(line):
                found.append({"outputLine": read, **line})
                if len(found) >= limit:
                    break
        return found, read
