"""Riding out outages: the job store restarting, a bucket down for a minute, a full disk.

    storage_outage(uri, exc)  a storage client's error that may pass (no connection, 5xx,
                              timeouts, no space left, I/O error) as an `Outage` naming the URI;
                              `storage.translate_error` asks it first
    Patience                  one running job's retries: each call that meets an `Outage` is
                              tried again with backoff until BATCHPREDICT_OUTAGE_DEADLINE_SECONDS
                              have passed since that resource first failed; meanwhile the job
                              says what it waits for (`Job.waiting_for`, `waiting_since`)
    PatientStore              the job store as a runner sees it: every call through Patience
    ResumableRows             input rows read again from where a storage error stopped them
    quiet_client_loggers()    storage clients' loggers (gcsfs, s3fs, botocore, urllib3, ...)
                              print no tracebacks: our own one-line messages say what happens

A job that outlives its deadline fails with an `Outage` naming the resource; the runner records
that failure as resumable (`Job.resumable`): `batchpredict jobs resume ID`, the console's button
or the same `batchpredict run` command takes it back to RUNNING from its committed chunks.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import errno
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from batchpredict import bounded_io
from batchpredict.errors import BatchPredictError, FailedPrecondition, Outage
from batchpredict.jobs import Job, JobState, utcnow
from batchpredict.store.base import ChunkRecord, Commit, JobStore, StoreTotals

__all__ = ["CLIENT_LOGGERS", "Patience", "PatientStore", "ResumableRows", "Waiting",
           "quiet_client_loggers", "storage_outage"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# -- which errors may pass ----------------------------------------------------------------
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_PASSING_ERRNOS = _DISK_FULL | {
    errno.EIO, errno.EROFS, errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET,
    errno.ECONNABORTED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE,
    errno.ESTALE, errno.EAGAIN,
}
#: Storage clients' "no connection" errors, by class name (aiohttp, botocore, urllib3,
#: requests, http.client, google-auth): none of them needs importing.
_CONNECTION_ERRORS = frozenset({
    "ClientConnectionError", "ClientConnectorError", "ServerDisconnectedError", "ClientOSError",
    "ServerTimeoutError", "ClientPayloadError", "EndpointConnectionError",
    "ConnectionClosedError", "ConnectTimeoutError", "ReadTimeoutError", "ProxyError",
    "ChunkedEncodingError", "RemoteDisconnected", "IncompleteRead", "TransportError",
    "ProtocolError", "NewConnectionError", "MaxRetryError", "ConnectionError", "TimeoutError",
})
_PASSING_HTTP = frozenset({408, 429, 500, 502, 503, 504})


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status a storage client's error carries (gcsfs HttpError, botocore)."""
    code = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(code, int):
        return code
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return status if isinstance(status, int) else None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def storage_outage(uri: str, exc: BaseException) -> Outage | None:
    """`exc` (from a storage client, or an OSError) as an Outage naming `uri`, when it is the
    kind of failure that passes: no connection, a timeout, 5xx or 429, no space left, an I/O
    error. None for anything else (a missing object, a permission, a bad request)."""
    for err in _chain(exc):
        if isinstance(err, Outage):
            return err
        if isinstance(err, BatchPredictError):
            continue  # ours already: what it was raised from decides
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return Outage(
                f"No space left to write {uri} ({_first_line(err)}). Free space on that disk "
                "or grow it: a running job waits for it.", resource=uri)
        passing = (isinstance(err, OSError) and err.errno in _PASSING_ERRNOS) or any(
            cls.__name__ in _CONNECTION_ERRORS for cls in type(err).__mro__)
        status = _http_status(err)
        if passing or status in _PASSING_HTTP:
            what = f"answered HTTP {status}" if status in _PASSING_HTTP else "cannot be reached"
            return Outage(
                f"The storage of {uri} {what} ({_first_line(err)}). Check that the storage "
                "service is up and reachable from this machine.", resource=uri)
    return None


