"""Engine servers that batchpredict starts and watches itself: `backend = "server"`.

A registry entry names the command of an OpenAI-compatible server (vLLM, SGLang,
`transformers serve`, llama.cpp's server...); batchpredict runs it and talks to it through the
openai backend (`openai.OpenAIBackend`, all of whose settings apply).

    ManagedSettings        the entry's settings: the openai ones plus command, port, health_url,
                           startup_seconds, idle_seconds, stop_seconds, env
    ManagedServer          one server process: start, health, crash, idle stop, shutdown
                           (server_process.py)
    ManagedServerBackend   the openai backend in front of a ManagedServer

Lifecycle:
- Started when a job first takes the backend (`start()`), or when a request needs it after an
  idle stop. `{port}` in `command`, `env`, `base_url` and `health_url` becomes the port: `port`, or
  a free loopback port picked at each start when `port = 0`. The process runs in its own process
  group (its own session) with stdin closed and stdout + stderr appended to
  `{data_dir}/servers/{entry}.log`, each start marked by a `--- batchpredict:` line with its pid.
- Healthy when `health_url` answers 200 (polled every 0.5 s). Missing the `startup_seconds`
  deadline, or exiting first, is an `Unavailable` error that quotes the last 20 lines the process
  logged; the job that was starting it fails with it. The failure is remembered: requests of that
  job fail at once with the same error (no restart storm); the next job tries again.
- Without `served_model`, the model sent in requests is the first id the server lists at
  `{base_url}/models` (vLLM, SGLang and `transformers serve` list the model they serve).
- A crash (the process exits while in use): a request whose connection broke because the process
  died is retried at once, and every attempt first waits for the server to be started again
  (`RemoteCaller.before_attempt`, outside the per-attempt timeout). Each crash costs the requests in
  flight one of their `retries`, so a server that dies on every attempt still ends in row errors;
  the runner writes each row exactly once whatever happens here.
- Stopped after `idle_seconds` with no request (0: never), when the registry closes (end of
  `batchpredict run`, server shutdown), and at interpreter exit as a last resort: SIGTERM to the
  whole process group, SIGKILL after `stop_seconds`. What is left of a crashed server's group
  (e.g. vLLM's engine processes holding GPU memory) is killed before the next start.
- Not covered: a server that hangs without exiting is not restarted (its requests time out and
  are retried as usual); if batchpredict itself is SIGKILLed, its servers keep running (their
  pids are in the log).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from batchpredict.backends.openai import OpenAIBackend, OpenAISettings
from batchpredict.backends.remote import RemoteFailure
from batchpredict.backends.server_process import ManagedServer, describe_exit
from batchpredict.errors import BatchPredictError, InvalidArgument

if TYPE_CHECKING:
    from batchpredict.schema import GenerateContentRequest

__all__ = ["ManagedServerBackend", "ManagedSettings", "log_file"]

log = logging.getLogger(__name__)

#: What a request meets when the server process dies under it.
_BROKEN = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)


@dataclass
class ManagedSettings(OpenAISettings):
    """A `backend = "server"` entry: the openai settings plus the process's."""

    base_url: str = "http://127.0.0.1:{port}/v1"
    #: The server's argv (no shell); "{port}" in any item becomes the port, a leading "~" the
    #: home folder.
    command: list[str] = field(default_factory=list)
    #: Port the server listens on; 0: a free loopback port, picked at each start.
    port: int = 0
    #: Answers 200 once the server can take requests.
    health_url: str = "http://127.0.0.1:{port}/v1/models"
    #: Seconds from start to healthy before the start counts as failed.
    startup_seconds: float = 600.0
    #: Stop the server after this many seconds without a request; 0: keep it running.
    idle_seconds: float = 600.0
    #: Seconds between SIGTERM and SIGKILL when stopping.
    stop_seconds: float = 30.0
    #: Extra environment variables of the server ("{port}" substituted).
    env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_options(cls, where: str, options: dict[str, Any]) -> ManagedSettings:
        settings = super().from_options(where, options)
        assert isinstance(settings, ManagedSettings)
        if not settings.command:
            raise InvalidArgument(
                f'{where}: command is required: the server\'s argv, e.g. ["vllm", "serve", '
                '"MODEL", "--port", "{port}"].'
            )
        if not 0 <= settings.port <= 65535:
            raise InvalidArgument(f"{where}: port must be 0 to 65535, got {settings.port!r}.")
        if settings.port == 0 and not any("{port}" in a for a in settings.command):
            raise InvalidArgument(
                f"{where}: command must pass {{port}} to the server (e.g. \"--port\", "
                '"{port}"): with port = 0 batchpredict picks a free port at each start.'
            )
        for name in ("startup_seconds", "stop_seconds"):
            if getattr(settings, name) <= 0:
                raise InvalidArgument(f"{where}: {name} must be more than 0.")
        if settings.idle_seconds < 0:
            raise InvalidArgument(f"{where}: idle_seconds must be 0 (never) or more.")
        if not settings.health_url.startswith(("http://", "https://")):
            raise InvalidArgument(
                f"{where}: health_url must start with http:// or https://, got "
                f"{settings.health_url!r}."
            )
        return settings

    def summary(self) -> str:
        port = self.port or "a free port"
        idle = f"idle stop {self.idle_seconds:g} s" if self.idle_seconds else "no idle stop"
        program = " ".join([os.path.basename(self.command[0]), *self.command[1:3]])
        more = " ..." if len(self.command) > 3 else ""
        return f"runs {program}{more} on {port}, {idle}, concurrency {self.concurrency}"


