"""What the embedded engines share (onnx_engine.py, local.py): one generation at a time in a
worker thread, cancel at the next token, and turning a batch of requests into candidates and
back into one Gemini response (or error) per request.

An engine implements `_load` / `_unload` (weights in, out), `_prepare` (one request -> its prompt
tokens and one sequence per candidate, or InvalidArgument for that row) and `_run` (decode every
sequence; the rows that failed as a whole, e.g. out of memory).
"""

from __future__ import annotations

import abc
import asyncio
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from batchpredict.backends.base import Backend
from batchpredict.backends.chat import gemini_response
from batchpredict.errors import BatchPredictError, Cancelled, InvalidArgument

if TYPE_CHECKING:
    from batchpredict.schema import GenerateContentRequest

__all__ = ["Candidate", "EmbeddedEngine"]


@dataclass(eq=False)
class Candidate:
    """One candidate being generated: its request's settings and what it has produced so far.
    Each engine adds what its sampling needs."""

    row: int
    prompt: list[int]
    max_new: int
    temperature: float  # 0 -> greedy
    top_p: float
    top_k: int  # 0 -> no cut
    presence: float
    frequency: float
    stops: list[str]
    tokens: list[int] = field(default_factory=list)
    logprob_sum: float = 0.0
    finish: str | None = None
    text: str | None = None
    _scanned: int = 0  # text length already searched for stop sequences


class EmbeddedEngine(Backend):
    """A local engine: `generate` runs `_generate_sync` in a thread, one call at a time."""

    model: Any = None
    model_version: str = ""
    #: How the engine is named when it was closed under a call.
    engine_name = "engine"

    def _init_engine(self) -> None:
        self._lock = threading.Lock()  # one generation (or load) at a time
        self._stop = threading.Event()  # set by close()
        self._cancel = threading.Event()  # set when the current generate() call is cancelled

    # -- to implement -----------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self) -> None: ...

    @abc.abstractmethod
    def _unload(self) -> None: ...

    @abc.abstractmethod
    def _prepare(self, row: int, req: GenerateContentRequest) -> tuple[list[int], list[Any]]:
        """(prompt tokens, one sequence per candidate) of request number `row`."""

    @abc.abstractmethod
    def _run(self, seqs: list[Any]) -> dict[int, BatchPredictError]:
        """Decode every sequence; the rows that failed as a whole."""

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self.model is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._stop.set()  # a running generation stops at its next token
        await asyncio.to_thread(self._unload)

    def _check_cancel(self) -> None:
        if self._stop.is_set() or self._cancel.is_set():
            raise Cancelled("Generation was cancelled.")

    # -- requests ---------------------------------------------------------------------------
    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        if self.model is None:
            await self.start()
        cancel = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(self._generate_sync, requests, cancel))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            cancel.set()  # the thread stops at its next token; wait so the model is free again
            await asyncio.gather(work, return_exceptions=True)
            raise

    def _generate_sync(
        self, requests: list[GenerateContentRequest], cancel: threading.Event | None = None
    ) -> list[dict[str, Any] | BatchPredictError]:
        with self._lock:
            self._cancel = cancel or threading.Event()
            if self.model is None:
                raise Cancelled(f"The {self.engine_name} was closed.")
            results: list[Any] = [None] * len(requests)
            prompts: dict[int, int] = {}
            seqs: list[Any] = []
            for i, req in enumerate(requests):
                try:
                    prompt, row_seqs = self._prepare(i, req)
                except InvalidArgument as exc:
                    results[i] = exc
                    continue
                prompts[i] = len(prompt)
                seqs.extend(row_seqs)
            failed = self._run(seqs)
            by_row: dict[int, list[Any]] = {}
            for seq in seqs:
                by_row.setdefault(seq.row, []).append(seq)
            for i, row_seqs in by_row.items():
                results[i] = failed.get(i) or gemini_response(
                    prompts[i], row_seqs, self.model_version
                )
            return results
