"""Retries, backoff, timeouts and rate limits of remote backends (with sleep and clock patched)."""

from __future__ import annotations

import asyncio
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from batchpredict.backends.remote import (
    RemoteCaller,
    RemoteFailure,
    RemoteSettings,
    TokenBucket,
    error_message,
    parse_retry_after,
    validate_settings,
)
from batchpredict.errors import BatchPredictError


class FakeTime:
    """A clock that only moves when someone sleeps; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def scripted(*outcomes: Any) -> Any:
    """A `send` that raises or returns the given outcomes in turn; counts its calls."""
    calls = {"n": 0}

    async def send() -> Any:
        outcome = outcomes[min(calls["n"], len(outcomes) - 1)]
        calls["n"] += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    send.calls = calls  # type: ignore[attr-defined]
    return send


def caller(fake: FakeTime, **settings: Any) -> RemoteCaller:
    return RemoteCaller(RemoteSettings(**{"jitter": 0.0, **settings}), name="srv",
                        sleep=fake.sleep, clock=fake.clock)


async def test_exponential_backoff_then_success() -> None:
    fake = FakeTime()
    send = scripted(RemoteFailure(500, "boom"), RemoteFailure(503, "busy"),
                    RemoteFailure(502, "bad gw"), {"ok": True})
    result = await caller(fake, backoff_initial=1.0).call(send)
    assert result == {"ok": True}
    assert fake.sleeps == [1.0, 2.0, 4.0]
    assert send.calls["n"] == 4


async def test_backoff_is_capped_and_jittered_downwards() -> None:
    fake = FakeTime()
    c = RemoteCaller(RemoteSettings(backoff_initial=1.0, backoff_max=5.0, jitter=0.5, retries=5),
                     sleep=fake.sleep, clock=fake.clock, rng=random.Random(0))
    rng = random.Random(0)
    expected = [round(min(5.0, 2.0**n) * (1 - 0.5 * rng.random()), 6) for n in range(5)]
    result = await c.call(scripted(RemoteFailure(500, "boom")))
    assert isinstance(result, BatchPredictError)
    assert fake.sleeps == expected
    assert all(min(5.0, 2.0**n) / 2 <= s <= min(5.0, 2.0**n) for n, s in enumerate(fake.sleeps))


async def test_retry_after_is_honoured_and_pauses_every_request() -> None:
    fake = FakeTime()
    c = caller(fake, backoff_initial=1.0)
    send = scripted(RemoteFailure(429, "slow down", retry_after=7.5), {"ok": 1})
    assert await c.call(send) == {"ok": 1}
    assert fake.sleeps == [7.5]
    # The pause applies to the next request too, until the Retry-After has passed.
    c.paused_until = fake.now + 3
    assert await c.call(scripted({"ok": 2})) == {"ok": 2}
    assert fake.sleeps == [7.5, 3.0]


async def test_retry_after_is_capped() -> None:
    fake = FakeTime()
    c = caller(fake, max_retry_after=30.0)
    await c.call(scripted(RemoteFailure(429, "wait an hour", retry_after=3600), {"ok": 1}))
    assert fake.sleeps == [30.0]


async def test_when_retries_run_out_the_row_status_reads_like_vertex() -> None:
    fake = FakeTime()
    result = await caller(fake, retries=3).call(scripted(RemoteFailure(429, "Rate limit")))
    assert isinstance(result, BatchPredictError)
    assert fake.sleeps == [1.0, 2.0, 4.0]
    status = result.row_status()
    assert status.startswith("Too Many Requests: ")
    body = json.loads(status.split(": ", 1)[1])
    assert body["error"]["code"] == 429
    assert body["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert "after 4 attempts: Rate limit" in body["error"]["message"]

    result = await caller(FakeTime(), retries=1).call(scripted(RemoteFailure(500, "oops")))
    assert result.row_status().startswith('Internal Server Error: {"error": {"code": 500')
    result = await caller(FakeTime(), retries=0).call(scripted(RemoteFailure(502, "gw")))
    assert result.row_status().startswith('Bad Gateway: {"error": {"code": 502')


@pytest.mark.parametrize("code", [400, 401, 403, 404, 413, 422])
async def test_client_errors_are_not_retried(code: int) -> None:
    fake = FakeTime()
    send = scripted(RemoteFailure(code, "your fault"), {"ok": 1})
    result = await caller(fake).call(send)
    assert isinstance(result, BatchPredictError)
    assert result.http_code == code
    assert result.message == "your fault"
    assert fake.sleeps == [] and send.calls["n"] == 1


@pytest.mark.parametrize("code", [408, 429, 500, 502, 503, 504])
async def test_retryable_codes(code: int) -> None:
    fake = FakeTime()
    send = scripted(RemoteFailure(code, "transient"), {"ok": 1})
    assert await caller(fake).call(send) == {"ok": 1}
    assert fake.sleeps == [1.0]


async def test_a_timeout_is_retried_then_reported_as_deadline_exceeded() -> None:
    fake = FakeTime()
    c = caller(fake, timeout=0.01, retries=2)

    async def hang() -> Any:
        await asyncio.sleep(5)

    result = await c.call(hang)
    assert isinstance(result, BatchPredictError)
    assert fake.sleeps == [1.0, 2.0]
    assert result.row_status().startswith('Gateway Timeout: {"error": {"code": 504')
    assert "DEADLINE_EXCEEDED" in result.row_status()
    assert c.stats["attempts"] == 3


async def test_concurrency_is_bounded() -> None:
    c = RemoteCaller(RemoteSettings(concurrency=3))
    live = peak = 0

    async def send() -> int:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.01)
        live -= 1
        return 1

    assert await asyncio.gather(*(c.call(send) for _ in range(12))) == [1] * 12
    assert peak == 3


async def test_requests_per_minute_are_spread_evenly() -> None:
    fake = FakeTime()
    bucket = TokenBucket(120, clock=fake.clock, sleep=fake.sleep)  # 2 a second, burst 2
    for _ in range(6):
        await bucket.take()
    assert fake.sleeps == [0.5, 0.5, 0.5, 0.5]
    assert fake.now == pytest.approx(1002.0)


async def test_tokens_per_minute_charge_the_estimate_and_settle_on_usage() -> None:
    fake = FakeTime()
    c = caller(fake, tpm=6000)  # 100 tokens a second
    await c.call(scripted({"ok": 1}), tokens=300)  # bigger than the bucket: goes, leaves debt
    assert fake.sleeps == []
    c.settle_tokens(300, 100)  # it really used 100: 200 back, so the debt is gone
    await c.call(scripted({"ok": 2}), tokens=100)
    assert fake.sleeps == [1.0]  # without the settling it would wait 3 s
    c.settle_tokens(100, 400)  # it used more than estimated: charged now
    await c.call(scripted({"ok": 3}), tokens=100)
    assert fake.sleeps == [1.0, 4.0]


def test_retry_after_parsing() -> None:
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after": "0.25"}) == 0.25
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({}) is None
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 < parse_retry_after({"retry-after": when}) <= 30  # type: ignore[operator]
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_error_messages_from_common_servers() -> None:
    assert error_message(b'{"error": {"message": "bad model", "code": 404}}', "x") == "bad model"
    assert error_message(b'{"detail": "Unexpected fields"}', "x") == "Unexpected fields"
    assert error_message(b'{"error": "llama says no"}', "x") == "llama says no"
    assert error_message(b"<html>502 Bad Gateway</html>", "x") == "<html>502 Bad Gateway</html>"
    assert error_message(b"", "Service Unavailable") == "Service Unavailable"


def test_settings_are_validated_with_the_field_named() -> None:
    with pytest.raises(BatchPredictError, match=r"E: concurrency must be more than 0, got 0"):
        validate_settings(RemoteSettings, "E", {"concurrency": 0})
    with pytest.raises(BatchPredictError, match=r"E: rpm must be an integer, got 1.5"):
        validate_settings(RemoteSettings, "E", {"rpm": 1.5})
    with pytest.raises(BatchPredictError, match=r"E: unknown setting 'rpms'"):
        validate_settings(RemoteSettings, "E", {"rpms": 1})
    with pytest.raises(BatchPredictError, match=r"api_key_env must name an environment variable"):
        validate_settings(RemoteSettings, "E", {"api_key_env": "sk-abc-123"})
    with pytest.raises(BatchPredictError, match=r"base_url must start with http"):
        validate_settings(RemoteSettings, "E", {"base_url": "127.0.0.1:8000"})
    s = validate_settings(RemoteSettings, "E", {"timeout": 5, "headers": {"X-A": "b"}})
    assert s.timeout == 5.0 and isinstance(s.timeout, float) and s.headers == {"X-A": "b"}
