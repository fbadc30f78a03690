"""Test doubles: stand-ins for a model, for tests and benchmarks only. Never a default.

`InstantTestDouble` answers every request at once with a fixed, well-formed Gemini response whose
text echoes the prompt's length. The runner-overhead benchmark uses it to measure batchpredict's
own work per row; a registry file can name it (`backend = "test-double"`) to exercise the whole
path without a model.
"""

from __future__ import annotations

from typing import Any

from batchpredict.backends.base import Backend
from batchpredict.errors import BatchPredictError
from batchpredict.schema import GenerateContentRequest

__all__ = ["InstantTestDouble"]


class InstantTestDouble(Backend):
    kind = "test-double"

    def __init__(self, batch_size: int = 256, max_concurrency: int = 4) -> None:
        self.batch_size = batch_size
        self.max_concurrency = max_concurrency
        self.calls = 0

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        self.calls += 1
        out: list[dict[str, Any] | BatchPredictError] = []
        for req in requests:
            prompt = sum(len(p.text or "") for c in req.contents for p in c.parts) // 4 + 1
            out.append(
                {
                    "candidates": [
                        {
                            "content": {"role": "model", "parts": [{"text": f"ok {prompt}"}]},
                            "finishReason": "STOP",
                            "avgLogprobs": -0.5,
                        }
                    ],
                    "modelVersion": "test-double",
                    "usageMetadata": {
                        "promptTokenCount": prompt,
                        "candidatesTokenCount": 2,
                        "totalTokenCount": prompt + 2,
                    },
                }
            )
        return out
