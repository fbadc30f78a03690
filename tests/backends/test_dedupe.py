"""Identical temperature-0 requests within a job are sent once; a registry flag turns it off."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from batchpredict.backends.base import Backend
from batchpredict.backends.dedupe import DedupingBackend, for_job
from batchpredict.errors import BatchPredictError, Unavailable
from batchpredict.schema import GenerateContentRequest, parse_request
from tests.backends.conftest import summary_counts, write_registry
from tests.conftest import read_predictions, text_request, write_jsonl
from tests.doubles.openai_server import TestDoubleServer


class Recorder(Backend):
    """Answers each request with its own text after a short wait; can fail or raise."""

    kind = "recorder"

    def __init__(self, batch_size: int = 1, delay: float = 0.01) -> None:
        self.batch_size = batch_size
        self.max_concurrency = 8
        self.delay = delay
        self.sent: list[str] = []
        self.raise_for: set[str] = set()

    async def generate(self, requests: list[GenerateContentRequest]) -> list[Any]:
        texts = [r.contents[0].parts[0].text or "" for r in requests]
        self.sent += texts
        await asyncio.sleep(self.delay)
        if self.raise_for & set(texts):
            raise RuntimeError("engine crashed")
        return [Unavailable("busy") if t == "fail" else {"text": t} for t in texts]


def req(text: str, **config: Any) -> GenerateContentRequest:
    return parse_request(text_request(text, **config))


async def test_identical_deterministic_requests_are_sent_once() -> None:
    inner = Recorder()
    backend = DedupingBackend(inner)
    calls = [backend.generate([req(t, temperature=0)]) for t in "aabab"]
    calls += [backend.generate([req("a", temperature=0.7)]) for _ in range(2)]
    calls.append(backend.generate([req("a")]))  # temperature unset: not deterministic
    results = await asyncio.gather(*calls)
    assert [r[0]["text"] for r in results] == [*"aabab", "a", "a", "a"]
    assert sorted(inner.sent) == ["a", "a", "a", "a", "b"]  # a and b once at temperature 0
    assert backend.shared == 3
    # Later duplicates are answered from the finished answers.
    again = await backend.generate([req("b", temperature=0)])
    assert again[0]["text"] == "b" and inner.sent.count("b") == 1


async def test_duplicates_inside_one_batch_and_shared_errors() -> None:
    inner = Recorder(batch_size=8)
    backend = DedupingBackend(inner)
    batch = [req(t, temperature=0) for t in ("x", "fail", "x", "fail", "y")]
    results = await backend.generate(batch)
    assert inner.sent == ["x", "fail", "y"]
    assert results[0] == results[2] == {"text": "x"}
    assert isinstance(results[1], BatchPredictError) and results[3] is results[1]


async def test_a_raising_backend_fails_its_batch_and_its_twins() -> None:
    inner = Recorder(delay=0.05)
    inner.raise_for = {"boom"}
    backend = DedupingBackend(inner)
    first = asyncio.ensure_future(backend.generate([req("boom", temperature=0)]))
    await asyncio.sleep(0.01)
    twin = await backend.generate([req("boom", temperature=0)])
    owner = await first  # the row that sent it fails exactly as its twin, as without dedupe
    for result in (owner[0], twin[0]):
        assert isinstance(result, BatchPredictError)
        assert result.message == "The backend failed: RuntimeError: engine crashed"
    assert inner.sent == ["boom"]


async def test_a_cancelled_owner_lets_its_twin_send_itself() -> None:
    inner = Recorder(delay=0.05)
    backend = DedupingBackend(inner)
    owner = asyncio.ensure_future(backend.generate([req("c", temperature=0)]))
    await asyncio.sleep(0.01)
    twin = asyncio.ensure_future(backend.generate([req("c", temperature=0)]))
    await asyncio.sleep(0.01)
    owner.cancel()
    assert (await twin)[0] == {"text": "c"}
    assert inner.sent == ["c", "c"] and not backend.in_flight


async def test_the_finished_answers_kept_are_bounded() -> None:
    inner = Recorder(delay=0)
    backend = DedupingBackend(inner, cache_rows=2)
    for t in "abc":
        await backend.generate([req(t, temperature=0)])
    assert len(backend.done) == 2
    await backend.generate([req("a", temperature=0)])  # evicted: sent again
    assert inner.sent == ["a", "b", "c", "a"]


def test_for_job_respects_the_flag() -> None:
    inner = Recorder()
    assert isinstance(for_job(inner), DedupingBackend)
    inner.dedupe = False  # type: ignore[attr-defined]
    assert for_job(inner) is inner


@pytest.mark.parametrize("dedupe", [True, False])
def test_a_job_sends_duplicates_once_unless_turned_off(run_cli, tmp_path, serve_double,
                                                       dedupe: bool) -> None:
    server = TestDoubleServer(record=True, latency=0.01)
    url = serve_double(server)
    registry = write_registry(tmp_path / "m.toml", {
        "name": "echo", "backend": "openai", "base_url": url + "/v1", "dedupe": dedupe})
    rows = [{"key": i, "request": text_request(f"q{i % 3}", temperature=0)} for i in range(12)]
    rows += [{"key": 12 + i, "request": text_request("hot", temperature=1)} for i in range(3)]
    out = tmp_path / "out"
    done = run_cli("run", str(write_jsonl(tmp_path / "in.jsonl", rows)), "--output", str(out),
                   "--model", "echo", "-q", env={"BATCHPREDICT_MODELS_FILE": str(registry)})
    assert done.returncode == 0, done.stderr
    lines = read_predictions(out)
    assert summary_counts(done.stdout) == (15, 0, 0)
    assert [line["key"] for line in lines] == list(range(15))
    assert [line["response"]["candidates"][0]["content"]["parts"][0]["text"]
            for line in lines[:12]] == [f"echo: q{i % 3}" for i in range(12)]
    # Every row carries its usage, sent or shared: the output reads the same either way.
    assert all(line["response"]["usageMetadata"]["totalTokenCount"] > 0 for line in lines)
    assert len(server.received) == (3 + 3 if dedupe else 15)
