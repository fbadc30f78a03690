"""Engine servers that batchpredict starts and watches itself (`backend = "server"`), with real
processes and no mocks: the fault-injecting test double server (`python -m
tests.doubles.openai_server`) as the managed command, and `transformers serve` in
test_transformers_serve.py. Jobs run through the real CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batchpredict.backends.managed import log_file
from batchpredict.backends.registry import ModelRegistry
from batchpredict.config import Settings
from batchpredict.jobs import Job
from batchpredict.schema import parse_request
from batchpredict.store import open_store
from tests.backends.conftest import summary_counts, transformers_cli, write_registry
from tests.conftest import cli_env, read_predictions, text_request, write_jsonl

DOUBLE = [sys.executable, "-m", "tests.doubles.openai_server", "--port", "{port}"]
FAST = {"health_url": "http://127.0.0.1:{port}/health", "startup_seconds": 30,
        "stop_seconds": 5, "backoff_initial": 0.05, "backoff_max": 0.2}


# -- helpers ------------------------------------------------------------------------------------
def server_pids(log: Path) -> list[int]:
    """The pid of each process batchpredict started, from the markers in the server's log."""
    text = log.read_text() if log.exists() else ""
    return [int(p) for p in re.findall(r"^--- batchpredict [\d-]+ [\d:]+: pid (\d+)$", text, re.M)]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def stop_all(job: subprocess.Popen[str], log: Path) -> None:
    """After a failed test: stop the job as Ctrl-C would (it stops its server), then make sure."""
    if job.poll() is None:
        job.send_signal(signal.SIGINT)
        try:
            job.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            job.kill()
            job.communicate()
    for pid in server_pids(log):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def only_job(data_dir: Path) -> Job:
    [job] = open_store(Settings(data_dir=str(data_dir))).list()
    return job


def run_args(src: Path, out: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "batchpredict", "run", str(src), "--output", str(out),
            "--model", model, "-q"]


