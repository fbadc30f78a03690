"""Output layout and line format, as Vertex writes them.

    {outputUriPrefix}/prediction-model-{UTC time with microseconds}Z/
        incremental_predictions/predictions_{first row:012d}-{last row:012d}.jsonl   while running
        predictions.jsonl                                                           when done

Each chunk is an immutable object holding a run of output lines in input order; the chunks that
exist ARE the durable progress of a job: a resumed runner lists them to learn which rows are done
(`ChunkedOutput.committed`), so a crash between writing a chunk and checkpointing it loses nothing
and writes nothing twice. When the job ends, `assemble` streams the chunks in order into
`predictions.jsonl`, written atomically, and removes them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from batchpredict import storage
from batchpredict.errors import BatchPredictError
from batchpredict.jobs import RowCounts

__all__ = [
    "ChunkedOutput",
    "error_line",
    "make_output_dir",
    "processed_time",
    "success_line",
]

PREDICTIONS = "predictions.jsonl"
INCREMENTAL = "incremental_predictions"
_CHUNK_RE = re.compile(r"predictions_(\d{12})-(\d{12})\.jsonl$")


def make_output_dir(prefix: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if storage.is_local(prefix):  # stored with the job: must not depend on the cwd
        prefix = os.path.abspath(os.path.expanduser(prefix.removeprefix("file://")))
    return storage.join(prefix, f"prediction-model-{stamp}")


def processed_time() -> str:
    """'2024-11-01T18:13:16.826+00:00': milliseconds and +00:00, as in Vertex's output lines."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def success_line(
    extras: dict[str, Any] | None, request: Any, response: dict[str, Any], when: str
) -> bytes:
    line: dict[str, Any] = dict(extras) if extras else {}
    line["status"] = ""
    line["processed_time"] = when
    line["request"] = request
    line["response"] = response
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def error_line(
    extras: dict[str, Any] | None, request: Any, error: BatchPredictError, when: str
) -> bytes:
    line: dict[str, Any] = dict(extras) if extras else {}
    line["status"] = error.row_status()
    line["processed_time"] = when
    line["request"] = request
    line["response"] = {}
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


def count_line(line: dict[str, Any], into: RowCounts) -> None:
    """Add one output line to the counts: tokens only for successful rows (only they are billed)."""
    if line.get("status"):
        into.failed += 1
        return
    into.succeeded += 1
    usage = (line.get("response") or {}).get("usageMetadata") or {}
    into.prompt_tokens += int(usage.get("promptTokenCount") or 0)
    into.candidates_tokens += int(usage.get("candidatesTokenCount") or 0)


@dataclass(frozen=True)
class Chunk:
    first: int
    last: int
    uri: str


class ChunkedOutput:
    """One job's output directory."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir
        self.incremental_dir = storage.join(output_dir, INCREMENTAL)
        self.predictions_uri = storage.join(output_dir, PREDICTIONS)

    def chunk_uri(self, first: int, last: int) -> str:
        return storage.join(self.incremental_dir, f"predictions_{first:012d}-{last:012d}.jsonl")

    def write_chunk(self, first: int, last: int, data: bytes) -> None:
        storage.write_atomic(self.chunk_uri(first, last), data)

    def chunks(self) -> list[Chunk]:
        found = []
        for uri in storage.list_files(self.incremental_dir):
            m = _CHUNK_RE.search(uri)
            if m:
                found.append(Chunk(int(m.group(1)), int(m.group(2)), uri))
        return sorted(found, key=lambda c: c.first)

    def committed(self) -> tuple[int, list[Chunk]]:
        """Rows 0..n-1 that chunks cover without a gap, and those chunks. Chunks past a gap
        (only a crash during a final, gappy flush leaves them) are dropped: their rows rerun."""
        n, kept = 0, []
        for chunk in self.chunks():
            if chunk.first == n:
                kept.append(chunk)
                n = chunk.last + 1
            else:
                storage.remove(chunk.uri)
        return n, kept

    @staticmethod
    def recount(chunks: list[Chunk]) -> RowCounts:
        counts = RowCounts()
        for chunk in chunks:
            for raw in storage.read_bytes(chunk.uri).splitlines():
                if raw.strip():
                    count_line(orjson.loads(raw), counts)
        return counts

    def assemble(self) -> str:
        """Stream every chunk, in row order, into predictions.jsonl; then remove the chunks.
        Safe to repeat: a crash before the chunks are gone just assembles again."""
        chunks = self.chunks()
        if not chunks and storage.exists(self.predictions_uri):
            return self.predictions_uri  # assembled before a crash; chunks already removed
        with storage.open_atomic_writer(self.predictions_uri) as out:
            for chunk in chunks:
                with storage.open_read(chunk.uri) as f:
                    while block := f.read(4 * 1024 * 1024):
                        out.write(block)
        # Last chunk first: a crash part-way leaves a gap-free prefix of chunks, so a resumed
        # runner keeps those rows (committed()) instead of dropping everything past a gap.
        for chunk in reversed(chunks):
            storage.remove(chunk.uri)
        storage.remove_empty_dir(self.incremental_dir)
        return self.predictions_uri
