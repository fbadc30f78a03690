"""The driver's commits: what of a job's output counts.

    reconcile   when a driver starts: the store's commit records made to agree with the chunk
                objects (the truth): a committed chunk whose object vanished runs again, an
                object never committed (a crash between write and commit) is adopted, a lost
                worker's object that overlaps a committed chunk is removed
    commit      each chunk a worker reports, in one store transaction (`JobStore.commit_chunk`):
                never twice, never over another chunk, only while the driver holds the job; its
                failed rows' errors join the job's partialFailures (the first
                MAX_PARTIAL_FAILURES in row order)
    publish     a job that writes a BigQuery table (`bigquery.publish.TableOutput`): as the
                committed rows without a gap from row 0 grow, their lines go to the table, in
                row order; the rest when the job ends (`TableOutput.assemble`)
    assemble_early
                local output: as that gap-free run grows, its chunks are appended to
                predictions.jsonl's temporary file (`output.EarlyAssembly`), so the job's end
                only renames it

Only the driver (runner.py) commits; workers only write chunk objects and report them.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from typing import Any

from batchpredict import bounded_io, output, storage
from batchpredict.bigquery.client import ROW_CALLS
from batchpredict.errors import Internal
from batchpredict.executors.base import ChunkDone
from batchpredict.executors.ranges import CommittedRows
from batchpredict.formats import LineCodec
from batchpredict.jobs import MAX_PARTIAL_FAILURES, Job, RowCounts, utcnow
from batchpredict.store.base import ChunkRecord, Commit, JobStore

__all__ = ["Commits", "merge_failures"]

log = logging.getLogger(__name__)


def _row_of(status: dict[str, Any]) -> int:
    """The row a partialFailures entry names ("Output line N: ..."), for ordering."""
    head = str(status.get("message", "")).split(":", 1)[0]
    number = head.removeprefix("Output line ")
    return int(number) - 1 if number.isdigit() else 2**62


def merge_failures(into: list[dict[str, Any]],
                   new: tuple[tuple[int, dict[str, Any]], ...]) -> None:
    """Add a chunk's failed rows to a job's partialFailures: the first MAX_PARTIAL_FAILURES
    failed rows of the job in row order, whatever order the chunks commit in."""
    if not new or (len(into) >= MAX_PARTIAL_FAILURES and new[0][0] > _row_of(into[-1])):
        return
    merged = sorted([(_row_of(s), s) for s in into] + list(new), key=lambda p: p[0])
    into[:] = [s for _, s in merged[:MAX_PARTIAL_FAILURES]]


class Commits:
    """One driver's view of its job's committed chunks (see the module doc)."""

    def __init__(self, store: JobStore, out: output.ChunkedOutput, codec: LineCodec) -> None:
        self.store = store
        self.out = out
        self.codec = codec
        self.committed = CommittedRows()
        #: Reported chunks not yet committed, in report order.
        self.pending: deque[ChunkDone] = deque()
        #: Rows 0..published-1 were handed to the output table.
        self.published = 0
        #: Rows 0..assembled-1 were appended to predictions.jsonl's temporary file.
        self.assembled = 0

    def reconcile(self, job: Job) -> None:
        """The store's committed chunks, made to agree with the chunk objects; the job's counts
        from them (blocking)."""
        out = self.out
        objects = {(c.first, c.last): c for c in out.chunks(remove_stale=True)}
        stored = self.store.chunks(job.id)
        gone = [c.first for c in stored if (c.first, c.last) not in objects]
        if gone:
            log.warning("job %s: %d committed chunks are missing from %s; their rows run again",
                        job.id, len(gone), out.incremental_dir)
            self.store.forget_chunks(job.id, gone)
        kept = [c for c in stored if (c.first, c.last) in objects]
        self.committed = CommittedRows((c.first, c.last) for c in kept)
        job.counts = RowCounts()
        for c in kept:
            job.counts.add(c.counts)
        job.checkpoint.committed_rows = self.committed.prefix
        for key, chunk in sorted(objects.items()):
            if self.committed.has(*key):
                continue
            if self.committed.overlaps(*key):  # a lost worker's, never committed
                storage.remove(chunk.uri)
                continue
            # written before a crash, never committed: adopt it
            counts = output.ChunkedOutput.recount([chunk], self.codec)
            if self.commit(job, ChunkDone(chunk.first, chunk.last, counts)) is Commit.LOST:
                raise Internal(f"Job {job.id} was taken over while it started.")

    def commit(self, job: Job, chunk: ChunkDone) -> Commit:
        """Commit one reported chunk (blocking: one store transaction)."""
        first, last = chunk.first, chunk.last
        if self.committed.has(first, last):
            return Commit.DUPLICATE
        if self.committed.overlaps(first, last):
            log.warning("job %s: chunk %d-%d overlaps committed rows; dropped", job.id,
                        first, last)
            storage.remove(self.out.chunk_uri(first, last))
            return Commit.OVERLAP
        prefix = self.committed.prefix_with(first, last)
        # from what the job had before: the same whether the store takes it at the first try
        # or after an outage (outages.PatientStore tries again)
        counts, failures = job.counts, list(job.partial_failures)

        def apply(j: Job) -> None:
            j.counts = RowCounts()
            j.counts.add(counts)
            j.counts.add(chunk.counts)
            j.checkpoint.committed_rows = prefix
            j.partial_failures = list(failures)
            merge_failures(j.partial_failures, chunk.failures)
            j.record_progress(utcnow())  # the console's throughput charts read this history

        try:
            result = self.store.commit_chunk(job, ChunkRecord(first, last, chunk.counts), apply)
        except BaseException:
            job.counts, job.partial_failures = counts, failures  # not committed
            raise
        if result is Commit.DUPLICATE:  # committed by a try whose reply an outage swallowed
            result = Commit.COMMITTED
        if result is Commit.COMMITTED:
            self.committed.add(first, last)
        return result

    async def commit_pending(self, job: Job) -> bool:
        """Commit every reported chunk, one transaction each, then publish what became gap-free.
        False when the job is no longer this driver's."""
        while self.pending:
            chunk = self.pending.popleft()
            if await bounded_io.run_io(self.commit, job, chunk,
                                       pool=bounded_io.JOB_POOL) is Commit.LOST:
                return False
        if self.out.publishes and self.committed.prefix > self.published:
            await bounded_io.run_io(self.publish, pool=bounded_io.JOB_POOL)
        if self.out.assembles_early and self.committed.prefix > self.assembled:
            await bounded_io.run_io(self.assemble_early, pool=bounded_io.JOB_POOL)
        return True

    def assemble_early(self) -> None:
        """The committed chunks past `assembled` and without a gap from row 0, onto
        predictions.jsonl's temporary file (local output; blocking), so the end of the job only
        renames it."""
        prefix = self.committed.prefix
        self.out.assemble_early(self.chunks(self.assembled, prefix))
        self.assembled = prefix

    def chunks(self, start: int = 0, end: int | None = None) -> list[output.Chunk]:
        """The committed chunks, in row order; those starting in rows start..end-1."""
        intervals = self.committed.intervals
        i = bisect.bisect_left(intervals, (start, -1)) if start else 0
        found = []
        while i < len(intervals) and (end is None or intervals[i][0] < end):
            first, last = intervals[i]
            found.append(output.Chunk(first, last, self.out.chunk_uri(first, last)))
            i += 1
        return found

    def publish(self) -> None:
        """The committed rows past `published` and without a gap from row 0, into the output
        table (blocking)."""
        runs: list[output.Run] = []
        committed = self.chunks()
        for chunk in committed:
            if chunk.first >= self.committed.prefix:
                break
            if chunk.last >= self.published:
                runs.append((chunk.first, storage.read_bytes(chunk.uri).splitlines(True),
                             RowCounts()))
        with ROW_CALLS:  # one BigQuery call at a time (bigquery/client.py)
            self.out.publish(runs, committed)
        self.published = self.committed.prefix
