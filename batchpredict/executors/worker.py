"""One worker's work on a range: read and parse its rows, answer them through the backend,
write their output lines as immutable chunk objects, and report each chunk to the driver.

    read_range (thread) ──rows──> batches ──backend.generate (≤ max_concurrency)──>
    OrderedChunkBuffer (row order) ──> chunk object ──> ChunkDone report

A range is one chunk when it ends; on a slow backend its answered prefix is written every
`chunk_seconds` as a chunk of its own, so little is lost if the worker dies. Asked to stop
(cancel, time limit, shutdown), a range writes every answered row, around any gaps, and ends.
The same code runs in the driver's process (`local`), in worker processes and in Ray actors.

Lines are the job's line format (`formats/`: parsing rows and writing output lines), each row
stamped with when it was answered (`output.processed_time`); a chunk's report carries its first
failed rows' errors (partialFailures). Every worker answers through its project's data policy:
`worker_backend` builds the backend of a worker in another process and scopes its fileData to
the job's project, as the scheduler does for the in-process one. Range reads run on
`bounded_io.JOB_POOL` and stop at their next read when the worker is told to stop.

Chunk objects are written first-writer-wins where the storage allows (local files): when the
object is already there (a lost worker wrote it before it died), the worker reports the counts
of the lines in the object, not its own, so the store's counts always match the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import heapq
import itertools
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from batchpredict import bounded_io, outages, output
from batchpredict.backends import dedupe
from batchpredict.backends.base import Backend, generate_per_row
from batchpredict.config import RunnerSettings
from batchpredict.errors import BatchPredictError
from batchpredict.executors.base import Answered, ChunkDone, Report, WorkerSpec
from batchpredict.executors.ranges import MAX_RANGE_BYTES, Range, open_range
from batchpredict.formats import LineCodec, codec_for
from batchpredict.input import Row
from batchpredict.jobs import MAX_PARTIAL_FAILURES, RowCounts

__all__ = ["RangeWorker", "scoped", "worker_backend"]

log = logging.getLogger(__name__)
#: Answered-row reports (progress bars) at most this often per range (`WorkerSpec` stretches
#: it for many workers, so the driver takes in a bounded number of reports a second).
PROGRESS_SECONDS = 0.25


_process_tuned = False


def tune_process() -> None:
    """Once per process, as its first worker starts, settings for a process that moves
    millions of rows (the last two took 8% off a 1M-row job's wall time on the instant
    backend, and half its page faults; bench/README.md):

    - what is alive by then (imported modules, the loaded model, the server's app) leaves the
      garbage collector's reach (`gc.freeze`): the collections that a job's short-lived rows
      trigger then walk only those rows. Frozen objects are still freed by reference counting.
    - the GIL changes hands every 1 ms, not 5: a read, chunk write or store commit in a thread
      waits that long for the event loop's thread after each system call.
    - glibc keeps freed memory up to 128 MiB and serves blocks below 16 MiB from its heap, so a
      range's bytes and a chunk's lines reuse pages instead of faulting fresh ones in.
    """
    global _process_tuned
    if _process_tuned:
        return
    _process_tuned = True
    gc.freeze()
    sys.setswitchinterval(0.001)
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20)
        libc.mallopt(_M_MMAP_THRESHOLD, 16 << 20)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)


def scoped(backend: Backend, spec: WorkerSpec) -> Backend:
    """`backend` answering only rows whose fileData the job's project may read."""
    if spec.scope is None:
        return backend
    from batchpredict.data_gate import ProjectScopedBackend

    policy, media = spec.scope
    return ProjectScopedBackend(backend, policy, media)


async def worker_backend(spec: WorkerSpec) -> Backend:
    """The backend of a worker in another process: built from the model's registry entry,
    started, and scoped to the job's project."""
    from batchpredict.backends.registry import ModelRegistry

    backend = ModelRegistry([spec.entry], data_dir=spec.data_dir).create_backend(
        spec.entry, spec.model)
    await backend.start()
    return scoped(backend, spec)


class _Slots:
    """The backend's slots, shared by a worker's ranges and given to waiting batches lowest row
    first: rows are answered in row order as far as the backend's concurrency allows, as one
    stream would be (progress stays gap-free from row 0, and a cancel of a backend answering one
    batch at a time keeps a prefix of the rows)."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self.order = itertools.count()

    async def acquire(self, row: int) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self.waiting, (row, next(self.order), granted))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release()  # granted as it was cancelled: pass the slot on
            raise

    def release(self) -> None:
        while self.waiting:
            granted = heapq.heappop(self.waiting)[2]
            if not granted.done():
                granted.set_result(None)
                return
        self.free += 1


class _RangeRun:
    """One range in flight: its ordered buffer, what was answered since the last report, and
    the errors of its first failed rows."""

    __slots__ = ("answered", "buffer", "changed", "codec", "failures")

    def __init__(self, first: int, codec: LineCodec) -> None:
        self.buffer = output.OrderedChunkBuffer(first)
        self.answered = RowCounts()
        self.changed = asyncio.Event()
        self.codec = codec
        self.failures: dict[int, dict[str, Any]] = {}

    def _failed(self, index: int, error: BatchPredictError) -> None:
        """Keep the errors of the range's first MAX_PARTIAL_FAILURES failed rows."""
        failures = self.failures
        if len(failures) >= MAX_PARTIAL_FAILURES:
            last = max(failures)
            if index > last:
                return
            del failures[last]
        status = error.to_job_error()
        status["message"] = f"Output line {index + 1}: {status['message']}"
        failures[index] = status

    def failures_in(self, first: int, last: int) -> tuple[tuple[int, dict[str, Any]], ...]:
        found = sorted(i for i in self.failures if first <= i <= last)
        return tuple((i, self.failures.pop(i)) for i in found)

    def deliver(self, rows: list[Row], results: list[Any], when: str) -> None:
        """Output lines for answered rows (in row order), into the buffer as runs (every row's
        path: local names, counts summed in plain ints)."""
        success_line, error_line = self.codec.success_line, self.codec.error_line
        first = rows[0].index
        lines: list[bytes] = []
        ok = failed = prompt = output_tokens = 0
        for row, result in zip(rows, results, strict=True):
            if row.index != first + len(lines):  # rows missing between (error rows): a new run
                self._add_run(first, lines, RowCounts(ok, failed, prompt, output_tokens))
                first, lines = row.index, []
                ok = failed = prompt = output_tokens = 0
            if isinstance(result, BatchPredictError):
                lines.append(error_line(row.extras, row.request, result, when))
                failed += 1
                self._failed(row.index, result)
                continue
            usage = result.get("usageMetadata")
            if usage:
                prompt += int(usage.get("promptTokenCount") or 0)
                output_tokens += int(usage.get("candidatesTokenCount") or 0)
            ok += 1
            lines.append(success_line(row.extras, row.request, result, when))
        self._add_run(first, lines, RowCounts(ok, failed, prompt, output_tokens))

    def _add_run(self, first: int, lines: list[bytes], counts: RowCounts) -> None:
        self.buffer.add_run(first, lines, counts)
        self.answered.add(counts)

    def take_answered(self) -> Answered:
        report, self.answered = Answered(self.answered), RowCounts()
        return report


class RangeWorker:
    def __init__(self, backend: Backend, settings: RunnerSettings, output_dir: str,
                 progress_seconds: float = PROGRESS_SECONDS, line_format: str = "vertex",
                 on_waiting: Callable[[Any], None] | None = None) -> None:
        self.backend = dedupe.for_job(backend)  # identical temperature-0 requests sent once
        #: storage outages (range reads, chunk writes) waited out up to the deadline
        self.patience = outages.Patience(settings.outage_deadline_seconds, on_waiting)
        self.progress_seconds = progress_seconds
        self.settings = settings
        self.line_format = line_format
        self.codec = codec_for(line_format)
        self.out = output.ChunkedOutput(output_dir)
        self.batch_size = max(1, backend.batch_size)
        self.concurrency = max(1, backend.max_concurrency)
        self.slots = _Slots(self.concurrency)
        self.stopping = asyncio.Event()
        #: set with `stopping`: range reads stuck on slow storage stop at their next read
        self.stop_reading = threading.Event()
        tune_process()

    @classmethod
    def for_spec(cls, backend: Backend, spec: WorkerSpec,
                 on_waiting: Callable[[Any], None] | None = None) -> RangeWorker:
        return cls(backend, spec.settings, spec.output_dir, spec.progress_seconds,
                   spec.line_format, on_waiting)

    @property
    def ranges_in_flight(self) -> int:
        """Enough ranges to keep every backend slot busy, two at least (one finishing while
        the next starts), and no more than `window_rows` rows in memory."""
        st = self.settings
        chunk = max(1, st.chunk_rows)
        wanted = -(-self.batch_size * self.concurrency // chunk) + 1
        return max(2, min(wanted, st.window_rows // chunk))

    def stop(self) -> None:
        self.stopping.set()
        self.stop_reading.set()

    def _open(self, rng: Range) -> Iterator[Row]:
        bounded_io.guard_reads(stop=self.stop_reading)
        try:
            return open_range(rng, self.settings.max_line_bytes, self.line_format)
        except Exception as exc:  # a storage error that passes is waited out (patience)
            outage = None if isinstance(exc, bounded_io.ReadStopped) else \
                outages.storage_outage(rng.uri, exc)
            if outage is None:
                raise
            raise outage from exc

    async def run(self, rng: Range) -> AsyncIterator[Report]:
        """Run `rng` from `rng.skip`, yielding its chunks (and answered-row counts)."""
        st = self.settings
        try:
            rows = await self.patience.call(self._open, rng, resource=rng.uri)
        except bounded_io.ReadStopped:
            return  # told to stop while reading: nothing was answered
        run = _RangeRun(rng.skip, self.codec)
        feeder = asyncio.ensure_future(
            self._feed(run, rows, threaded=rng.end - rng.start > MAX_RANGE_BYTES))
        flushed = reported = time.monotonic()
        try:
            while True:
                wait = max(0.0, min(st.chunk_seconds - (time.monotonic() - flushed),
                                    self.progress_seconds))
                await _first_of(run.changed, self.stopping, feeder, timeout=wait)
                run.changed.clear()
                stopping = self.stopping.is_set()
                if feeder.done() and not feeder.cancelled() and feeder.exception() \
                        and not stopping:  # (stopping: a read stopped, the rest is written)
                    raise feeder.exception()  # type: ignore[misc]
                if run.buffer.next_index > rng.last_row or stopping:
                    everything = run.buffer.next_index > rng.last_row
                    feeder.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await feeder
                    yield run.take_answered()
                    runs = run.buffer.take(contiguous_only=everything)
                    for report in await self._write(run, runs):
                        yield report
                    return
                now = time.monotonic()
                if run.answered.done and now - reported >= self.progress_seconds:
                    reported = now
                    yield run.take_answered()
                if now - flushed >= st.chunk_seconds:
                    flushed = now
                    for report in await self._write(run, run.buffer.take(contiguous_only=True)):
                        yield report
        finally:
            feeder.cancel()

    async def _feed(self, run: _RangeRun, rows: Iterator[Row], threaded: bool) -> None:
        """Rows parsed a batch at a time (few alive at once); error rows straight to the
        buffer, the others to the backend in batches. A range read whole is parsed here; one
        too big to read whole (`threaded`) is read and parsed on the job pool."""
        read = max(self.settings.read_batch_rows, self.batch_size)
        tasks: set[asyncio.Task[None]] = set()

        def take() -> list[Row]:
            return list(itertools.islice(rows, read))

        try:
            while batch := (await bounded_io.run_io(take, pool=bounded_io.JOB_POOL) if threaded
                            else take()):
                good = [row for row in batch if row.error is None]
                if len(good) < len(batch):
                    bad = [row for row in batch if row.error is not None]
                    run.deliver(bad, [row.error for row in bad], output.processed_time())
                    run.buffer.advance()
                    run.changed.set()
                for i in range(0, len(good), self.batch_size):
                    await self.slots.acquire(good[i].index)
                    task = asyncio.ensure_future(
                        self._generate(run, good[i : i + self.batch_size])
                    )
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _generate(self, run: _RangeRun, batch: list[Row]) -> None:
        try:
            results = await generate_per_row(
                self.backend, [row.parsed for row in batch]  # type: ignore[misc]
            )
            # one clock read per batch: they ended together
            run.deliver(batch, results, output.processed_time())
            run.buffer.advance()
            run.changed.set()
        finally:
            self.slots.release()

    async def _write(self, run: _RangeRun, runs: list[output.Run]) -> list[Report]:
        """Write runs of lines as chunk objects."""
        reports: list[Report] = []
        for first, lines, counts in runs:
            last = first + len(lines) - 1
            failures = run.failures_in(first, last)
            if not await self._write_chunk(first, last, b"".join(lines)):
                # a lost worker wrote it first: its lines are the truth (its errors unknown)
                chunk = output.Chunk(first, last, self.out.chunk_uri(first, last))
                counts = await asyncio.to_thread(output.ChunkedOutput.recount, [chunk],
                                                 self.codec)
                failures = ()
            reports.append(ChunkDone(first, last, counts, failures))
        return reports

    async def _write_chunk(self, first: int, last: int, data: bytes) -> bool:
        """True when written, False when the object was there already; written through
        outages of its storage (or disk) up to the deadline."""
        return await self.patience.call(self.out.write_chunk, first, last, data,
                                        resource=self.out.output_dir)


async def _first_of(*waits: asyncio.Event | asyncio.Future[Any], timeout: float) -> None:
    """Until one event is set or future done, or `timeout` seconds."""
    futures = [asyncio.ensure_future(w.wait()) if isinstance(w, asyncio.Event) else w
               for w in waits]
    await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for w, f in zip(waits, futures, strict=True):
        if isinstance(w, asyncio.Event):
            f.cancel()
