"""One engine server process that batchpredict runs (`backend = "server"`, managed.py): start it
in its own process group, wait for health, notice a crash, stop it when idle, and make sure it
dies with batchpredict. The lifecycle is described in managed.py.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from batchpredict.errors import BatchPredictError, Unavailable

if TYPE_CHECKING:
    from batchpredict.backends.managed import ManagedSettings

__all__ = ["LOG_TAIL_LINES", "ManagedServer", "describe_exit"]

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 20
_HEALTH_POLL_SECONDS = 0.5
_WATCH_SECONDS = 0.5
#: How long a broken connection may precede the sight of the process's exit.
_EXIT_SEEN_WITHIN = 1.0
_LIVE: weakref.WeakSet[ManagedServer] = weakref.WeakSet()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class ManagedServer:
    """One engine server process of one registry entry (see the module docstring)."""

    def __init__(self, name: str, settings: ManagedSettings, log_path: Path) -> None:
        self.name = name
        self.settings = settings
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = settings.port
        #: The model id sent in requests (settings.served_model, else what the server lists).
        self.served_model = settings.served_model
        #: Processes started so far; restarts are starts - 1.
        self.starts = 0
        self.ready = False
        #: `generate` calls in progress; the server is idle when 0.
        self.in_use = 0
        self.last_used = time.monotonic()
        self.failure: BatchPredictError | None = None
        self._log_offset = 0
        self._starting: asyncio.Future[None] | None = None
        self._lifecycle = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None

    def url(self, template: str) -> str:
        return template.replace("{port}", str(self.port))

    @property
    def running(self) -> bool:
        return self.ready and self.proc is not None and self.proc.poll() is None

    # -- start ------------------------------------------------------------------------------
    async def ensure_running(self, *, retry_failed: bool = False) -> None:
        """Return once the server answers its health check, starting it if needed (one start
        at a time, whoever asks). A remembered start failure is raised again unless
        `retry_failed` (a new job) says to try once more."""
        if self.running:
            return
        if self._starting is None:
            if self.failure is not None and not retry_failed:
                raise self.failure
            self.failure = None
            self._starting = asyncio.ensure_future(self._start())
            self._starting.add_done_callback(self._started)
        # shielded: a waiter that gives up (its job stops) does not abort the start
        await asyncio.shield(self._starting)

    def _started(self, future: asyncio.Future[None]) -> None:
        self._starting = None
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, BatchPredictError):
            self.failure = exc

    async def _start(self) -> None:
        async with self._lifecycle:
            if self.proc is not None:  # what is left of a crashed predecessor
                await self._terminate(self.proc, grace=0.0, reason="replaced")
            self._launch()
            assert self.proc is not None
            proc = self.proc
            st = self.settings
            health = self.url(st.health_url)
            deadline = time.monotonic() + st.startup_seconds
            async with aiohttp.ClientSession(
                headers=self._auth(), timeout=aiohttp.ClientTimeout(total=5)
            ) as session:
                while not await self._healthy(session, health):
                    code = proc.poll()
                    if code is not None:
                        raise self._error(
                            f"exited with {describe_exit(code)} before {health} answered"
                        )
                    if time.monotonic() > deadline:
                        await self._terminate(proc, grace=st.stop_seconds, reason="start timeout")
                        raise self._error(
                            f"did not answer {health} within startup_seconds = "
                            f"{st.startup_seconds:g} s, so it was stopped"
                        )
                    await asyncio.sleep(_HEALTH_POLL_SECONDS)
                if not st.served_model:
                    self.served_model = await self._listed_model(session)
            self.ready = True
            self.last_used = time.monotonic()
            log.info("engine server %s is up (pid %d, port %d, start %d)", self.name, proc.pid,
                     self.port, self.starts)

    def _launch(self) -> None:
        st = self.settings
        self.port = st.port or _free_port()
        argv = [os.path.expanduser(a.replace("{port}", str(self.port))) for a in st.command]
        env = {**os.environ, **{k: self.url(v) for k, v in st.env.items()}}
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        except OSError as exc:
            raise Unavailable(
                f"The engine server of model entry {self.name!r} was not started: its log "
                f"{self.log_path} cannot be written ({exc})."
            ) from None
        with out:
            self._log_offset = out.tell()
            self._mark(out, f"starting `{shlex.join(argv)}` (port {self.port})")
            try:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    env=env, start_new_session=True,
                )
            except OSError as exc:
                self._mark(out, f"could not start: {exc}")
                raise self._error(f"could not be started ({exc})") from None
            self._mark(out, f"pid {self.proc.pid}")
        self.starts += 1
        _LIVE.add(self)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch())

    def _mark(self, out: Any, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"--- batchpredict {stamp}: {text}\n".encode())
        out.flush()

    def _auth(self) -> dict[str, str]:
        key = self.settings.api_key(self.name)
        return {**self.settings.headers, **({"Authorization": f"Bearer {key}"} if key else {})}

    @staticmethod
    async def _healthy(session: aiohttp.ClientSession, url: str) -> bool:
        try:
            async with session.get(url) as reply:
                await reply.read()
                return reply.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def _listed_model(self, session: aiohttp.ClientSession) -> str:
        url = self.url(self.settings.base_url).rstrip("/") + "/models"
        try:
            async with session.get(url) as reply:
                data = await reply.json(content_type=None)
            return str(data["data"][0]["id"])
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, IndexError,
                TypeError) as exc:
            raise self._error(
                f"did not list its model at {url} ({type(exc).__name__}: {exc}); set "
                "served_model in the entry"
            ) from None

    def _error(self, reason: str) -> Unavailable:
        return Unavailable(
            f"The engine server of model entry {self.name!r} {reason}. Command: "
            f"{shlex.join(self.settings.command)}. Last lines of its log "
            f"({self.log_path}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last `lines` lines this start wrote to the log."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                text = f.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.rstrip("\n").splitlines()[-lines:]) or "(empty)"

    # -- while running ------------------------------------------------------------------------
    async def exited(self, proc: subprocess.Popen[bytes]) -> int | None:
        """`proc`'s exit code if it has exited or exits within a moment (a broken connection
        can be seen just before the process's exit is), else None."""
        deadline = time.monotonic() + _EXIT_SEEN_WITHIN
        while (code := proc.poll()) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if code is not None and proc is self.proc and self.ready:
            self.ready = False
            log.warning("engine server %s (pid %d) exited with %s; starting it again",
                        self.name, proc.pid, describe_exit(code))
        return code

    async def _watch(self) -> None:
        """Notice crashes while nothing is asking, and stop the server when idle."""
        st = self.settings
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            proc = self.proc
            if proc is None or not self.ready:
                continue
            code = proc.poll()
            if code is not None:
                self.ready = False
                log.warning("engine server %s (pid %d) exited with %s; it starts again when a "
                            "request needs it", self.name, proc.pid, describe_exit(code))
            elif st.idle_seconds and not self.in_use and self._starting is None \
                    and time.monotonic() - self.last_used >= st.idle_seconds:
                log.info("engine server %s: idle for %g s, stopping it", self.name,
                         st.idle_seconds)
                await self.stop(reason="idle")

    # -- stop -----------------------------------------------------------------------------
    async def stop(self, reason: str = "stopped") -> None:
        """Stop the process group: SIGTERM, then SIGKILL after `stop_seconds`."""
        async with self._lifecycle:
            self.ready = False
            if self.proc is not None:
                # self.proc is cleared only once it is gone: a stop cut short is redone by the
                # next stop (close) or start
                await self._terminate(self.proc, self.settings.stop_seconds, reason)
                self.proc = None

    async def close(self) -> None:
        if self._starting is not None:
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, BatchPredictError):
                await self._starting
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        await self.stop(reason="shutdown")
        _LIVE.discard(self)

    async def _terminate(self, proc: subprocess.Popen[bytes], grace: float, reason: str) -> None:
        pgid = proc.pid  # its own session: the group id is the leader's pid
        if proc.poll() is None:
            _kill_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (proc.poll() is None or _group_alive(pgid)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        _kill_group(pgid, signal.SIGKILL)
        while proc.poll() is None:
            await asyncio.sleep(0.05)
        with contextlib.suppress(OSError), open(self.log_path, "ab") as out:
            self._mark(out, f"pid {proc.pid} ended ({reason}): {describe_exit(proc.returncode)}")

    def kill_now(self) -> None:
        """SIGKILL the process group, synchronously (interpreter exit)."""
        if self.proc is not None:
            _kill_group(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)


@atexit.register
def _kill_leftovers() -> None:
    """Servers whose registry was never closed (a crash of the event loop) die with us."""
    for server in list(_LIVE):
        server.kill_now()