# -- patience ------------------------------------------------------------------------------
@dataclass
class _Outage:
    """One resource's outage: since when (monotonic and wall clock), failed attempts, and
    whether the user was told."""

    start: float
    since: datetime
    tries: int = 0
    announced: bool = False


@dataclass(frozen=True)
class Waiting:
    """What a job waits for, since when, and the last error, in one line."""

    resource: str
    since: datetime
    reason: str

    def __str__(self) -> str:
        return f"waiting for {self.resource} since {self.since.astimezone():%H:%M:%S}"


class Patience:
    """How long one running job waits for its infrastructure. Every call made through it
    (`call` in async code, `call_sync` in threads) that meets an `Outage` is tried again after
    a backoff (`backoff_initial` doubling to `backoff_max`, jittered), until `deadline` seconds
    have passed since that resource first failed; then the Outage is raised, naming it.
    `on_change` hears of each wait starting, changing and ending (from any thread)."""

    #: A call slower than this is shown as waiting (a storage client retrying inside it).
    slow_seconds = 5.0

    def __init__(self, deadline: float, on_change: Callable[[Waiting | None], None] | None = None,
                 interrupt: asyncio.Event | None = None, backoff_initial: float = 0.25,
                 backoff_max: float = 5.0) -> None:
        self.deadline = deadline
        self.on_change = on_change
        #: set (Ctrl-C, a server stopping): an async call stops waiting and raises its Outage
        self.interrupt = interrupt
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        #: Between failed attempts of an async call, and every `slow_seconds` of a slow one: the
        #: runner's heartbeat, which also stores what the job waits for.
        self.on_retry: Callable[[], Awaitable[Any]] | None = None
        self._lock = threading.Lock()
        self._outages: dict[str, _Outage] = {}
        #: resources past their deadline: the job is failing, and waits for them no more
        self._given_up: dict[str, Outage] = {}
        self.waiting: Waiting | None = None

    def _failed(self, resource: str, exc: Outage) -> float:
        """Note a failed attempt; the delay before the next, or the Outage past the deadline."""
        with self._lock:
            given_up = self._given_up.get(resource)
            if given_up is None:
                outage = self._outages.setdefault(resource, _Outage(time.monotonic(), utcnow()))
                outage.tries += 1
                tries, waited = outage.tries, time.monotonic() - outage.start
                first, outage.announced = not outage.announced, True
                self.waiting = Waiting(resource, outage.since, exc.message)
        if given_up is not None:
            raise Outage(given_up.message, resource=resource) from exc
        if waited >= self.deadline:
            self._given_up[resource] = Outage(
                f"Gave up after waiting {waited:.0f} s for {resource} "
                f"(BATCHPREDICT_OUTAGE_DEADLINE_SECONDS={self.deadline:g}): {exc.message}",
                resource=resource)
            self._clear(resource, recovered=False)
            raise self._given_up[resource] from exc
        if first:
            log.warning("%s: %s", self.waiting, exc.message)
        self._notify()
        delay = min(self.backoff_max, self.backoff_initial * 2 ** min(tries - 1, 30))
        return max(0.0, min(delay * random.uniform(0.8, 1.2), self.deadline - waited))

    def _slow(self, resource: str, since: datetime, started: float) -> None:
        with self._lock:
            outage = self._outages.setdefault(resource, _Outage(started, since))
            first, outage.announced = not outage.announced, True
            self.waiting = Waiting(resource, outage.since,
                                   f"no answer for {self.slow_seconds:g} s")
        if first:
            log.warning("%s: no answer for %g s", self.waiting, self.slow_seconds)
        self._notify()

    def _clear(self, resource: str, recovered: bool = True) -> None:
        with self._lock:
            outage = self._outages.pop(resource, None)
            if recovered:
                self._given_up.pop(resource, None)
            shown = self.waiting is not None and self.waiting.resource == resource
            if shown:
                self.waiting = None
        if outage and recovered and outage.announced:
            log.warning("%s is back after %.0f s", resource, time.monotonic() - outage.start)
        if shown:
            self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change(self.waiting)

    def call_sync(self, fn: Callable[..., T], *args: Any, resource: str | None = None) -> T:
        """`fn(*args)`, tried again through outages (blocking: for threads)."""
        key = resource
        while True:
            try:
                result = fn(*args)
            except Outage as exc:
                key = resource or exc.resource
                time.sleep(self._failed(key, exc))
                continue
            if key is not None:
                self._clear(key)
            return result

    async def call(self, fn: Callable[..., T], *args: Any, resource: str | None = None,
                   pool: bounded_io.IOPool = bounded_io.JOB_POOL) -> T:
        """`fn(*args)` on `pool`, tried again through outages; shown as waiting for `resource`
        once an attempt is slower than `slow_seconds`."""
        key = resource
        while True:
            since, started = utcnow(), time.monotonic()
            task = asyncio.ensure_future(bounded_io.run_io(fn, *args, pool=pool))
            try:  # a client retrying inside one attempt (gcsfs: ~30 s) still shows, heartbeats
                while not (await asyncio.wait({task}, timeout=self.slow_seconds))[0]:
                    if key:
                        self._slow(key, since, started)
                    if self.on_retry is not None:
                        await self.on_retry()
            except asyncio.CancelledError:  # the attempt ends in its thread, unheard
                task.add_done_callback(lambda t: t.cancelled() or t.exception())
                task.cancel()
                raise
            try:
                result = await task
            except Outage as exc:
                key = resource or exc.resource
                delay = self._failed(key, exc)
                if self.on_retry is not None:
                    await self.on_retry()
                if await self._interrupted(delay):
                    raise
                continue
            if key is not None:
                self._clear(key)
            return result


    async def _interrupted(self, delay: float) -> bool:
        """Sleep `delay` seconds, or less when interrupted; whether it was."""
        if self.interrupt is None:
            await asyncio.sleep(delay)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.interrupt.wait(), delay)
        return self.interrupt.is_set()


