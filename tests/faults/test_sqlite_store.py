"""The SQLite job store made unwritable under a running `batchpredict run` (its files made
immutable with chattr: even root cannot write them, and SQLite answers "disk I/O error", as on a
failing disk): the job waits for the store and carries on; past the deadline the command says so
in one line, and running it again resumes the job."""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import read_predictions
from tests.faults.conftest import (
    check_every_row_once,
    check_no_row_twice,
    check_no_traceback,
    wait_until,
    write_input,
)

pytestmark = pytest.mark.timeout(120)


def chunks(out: Path) -> list[Path]:
    return list(out.glob("prediction-model-*/incremental_predictions/predictions_*.jsonl"))


@contextlib.contextmanager
def immutable(data_dir: Path) -> Iterator[None]:
    """The store's database file and its write-ahead log immutable for the block (not its
    shared-memory index: SQLite maps that file, and a process touching a mapped page that cannot
    grow dies of SIGBUS, whatever it does)."""
    files = [str(data_dir / "jobs.sqlite3"), str(data_dir / "jobs.sqlite3-wal")]
    done = subprocess.run(["chattr", "+i", *files], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not possible here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


def test_an_unwritable_store_is_waited_out(tmp_path, model, run_command) -> None:
    out = tmp_path / "out"
    cmd = run_command(write_input(tmp_path / "in.jsonl"), str(out), deadline=60)
    wait_until(lambda: len(chunks(out)) >= 2, 60, "two chunks")
    with immutable(tmp_path / "data"):
        cmd.wait_for_stderr("waiting for the job store")
        time.sleep(3)
    assert cmd.finish() == 0, cmd.stderr
    assert "disk I/O error" in cmd.stderr and "is back after" in cmd.stderr
    check_no_traceback(cmd.stderr, cmd.out_text)
    check_every_row_once(read_predictions(out))
    check_no_row_twice(model)


def test_past_the_deadline_one_line_then_the_rerun_resumes(tmp_path, model, run_command) -> None:
    out = tmp_path / "out"
    src = write_input(tmp_path / "in.jsonl")
    cmd = run_command(src, str(out), deadline=2)
    wait_until(lambda: len(chunks(out)) >= 2, 60, "two chunks")
    with immutable(tmp_path / "data"):
        code = cmd.finish()
    assert code == 5, cmd.stderr  # unavailable
    check_no_traceback(cmd.stderr, cmd.out_text)
    errors = [line for line in cmd.err_lines if line.startswith("Error:")]
    assert len(errors) == 1, cmd.stderr
    assert "jobs.sqlite3" in errors[0] and "run the same command again" in errors[0]
    committed = {int(line.split(b'"key":')[1].split(b",")[0]) for c in chunks(out)
                 for line in c.read_bytes().splitlines()}

    again = run_command(src, str(out), deadline=60)
    assert again.finish() == 0, again.stderr
    assert "Resuming job 1 (" in again.stderr
    check_no_traceback(again.stderr, again.out_text)
    check_every_row_once(read_predictions(out))
    check_no_row_twice(model, committed_before=committed)
