"""What every backend that calls a remote server shares: settings, rate limits, retries, timeouts.

    RemoteSettings          validated settings of one registry entry (base_url, limits, retries...)
    TokenBucket             requests-per-minute and tokens-per-minute limits
    RemoteCaller.call(send) one request: admitted by the limits, sent within the concurrency bound
                            and the per-request timeout, retried with backoff; returns the result
                            or the `BatchPredictError` that becomes the row's `status`
    RemoteFailure           what a backend's `send` raises for an HTTP error or a broken connection

Retry policy (as Ray Data LLM and the Vertex docs advise): 408, 429, every 5xx, timeouts and
connection errors are retried, at most `retries` times; the wait before retry n (0-based) is
`min(backoff_max, backoff_initial * 2**n)`, shortened by up to `jitter` of itself at random so that
many rows failing together do not come back together. A `Retry-After` (or OpenAI's
`retry-after-ms`) from the server replaces that wait, capped at `max_retry_after`; after a 429 every
request of the backend waits out that pause before it is sent (the server said we are too fast).
Any other 4xx is the row's fault and is not retried. When retries run out, the row's error is
`errors.error_for_http_status(code, message)`, so its status reads in the Vertex form:
`Too Many Requests: {"error": {"code": 429, "message": "...", "status": "RESOURCE_EXHAUSTED"}}`.

Token estimates for the tokens-per-minute bucket: prompt characters / 4 plus the output budget
(`maxOutputTokens`, else `default_max_tokens`, times candidateCount); the estimate is corrected with
the server's reported usage once the answer arrives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from batchpredict.errors import BatchPredictError, InvalidArgument, error_for_http_status

__all__ = [
    "RemoteCaller",
    "RemoteFailure",
    "RemoteSettings",
    "TokenBucket",
    "error_message",
    "estimate_tokens",
    "is_retryable",
    "parse_retry_after",
    "validate_settings",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class RemoteSettings:
    """Settings shared by remote backends; a registry entry's keys, validated at load."""

    #: Server URL (`http://127.0.0.1:8000/v1` for an OpenAI-compatible server).
    base_url: str = ""
    #: Name of the environment variable holding the API key (never the key itself).
    api_key_env: str = ""
    #: Model name sent to the server; empty: the job's model, short form (after the last `/`).
    served_model: str = ""
    #: Requests in flight at once (also the HTTP connection pool size).
    concurrency: int = 64
    #: Requests per minute; 0: no limit.
    rpm: int = 0
    #: Tokens per minute (prompt + output, estimated before and corrected after); 0: no limit.
    tpm: int = 0
    #: Seconds one attempt may take before it counts as a timeout (retried).
    timeout: float = 600.0
    #: Retries after the first attempt, for 408/429/5xx/timeouts/connection errors.
    retries: int = 6
    #: First backoff wait in seconds; doubles each retry...
    backoff_initial: float = 1.0
    #: ...up to this many seconds.
    backoff_max: float = 60.0
    #: Fraction (0-1) of each backoff wait taken off at random.
    jitter: float = 0.5
    #: Longest `Retry-After` honoured, in seconds.
    max_retry_after: float = 300.0
    #: Output tokens assumed for the tokens-per-minute estimate when maxOutputTokens is unset.
    default_max_tokens: int = 1024
    #: Extra HTTP headers sent with every request.
    headers: dict[str, str] = field(default_factory=dict)

    def api_key(self, entry: str) -> str | None:
        """The key from `api_key_env`; a 400 naming the variable when it is unset."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise InvalidArgument(
                f"Model {entry!r} reads its API key from the environment variable "
                f"{self.api_key_env}, which is not set. Export {self.api_key_env}=... and try "
                "again."
            )
        return key

    def summary(self) -> str:
        """One line for `batchpredict models list`."""
        bits = [self.base_url or "default URL"]
        if self.served_model:
            bits.append(f"model {self.served_model}")
        bits.append(f"concurrency {self.concurrency}")
        if self.rpm:
            bits.append(f"{self.rpm} rpm")
        if self.tpm:
            bits.append(f"{self.tpm} tpm")
        if self.api_key_env:
            bits.append(f"key ${self.api_key_env}")
        return ", ".join(bits)


# -- validation ---------------------------------------------------------------------------------
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "a number",
    ),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "dict[str, str]": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        'a table of strings, e.g. { "X-Team" = "ml" }',
    ),
    "list[str]": (
        lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        'a list of strings, e.g. ["vllm", "serve", "MODEL"]',
    ),
}
_NON_NEGATIVE = {"rpm", "tpm", "retries", "backoff_initial", "backoff_max", "max_retry_after"}
_POSITIVE = {"concurrency", "timeout", "default_max_tokens"}

S = TypeVar("S", bound=RemoteSettings)


def validate_settings(cls: type[S], where: str, options: dict[str, Any]) -> S:
    """Build `cls` from a registry entry's keys; InvalidArgument naming the entry and field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in options.items():
        f = fields.get(key)
        if f is None:
            raise InvalidArgument(
                f"{where}: unknown setting {key!r}. Settings of this backend: "
                f"{', '.join(sorted(fields))}."
            )
        check, wanted = _CHECKS[str(f.type)]
        if not check(value):
            raise InvalidArgument(f"{where}: {key} must be {wanted}, got {value!r}.")
        if key in _NON_NEGATIVE and value < 0:
            raise InvalidArgument(f"{where}: {key} must be 0 or more, got {value!r}.")
        if key in _POSITIVE and value <= 0:
            raise InvalidArgument(f"{where}: {key} must be more than 0, got {value!r}.")
        values[key] = float(value) if str(f.type) == "float" else value
    settings = cls(**values)
    if not 0 <= settings.jitter <= 1:
        raise InvalidArgument(f"{where}: jitter must be between 0 and 1, got {settings.jitter!r}.")
    if settings.api_key_env and not _ENV_NAME.match(settings.api_key_env):
        raise InvalidArgument(
            f"{where}: api_key_env must name an environment variable (e.g. OPENAI_API_KEY), "
            f"got {settings.api_key_env!r}. Put the key itself in that variable, not in the file."
        )
    if settings.base_url and not settings.base_url.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"{where}: base_url must start with http:// or https://, got {settings.base_url!r}."
        )
    return settings