def show_waiting(job: Job, waiting: Waiting | None) -> None:
    """Put what `job` waits for (None: nothing) on the job, as its store and API show it."""
    job.waiting_for, job.waiting_since, job.waiting_reason = (
        (waiting.resource, waiting.since, waiting.reason) if waiting else (None, None, None))


def job_error(error: BatchPredictError | None, job_id: int) -> dict[str, Any] | None:
    """A job's `error` field for `error`: an Outage's says `resumable`, and how to resume."""
    if error is None:
        return None
    status = error.to_job_error()
    if isinstance(error, Outage):
        status["message"] += (
            f" The rows completed so far are kept: once {error.resource} is back, resume the "
            f"job with `batchpredict jobs resume {job_id}` (or run the same `batchpredict run` "
            "command again).")
        status["resumable"] = True
    return status


def unrecorded(exc: Outage, job_id: int, state: JobState) -> Outage:
    """The store was away for longer than the deadline when a job's end was to be recorded."""
    return Outage(
        f"{exc.message} Job {job_id} could not be marked {state.short}: it stays RUNNING and "
        "resumes from its committed rows once the store is back (a server resumes it by "
        "itself; for `batchpredict run`, run the same command again).", resource=exc.resource)


class PatientStore(JobStore):
    """The job store through a job's `Patience`: a restart or a locked, full or unwritable
    store file is waited out. A state change whose reply was lost in the outage is not
    repeated: the stored job already shows it."""

    def __init__(self, store: JobStore, patience: Patience) -> None:
        self.inner = store
        self.patience = patience

    def __getattr__(self, name: str) -> Any:  # close(), a dialect's extras
        return getattr(self.inner, name)

    def create(self, job: Job) -> Job:
        return self.patience.call_sync(self.inner.create, job)

    def get(self, job_id: int) -> Job:
        return self.patience.call_sync(self.inner.get, job_id)

    def list(self, project: str | None = None) -> builtins.list[Job]:
        return self.patience.call_sync(self.inner.list, project)

    def list_unfinished(self) -> builtins.list[Job]:
        return self.patience.call_sync(self.inner.list_unfinished)

    def delete(self, job_id: int) -> None:
        self.patience.call_sync(self.inner.delete, job_id)

    def _compare_and_set(self, job: Job, expected: JobState, owner: str | bool | None) -> bool:
        return self.patience.call_sync(self.inner._compare_and_set, job, expected, owner)

    def find_by_fingerprint(self, fingerprint: str) -> Job | None:
        return self.patience.call_sync(self.inner.find_by_fingerprint, fingerprint)

    def page(self, *args: Any) -> builtins.list[Job]:
        return self.patience.call_sync(self.inner.page, *args)

    def projects(self) -> builtins.list[str]:
        return self.patience.call_sync(self.inner.projects)

    def totals(self) -> StoreTotals:
        return self.patience.call_sync(self.inner.totals)

    def list_held(self) -> builtins.list[Job]:
        return self.patience.call_sync(self.inner.list_held)

    def claim_next(self, *args: Any) -> Job | None:
        return self.patience.call_sync(self.inner.claim_next, *args)

    def commit_chunk(self, *args: Any) -> Commit:
        """A commit whose reply the outage swallowed is found committed (DUPLICATE) when tried
        again: never counted twice."""
        return self.patience.call_sync(self.inner.commit_chunk, *args)

    def chunks(self, job_id: int) -> builtins.list[ChunkRecord]:
        return self.patience.call_sync(self.inner.chunks, job_id)

    def forget_chunks(self, *args: Any) -> None:
        self.patience.call_sync(self.inner.forget_chunks, *args)

    def transition(self, job_id: int, to: JobState,
                   mutate: Callable[[Job], None] | None = None) -> Job:
        try:
            return super().transition(job_id, to, mutate)
        except FailedPrecondition:
            stored = self.get(job_id)
            if stored.state == to and to.is_terminal:
                return stored  # written before the outage swallowed the reply
            raise
        except Outage as exc:
            raise unrecorded(exc, job_id, to) from None


