"""Identical requests within a job are sent once.

`for_job(backend)` wraps a job's backend (the runner does this once per job) in
`DedupingBackend` unless the backend's registry entry says `dedupe = false`. Only deterministic
requests are shared: those whose `generationConfig.temperature` is exactly 0. Two rows share an
answer when their whole request (contents, system instruction, every setting, labels) encodes to
the same bytes; the second row does not wait in line for a backend slot, it waits for the first
row's answer (or error) and gets the same one.

What is kept: answers in flight, always; finished answers, the most recent `cache_rows` (10,000 by
default), so memory stays bounded on any input. A duplicate arriving after its twin's answer was
evicted is simply sent again. Each row still carries the full response, usageMetadata included
(what the row would have cost), so the output reads the same with dedupe on or off.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec

from batchpredict.backends.base import Backend, generate_per_row
from batchpredict.errors import BatchPredictError

if TYPE_CHECKING:
    from batchpredict.schema import GenerateContentRequest

__all__ = ["DEFAULT_CACHE_ROWS", "DedupingBackend", "for_job"]

log = logging.getLogger(__name__)
DEFAULT_CACHE_ROWS = 10_000
Result = "dict[str, Any] | BatchPredictError"
_encode = msgspec.json.Encoder().encode


def for_job(backend: Backend) -> Backend:
    """The backend a job's runner uses: deduplicating unless the entry turned it off."""
    if not getattr(backend, "dedupe", True) or isinstance(backend, DedupingBackend):
        return backend
    return DedupingBackend(backend)


def dedupe_key(request: GenerateContentRequest) -> bytes | None:
    """A digest of a deterministic request, None for a request that may answer differently."""
    config = request.generation_config
    if config is None or config.temperature != 0:
        return None
    return hashlib.blake2b(_encode(request), digest_size=16).digest()


class DedupingBackend(Backend):
    """Sends each distinct deterministic request once per job; see the module docstring."""

    kind = "dedupe"

    def __init__(self, inner: Backend, cache_rows: int = DEFAULT_CACHE_ROWS) -> None:
        self.inner = inner
        self.batch_size = inner.batch_size
        self.max_concurrency = inner.max_concurrency
        self.cache_rows = cache_rows
        self.in_flight: dict[bytes, asyncio.Future[Any]] = {}
        self.done: OrderedDict[bytes, Any] = OrderedDict()
        #: Rows answered from another row's request.
        self.shared = 0

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        keys = [dedupe_key(r) for r in requests]
        if not any(keys):
            return await self.inner.generate(requests)
        results: list[Any] = [None] * len(requests)
        waits: list[tuple[int, asyncio.Future[Any]]] = []
        send: list[int] = []  # indexes of requests this call sends
        owned: dict[bytes, asyncio.Future[Any]] = {}
        for i, key in enumerate(keys):
            if key is None:
                send.append(i)
            elif key in self.done:
                self.done.move_to_end(key)
                results[i] = self.done[key]
                self.shared += 1
            elif key in self.in_flight:
                waits.append((i, self.in_flight[key]))
                self.shared += 1
            else:
                future = asyncio.get_running_loop().create_future()
                self.in_flight[key] = owned[key] = future
                send.append(i)
        try:
            if send:
                answers = await self._send([requests[i] for i in send], owned, keys, send)
                for i, answer in zip(send, answers, strict=True):
                    results[i] = answer
            for i, future in waits:
                results[i] = await self._wait(future, requests[i])
        finally:
            for key, future in owned.items():  # cancelled or failed before answering
                if not future.done():
                    future.cancel()
                    self.in_flight.pop(key, None)
        return results

    async def _send(self, batch: list[GenerateContentRequest],
                    owned: dict[bytes, asyncio.Future[Any]], keys: list[bytes | None],
                    send: list[int]) -> list[Any]:
        # one result per request even when the backend raises: the twins get the same one
        answers = await generate_per_row(self.inner, batch)
        for i, answer in zip(send, answers, strict=True):
            key = keys[i]
            if key is not None and key in owned:
                owned[key].set_result(answer)
                self.in_flight.pop(key, None)
                self._remember(key, answer)
        return answers

    def _remember(self, key: bytes, answer: Any) -> None:
        self.done[key] = answer
        if len(self.done) > self.cache_rows:
            self.done.popitem(last=False)

    async def _wait(self, future: asyncio.Future[Any], request: GenerateContentRequest) -> Any:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this row itself is being cancelled
            # The twin's call was cancelled, not ours: send this one ourselves.
            return (await generate_per_row(self.inner, [request]))[0]
