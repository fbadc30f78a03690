"""The executor interface, and the dispatch every executor shares.

    Executor.start(spec)  ->  workers (each loads the job's backend once; a start-up deadline)
    Dispatch.run()           each worker runs `ranges_in_flight` ranges at a time (its lanes);
                             a lane takes a range from the RangeSource, streams the worker's
                             reports (ChunkDone, Answered) to the driver, and takes the next
    Dispatch.stop()          no more ranges; workers write their answered rows and end

A worker that dies (WorkerLost) loses only what it had not reported: the rest of each of its
ranges goes back to the source, first in line, and another lane runs it (`Range.rest`: the rows
it reported stay committed). The worker is restarted (at most `MAX_RESTARTS` times); one that
cannot start again is retired, and when every worker is retired with rows left the job fails.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from dataclasses import dataclass
from typing import Any, ClassVar

from batchpredict import bounded_io
from batchpredict.config import RunnerSettings
from batchpredict.errors import Unavailable
from batchpredict.executors.ranges import Range
from batchpredict.jobs import RowCounts

__all__ = [
    "Answered",
    "ChunkDone",
    "Dispatch",
    "Executor",
    "RangeSource",
    "Report",
    "WorkerHandle",
    "WorkerLost",
    "WorkerSpec",
]

log = logging.getLogger(__name__)
#: A worker is started again at most this many times in one job.
MAX_RESTARTS = 3
#: Answered-row reports the driver takes in a second, at most (about two ranges per worker).
MAX_REPORTS_PER_SECOND = 400


@dataclass(frozen=True, slots=True)
class ChunkDone:
    """A chunk object rows first..last is written (whole, under its final name)."""

    first: int
    last: int
    counts: RowCounts
    #: (row, google.rpc.Status) of its first failed rows, for the job's partialFailures.
    failures: tuple[tuple[int, dict[str, Any]], ...] = ()


@dataclass(frozen=True, slots=True)
class Answered:
    """Rows answered since the last report (written or not): for progress bars only."""

    counts: RowCounts


Report = ChunkDone | Answered


@dataclass
class WorkerSpec:
    """What a worker needs to run a job's ranges; picklable (it travels to processes and
    Ray actors)."""

    job_id: int
    model: str
    output_dir: str
    settings: RunnerSettings
    #: The job's line format (formats/): how rows are parsed and output lines written.
    line_format: str = "vertex"
    #: (DataPolicy, MediaPolicy) of the job's project: each worker answers only rows whose
    #: fileData that project may read (data_gate.ProjectScopedBackend); None: no policy.
    scope: Any = None
    #: The model's registry entry (backend kind and settings), for workers that build their
    #: own backend; None for in-process workers, which share the scheduler's.
    entry: Any = None
    #: The registry's data folder (managed servers' logs), for workers that build a backend.
    data_dir: str | None = None
    #: How often each range reports its answered rows: stretched with the number of workers
    #: so the driver takes in at most `MAX_REPORTS_PER_SECOND` (`for_workers`).
    progress_seconds: float = 0.25

    def for_workers(self, workers: int) -> WorkerSpec:
        self.progress_seconds = max(0.25, workers * 2 / MAX_REPORTS_PER_SECOND)
        return self


class WorkerLost(Exception):
    """The worker died (process killed, actor lost): its unreported rows must be redone."""


class WorkerHandle(abc.ABC):
    """One worker as the driver sees it."""

    #: How many ranges it runs at once (enough to keep its backend busy between ranges).
    ranges_in_flight: int = 2
    name: str = "worker"

    def __init__(self) -> None:
        self.generation = 0
        self.retired = False
        self.restarts_left = MAX_RESTARTS
        self._recover_lock = asyncio.Lock()

    @abc.abstractmethod
    def run(self, rng: Range) -> AsyncIterator[Report]:
        """Run one range, yielding its reports; raises WorkerLost if the worker dies."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Ask every running range to write its answered rows and end."""

    async def restart(self) -> None:
        """Start the worker again after it was lost."""
        raise WorkerLost(f"{self.name} cannot be restarted")

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the worker."""

    async def recover(self, generation: int) -> bool:
        """After a loss seen at `generation`: restart once for all its lanes. False when the
        worker is retired."""
        async with self._recover_lock:
            if self.retired:
                return False
            if self.generation != generation:
                return True  # another lane restarted it already
            if self.restarts_left <= 0:
                self.retired = True
                return False
            self.restarts_left -= 1
            try:
                await self.restart()
            except Exception as exc:
                log.warning("%s could not be restarted: %s", self.name, exc)
                self.retired = True
                return False
            self.generation += 1
            return True


class Executor(abc.ABC):
    """Where a job's ranges run: `local` (in this process), `processes`, `ray`."""

    name: ClassVar[str] = ""

    def __init__(self, workers: int = 0, start_seconds: float = 300.0,
                 ray_address: str = "") -> None:
        #: An outage a worker in the driver's process waits out, shown on the job (the runner
        #: sets it; workers elsewhere wait without showing it).
        self.on_waiting: Callable[[Any], None] | None = None
        #: Workers asked for; 0: the executor's own choice (`workers` is then 1).
        self.requested = max(0, workers)
        self.workers = max(1, workers)
        self.start_seconds = start_seconds
        self.ray_address = ray_address

    @abc.abstractmethod
    async def start(self, spec: WorkerSpec, registry: Any) -> list[WorkerHandle]:
        """Start the workers; each has loaded the backend when this returns. Raises a
        BatchPredictError (Unavailable for a deadline) when they cannot start."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop the workers."""


class _Total:
    def __init__(self, rows: int) -> None:
        self.rows = rows


