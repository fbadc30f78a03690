"""Storage work that cannot hang the server: its own threads, deadlines, byte caps and a stop flag.

- Threads: `run_io(fn, ..., pool=...)` runs blocking storage work on a bounded pool of daemon
  threads, never on the event loop's default executor that job get/list calls use, so slow or
  hostile storage work cannot starve them (and a thread stuck in a read never blocks shutdown).
  Two pools: `API_POOL` for request handlers (sized by BATCHPREDICT_STORAGE_THREADS) and
  `JOB_POOL` for running jobs.
- Reads: `guard_reads(deadline=, max_bytes=, stop=)` puts a `ReadGuard` in the context; every file
  `storage.open_read` opens under it is wrapped in a `GuardedReader`, which raises `ReadStopped`
  before a read once the deadline has passed, the byte budget is spent or the stop flag is set,
  and never reads more than `BLOCK` bytes in one call. The guard travels with `run_io` (it copies
  the context), so the runner's reader thread stops at its next read when the job is cancelled.
- Wildcards: `glob_local` expands a local pattern folder by folder, checking a deadline and a
  count as it goes (a `/**` over a whole disk is a clear 400, not an hour of work).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import fcntl
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import IO, Any, TypeVar

from batchpredict.errors import InvalidArgument, PermissionDenied

__all__ = [
    "API_POOL",
    "BLOCK",
    "JOB_POOL",
    "GuardedReader",
    "IOPool",
    "ReadGuard",
    "ReadStopped",
    "glob_local",
    "guard_reads",
    "guarded",
    "open_regular_file",
    "run_io",
]

T = TypeVar("T")
#: Most bytes one guarded read asks the underlying file for.
BLOCK = 1024 * 1024
_GLOB_CHARS = "*?["
#: Pseudo-filesystems whose "regular files" are the kernel's (environ, memory maps).
_SYSTEM_DIRS = ("/proc/", "/sys/", "/dev/")


class IOPool:
    """A fixed number of daemon threads taking work from a queue: bounded, and at exit nothing
    waits for a thread stuck in storage."""

    def __init__(self, name: str, threads: int) -> None:
        self.name = name
        self.threads = max(1, threads)
        self._queue: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = (
            queue.SimpleQueue())
        self._started = 0
        self._idle = 0  # threads waiting for work
        self._queued = 0  # work not yet taken by a thread
        self._lock = threading.Lock()

    def resize(self, threads: int) -> None:
        """More threads from now on (a pool never shrinks)."""
        with self._lock:
            self.threads = max(self.threads, threads)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._queued += 1
            if self._queued > self._idle and self._started < self.threads:
                self._started += 1
                threading.Thread(target=self._work, name=f"{self.name}-{self._started}",
                                 daemon=True).start()
            self._queue.put((future, fn))
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            future, fn = self._queue.get()
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)


API_POOL = IOPool("batchpredict-api-io", 8)
JOB_POOL = IOPool("batchpredict-job-io", 16)


async def run_io(fn: Callable[..., T], *args: Any, pool: IOPool = API_POOL,
                 timeout: float | None = None, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` on `pool`, with this context (the read guard) copied. With
    `timeout`, TimeoutError when it runs longer (the thread finishes on its own)."""
    context = contextvars.copy_context()
    future = pool.submit(lambda: context.run(fn, *args, **kwargs))
    wrapped = asyncio.wrap_future(future)
    if timeout is None:
        return await wrapped
    return await asyncio.wait_for(wrapped, timeout)


# -- reads --------------------------------------------------------------------------------------
class ReadStopped(Exception):
    """A guarded read was refused: `reason` is "deadline", "bytes" or "stopped"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ReadGuard:
    #: time.monotonic() after which reads stop.
    deadline: float | None = None
    max_bytes: int | None = None
    stop: threading.Event | None = None
    bytes_read: int = 0

    def check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise ReadStopped("stopped")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise ReadStopped("deadline")
        if self.max_bytes is not None and self.bytes_read >= self.max_bytes:
            raise ReadStopped("bytes")

    def count(self, data: bytes) -> bytes:
        self.bytes_read += len(data)
        return data


_GUARD: contextvars.ContextVar[ReadGuard | None] = contextvars.ContextVar(
    "batchpredict_read_guard", default=None)


def guard_reads(deadline_seconds: float | None = None, max_bytes: int | None = None,
                stop: threading.Event | None = None) -> ReadGuard:
    """Guard every file opened from now on in this context (and the threads `run_io` starts
    from it)."""
    deadline = None if deadline_seconds is None else time.monotonic() + deadline_seconds
    guard = ReadGuard(deadline, max_bytes, stop)
    _GUARD.set(guard)
    return guard


def guarded(f: IO[bytes]) -> IO[bytes]:
    """`f` wrapped in the context's guard, or `f` itself when there is none."""
    guard = _GUARD.get()
    return f if guard is None else GuardedReader(f, guard)  # type: ignore[return-value]