# -- errors ------------------------------------------------------------------------------------
class RemoteFailure(Exception):
    """An attempt that failed: the HTTP code (503 for a broken connection, 504 for a timeout),
    the server's message, and the wait it asked for."""

    def __init__(self, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after = retry_after


def is_retryable(code: int) -> bool:
    return code in (408, 429) or code >= 500


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None if absent."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def error_message(body: bytes, fallback: str) -> str:
    """The human message of an error reply: OpenAI's `{"error": {"message"}}`, FastAPI's
    `{"detail"}`, llama.cpp's `{"error": "..."}`, else the body's start."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:500] or fallback
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err.get("msg")
            if msg:
                return str(msg)
        elif isinstance(err, str) and err:
            return err
        if "detail" in data:
            return str(data["detail"])
    return body.decode("utf-8", "replace")[:500] or fallback


# -- limits ------------------------------------------------------------------------------------
class TokenBucket:
    """A per-minute limit as a bucket that refills continuously at `per_minute / 60` a second and
    holds at most one second's worth (at least 1), so sends are spread evenly over the minute.
    A request bigger than the bucket waits for a full bucket and leaves it in debt."""

    def __init__(
        self,
        per_minute: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.clock = clock
        self.sleep = sleep
        self.updated = clock()
        self._lock = asyncio.Lock()  # first come, first served

    def _refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def take(self, amount: float = 1.0) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self.level >= need:
                    self.level -= amount
                    return
                await self.sleep((need - self.level) / self.rate)

    def settle(self, delta: float) -> None:
        """Give back (positive) or charge (negative) tokens once the true count is known."""
        self._refill()
        self.level = min(self.capacity, self.level + delta)


def estimate_tokens(prompt_chars: int, max_tokens: int | None, candidates: int | None,
                    default_max_tokens: int) -> int:
    return prompt_chars // 4 + 1 + (max_tokens or default_max_tokens) * (candidates or 1)


# -- the call loop -----------------------------------------------------------------------------
class RemoteCaller:
    """Sends one request at a time through the limits, the timeout and the retry policy.

    `sleep`, `clock` and `rng` are the seams tests patch to assert the backoff sequence."""

    def __init__(
        self,
        settings: RemoteSettings,
        *,
        name: str = "remote",
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.slots = asyncio.Semaphore(settings.concurrency)
        self.requests = TokenBucket(settings.rpm, clock=clock, sleep=self._sleep) if settings.rpm \
            else None
        self.tokens = TokenBucket(settings.tpm, clock=clock, sleep=self._sleep) if settings.tpm \
            else None
        self.paused_until = 0.0
        #: attempts, retries, and failures by HTTP code: for logs, tests and benchmarks.
        self.stats: Counter[str] = Counter()
        #: Awaited before each attempt, outside the timeout and the concurrency slot: a managed
        #: server waits here until it is (re)started. A BatchPredictError it raises is the row's.
        self.before_attempt: Callable[[], Awaitable[None]] | None = None

    async def _sleep(self, seconds: float) -> None:
        await self.sleep(seconds)

    def backoff(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based)."""
        st = self.settings
        if retry_after is not None:
            return min(retry_after, st.max_retry_after)
        delay = min(st.backoff_max, st.backoff_initial * 2**retry)
        return delay * (1 - st.jitter * self.rng.random())

    async def _admit(self, tokens: int) -> None:
        while (wait := self.paused_until - self.clock()) > 0:
            await self.sleep(wait)
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            await self.tokens.take(tokens)

    def settle_tokens(self, estimated: int, actual: int | None) -> None:
        """Correct the tokens-per-minute bucket with the server's count."""
        if self.tokens is not None and actual is not None:
            self.tokens.settle(estimated - actual)

    async def call(
        self, send: Callable[[], Awaitable[T]], *, tokens: int = 1
    ) -> T | BatchPredictError:
        """`send()`'s result, or the error for the row once retries are spent or not allowed.
        `send` raises RemoteFailure for HTTP errors and broken connections; a timeout is ours."""
        st = self.settings
        for attempt in range(st.retries + 1):
            if self.before_attempt is not None:
                try:
                    await self.before_attempt()
                except BatchPredictError as exc:
                    return exc
            await self._admit(tokens)
            self.stats["attempts"] += 1
            async with self.slots:
                try:
                    async with asyncio.timeout(st.timeout):
                        return await send()
                except RemoteFailure as exc:
                    failure = exc
                except TimeoutError:
                    failure = RemoteFailure(504, f"No answer within {st.timeout:g} s.")
            self.stats[f"http_{failure.code}"] += 1
            if not is_retryable(failure.code):
                return error_for_http_status(failure.code, failure.message)
            if attempt == st.retries:
                break
            delay = self.backoff(attempt, failure.retry_after)
            if failure.code == 429:
                self.paused_until = max(self.paused_until, self.clock() + delay)
            self.stats["retries"] += 1
            log.debug("%s: %s; retry %d in %.2fs", self.name, failure, attempt + 1, delay)
            await self.sleep(delay)
        tries = f"{st.retries + 1} attempts" if st.retries else "1 attempt (retries = 0)"
        return error_for_http_status(
            failure.code,
            f"{self.name} failed after {tries}: {failure.message}",
        )
