"""A TEST DOUBLE HTTP server: OpenAI-compatible chat completions and the Gemini API's
generateContent, answering canned text after a fixed latency, with faults injected on purpose.
It is never a model and never a default; tests and benchmarks start it on loopback (in a thread,
or as `python -m tests.doubles.openai_server` from the repository root).

    POST /v1/chat/completions                       echo of the last user text, with usage
    POST /v1beta/models/{model}:generateContent     the same as a Gemini response (also /v1/...)
    GET  /v1/models, /health

The answer to a chat request is `echo: <last user text>`, cut to `max_tokens` words (then
finish_reason "length"), `n` choices, usage = words in the messages / words answered, logprobs
(-0.5 a word) when asked. `latency` seconds pass before each answer.

Faults, decided per attempt from (seed, request body, attempt number of that body), so the same
input meets the same faults whatever the order of arrival:
- `fault_rate` of attempts fail, with a kind drawn from `fault_kinds`: "429" (with Retry-After
  `retry_after` seconds), "500", "503", "timeout" (answers only after `hang_seconds`) and "drop"
  (the connection is closed without an answer); a body fails at most `max_faults_per_request`
  times in a row (0: no bound), so retries can win.
- A request whose text holds `[fault:CODE]` (e.g. `[fault:500]`, `[fault:400]`) fails with CODE
  on every attempt, to test what happens when retries run out or must not happen.

    server = TestDoubleServer(latency=0.2, fault_rate=0.1, seed=7)
    url = await server.start()          # http://127.0.0.1:PORT ; OpenAI base_url = url + "/v1"
    ...; await server.stop()
    with ServerThread(TestDoubleServer(...)) as url: ...    # for synchronous tests
    python -m tests.doubles.openai_server --latency 0.2 [--port P] [--fault-rate 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

__all__ = ["FAULT_KINDS", "ServerThread", "TestDoubleServer"]

FAULT_KINDS = ("429", "500", "503", "timeout", "drop")
_DIRECTIVE = re.compile(rb"\[fault:(\d{3})\]")


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, headers=headers,
                        content_type="application/json")


@dataclass
class TestDoubleServer:
    """See the module docstring. `received` holds (path, headers, body) of every request when
    `record` is on; `outcomes` counts answers by kind ("ok", "429", "drop", ...)."""

    __test__ = False  # not a pytest test class

    latency: float = 0.0
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    retry_after: float = 0.05
    hang_seconds: float = 30.0
    max_faults_per_request: int = 2
    host: str = "127.0.0.1"
    port: int = 0
    record: bool = False
    received: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        unknown = set(self.fault_kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {FAULT_KINDS}")
        self._attempts: Counter[bytes] = Counter()
        self._faults: Counter[bytes] = Counter()
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()
        self.url = ""

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> str:
        self._closing = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/chat/completions", self._chat)
        app.router.add_post("/{version:v1beta|v1}/models/{target}", self._gemini)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/health", self._health)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.port = port
        self.url = f"http://{self.host}:{port}"
        return self.url

    async def stop(self) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- faults -----------------------------------------------------------------------------
    def _fault(self, body: bytes) -> str | None:
        """The fault this attempt meets, or None."""
        if m := _DIRECTIVE.search(body):
            return m.group(1).decode()
        if self.fault_rate <= 0:
            return None
        key = hashlib.blake2b(body, digest_size=16).digest()
        attempt = self._attempts[key]
        self._attempts[key] += 1
        if self.max_faults_per_request and self._faults[key] >= self.max_faults_per_request:
            return None
        rng = random.Random(f"{self.seed}:{key.hex()}:{attempt}")
        if rng.random() >= self.fault_rate:
            return None
        self._faults[key] += 1
        return self.fault_kinds[rng.randrange(len(self.fault_kinds))]

    async def _apply(self, request: web.Request, fault: str, gemini: bool) -> web.Response:
        """Answer (or not) as the fault says."""
        self.outcomes[fault] += 1
        if fault == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)  # never reaches the client
        if fault == "timeout":
            with contextlib.suppress(TimeoutError):  # stop() ends the wait early
                await asyncio.wait_for(self._closing.wait(), self.hang_seconds)
            return _json({"error": {"message": "too late", "code": 504}}, 504)
        code = int(fault)
        headers = {"Retry-After": f"{self.retry_after:g}"} if code == 429 else None
        message = {429: "Rate limit reached, slow down.", 500: "The server had an error.",
                   503: "The server is overloaded."}.get(code, f"Injected error {code}.")
        if gemini:
            status = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
            body = {"error": {"code": code, "message": message,
                              "status": status.get(code, "INTERNAL")}}
        else:
            body = {"error": {"message": message, "type": "test_double_error", "code": code}}
        return _json(body, code, headers)

    async def _receive(self, request: web.Request) -> tuple[bytes, Any]:
        raw = await request.read()
        data = orjson.loads(raw)
        if self.record:
            self.received.append((request.path, dict(request.headers), data))
        return raw, data

    # -- handlers ---------------------------------------------------------------------------
    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return _json({"object": "list", "data": [{"id": "test-double", "object": "model"}]})

    async def _chat(self, request: web.Request) -> web.Response:
        raw, data = await self._receive(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._fault(raw)
        if fault is not None:
            return await self._apply(request, fault, gemini=False)
        self.outcomes["ok"] += 1
        messages = data.get("messages") or []
        last: dict[str, Any] = next((m for m in reversed(messages) if m.get("role") == "user"), {})
        prompt_words = sum(len(_text(m.get("content")).split()) for m in messages)
        words = ("echo: " + _text(last.get("content"))).split()
        limit = data.get("max_tokens") or data.get("max_completion_tokens")
        finish = "stop"
        if limit is not None and len(words) > limit:
            words, finish = words[:limit], "length"
        choices = []
        for i in range(int(data.get("n") or 1)):
            choice: dict[str, Any] = {"index": i, "finish_reason": finish,
                                      "message": {"role": "assistant", "content": " ".join(words)}}
            if data.get("logprobs"):
                choice["logprobs"] = {"content": [
                    {"token": w, "logprob": -0.5, "top_logprobs": [{"token": w, "logprob": -0.5}]}
                    for w in words]}
            choices.append(choice)
        completion = len(words) * len(choices)
        return _json({
            "id": f"chatcmpl-{hashlib.md5(raw).hexdigest()[:12]}",
            "object": "chat.completion",
            "model": data.get("model", "test-double"),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_words, "completion_tokens": completion,
                      "total_tokens": prompt_words + completion},
        })

    async def _gemini(self, request: web.Request) -> web.Response:
        model, _, method = request.match_info["target"].partition(":")
        if method != "generateContent":
            return _json({"error": {"code": 404, "message": f"no method {method}",
                                    "status": "NOT_FOUND"}}, 404)
        raw, data = await self._receive(request)
        if self.latency:
            await asyncio.sleep(self.latency)
        fault = self._fault(raw)
        if fault is not None:
            return await self._apply(request, fault, gemini=True)
        self.outcomes["ok"] += 1
        contents = data.get("contents") or []
        texts = [p.get("text", "") for c in contents for p in c.get("parts", [])]
        words = ("echo: " + (texts[-1] if texts else "")).split()
        prompt = sum(len(t.split()) for t in texts)
        return _json({
            "candidates": [{"content": {"role": "model", "parts": [{"text": " ".join(words)}]},
                            "finishReason": "STOP", "avgLogprobs": -0.25, "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": len(words),
                              "totalTokenCount": prompt + len(words)},
            "modelVersion": f"{model}-test-double",
            "responseId": hashlib.md5(raw).hexdigest()[:12],
        })


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


async def _cancel_the_rest() -> None:
    """Cancel and await what is still running on this loop (handlers of dropped connections)."""
    me = asyncio.current_task()
    rest = [t for t in asyncio.all_tasks() if t is not me]
    for task in rest:
        task.cancel()
    await asyncio.gather(*rest, return_exceptions=True)


class ServerThread:
    """Runs a TestDoubleServer on its own event loop in a background thread."""

    def __init__(self, server: TestDoubleServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        asyncio.run_coroutine_threadsafe(_cancel_the_rest(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--fault-kinds", default=",".join(FAULT_KINDS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry-after", type=float, default=0.05)
    p.add_argument("--hang-seconds", type=float, default=30.0)
    args = p.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        p.error("the test double listens on loopback only")
    server = TestDoubleServer(
        latency=args.latency, fault_rate=args.fault_rate,
        fault_kinds=tuple(k for k in args.fault_kinds.split(",") if k), seed=args.seed,
        retry_after=args.retry_after, hang_seconds=args.hang_seconds, host=args.host,
        port=args.port,
    )

    async def serve() -> None:
        url = await server.start()
        print(orjson.dumps({"url": url, "port": server.port}).decode(), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