class GuardedReader:
    """A binary reader that asks its guard before every read of at most BLOCK bytes."""

    def __init__(self, f: IO[bytes], guard: ReadGuard) -> None:
        self._f = f
        self._guard = guard

    def read(self, size: int | None = -1) -> bytes:
        guard = self._guard
        if size is not None and 0 <= size <= BLOCK:
            guard.check()
            return guard.count(self._f.read(size))
        parts, left = [], -1 if size is None or size < 0 else size
        while left != 0:
            guard.check()
            block = self._f.read(BLOCK if left < 0 else min(BLOCK, left))
            if not block:
                break
            parts.append(guard.count(block))
            if left > 0:
                left -= len(block)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        guard = self._guard
        parts, left = [], -1 if size is None or size < 0 else size
        while left != 0:
            guard.check()
            piece = self._f.readline(BLOCK if left < 0 else min(BLOCK, left))
            if not piece:
                break
            parts.append(guard.count(piece))
            if piece.endswith(b"\n"):
                break
            if left > 0:
                left -= len(piece)
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line

    def __enter__(self) -> GuardedReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def close(self) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def open_regular_file(path: str) -> IO[bytes]:
    """Open a local file for reading if it is a regular file: the open never blocks (a FIFO
    without a writer would), and devices, FIFOs, sockets and /proc, /sys files are refused
    with PermissionDenied whatever path or symlink led to them."""
    real = os.path.realpath(path)
    if (real + "/").startswith(_SYSTEM_DIRS):
        raise PermissionDenied(f"{path} is under /proc, /sys or /dev: batchpredict never reads "
                               "there.")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(mode):
            raise PermissionDenied(
                f"{path} is not a regular file (a device, FIFO or socket): batchpredict reads "
                "regular files only."
            )
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb", buffering=BLOCK)
    except BaseException:
        os.close(fd)
        raise


# -- wildcards ----------------------------------------------------------------------------------
def has_wildcard(path: str) -> bool:
    return any(c in path for c in _GLOB_CHARS)


def split_glob(path: str) -> tuple[str, list[str]]:
    """(the folder before the first wildcard, the pattern's segments after it)."""
    first = min(path.index(c) for c in _GLOB_CHARS if c in path)
    base = path[:first].rsplit("/", 1)[0] or "/"
    rest = path[len(base):].strip("/")
    return base, [s for s in rest.split("/") if s]


def glob_local(base: str, segments: list[str], deadline: float, max_files: int,
               shown: str) -> list[str]:
    """Files under the folder `base` matching `segments` (`*`, `?`, `[...]` within a name,
    `**` as a whole segment: any depth, symlinked folders not followed), sorted. InvalidArgument
    when more than `max_files` match or the walk outlasts `deadline` (time.monotonic())."""
    for seg in segments:
        if "**" in seg and seg != "**":
            raise InvalidArgument(
                f"The wildcard {shown} is not valid: ** must be a whole path segment "
                "(/dir/**/*.jsonl)."
            )
    found: list[str] = []
    seen = [0]

    def tick() -> None:
        seen[0] += 1
        if seen[0] % 256 == 0 and time.monotonic() >= deadline:
            raise InvalidArgument(
                f"The wildcard {shown} took too long to expand (BATCHPREDICT_STORAGE_CALL_SECONDS)."
                " Use a narrower pattern, e.g. without **, or list the files."
            )

    def entries(folder: str) -> list[os.DirEntry[str]]:
        if time.monotonic() >= deadline:
            seen[0] = 255
            tick()
        try:
            with os.scandir(folder) as it:
                return list(it)
        except OSError:
            return []

    def add(path: str) -> None:
        found.append(path)
        if len(found) > max_files:
            raise InvalidArgument(
                f"The wildcard {shown} matches more than {max_files} files "
                "(BATCHPREDICT_MAX_INPUT_FILES). Use a narrower pattern or merge the files."
            )

    def walk(folder: str, i: int) -> None:
        tick()
        if i == len(segments):  # any file: FIFOs and devices too, for the policy to refuse
            if os.path.lexists(folder) and not os.path.isdir(folder):
                add(folder)
            return
        seg = segments[i]
        if seg == "**":
            walk(folder, i + 1)
            for entry in entries(folder):
                tick()
                if entry.is_dir(follow_symlinks=False):
                    walk(entry.path, i)
            return
        if not has_wildcard(seg):
            nxt = os.path.join(folder, seg)
            if os.path.lexists(nxt):
                walk(nxt, i + 1)
            return
        for entry in entries(folder):
            tick()
            if fnmatchcase(entry.name, seg):
                walk(entry.path, i + 1)

    if os.path.isdir(base):
        walk(base, 0)
    return sorted(set(found))
