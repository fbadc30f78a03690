"""The `ray` executor: N Ray actors, each loading the job's backend once (one per GPU with
`num_gpus = 1` in the model's registry entry), each running ranges and streaming its reports back
(an async generator method: one report per object, as it happens).

    ray.init(address=BATCHPREDICT_RAY_ADDRESS)   an existing cluster (batchpredict installed on
                                                 its nodes, same version)
    ray.init() on loopback                       no address: a single-node cluster started by
                                                 this process for its first Ray job, kept for
                                                 the next ones

Actors ask for explicit resources (`num_cpus`, `num_gpus` of the entry): a cluster that cannot
place them leaves them pending, so start-up has a deadline (`worker_start_seconds`) and then
fails the job saying what was asked and what the cluster has free. A killed actor is restarted
by Ray (at most `MAX_RESTARTS` times); the range it was running fails with RayActorError and
its rest is run again by another lane.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from batchpredict.errors import BatchPredictError, Internal, Unavailable
from batchpredict.executors.base import (
    MAX_RESTARTS,
    Executor,
    Report,
    WorkerHandle,
    WorkerLost,
    WorkerSpec,
)
from batchpredict.executors.ranges import Range

__all__ = ["RangeActor", "RayExecutor"]

log = logging.getLogger(__name__)
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
#: Object store of a cluster started here: reports are small; Ray's default is 30% of memory.
LOCAL_OBJECT_STORE_BYTES = 256 * 1024 * 1024
_init_lock = threading.Lock()
_actor_class: Any = None


def connect(address: str) -> None:
    """Join the cluster at `address`, or start a single-node one on loopback (blocking)."""
    import ray

    with _init_lock:
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls home
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
            return
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback cluster of our own
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
        ray.init(
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            object_store_memory=LOCAL_OBJECT_STORE_BYTES,
            logging_level=logging.WARNING,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )


class RangeActor:
    """A Ray actor (async: its calls share one event loop) that runs ranges."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.worker: Any = None
        self.lock: asyncio.Lock | None = None

    async def start(self) -> tuple[int, int]:
        """Load the backend (once); (ranges in flight, pid)."""
        from batchpredict.executors.worker import RangeWorker, worker_backend

        self.lock = self.lock or asyncio.Lock()
        async with self.lock:
            if self.worker is None:
                self.worker = RangeWorker.for_spec(await worker_backend(self.spec), self.spec)
        return self.worker.ranges_in_flight, os.getpid()

    async def run(self, rng: Range) -> AsyncIterator[Report]:
        await self.start()
        async for report in self.worker.run(rng):
            yield report

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def _actor_cls() -> Any:
    global _actor_class
    if _actor_class is None:
        import ray

        _actor_class = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=0)(RangeActor)
    return _actor_class


def _cause(exc: Exception) -> BatchPredictError:
    """A worker's error as ours: its own when it raised a BatchPredictError."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BatchPredictError):
        return cause
    return Internal(f"A Ray worker failed: {type(cause or exc).__name__}: {cause or exc}")


class _Actor(WorkerHandle):
    def __init__(self, actor: Any, number: int, start_seconds: float) -> None:
        super().__init__()
        self.actor = actor
        self.start_seconds = start_seconds
        self.name = f"Ray actor {number}"

    async def run(self, rng: Range) -> AsyncIterator[Report]:
        from ray.exceptions import RayActorError, RayError, RayTaskError

        try:
            async for ref in self.actor.run.remote(rng):
                yield await ref
        except RayActorError as exc:
            raise WorkerLost(f"{self.name} died: {type(exc).__name__}") from exc
        except RayTaskError as exc:
            raise _cause(exc) from exc
        except RayError as exc:
            raise WorkerLost(f"{self.name} was lost: {type(exc).__name__}") from exc

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.actor.stop.remote()

    async def restart(self) -> None:
        # Ray restarts the actor itself; wait until it has loaded the backend again.
        await asyncio.wait_for(self.actor.start.remote(), self.start_seconds)

    async def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            ray.kill(self.actor, no_restart=True)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.actors: list[_Actor] = []

    async def start(self, spec: WorkerSpec, registry: Any) -> list[WorkerHandle]:
        try:
            import ray
        except ImportError:
            raise Unavailable(
                "The ray executor needs Ray: pip install 'batchpredict[ray]'."
            ) from None
        from ray.exceptions import RayError

        await asyncio.to_thread(connect, self.ray_address)
        entry = spec.entry = registry.resolve(spec.model)
        spec.data_dir = registry.data_dir
        wants = {"CPU": entry.num_cpus, "GPU": entry.num_gpus}
        count = self.workers if self.requested else _fit(ray.cluster_resources(), wants)
        spec.for_workers(count)
        cls = _actor_cls()
        self.actors = [
            _Actor(cls.options(num_cpus=entry.num_cpus, num_gpus=entry.num_gpus).remote(spec),
                   i, self.start_seconds)
            for i in range(count)
        ]
        try:
            infos = await asyncio.wait_for(
                asyncio.gather(*(a.actor.start.remote() for a in self.actors)), self.start_seconds
            )
        except TimeoutError:
            free = {k: v for k, v in ray.available_resources().items() if k in wants}
            await self.close()
            raise Unavailable(
                f"Ray did not start {count} workers for model {spec.model} within "
                f"{self.start_seconds:g} s (BATCHPREDICT_WORKER_START_SECONDS). Each asks for "
                f"{entry.num_cpus:g} CPU and {entry.num_gpus:g} GPU; the cluster has {free} "
                "free. Ask for fewer workers, change num_cpus/num_gpus in the model's registry "
                "entry, or add nodes."
            ) from None
        except RayError as exc:
            await self.close()
            raise Unavailable(f"A Ray worker could not start: {_cause(exc).message}") from exc
        for actor, (in_flight, pid) in zip(self.actors, infos, strict=True):
            actor.ranges_in_flight = in_flight
            actor.name += f" (pid {pid})"
        return list(self.actors)

    async def close(self) -> None:
        for actor in self.actors:
            await actor.close()


def _fit(cluster: dict[str, float], wants: dict[str, float]) -> int:
    """How many workers asking for `wants` the cluster holds (at least 1)."""
    fits = [int(cluster.get(kind, 0) // amount) for kind, amount in wants.items() if amount > 0]
    return max(1, min(fits) if fits else 1)