def log_file(data_dir: str | os.PathLike[str], entry: str) -> Path:
    """`{data_dir}/servers/{entry}.log`, the entry's name made safe for a file name."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", entry).strip("._") or "server"
    return Path(data_dir) / "servers" / f"{slug}.log"


class ManagedServerBackend(OpenAIBackend):
    """The openai backend talking to a server it runs itself."""

    kind = "server"

    def __init__(self, entry: str, settings: ManagedSettings, *, data_dir: str) -> None:
        super().__init__(settings.served_model, settings, entry=entry)
        self.server = ManagedServer(entry, settings, log_file(data_dir, entry))
        self.caller.before_attempt = self._ready

    async def start(self) -> None:
        await self.server.ensure_running(retry_failed=True)
        self._follow()
        await super().start()

    async def close(self) -> None:
        await super().close()
        await self.server.close()

    async def generate(
        self, requests: list[GenerateContentRequest]
    ) -> list[dict[str, Any] | BatchPredictError]:
        server = self.server
        server.in_use += 1
        try:
            if not self.model:  # started by this call (never by a job's start())
                await self._ready()
            return await super().generate(requests)
        finally:
            server.in_use -= 1
            server.last_used = time.monotonic()

    async def _ready(self) -> None:
        await self.server.ensure_running()
        self._follow()

    def _follow(self) -> None:
        """Point requests at the running server (its port may change at each start)."""
        server = self.server
        self.url = server.url(self.settings.base_url).rstrip("/") + "/chat/completions"
        self.model = server.served_model
        self.caller.name = f"{self.url} ({self.model})"

    async def _post(self, payload: bytes) -> Any:
        proc = self.server.proc
        try:
            return await super()._post(payload)
        except RemoteFailure as exc:
            broken = isinstance(exc.__cause__, _BROKEN)
            if not broken or proc is None or (code := await self.server.exited(proc)) is None:
                raise
            # Retried at once; the next attempt waits in before_attempt for the restart.
            raise RemoteFailure(
                503, f"The engine server of {self.entry!r} exited ({describe_exit(code)}) "
                     "with this request in flight; it is being started again.", retry_after=0.0,
            ) from exc
