"""The `processes` executor: N worker processes on this machine (`python -m
batchpredict.executors.processes`), each loading the job's backend once and running ranges with
its own CPU, so parsing, validation and writing use every core.

The driver and a worker talk over the worker's stdin and stdout (the worker's own prints go to
its stderr), one pickled message per frame (4-byte length, then the message):

    driver -> worker   ("init", WorkerSpec)  ("run", id, Range)  ("stop",)  ("exit",)
    worker -> driver   ("ready", ranges in flight, pid)  ("failed", message)
                       ("report", id, Report)  ("done", id)
                       ("error", id, class name, message, resource of an Outage or None)

A worker that exits (killed, crashed) closes its stdout: its ranges end with WorkerLost and go
back in line, and it is started again. A worker whose driver dies sees its stdin close and exits
at once (and on Linux the kernel kills it with its parent), writing nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import pickle
import signal
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

from batchpredict import errors
from batchpredict.errors import BatchPredictError, Internal, Unavailable
from batchpredict.executors.base import Executor, Report, WorkerHandle, WorkerLost, WorkerSpec
from batchpredict.executors.ranges import Range

__all__ = ["ProcessExecutor", "main"]

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">I")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def _receive(reader: asyncio.StreamReader) -> Any:
    size = _HEADER.unpack(await reader.readexactly(_HEADER.size))[0]
    return pickle.loads(await reader.readexactly(size))


# -- the driver's side ---------------------------------------------------------------------------
class _Process(WorkerHandle):
    def __init__(self, spec: WorkerSpec, number: int, start_seconds: float) -> None:
        super().__init__()
        self.spec = spec
        self.number = number
        self.start_seconds = start_seconds
        self.name = f"worker process {number}"
        self.proc: asyncio.subprocess.Process | None = None
        self.queues: dict[int, asyncio.Queue[tuple[Any, ...]]] = {}
        self.ids = itertools.count()
        self.reader: asyncio.Task[None] | None = None

    async def launch(self) -> None:
        try:
            init = _frame(("init", self.spec))
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise Unavailable(
                f"Model {self.spec.model}'s backend cannot be sent to worker processes ({exc}); "
                "name it in the model registry, or use the local executor."
            ) from None
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "batchpredict.executors.processes",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(init)
        try:
            reply = await asyncio.wait_for(_receive(self.proc.stdout), self.start_seconds)
        except TimeoutError:
            await self.close()
            raise Unavailable(
                f"Worker process {self.number} did not load model {self.spec.model} within "
                f"{self.start_seconds:g} s (BATCHPREDICT_WORKER_START_SECONDS)."
            ) from None
        except (asyncio.IncompleteReadError, ConnectionError):
            await self.close()
            raise Unavailable(
                f"Worker process {self.number} exited while starting (exit code "
                f"{self.proc.returncode}); its error is in this server's log."
            ) from None
        if reply[0] == "failed":
            await self.close()
            raise Unavailable(f"Worker process {self.number} could not start: {reply[1]}")
        _, self.ranges_in_flight, pid = reply
        self.name = f"worker process {self.number} (pid {pid})"
        self.reader = asyncio.ensure_future(self._read(self.proc.stdout))

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await _receive(stdout)
                queue = self.queues.get(message[1])
                if queue is not None:
                    queue.put_nowait(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for queue in self.queues.values():
                queue.put_nowait(("lost",))
            self.queues.clear()

    async def _send(self, message: Any) -> None:
        if self.proc is None or self.proc.stdin is None or self.reader is None \
                or self.reader.done():
            raise WorkerLost(f"{self.name} has exited")
        try:
            self.proc.stdin.write(_frame(message))
            await self.proc.stdin.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise WorkerLost(f"{self.name} has exited") from exc

    async def run(self, rng: Range) -> AsyncIterator[Report]:
        rid = next(self.ids)
        queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.queues[rid] = queue
        try:
            await self._send(("run", rid, rng))
            while True:
                message = await queue.get()
                kind = message[0]
                if kind == "report":
                    yield message[2]
                elif kind == "done":
                    return
                elif kind == "error":
                    cls = getattr(errors, message[2], None)
                    if not (isinstance(cls, type) and issubclass(cls, BatchPredictError)):
                        cls = Internal
                    if issubclass(cls, errors.Outage):  # past the worker's deadline: resumable
                        raise cls(message[3], resource=message[4] or "the job's storage")
                    raise cls(message[3])
                else:
                    code = self.proc.returncode if self.proc else None
                    raise WorkerLost(f"{self.name} exited (code {code})")
        finally:
            self.queues.pop(rid, None)

    async def stop(self) -> None:
        with contextlib.suppress(WorkerLost):
            await self._send(("stop",))

    async def restart(self) -> None:
        await self.close()
        await self.launch()

    async def close(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(WorkerLost):
            await self._send(("exit",))
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self.reader is not None:
            self.reader.cancel()


class ProcessExecutor(Executor):
    name = "processes"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.started: list[_Process] = []

    async def start(self, spec: WorkerSpec, registry: Any) -> list[WorkerHandle]:
        spec.entry, spec.data_dir = registry.resolve(spec.model), registry.data_dir
        count = self.workers_wanted
        spec.for_workers(count)
        self.started = [_Process(spec, i, self.start_seconds) for i in range(count)]
        try:
            await asyncio.gather(*(p.launch() for p in self.started))
        except BaseException:
            await self.close()
            raise
        return list(self.started)

    @property
    def workers_wanted(self) -> int:
        return self.workers if self.requested else max(1, os.cpu_count() or 1)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.started), return_exceptions=True)


# -- the worker's side ---------------------------------------------------------------------------
def main() -> None:
    """A worker process: load the backend, then run ranges until told to exit."""
    protocol = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # prints from libraries must not corrupt the protocol
    if sys.platform == "linux":  # die with the driver
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(protocol))


async def _serve(out: IO[bytes]) -> None:
    from batchpredict.executors.worker import RangeWorker, worker_backend

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)

    def send(message: Any) -> None:
        out.write(_frame(message))

    _, spec = await _receive(reader)
    try:
        backend = await worker_backend(spec)
        worker = RangeWorker.for_spec(backend, spec)
    except Exception as exc:
        send(("failed", f"{type(exc).__name__}: {getattr(exc, 'message', exc)}"))
        return
    send(("ready", worker.ranges_in_flight, os.getpid()))
    tasks: set[asyncio.Task[None]] = set()

    async def run(rid: int, rng: Range) -> None:
        try:
            async for report in worker.run(rng):
                send(("report", rid, report))
            send(("done", rid))
        except BatchPredictError as exc:
            send(("error", rid, type(exc).__name__, exc.message, getattr(exc, "resource", None)))
        except Exception as exc:
            log.exception("range %s failed", rng)
            send(("error", rid, "Internal", f"The worker failed: {type(exc).__name__}: {exc}"))

    while True:
        try:
            message = await _receive(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            os._exit(0)  # the driver is gone: stop now, write nothing more
        if message[0] == "run":
            task = asyncio.ensure_future(run(message[1], message[2]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif message[0] == "stop":
            worker.stop()
        elif message[0] == "exit":
            break
    for task in tasks:
        task.cancel()
    await backend.close()


if __name__ == "__main__":
    main()
