"""The pieces under the policy: bounded threads, guarded reads, capped local wildcards."""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import pytest

from batchpredict import bounded_io, storage
from batchpredict.bounded_io import GuardedReader, IOPool, ReadGuard, ReadStopped, run_io
from batchpredict.errors import InvalidArgument


async def test_a_pool_runs_at_most_its_threads_at_once() -> None:
    pool = IOPool("test-pool", 3)
    running, most, lock = 0, 0, threading.Lock()

    def work() -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.1)
        with lock:
            running -= 1
        return 1

    assert sum(await asyncio.gather(*(run_io(work, pool=pool) for _ in range(9)))) == 9
    assert most == 3
    with pytest.raises(TimeoutError):
        await run_io(time.sleep, 0.5, pool=pool, timeout=0.05)


def test_guarded_reads_read_what_the_file_holds() -> None:
    data = b"".join(b"line %d " % i + b"x" * (i * 997 % 3000) + b"\n" for i in range(2000))
    data += b"y" * (3 * bounded_io.BLOCK) + b"\nlast"
    plain, guarded = io.BytesIO(data), GuardedReader(io.BytesIO(data), ReadGuard())
    for size in (-1, 10, 5000, bounded_io.BLOCK + 7, -1, 2 * bounded_io.BLOCK, -1):
        assert guarded.readline(size) == plain.readline(size)
    assert guarded.read(123) == plain.read(123)
    assert list(guarded) == list(plain)
    assert GuardedReader(io.BytesIO(data), ReadGuard()).read() == data


def test_guarded_reads_stop_at_a_deadline_a_budget_or_a_stop() -> None:
    endless = io.BytesIO(b"z" * (8 * bounded_io.BLOCK))
    with pytest.raises(ReadStopped) as stop:
        GuardedReader(endless, ReadGuard(max_bytes=2 * bounded_io.BLOCK)).readline()
    assert stop.value.reason == "bytes"
    with pytest.raises(ReadStopped) as stop:
        GuardedReader(io.BytesIO(b"a\n"), ReadGuard(deadline=time.monotonic())).read(1)
    assert stop.value.reason == "deadline"
    flag = threading.Event()
    reader = GuardedReader(io.BytesIO(b"a\nb\n"), ReadGuard(stop=flag))
    assert reader.readline() == b"a\n"
    flag.set()
    with pytest.raises(ReadStopped):
        reader.readline()


def test_local_wildcards_match_what_fsspec_matched(tmp_path: Path) -> None:
    for rel in ("a.jsonl", "b.jsonl", "c.txt", ".hidden.jsonl", "d/e.jsonl", "d/f/g.jsonl",
                "d/f/h.txt", "x1/y.jsonl", "x2/y.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    for pattern in ("*.jsonl", "**/*.jsonl", "d/**/*.jsonl", "x?/y.jsonl", "[ab].jsonl",
                    "d/*/g.jsonl", "**/g.jsonl"):
        base, segments = bounded_io.split_glob(f"{tmp_path}/{pattern}")
        mine = bounded_io.glob_local(base, segments, time.monotonic() + 10, 100, pattern)
        assert mine == storage.expand_inputs([f"{tmp_path}/{pattern}"]), pattern
    with pytest.raises(InvalidArgument, match="whole path segment"):
        bounded_io.glob_local(str(tmp_path), ["a**"], time.monotonic() + 10, 100, "a**")


def test_open_regular_file_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    import os

    from batchpredict.errors import PermissionDenied

    os.mkfifo(tmp_path / "fifo")
    started = time.monotonic()
    for path in (tmp_path / "fifo", Path("/dev/zero"), Path("/proc/self/environ")):
        with pytest.raises(PermissionDenied):
            storage.open_read(str(path))
    assert time.monotonic() - started < 1
