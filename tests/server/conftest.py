"""Server test fixtures: a real uvicorn server on a free loopback port, in a thread of this process
(or, for crash tests, `python -m batchpredict serve` in a subprocess).

The model registry used here (`models_file`) names three models:
    slow-*   the test double, one row per call, 0.05 s a call: ~20 rows/s, for timing tests
    fast-*   the test double answering at once
    gemini-* (the built-in entries) the real embedded model
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn

from batchpredict.config import Settings
from batchpredict.server.app import create_app
from tests.conftest import REPO, cli_env, free_port, text_request, write_jsonl
from tests.emulators import gcs, gcs_emulator  # noqa: F401  (fixtures)

MODELS_TOML = """
include_defaults = true

[[models]]
name = "slow-*"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
description = "test double, ~20 rows/s"
options = { delay_seconds = 0.05, batch_size = 1, max_concurrency = 1 }

[[models]]
name = "fast-*"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
options = { batch_size = 16 }
"""

FINISHED = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


class Reply:
    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


def http(method: str, url: str, body: Any = None, token: str | None = None,
         headers: dict[str, str] | None = None, raw: bytes | None = None) -> Reply:
    """One HTTP call with the standard library: what any client would send."""
    import urllib.error
    import urllib.request

    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else (None if body is None else orjson.dumps(body))
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return Reply(r.status, r.read(), dict(r.headers))
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, exc.read(), dict(exc.headers))


class Server:
    """What a test needs of a running server: its URL and JSON calls."""

    url: str

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return http(method, self.url + path, body, **kw)

    def jobs_path(self, project: str = "p", location: str = "us-central1",
                  version: str = "v1") -> str:
        return f"/{version}/projects/{project}/locations/{location}/batchPredictionJobs"

    def create(self, body: dict[str, Any], project: str = "p", **kw: Any) -> dict[str, Any]:
        reply = self.call("POST", self.jobs_path(project), body, **kw)
        assert reply.status == 200, reply
        return reply.json  # type: ignore[no-any-return]

    def get(self, job: dict[str, Any] | str, **kw: Any) -> dict[str, Any]:
        name = job if isinstance(job, str) else job["name"]
        reply = self.call("GET", f"/v1/{name}", **kw)
        assert reply.status == 200, reply
        return reply.json  # type: ignore[no-any-return]

    def wait(self, job: dict[str, Any] | str, until: Callable[[dict[str, Any]], bool] | None = None,
             timeout: float = 60, **kw: Any) -> dict[str, Any]:
        """Poll the job until `until(job)` (default: finished)."""
        until = until or (lambda j: j["state"] in FINISHED)
        deadline = time.monotonic() + timeout
        while True:
            current = self.get(job, **kw)
            if until(current):
                return current
            assert time.monotonic() < deadline, f"gave up waiting; job is {current}"
            time.sleep(0.05)


class ThreadServer(Server):
    """`create_app(settings)` served by uvicorn in a daemon thread of this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive(), "the server thread died while starting"
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Graceful shutdown, as on SIGTERM: runners flush their rows and release their jobs."""
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive(), "the server did not stop"


class ProcessServer(Server):
    """`python -m batchpredict serve` in a subprocess: what SIGKILL can really kill."""

    def __init__(self, data_dir: Path, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}-{time.monotonic_ns()}.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log, "wb")  # closed when the process ends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchpredict", "serve", "--port", str(self.port),
             "--data-dir", str(data_dir), "--log-level", "warning"],
            env={**cli_env(data_dir), **env},
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()}"
            try:
                if http("GET", self.url + "/healthz").status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server did not start: {self.log.read_text()}"
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no flush, no release
        self.proc.wait(10)
        self.log_file.close()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log_file.close()


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS_TOML)
    return path


@pytest.fixture
def make_settings(tmp_path: Path, models_file: Path) -> Callable[..., Settings]:
    """Settings for a fast test server; keyword arguments override them."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            data_dir=str(tmp_path / "data"),
            models_file=str(models_file),
            chunk_rows=5,
            chunk_seconds=0.2,
            poll_seconds=0.05,
            stale_after_seconds=5.0,
            max_running_jobs=1,
        )
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def start_server(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., ThreadServer]]:
    """Start a thread server with settings overrides; stopped at the end of the test."""
    started: list[ThreadServer] = []

    def start(**overrides: Any) -> ThreadServer:
        server = ThreadServer(make_settings(**overrides)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        if server.thread.is_alive():
            server.stop()


@pytest.fixture
def server(start_server: Callable[..., ThreadServer]) -> ThreadServer:
    return start_server()


@pytest.fixture
def make_input(tmp_path: Path) -> Callable[..., str]:
    """Write an input JSONL of `n` keyed text rows (plus any `extra` raw lines); its path."""
    counter = iter(range(1000))

    def make(n: int, extra: list[Any] | None = None, **config: Any) -> str:
        rows: list[Any] = [{"key": i, "request": text_request(f"row {i}", **config)}
                           for i in range(n)]
        path = tmp_path / f"in-{next(counter)}.jsonl"
        return str(write_jsonl(path, rows + list(extra or [])))

    return make


def job_body(inputs: str | list[str], output: str | Path, model: str = "fast-model",
             display_name: str = "test job", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "displayName": display_name,
        "model": model,
        "inputConfig": {"instancesFormat": "jsonl",
                        "gcsSource": {"uris": [inputs] if isinstance(inputs, str) else inputs}},
        "outputConfig": {"predictionsFormat": "jsonl",
                         "gcsDestination": {"outputUriPrefix": str(output)}},
    }
    body.update(extra)
    return body


def predictions(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The lines of a finished job's predictions.jsonl (a local output folder)."""
    folder = Path(job["outputInfo"]["gcsOutputDirectory"])
    return [orjson.loads(line) for line in (folder / "predictions.jsonl").read_bytes().splitlines()]


def stats(job: dict[str, Any]) -> tuple[int, int, int]:
    s = job["completionStats"]
    return int(s["successfulCount"]), int(s["failedCount"]), int(s["incompleteCount"])


def server_env(models_file: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess server with the fast test settings."""
    env = {
        "BATCHPREDICT_MODELS_FILE": str(models_file),
        "BATCHPREDICT_CHUNK_ROWS": "5",
        "BATCHPREDICT_CHUNK_SECONDS": "0.2",
        "BATCHPREDICT_POLL_SECONDS": "0.05",
        "BATCHPREDICT_STALE_AFTER_SECONDS": "5",
    }
    env.update(extra)
    return env
