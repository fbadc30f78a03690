"""A local output prefix on a disk that fills up mid-job (a real tmpfs, remounted bigger):
the job waits for space and carries on; past the deadline it fails resumable, and the same
`batchpredict run` command resumes it in the same folder without sending a committed row
to the model again (as does `batchpredict jobs resume ID`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import cli_env, read_predictions
from tests.faults.conftest import (
    CHUNK_ROWS,
    ROWS,
    Command,
    check_every_row_once,
    check_no_row_twice,
    check_no_traceback,
    write_input,
)

pytestmark = pytest.mark.timeout(120)


def job_json(tmp_path: Path, job_id: int = 1) -> dict:
    done = subprocess.run([sys.executable, "-m", "batchpredict", "jobs", "get", str(job_id),
                           "--json"], env=cli_env(tmp_path / "data"), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return orjson.loads(done.stdout)  # type: ignore[no-any-return]


def first_env(tmp_path: Path, model) -> dict[str, str]:
    return cli_env(tmp_path / "data", BATCHPREDICT_MODELS_FILE=str(model.registry))


def committed_rows(out: Path) -> set[int]:
    rows: set[int] = set()
    for chunk in out.glob("prediction-model-*/incremental_predictions/predictions_*.jsonl"):
        rows |= {orjson.loads(line)["key"] for line in chunk.read_bytes().splitlines()}
    return rows


def test_a_full_disk_is_waited_out(tmp_path, model, run_command, small_disk) -> None:
    disk = small_disk("32k")  # two chunks of 20 rows fit, the third does not
    out = disk.path / "out"
    cmd = run_command(write_input(tmp_path / "in.jsonl"), str(out), deadline=60)
    cmd.wait_for_stderr("waiting for")
    assert "No space left" in cmd.stderr
    job = job_json(tmp_path)
    assert job["state"] == "JOB_STATE_RUNNING"
    assert job["progress"]["waitingFor"] == str(next(out.glob("prediction-model-*")))
    assert "No space left" in job["progress"]["waitingReason"]
    assert job["progress"]["waitingSince"]
    disk.grow("4m")
    assert cmd.finish() == 0, cmd.stderr
    check_every_row_once(read_predictions(out))
    check_no_row_twice(model)
    check_no_traceback(cmd.stderr, cmd.out_text)
    assert "is back after" in cmd.stderr
    assert not list(out.glob("*/incremental_predictions"))
    assert f"{ROWS} succeeded, 0 failed, 0 incomplete" in cmd.out_text


@pytest.mark.parametrize("resume_with", ["the same command", "jobs resume"])
def test_past_the_deadline_the_job_resumes(tmp_path, model, run_command, small_disk,
                                           resume_with: str) -> None:
    disk = small_disk("32k")
    out = disk.path / "out"
    src = write_input(tmp_path / "in.jsonl")
    first = run_command(src, str(out), deadline=1)
    assert first.finish() == 1, first.stderr
    check_no_traceback(first.stderr, first.out_text)
    text = " ".join(first.out_text.split())
    assert "FAILED" in text and "No space left" in text and "Gave up after waiting" in text
    assert "batchpredict jobs resume 1" in text
    assert f"resume batchpredict run {src}" in text  # the summary gives the command
    committed = committed_rows(out)
    assert committed and len(committed) % CHUNK_ROWS == 0 and len(committed) < ROWS
    job = job_json(tmp_path)
    assert job["state"] == "JOB_STATE_FAILED" and job["error"]["resumable"] is True
    assert not list(out.glob("*/predictions.jsonl"))  # chunks kept for the resume

    disk.grow("4m")
    if resume_with == "jobs resume":
        again = Command(["jobs", "resume", "1", "-q"], first_env(tmp_path, model))
        assert again.finish() == 0, again.stderr
    else:
        again = run_command(src, str(out), deadline=60)
        assert again.finish() == 0, again.stderr
        assert f"Resuming job 1 ({len(committed)} rows already done)" in again.stderr
    assert f"{ROWS} succeeded, 0 failed, 0 incomplete" in again.out_text
    check_no_traceback(again.stderr, again.out_text)
    assert len(list(out.glob("prediction-model-*"))) == 1  # the same folder, the same job
    check_every_row_once(read_predictions(out))
    check_no_row_twice(model, committed_before=committed)
    job = job_json(tmp_path)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and "error" not in job
    assert job["completionStats"] == {"successfulCount": str(ROWS), "failedCount": "0",
                                      "incompleteCount": "0"}
