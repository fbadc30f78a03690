"""Nothing a tenant names can hang the server: devices and FIFOs are refused, a job stuck reading
its input still cancels, and get/list answer within a second while hostile calls are in flight."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from batchpredict import bounded_io
from batchpredict import input as job_input
from tests.conftest import text_request, write_jsonl
from tests.security.conftest import Tenants, assert_refused, tenants_setup
from tests.server.conftest import http


def test_devices_and_fifos_are_refused_at_once(tenants: Tenants) -> None:
    t = tenants
    fifo = t.a_in / "pipe.jsonl"
    os.mkfifo(fifo)
    (t.a_in / "zero.jsonl").symlink_to("/dev/zero")
    for uri in ("/dev/zero", "/dev/stdin", "/dev/urandom", str(fifo), str(t.a_in / "zero.jsonl"),
                f"{t.a_in}/*.jsonl", "/proc/self/environ", "/sys/kernel/notes"):
        started = time.monotonic()
        assert_refused(t.create("a", uri, t.a_out), 403)
        assert_refused(t.validate("a", [uri]), 403)
        assert time.monotonic() - started < 5, uri
    assert t.server.call("GET", "/healthz").json["status"] == "ok"


def test_an_input_swapped_for_a_fifo_fails_the_job_not_the_server(tenants: Tenants) -> None:
    """Time passes in PENDING: the scheduler checks again, and the reader opens regular files
    only, without blocking."""
    t = tenants
    many = write_jsonl(t.a_in / "many.jsonl", [{"request": text_request("x")}] * 40)
    blocker = t.create("a", str(many), t.a_out, model="slow-model").json
    path = t.a_in / "later.jsonl"
    write_jsonl(path, [{"request": text_request("x")}])
    queued = t.create("a", str(path), t.a_out).json
    path.unlink()
    os.mkfifo(path)
    job = t.wait("a", queued, timeout=30)
    assert job["state"] == "JOB_STATE_FAILED", job
    assert "not a regular file" in job["error"]["message"]
    assert t.wait("a", blocker)["state"] == "JOB_STATE_SUCCEEDED"


class SlowFile:
    """A reader as slow as a stuck object store: each read takes `delay` seconds."""

    def __init__(self, delay: float, gone: threading.Event) -> None:
        self.delay, self.gone = delay, gone

    def _wait(self) -> None:
        self.gone.wait(self.delay)

    def readline(self, size: int = -1) -> bytes:
        self._wait()
        return b'{"request": {"contents": [{"role": "user", "parts": [{"text": "slow"}]}]}}\n'

    def read(self, size: int = -1) -> bytes:
        self._wait()
        return b"\n"

    def close(self) -> None:
        pass

    def __enter__(self) -> SlowFile:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def test_a_job_stuck_reading_its_input_can_be_cancelled(tenants: Tenants,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    t = tenants
    slow = t.a_in / "slow.jsonl"
    write_jsonl(slow, [{"request": text_request("x")}])
    gone = threading.Event()
    real_open = bounded_io.open_regular_file

    def open_slowly(path: str) -> Any:
        return SlowFile(30, gone) if path == str(slow) else real_open(path)

    monkeypatch.setattr(bounded_io, "open_regular_file", open_slowly)
    monkeypatch.setattr(job_input, "RECOUNT_SECONDS", 0.5)
    try:
        job = t.create("a", str(slow), t.a_out).json
        t.server.wait(job, token="tok-a", until=lambda j: j["state"] == "JOB_STATE_RUNNING")
        time.sleep(0.5)  # the reader is now inside a 30-second read
        started = time.monotonic()
        assert t.call("a", "POST", f"/v1/{job['name']}:cancel", {}).status == 200
        job = t.wait("a", job, timeout=20)
        assert job["state"] == "JOB_STATE_CANCELLED", job
        assert time.monotonic() - started < 15
        listed = t.call("a", "GET", t.jobs("a"))
        assert listed.status == 200
    finally:
        gone.set()


def test_the_server_stays_healthy_under_hostile_calls(tmp_path: Path, start_server: Any) -> None:
    """20 hostile calls in flight (each reading for seconds, or a body that never ends); get and
    list answer within a second all along, and create still works."""
    t = tenants_setup(tmp_path, start_server, storage_call_seconds=4.0,
                      validate_max_bytes=1 << 40, storage_threads=4)
    big = t.a_in / "huge.jsonl"
    with open(big, "wb") as f:  # a sparse file of zeros: no line ends, endless reading
        f.truncate(64 << 30)
    job = t.create("a", str(t.a_in / "in.jsonl"), t.a_out).json
    hostile_done: list[float] = []

    def validate() -> int:
        started = time.monotonic()
        reply = t.validate("a", [str(big)])
        hostile_done.append(time.monotonic() - started)
        return reply.status

    def slow_body() -> int:
        import socket

        with socket.create_connection(("127.0.0.1", t.server.port)) as sock:
            sock.sendall(f"POST {t.jobs('a')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         "Authorization: Bearer tok-a\r\nContent-Type: application/json\r\n"
                         "Content-Length: 1000\r\n\r\n{".encode())
            time.sleep(6)
        return 0

    with ThreadPoolExecutor(20) as pool:
        hostile = [pool.submit(validate) for _ in range(15)]
        hostile += [pool.submit(slow_body) for _ in range(5)]
        time.sleep(0.5)
        slowest = 0.0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for call in (lambda: t.call("a", "GET", t.jobs("a")),
                         lambda: t.call("a", "GET", f"/v1/{job['name']}"),
                         lambda: t.server.call("GET", "/healthz")):
                started = time.monotonic()
                assert call().status == 200
                slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, slowest
        statuses = [f.result(timeout=60) for f in hostile]
    assert statuses[:15] == [200] * 15
    made = t.create("a", str(t.a_in / "in.jsonl"), t.a_out)
    assert made.status == 200, made
    assert t.wait("a", made.json)["state"] == "JOB_STATE_SUCCEEDED"


def test_validation_stops_at_its_limits(tmp_path: Path, start_server: Any) -> None:
    t = tenants_setup(tmp_path, start_server, validate_max_bytes=10_000)
    write_jsonl(t.a_in / "many.jsonl", [{"request": text_request(f"q{i}")} for i in range(2000)])
    report = t.validate("a", [str(t.a_in / "many.jsonl")]).json
    assert report["truncated"] is True and report["stoppedBy"] == "bytes"
    assert 0 < report["rowCount"] < 2000


def test_server_stops_on_sigterm_with_hostile_calls(tmp_path: Path, models_file: Path) -> None:
    """SIGTERM still stops a server that is busy with hostile reads."""
    from tests.server.conftest import ProcessServer, server_env

    data = tmp_path / "data"
    inputs = tmp_path / "in"
    inputs.mkdir()
    big = inputs / "huge.jsonl"
    with open(big, "wb") as f:
        f.truncate(64 << 30)
    server = ProcessServer(data, server_env(models_file, BATCHPREDICT_STORAGE_CALL_SECONDS="30",
                                            BATCHPREDICT_VALIDATE_MAX_BYTES=str(1 << 40)))
    try:
        with ThreadPoolExecutor(4) as pool:
            calls = [pool.submit(http, "POST", server.url + "/batchpredict/v1/inputs:validate",
                                 {"uris": [str(big)]}) for _ in range(4)]
            time.sleep(1)
            started = time.monotonic()
            server.proc.terminate()
            server.proc.wait(20)
            assert time.monotonic() - started < 20
            for call in calls:
                try:
                    call.result(timeout=30)
                except OSError:
                    pass
    finally:
        server.terminate()
