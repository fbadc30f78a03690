"""The embedded engine on a GPU: the same answers' shape as on CPU, with real usage counts.
Runs only where torch sees CUDA (a machine with an NVIDIA GPU); skipped elsewhere."""

from __future__ import annotations

import asyncio

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_a_batch_generates_on_cuda_with_usage_counts() -> None:
    from batchpredict.backends.local import LocalBackend
    from batchpredict.schema import parse_request

    backend = LocalBackend(batch_size=8, device="cuda")
    asyncio.run(backend.start())
    try:
        requests = [parse_request({
            "contents": [{"role": "user", "parts": [{"text": f"Count to {i}."}]}],
            "generationConfig": {"temperature": 0, "maxOutputTokens": 8},
        }) for i in range(8)]
        results = asyncio.run(backend.generate(requests))
    finally:
        asyncio.run(backend.close())
    for result in results:
        assert isinstance(result, dict), result
        usage = result["usageMetadata"]
        assert 0 < usage["candidatesTokenCount"] <= 8
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage[
            "candidatesTokenCount"]
