"""A job killed mid-way (SIGKILL, Ctrl-C) resumes when the same command runs again: one job, one
output directory, every row exactly once, and the rows committed before the stop are not redone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import cli_env, read_predictions, text_request, write_jsonl

pytestmark = pytest.mark.slow

ROWS = 40


@pytest.fixture
def setup(tmp_path: Path) -> dict:
    rows = [{"key": f"r{i}", "request": text_request(f"Say the number {i}.", temperature=0,
                                                     maxOutputTokens=6)} for i in range(ROWS)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\nname = "smollm2-135m"\nbackend = "local"\n'
                      "[models.options]\nbatch_size = 2\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "batchpredict", "run", str(src), "--output", str(out),
           "--chunk-rows", "2", "--chunk-seconds", "600"]
    env = cli_env(tmp_path / "data", BATCHPREDICT_MODELS_FILE=str(models))
    return {"cmd": cmd, "env": env, "out": out}


def chunk_files(out: Path) -> list[Path]:
    return sorted(out.glob("prediction-model-*/incremental_predictions/predictions_*.jsonl"))


def start_and_stop_after_chunks(setup: dict, sig: int, chunks: int = 3) -> subprocess.Popen:
    proc = subprocess.Popen(setup["cmd"], env=setup["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while len(chunk_files(setup["out"])) < chunks:
        assert proc.poll() is None, f"finished before it could be stopped: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no chunks were exported"
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc


def committed_lines(out: Path) -> list[dict]:
    return [orjson.loads(line) for f in chunk_files(out) for line in f.read_bytes().splitlines()]


def finish_and_check(setup: dict, before: list[dict]) -> subprocess.CompletedProcess:
    again = subprocess.run(setup["cmd"], env=setup["env"], capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"Resuming job 1 ({len(before)} rows already done)" in again.stderr
    lines = read_predictions(setup["out"])
    assert [line["key"] for line in lines] == [f"r{i}" for i in range(ROWS)]
    assert all(line["status"] == "" for line in lines)
    # rows committed before the stop are the very same lines, not generated again
    assert lines[: len(before)] == before
    assert len(list(setup["out"].iterdir())) == 1
    listed = subprocess.run([sys.executable, "-m", "batchpredict", "jobs", "list", "--json"],
                            env=setup["env"], capture_output=True, text=True, timeout=60)
    jobs = orjson.loads(listed.stdout)["batchPredictionJobs"]
    assert len(jobs) == 1
    assert jobs[0]["state"] == "JOB_STATE_SUCCEEDED"
    assert jobs[0]["completionStats"] == {
        "successfulCount": str(ROWS), "failedCount": "0", "incompleteCount": "0"}
    return again


def test_sigkill_while_exporting_then_rerun_resumes(setup: dict) -> None:
    proc = start_and_stop_after_chunks(setup, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    before = committed_lines(setup["out"])
    assert 0 < len(before) < ROWS
    assert [line["key"] for line in before] == [f"r{i}" for i in range(len(before))]
    assert not list(setup["out"].glob("*/predictions.jsonl"))
    finish_and_check(setup, before)


def test_ctrl_c_stops_cleanly_then_rerun_resumes(setup: dict) -> None:
    proc = start_and_stop_after_chunks(setup, signal.SIGINT)
    stderr, stdout = proc.stderr.read(), proc.stdout.read()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr + stdout
    done = len(committed_lines(setup["out"]))
    assert "state   INTERRUPTED (resumable: completed rows are kept)" in stdout
    assert f"rows    {done} succeeded, 0 failed, {ROWS - done} not done yet" in stdout
    src, out = setup["cmd"][4], setup["cmd"][6]
    assert (f"resume  batchpredict run {src} --output {out} --chunk-rows 2 --chunk-seconds 600"
            in stdout)
    got = subprocess.run([sys.executable, "-m", "batchpredict", "jobs", "get", "1", "--json"],
                         env=setup["env"], capture_output=True, text=True, timeout=60)
    assert orjson.loads(got.stdout)["state"] == "JOB_STATE_RUNNING"
    before = committed_lines(setup["out"])
    finish_and_check(setup, before)