class RangeSource:
    """Ranges for the lanes: the rests of lost ranges first, then new ones planned lazily
    (on `bounded_io.JOB_POOL`, its reads stopping once `stop_reading` is set) from `plan`.
    `next` returns None once every range has been run, or at once when closed (a pull stuck
    on slow storage finishes on its own). A storage outage while planning is waited out
    (`patience`): planning starts again with `replan(done)`, every row already planned counted
    as done, so no range is planned twice."""

    def __init__(self, plan: Generator[Range, None, int],
                 stop_reading: threading.Event | None = None, patience: Any = None,
                 replan: Callable[[list[tuple[int, int]]], Generator[Range, None, int]]
                 | None = None, committed: list[tuple[int, int]] | None = None) -> None:
        self._plan = plan
        self._stop_reading = stop_reading or threading.Event()
        self._patience = patience
        self._replan = replan
        self._committed = list(committed or [])
        #: rows below this were planned (ranges come in row order)
        self._planned_to = 0
        self._pull_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._closed = asyncio.Event()
        self.requeued: deque[Range] = deque()
        self.in_flight = 0
        self.closed = False
        #: The input's row count, once planning reached its end.
        self.total: int | None = None

    def _pull(self) -> Range | _Total:
        bounded_io.guard_reads(stop=self._stop_reading)  # the files the plan opens stop on it
        try:
            item = next(self._plan)
        except StopIteration as end:
            return _Total(end.value)
        except Exception as exc:
            from batchpredict.outages import storage_outage

            replan = self._replan
            outage = None if isinstance(exc, bounded_io.ReadStopped) or replan is None \
                else storage_outage("the job's input", exc)
            if outage is None or replan is None:
                raise
            # the plan is broken off: plan again, past every row planned so far
            done = [*self._committed, (0, self._planned_to - 1)] if self._planned_to else \
                self._committed
            self._plan = replan(done)
            raise outage from exc
        self._planned_to = item.last_row + 1
        return item

    async def _pull_unless_closed(self) -> Range | _Total | None:
        pull: asyncio.Future[Range | _Total] = asyncio.ensure_future(
            self._patience.call(self._pull) if self._patience is not None
            else bounded_io.run_io(self._pull, pool=bounded_io.JOB_POOL))
        closed: asyncio.Future[Any] = asyncio.ensure_future(self._closed.wait())
        await asyncio.wait([pull, closed], return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if not pull.done():
            pull.cancel()  # (a read under way finishes in its thread, unheard)
            return None
        return pull.result()

    async def next(self) -> Range | None:
        while not self.closed:
            if self.requeued:
                self.in_flight += 1
                return self.requeued.popleft()
            if self.total is None:
                async with self._pull_lock:
                    if self.total is None and not self.requeued and not self.closed:
                        item = await self._pull_unless_closed()
                        if item is None:
                            return None
                        if isinstance(item, Range):
                            self.in_flight += 1
                            return item
                        self.total = item.rows
                        self._changed.set()
                continue
            if self.in_flight == 0:
                return None
            self._changed.clear()
            await self._changed.wait()
        return None

    def done(self) -> None:
        self.in_flight -= 1
        self._changed.set()

    def requeue(self, rng: Range) -> None:
        self.requeued.append(rng)
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._closed.set()
        self._changed.set()
        with contextlib.suppress(ValueError):  # a thread is planning: the file closes with it
            self._plan.close()

    @property
    def finished(self) -> bool:
        """Every range planned and run."""
        return self.total is not None and not self.requeued and self.in_flight == 0


class Dispatch:
    """Runs a job's ranges on its workers; see the module docstring."""

    def __init__(self, workers: list[WorkerHandle], source: RangeSource,
                 on_report: Callable[[Report], None]) -> None:
        self.workers = workers
        self.source = source
        self.on_report = on_report
        self.stopping = False
        self.lost = 0
        self._lanes: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        """Until every range is run (or `stop`). Raises what a worker raised, or Unavailable
        when every worker was lost with rows left."""
        self._lanes = [asyncio.ensure_future(self._lane(w))
                       for w in self.workers for _ in range(max(1, w.ranges_in_flight))]
        try:
            await asyncio.gather(*self._lanes)
        finally:
            for lane in self._lanes:
                lane.cancel()
        if not self.stopping and not self.source.finished:
            raise Unavailable(
                f"Every worker of the job was lost ({self.lost} losses, each restarted up to "
                f"{MAX_RESTARTS} times); committed rows are kept. See the worker logs."
            )

    async def _lane(self, worker: WorkerHandle) -> None:
        while not worker.retired:
            rng = await self.source.next()
            if rng is None:
                return
            done_to = rng.skip - 1
            generation = worker.generation
            try:
                async for report in worker.run(rng):
                    if isinstance(report, ChunkDone) and report.first == done_to + 1:
                        done_to = report.last
                    self.on_report(report)
            except WorkerLost as exc:
                self.lost += 1
                if not self.stopping and done_to < rng.last_row:
                    self.source.requeue(rng.rest(done_to))
                log.warning("%s was lost (%s); rows %d-%d go back in line", worker.name, exc,
                            done_to + 1, rng.last_row)
                self.source.done()
                if self.stopping or not await worker.recover(generation):
                    return
                continue
            except BaseException:
                self.source.done()
                raise
            self.source.done()

    async def stop(self, grace_seconds: float) -> None:
        """Dispatch no more ranges; every worker writes its answered rows and reports them."""
        self.stopping = True
        self.source.close()
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.stop()
        if self._lanes:
            _, late = await asyncio.wait(self._lanes, timeout=grace_seconds)
            for lane in late:
                lane.cancel()
