"""A test double backend: a stand-in for a model, for tests and benchmarks only.

`InstantTestDouble` answers every request with the same well-formed Gemini response (text "ok",
2 prompt + 2 output tokens), after `delay_seconds` per call (0: at once). The runner-overhead
benchmark uses it to measure batchpredict's own work per row; tests and registry files name it
through the plugin kind to exercise the whole path without a model:

    backend = "python"
    class = "tests.doubles.instant:InstantTestDouble"
    options = { batch_size = 16, delay_seconds = 0.1 }
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from batchpredict.backends.base import Backend
from batchpredict.errors import BatchPredictError
from batchpredict.schema import GenerateContentRequest

__all__ = ["InstantTestDouble"]

RESPONSE: dict[str, Any] = {
    "candidates": [
        {
            "content": {"role": "model", "parts": [{"text": "ok"}]},
            "finishReason": "STOP",
            "avgLogprobs": -0.5,
        }
    ],
    "modelVersion": "test-double",
    "usageMetadata": {"promptTokenCount": 2, "candidatesTokenCount": 2, "totalTokenCount": 4},
}


class InstantTestDouble(Backend):
    kind = "test-double"

    def __init__(
        self, batch_size: int = 256, max_concurrency: int = 4, delay_seconds: float = 0.0
    ) -> None:
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.delay_seconds = delay_seconds
        self.calls = 0
        self.requests = 0

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        self.calls += 1
        self.requests += len(requests)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        return [RESPONSE] * len(requests)


class ProcessNamingTestDouble(InstantTestDouble):
    """Answers as InstantTestDouble does, with `modelVersion` naming the process that answered
    ("pid-1234"): a test reads from the output which processes ran its rows."""

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        await super().generate(requests)
        return [{**RESPONSE, "modelVersion": f"pid-{os.getpid()}"}] * len(requests)
