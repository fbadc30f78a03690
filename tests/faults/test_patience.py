"""The parts of outage handling that need no real fault: which errors pass, the retry loop and
its deadline, the patient store, input rows read again, the resumable transition, and the
storage clients' loggers kept quiet."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from batchpredict import outages
from batchpredict.errors import FailedPrecondition, Outage
from batchpredict.jobs import Job, JobState, transition_allowed
from batchpredict.server.vertex.resource import job_from_resource, job_resource
from batchpredict.store.sqlite import SQLiteJobStore

S = JobState


class ClientConnectorError(Exception):
    """Named like aiohttp's: storage clients' errors are recognised by class name."""


class HttpError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.code = code


@pytest.mark.parametrize(("exc", "passes"), [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True),
    (ClientConnectorError("Cannot connect to host 127.0.0.1:9"), True),
    (HttpError(503), True),
    (HttpError(429), True),
    (HttpError(404), False),
    (FileNotFoundError("gs://b/x"), False),
    (PermissionError(errno.EACCES, "denied"), False),
    (ValueError("Bad Request"), False),
])
def test_which_storage_errors_pass(exc: Exception, passes: bool) -> None:
    outage = outages.storage_outage("gs://b/out/x.jsonl", exc)
    assert (outage is not None) == passes
    if outage is not None:
        assert outage.resource == "gs://b/out/x.jsonl"
        assert "gs://b/out/x.jsonl" in outage.message and "\n" not in outage.message


def test_a_cause_decides_and_a_full_disk_says_so() -> None:
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("write failed") from inner
    except RuntimeError as exc:
        outage = outages.storage_outage("/mnt/out", exc)
    assert outage is not None and outage.message.startswith("No space left to write /mnt/out")


def failing(times: int, resource: str = "gs://b/out") -> Any:
    calls = {"n": 0}

    def call() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise Outage(f"{resource} cannot be reached", resource=resource)
        return "ok"

    return call, calls


def test_retries_until_it_works_and_says_what_it_waits_for() -> None:
    seen: list[outages.Waiting | None] = []
    patience = outages.Patience(5, seen.append, backoff_initial=0.01, backoff_max=0.02)
    call, calls = failing(3)
    assert patience.call_sync(call) == "ok"
    assert calls["n"] == 4
    assert seen[0] is not None and seen[0].resource == "gs://b/out"
    assert str(seen[0]).startswith("waiting for gs://b/out since ")
    assert seen[-1] is None and patience.waiting is None


def test_past_the_deadline_it_gives_up_naming_the_resource_then_at_once() -> None:
    patience = outages.Patience(0.1, backoff_initial=0.02, backoff_max=0.02)
    call, calls = failing(1000)
    with pytest.raises(Outage, match=r"Gave up after waiting 0 s for gs://b/out "
                                     r"\(BATCHPREDICT_OUTAGE_DEADLINE_SECONDS=0.1\)"):
        patience.call_sync(call)
    tried = calls["n"]
    assert 2 <= tried <= 12
    with pytest.raises(Outage, match="Gave up"):  # the job is failing: no second wait
        patience.call_sync(call)
    assert calls["n"] == tried + 1
    ok, _ = failing(0)
    assert patience.call_sync(ok) == "ok"  # back: the next outage gets a whole deadline again


async def test_an_interrupt_stops_the_wait() -> None:
    interrupt = asyncio.Event()
    patience = outages.Patience(60, interrupt=interrupt, backoff_initial=5, backoff_max=5)
    call, _ = failing(1000)
    asyncio.get_running_loop().call_later(0.2, interrupt.set)
    with pytest.raises(Outage):
        await asyncio.wait_for(patience.call(call, resource="gs://b/out"), 3)


def test_a_slow_call_shows_as_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    seen: list[outages.Waiting | None] = []
    patience = outages.Patience(60, seen.append)
    monkeypatch.setattr(patience, "slow_seconds", 0.05)
    assert asyncio.run(patience.call(lambda: time.sleep(0.3) or 1, resource="/mnt/out")) == 1
    assert seen[0] is not None and seen[0].reason == "no answer for 0.05 s"
    assert seen[-1] is None


def test_the_store_through_an_outage_and_a_lost_reply(tmp_path: Path) -> None:
    inner = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    job = inner.create(Job("t", "m", ["/in.jsonl"], "/out", state=S.JOB_STATE_RUNNING))

    class Flaky(SQLiteJobStore):
        """Writes, then loses the reply once; reads fail twice."""
        lost = 1
        down = 2

        def get(self, job_id: int) -> Job:
            if self.down:
                self.down -= 1
                raise Outage("the store is restarting", resource="the job store X")
            return super().get(job_id)

        def _compare_and_set(self, job: Job, expected: JobState, owner: Any) -> bool:
            written = super()._compare_and_set(job, expected, owner)
            if self.lost:
                self.lost -= 1
                raise Outage("connection lost", resource="the job store X")
            return written

    flaky = Flaky(tmp_path / "jobs.sqlite3")
    store = outages.PatientStore(flaky, outages.Patience(5, backoff_initial=0.01))
    done = store.transition(job.id, S.JOB_STATE_SUCCEEDED)
    assert done.state == S.JOB_STATE_SUCCEEDED


def test_failed_runs_again_only_when_resumable(tmp_path: Path) -> None:
    store = SQLiteJobStore(tmp_path / "jobs.sqlite3")
    by_input = store.create(Job("t", "m", ["/in"], "/out", state=S.JOB_STATE_FAILED,
                                error={"code": 3, "message": "All 3 rows failed"},
                                fingerprint="f1"))
    by_disk = store.create(Job("t", "m", ["/in"], "/out", state=S.JOB_STATE_FAILED,
                               error=outages.job_error(Outage("disk full", resource="/o"), 2),
                               fingerprint="f2"))
    assert not transition_allowed(by_input, S.JOB_STATE_RUNNING)
    assert transition_allowed(by_disk, S.JOB_STATE_RUNNING)
    assert by_disk.resumable and "batchpredict jobs resume 2" in by_disk.error["message"]
    with pytest.raises(FailedPrecondition):
        store.transition(by_input.id, S.JOB_STATE_RUNNING)
    assert store.find_by_fingerprint("f1") is None  # a new `run` makes a new job
    assert store.find_by_fingerprint("f2").id == by_disk.id  # type: ignore[union-attr]
    assert store.transition(by_disk.id, S.JOB_STATE_RUNNING).state == S.JOB_STATE_RUNNING


def test_rows_are_read_again_from_where_storage_failed() -> None:
    class R:
        def __init__(self, index: int) -> None:
            self.index = index

    opened: list[int] = []
    fail_at = {5}

    def open_rows(skip: int) -> Any:
        opened.append(skip)
        for i in range(skip, 12):
            if i in fail_at:
                fail_at.discard(i)
                raise ConnectionResetError(errno.ECONNRESET, "reset by peer")
            yield R(i)

    rows = outages.ResumableRows(open_rows, 2, where="gs://b/in.jsonl")
    assert [r.index for r in rows.read(10)] == [2, 3, 4]  # what came before the error
    assert [r.index for r in rows.read(10)] == list(range(5, 12))
    assert rows.read(10) == [] and opened == [2, 5]


def test_a_waiting_job_in_its_resource(tmp_path: Path) -> None:
    job = Job("t", "m", ["/in"], "/out", state=S.JOB_STATE_RUNNING, id=3)
    outages.show_waiting(job, outages.Waiting("gs://b/out", job.create_time, "503"))
    progress = job_resource(job)["progress"]
    assert progress["waitingFor"] == "gs://b/out" and progress["waitingReason"] == "503"
    back = job_from_resource(job_resource(job))
    assert back.waiting_text == job.waiting_text and back.waiting_text.startswith(  # type: ignore[union-attr]
        "waiting for gs://b/out since ")
    outages.show_waiting(job, None)
    assert "waitingFor" not in job_resource(job)["progress"]


SCRIPT = """
import logging, sys
from batchpredict import outages
if sys.argv[1] == "server":  # the server logs through basicConfig; the CLI has no handler
    logging.basicConfig(level="DEBUG", format="%(levelname)s %(name)s: %(message)s")
outages.quiet_client_loggers()
try:
    raise ConnectionRefusedError("refused")
except ConnectionRefusedError:
    logging.getLogger("gcsfs").exception("_request out of retries on exception: x")
    logging.getLogger("botocore.retryhandler").exception("retry needed")
    logging.getLogger("urllib3.connectionpool").warning("Retrying after %s", "reset")
"""


@pytest.mark.parametrize("mode", ["cli", "server"])
def test_storage_clients_print_no_traceback(mode: str) -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "WARNING" not in done.stderr
    if mode == "server":  # at DEBUG, one line each, through our logger
        assert done.stderr.splitlines() == [
            "DEBUG batchpredict.outages: gcsfs: _request out of retries on exception: x",
            "DEBUG batchpredict.outages: botocore.retryhandler: retry needed",
            "DEBUG batchpredict.outages: urllib3.connectionpool: Retrying after reset"]
    else:
        assert done.stderr == ""
