"""Reading a job's output for people: its predictions so far and its first failed rows.

A finished job's output is `predictions.jsonl`; a running one's is its incremental chunks, in row
order (`output.ChunkedOutput`). Both are read as a stream, never whole. A chunk can vanish while it
is read (the job ends and assembles them into predictions.jsonl): the reader then starts again
from predictions.jsonl, skipping the lines it already gave.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from batchpredict import storage
from batchpredict.errors import NotFound
from batchpredict.jobs import Job
from batchpredict.output import ChunkedOutput

__all__ = ["first_failed_rows", "iter_output_blocks", "no_predictions_message", "output_files"]

BLOCK = 1024 * 1024


def output_files(job: Job) -> list[str]:
    """predictions.jsonl when it exists, else the incremental chunks in row order."""
    if not job.output_dir:
        return []
    out = ChunkedOutput(job.output_dir)
    if storage.exists(out.predictions_uri):
        return [out.predictions_uri]
    return [chunk.uri for chunk in out.chunks()]


def _iter_lines(job: Job) -> Iterator[bytes]:
    """Every output line so far, once each, in output order."""
    given = 0
    for _attempt in range(3):
        seen = 0
        try:
            for uri in output_files(job):
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
    return


def no_predictions_message(job: Job) -> str:
    """Why a job's download has nothing in it, for its 404."""
    if not job.state.is_terminal:
        return (f"Job {job.id} has no predictions yet: no row has completed. Try again once "
                "its progress shows completed rows.")
    why = f" ({job.error['message']})" if job.error and job.error.get("message") else ""
    return (f"Job {job.id} has no predictions: it ended {job.state.short} before any row "
            f"completed{why}.")


def iter_output_blocks(job: Job) -> Iterator[bytes]:
    """The output so far as blocks of whole lines (a download's body)."""
    buffer: list[bytes] = []
    size = 0
    for raw in _iter_lines(job):
        buffer.append(raw if raw.endswith(b"\n") else raw + b"\n")
        size += len(raw)
        if size >= BLOCK:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def first_failed_rows(job: Job, limit: int) -> tuple[list[dict[str, Any]], int]:
    """The first `limit` output lines whose `status` is not empty, each with `outputLine`
    (1-based line of the output), and how many lines were read to find them."""
    found: list[dict[str, Any]] = []
    read = 0
    for raw in _iter_lines(job):
        read += 1
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(line, dict) and line.get("status"):
            found.append({"outputLine": read, **line})
            if len(found) >= limit:
                break
    return found, read