# -- a whole job survives a crash of its server ------------------------------------------------
def test_a_server_killed_mid_job_is_restarted_and_every_row_is_written_once(
    tmp_path: Path, data_dir: Path
) -> None:
    registry = write_registry(tmp_path / "models.toml", {
        "name": "echo-managed", "backend": "server", "command": [*DOUBLE, "--latency", "0.1"],
        "concurrency": 4, "retries": 1, "timeout": 10, **FAST,
    })
    rows = [{"key": i, "request": text_request(f"row {i}")} for i in range(120)]
    out = tmp_path / "out"
    env = cli_env(data_dir, BATCHPREDICT_MODELS_FILE=str(registry),
                  BATCHPREDICT_CHUNK_ROWS="4", BATCHPREDICT_POLL_SECONDS="0.05")
    job = subprocess.Popen(run_args(write_jsonl(tmp_path / "in.jsonl", rows), out, "echo-managed"),
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = log_file(data_dir, "echo-managed")
    try:
        [first] = wait_for("the server to start", lambda: server_pids(log))
        # mid-job: some rows are committed, most are not
        wait_for("a committed chunk", lambda: list(out.glob("*/incremental_predictions/*")))
        subprocess.run(["kill", "-KILL", str(first)], check=True)
        stdout, stderr = job.communicate(timeout=120)
    finally:
        stop_all(job, log)
    assert job.returncode == 0, stderr + stdout
    assert summary_counts(stdout) == (120, 0, 0)
    lines = read_predictions(out)
    assert [line["key"] for line in lines] == list(range(120))  # each once, in order
    for line in lines:
        text = line["request"]["contents"][0]["parts"][0]["text"]
        assert line["response"]["candidates"][0]["content"]["parts"][0]["text"] == f"echo: {text}"
        assert line["response"]["modelVersion"] == "test-double"  # the id /v1/models listed
    first_, second = server_pids(log)
    assert first_ == first
    text = log.read_text()
    assert f"pid {first} ended (replaced): signal SIGKILL" in text
    assert f"pid {second} ended (shutdown)" in text
    assert group_members(first) == [] and group_members(second) == []


SECOND_START_FAILS = (
    "import os, runpy, sys\n"
    "marker, port = sys.argv[1:]\n"
    "if os.path.exists(marker):\n"
    "    sys.exit('refusing to start again: GPU still busy (pretend)')\n"
    "open(marker, 'w').close()\n"
    "sys.argv = ['openai_server', '--port', port, '--latency', '0.1']\n"
    "runpy.run_module('tests.doubles.openai_server', run_name='__main__')\n"
)


def test_a_server_that_cannot_restart_fails_the_remaining_rows_once_each(
    tmp_path: Path, data_dir: Path
) -> None:
    """No restart storm and no hang: one failed restart is remembered for the rest of the job."""
    registry = write_registry(tmp_path / "models.toml", {
        "name": "fragile", "backend": "server",
        "command": [sys.executable, "-c", SECOND_START_FAILS, str(tmp_path / "started"),
                    "{port}"],
        "concurrency": 4, "retries": 3, "timeout": 10, **FAST,
    })
    rows = [{"key": i, "request": text_request(f"row {i}")} for i in range(80)]
    out = tmp_path / "out"
    env = cli_env(data_dir, BATCHPREDICT_MODELS_FILE=str(registry),
                  BATCHPREDICT_CHUNK_ROWS="4", BATCHPREDICT_POLL_SECONDS="0.05")
    job = subprocess.Popen(run_args(write_jsonl(tmp_path / "in.jsonl", rows), out, "fragile"),
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = log_file(data_dir, "fragile")
    try:
        [first] = wait_for("the server to start", lambda: server_pids(log))
        wait_for("a committed chunk", lambda: list(out.glob("*/incremental_predictions/*")))
        subprocess.run(["kill", "-KILL", str(first)], check=True)
        stdout, stderr = job.communicate(timeout=60)
    finally:
        stop_all(job, log)
    lines = read_predictions(out)
    assert [line["key"] for line in lines] == list(range(80))
    ok = [line for line in lines if line["status"] == ""]
    failed = [line for line in lines if line["status"] != ""]
    assert ok and failed, stdout + stderr
    assert summary_counts(stdout) == (len(ok), len(failed), 0)
    for line in failed:
        assert line["status"].startswith("Service Unavailable: ")
        assert "refusing to start again: GPU still busy (pretend)" in line["status"]
    assert log.read_text().count(": starting `") == 2  # the crashed one, one failed restart
    assert all(group_members(pid) == [] for pid in server_pids(log))


# -- servers that cannot start fail the job, quoting their log ---------------------------------
CRASH = ("import sys; print('loading weights', flush=True); "
         "print('RuntimeError: CUDA out of memory (pretend)', file=sys.stderr); sys.exit(3)")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([sys.executable, "-c", CRASH, "{port}"],
         ["exited with exit code 3 before http://127.0.0.1:", "loading weights",
          "RuntimeError: CUDA out of memory (pretend)"]),
        (["/nonexistent/engine", "serve", "--port", "{port}"],
         ["could not be started ([Errno 2] No such file or directory", "could not start:"]),
    ],
    ids=["exits-at-once", "not-installed"],
)
def test_a_server_that_cannot_start_fails_the_job_with_its_log_tail(
    run_cli, tmp_path: Path, data_dir: Path, command: list[str], expected: list[str]
) -> None:
    registry = write_registry(tmp_path / "models.toml", {
        "name": "broken", "backend": "server", "command": command, **FAST})
    src = write_jsonl(tmp_path / "in.jsonl", [{"request": text_request("hi")}])
    done = run_cli("run", str(src), "--output", str(tmp_path / "out"), "--model", "broken", "-q",
                   env={"BATCHPREDICT_MODELS_FILE": str(registry)}, timeout=60)
    assert done.returncode == 1, done.stderr + done.stdout
    assert "FAILED" in done.stdout
    job = only_job(data_dir)
    assert job.state.value == "JOB_STATE_FAILED"
    message = job.error["message"]
    assert message.startswith("The engine server of model entry 'broken' ")
    assert f"Last lines of its log ({log_file(data_dir, 'broken')})" in message
    for text in expected:
        assert text in message


def test_a_server_that_never_becomes_healthy_fails_the_job_after_the_deadline(
    run_cli, tmp_path: Path, data_dir: Path
) -> None:
    sleeper = ("import sys, time; print('warming up on port', sys.argv[1], flush=True); "
               "time.sleep(120)")
    registry = write_registry(tmp_path / "models.toml", {
        "name": "sleepy", "backend": "server", "command": [sys.executable, "-c", sleeper, "{port}"],
        **FAST, "startup_seconds": 1.5, "stop_seconds": 2,
    })
    src = write_jsonl(tmp_path / "in.jsonl", [{"request": text_request("hi")}])
    started = time.monotonic()
    done = run_cli("run", str(src), "--output", str(tmp_path / "out"), "--model", "sleepy", "-q",
                   env={"BATCHPREDICT_MODELS_FILE": str(registry)}, timeout=60)
    assert done.returncode == 1, done.stderr + done.stdout
    assert time.monotonic() - started < 30
    message = only_job(data_dir).error["message"]
    assert "did not answer http://127.0.0.1:" in message
    assert "within startup_seconds = 1.5 s, so it was stopped" in message
    assert "warming up on port" in message
    [pid] = server_pids(log_file(data_dir, "sleepy"))
    assert group_members(pid) == []  # SIGTERM'd at the deadline


