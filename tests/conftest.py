"""Fixtures shared by every test folder: running the real `batchpredict` command."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO = Path(__file__).resolve().parent.parent


def cli_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    env.update(
        PYTHONPATH=str(REPO),
        BATCHPREDICT_DATA_DIR=str(data_dir),
        HF_HUB_OFFLINE="1",
        COLUMNS="200",
        **extra,
    )
    return env


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def run_cli(data_dir: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run `python -m batchpredict ARGS` as a user would; returns the finished process."""

    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 240):
        return subprocess.run(
            [sys.executable, "-m", "batchpredict", *args],
            capture_output=True,
            text=True,
            env={**cli_env(data_dir), **(env or {})},
            timeout=timeout,
        )

    return run


def write_jsonl(path: Path, rows: list[object]) -> Path:
    """Rows as JSONL; a `bytes` or `str` row is written as is (for malformed lines)."""
    with open(path, "wb") as f:
        for row in rows:
            if isinstance(row, bytes):
                f.write(row + b"\n")
            elif isinstance(row, str):
                f.write(row.encode() + b"\n")
            else:
                f.write(orjson.dumps(row) + b"\n")
    return path


def read_predictions(output_prefix: Path) -> list[dict]:
    """The lines of the single predictions.jsonl under an output prefix."""
    files = list(output_prefix.glob("prediction-model-*/predictions.jsonl"))
    assert len(files) == 1, f"expected one predictions.jsonl, found {files}"
    return [orjson.loads(line) for line in files[0].read_bytes().splitlines()]


def text_request(text: str, **config: object) -> dict:
    req: dict = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if config:
        req["generationConfig"] = config
    return req


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL server on loopback (initdb + pg_ctl), for the session."""
    import shutil

    if not shutil.which("initdb") or not shutil.which("pg_ctl"):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    import tempfile

    # not under pytest's tmp dirs: those are private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="batchpredict-pg-"))
    data = root / "data"
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run([*as_postgres, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_postgres, "pg_ctl", "-D", str(data), "-l", str(root / "log"), "-w",
                    "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root}", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_postgres, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


#: Small chunks and quick polls, so each runner test takes well under a second.
FAST = {"chunk_rows": 7, "chunk_seconds": 0.05, "poll_seconds": 0.02}


def job_service(store: Any, backend: Any, tmp_path: Path, **settings: Any) -> Any:
    """The one job service over `store`, every model answered by `backend` (an instance)."""
    from batchpredict.backends.registry import ModelRegistry
    from batchpredict.config import Settings
    from batchpredict.scheduler import Scheduler
    from batchpredict.service import JobService

    st = Settings(data_dir=str(tmp_path / "data"), **{**FAST, **settings})
    registry = ModelRegistry.serving(backend)
    return JobService(store, registry, Scheduler(store, registry, st), st)


async def submit_job(service: Any, inputs: list[str], output: str) -> Any:
    """Submit a job the way `batchpredict run` does (it runs in this process)."""
    from batchpredict.jobs import RunsIn
    from batchpredict.service import JobRequest, Scope

    request = JobRequest("t", "test-double", inputs, output, runs_in=RunsIn.COMMAND)
    return await service.submit(Scope.local(), request)


async def submit_and_run(service: Any, inputs: list[str], output: str) -> Any:
    """Submit a job and run it here through the scheduler, as `batchpredict run` does."""
    job = await submit_job(service, inputs, output)
    return await service.scheduler.run_here(job.id)
