"""The `local` executor: workers in the driver's own process and event loop, sharing the
backend the model registry already loaded (so jobs on one model share its limits), scoped to the
job's project (fileData under its data policy). Rows are
parsed in a thread; chunks are written in a thread. `--workers N` runs N sets of ranges at
once (for a backend that answers slowly, more rows in flight); it adds no CPU."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from batchpredict.executors.base import Executor, Report, WorkerHandle, WorkerSpec
from batchpredict.executors.ranges import Range
from batchpredict.executors.worker import RangeWorker, scoped

__all__ = ["LocalExecutor"]


class _InProcess(WorkerHandle):
    def __init__(self, worker: RangeWorker, number: int) -> None:
        super().__init__()
        self.worker = worker
        self.ranges_in_flight = worker.ranges_in_flight
        self.name = f"in-process worker {number}"

    def run(self, rng: Range) -> AsyncIterator[Report]:
        return self.worker.run(rng)

    async def stop(self) -> None:
        self.worker.stop()


class LocalExecutor(Executor):
    name = "local"

    async def start(self, spec: WorkerSpec, registry: Any) -> list[WorkerHandle]:
        backend = scoped(await registry.backend_for(spec.model), spec)
        return [_InProcess(RangeWorker.for_spec(backend, spec, self.on_waiting), i)
                for i in range(self.workers)]