# -- idle stop, lazy restart, shutdown -------------------------------------------------------
async def test_an_idle_server_stops_and_starts_again_when_a_request_needs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[2]))
    reg = ModelRegistry.load(str(write_registry(tmp_path / "models.toml", {
        "name": "echo", "backend": "server", "command": DOUBLE, "idle_seconds": 1, **FAST,
    })), data_dir=str(tmp_path))
    request = parse_request(text_request("hello"))
    try:
        backend: Any = await reg.backend_for("echo")
        server = backend.server
        [answer] = await backend.generate([request])
        assert answer["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello"
        first = server.proc.pid
        for _ in range(100):  # idle for 1 s: stopped within the next watch tick
            if server.proc is None:
                break
            await asyncio.sleep(0.1)
        assert server.proc is None and group_members(first) == []
        [answer] = await backend.generate([request])  # started again for this request
        assert answer["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello"
        assert server.starts == 2
        second = server.proc.pid
        assert await reg.backend_for("echo") is backend and server.starts == 2
    finally:
        await reg.close()
    assert group_members(second) == []
    assert "ended (idle)" in server.log_path.read_text()


# -- a real engine: `transformers serve`, started, killed and stopped by batchpredict -----------
@pytest.mark.slow
def test_transformers_serve_managed_by_batchpredict_survives_a_kill(
    tmp_path: Path, data_dir: Path
) -> None:
    """The embedded model's converted folder served offline on CPU: a whole job with the
    server's real text and token counts, a SIGKILL after its first answers, every row once."""
    from batchpredict.backends.embedded_model import prepare_embedded_model

    folder = str(prepare_embedded_model())
    registry = write_registry(tmp_path / "models.toml", {
        "name": "smollm-managed", "backend": "server",
        "command": [transformers_cli(), "serve", folder, "--host", "127.0.0.1", "--port",
                    "{port}", "--device", "cpu"],
        "env": {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
        "startup_seconds": 180, "stop_seconds": 10, "concurrency": 2, "timeout": 240,
        "retries": 2,
    })
    rows = [{"key": i, "request": text_request(f"Count to {i}.", temperature=0,
                                                maxOutputTokens=4)} for i in range(12)]
    out = tmp_path / "out"
    env = cli_env(data_dir, BATCHPREDICT_MODELS_FILE=str(registry))
    job = subprocess.Popen(
        run_args(write_jsonl(tmp_path / "in.jsonl", rows), out, "smollm-managed"),
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    log = log_file(data_dir, "smollm-managed")
    answered = '"POST /v1/chat/completions HTTP/1.1" 200'
    try:
        [first] = wait_for("the server to start", lambda: server_pids(log), timeout=120)
        wait_for("its first answers", lambda: log.read_text().count(answered) >= 2, timeout=240)
        subprocess.run(["kill", "-KILL", str(first)], check=True)
        stdout, stderr = job.communicate(timeout=400)
    finally:
        stop_all(job, log)
    assert job.returncode == 0, stderr + stdout
    assert summary_counts(stdout) == (12, 0, 0)
    lines = read_predictions(out)
    assert [line["key"] for line in lines] == list(range(12))
    for line in lines:
        response = line["response"]
        assert response["modelVersion"] == folder  # the id the server listed and answered with
        assert response["candidates"][0]["content"]["parts"][0]["text"].strip()
        usage = response["usageMetadata"]
        assert usage["promptTokenCount"] > 5 and 0 < usage["candidatesTokenCount"] <= 4
    assert server_pids(log)[0] == first
    [second] = server_pids(log)[1:]
    text = log.read_text()
    assert f"pid {first} ended (replaced): signal SIGKILL" in text
    assert f"pid {second} ended (shutdown)" in text
    assert group_members(first) == [] and group_members(second) == []