# -- input rows, read again after an outage -------------------------------------------------
class ResumableRows:
    """Rows of `inputs` from row `start` on, `read` a batch at a time. A storage error that
    passes (`storage_outage`) closes the reader; the next `read` opens the inputs again at the
    first row not yet returned, so a bucket that was away costs no row and repeats none."""

    def __init__(self, open_rows: Callable[[int], Generator[Any, None, None]], start: int,
                 where: str) -> None:
        self.open_rows = open_rows
        self.next = start
        self.where = where
        self._rows: Generator[Any, None, None] | None = None

    def read(self, n: int) -> builtins.list[Any]:
        if self._rows is None:
            self._rows = self.open_rows(self.next)
        batch: builtins.list[Any] = []
        try:
            for row in self._rows:
                batch.append(row)
                self.next = row.index + 1
                if len(batch) >= n:
                    break
        except Exception as exc:
            outage = None if isinstance(exc, bounded_io.ReadStopped) else storage_outage(
                self.where, exc)
            if outage is None:
                raise
            self.close()
            if not batch:
                raise outage from exc
        return batch

    def close(self) -> None:
        rows, self._rows = self._rows, None
        if rows is not None:
            try:
                rows.close()
            except ValueError:  # still running in a reader thread
                pass


# -- storage clients' own logging ----------------------------------------------------------
#: Loggers of the storage and store clients: their retries and tracebacks go to DEBUG, one line.
CLIENT_LOGGERS = ("gcsfs", "s3fs", "aiobotocore", "botocore", "urllib3", "google.auth",
                  "google_auth_httplib2", "fsspec", "aiohttp.client", "psycopg")


class _OneLine(logging.Handler):
    """Takes a client logger's records (its children's too) and passes each on as one DEBUG
    line without its traceback: what the user sees is batchpredict's own message."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage().strip().splitlines()
        except Exception:  # a client's malformed log call must not break a job
            text = [str(record.msg)]
        log.debug("%s: %s", record.name, text[0] if text else "")


def quiet_client_loggers() -> None:
    """Route the storage clients' loggers through `_OneLine` (idempotent)."""
    for name in CLIENT_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _OneLine) for h in logger.handlers):
            logger.addHandler(_OneLine())
        logger.propagate = False
