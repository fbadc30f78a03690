"""Whole jobs through the CLI against the fault-injecting test-double server: every row ends with
a response or a clear error, nothing is lost or doubled, and the job's counts match the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson

from tests.backends.conftest import summary_counts, write_registry
from tests.conftest import read_predictions, text_request, write_jsonl
from tests.doubles.openai_server import TestDoubleServer

FAST_RETRY = {"backoff_initial": 0.01, "backoff_max": 0.05, "timeout": 0.5}


def run_job(run_cli, tmp_path: Path, url: str, rows: list[dict], **settings: Any) -> Any:
    registry = write_registry(tmp_path / "models.toml", {
        "name": "echo-*", "backend": "openai", "base_url": url + "/v1", "concurrency": 16,
        **FAST_RETRY, **settings,
    })
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out"
    done = run_cli("run", str(src), "--output", str(out), "--model", "echo-small", "-q",
                   env={"BATCHPREDICT_MODELS_FILE": str(registry)}, timeout=120)
    return done, out


def check_every_row_once(lines: list[dict], rows: list[dict], done: Any) -> None:
    assert [line["key"] for line in lines] == [row["key"] for row in rows]
    ok = [line for line in lines if line["status"] == ""]
    bad = [line for line in lines if line["status"] != ""]
    assert summary_counts(done.stdout) == (len(ok), len(bad), 0)
    for line in ok:
        text = line["request"]["contents"][0]["parts"][0]["text"]
        assert line["response"]["candidates"][0]["content"]["parts"][0]["text"] == f"echo: {text}"
    for line in bad:
        assert line["response"] == {}


def status_body(status: str) -> dict:
    return json.loads(status.split(": ", 1)[1])


def test_faults_are_retried_until_every_row_succeeds(run_cli, tmp_path, serve_double) -> None:
    server = TestDoubleServer(latency=0.005, fault_rate=0.4, seed=11, hang_seconds=2,
                              max_faults_per_request=2, retry_after=0.02)
    url = serve_double(server)
    rows = [{"key": i, "request": text_request(f"row {i}")} for i in range(150)]
    done, out = run_job(run_cli, tmp_path, url, rows, retries=3)
    assert done.returncode == 0, done.stderr
    lines = read_predictions(out)
    check_every_row_once(lines, rows, done)
    assert all(line["status"] == "" for line in lines)
    injected = {k: v for k, v in server.outcomes.items() if k != "ok"}
    assert set(injected) == {"429", "500", "503", "timeout", "drop"}, server.outcomes
    assert server.outcomes["ok"] == 150


def test_when_retries_run_out_rows_say_why_in_vertex_form(run_cli, tmp_path, serve_double) -> None:
    server = TestDoubleServer(latency=0.002, fault_rate=0.5, seed=3, hang_seconds=2,
                              max_faults_per_request=0, retry_after=0.01, record=True)
    url = serve_double(server)
    rows = [{"key": i, "request": text_request(f"row {i}")} for i in range(120)]
    rows[5]["request"] = text_request("always [fault:500]")
    rows[6]["request"] = text_request("always [fault:429]")
    rows[7]["request"] = text_request("always [fault:503]")
    rows[8]["request"] = text_request("refused [fault:400]")
    rows[9] = {"key": 9, "request": {"contents": [{"role": "robot", "parts": [{"text": "x"}]}]}}
    done, out = run_job(run_cli, tmp_path, url, rows, retries=1)
    assert done.returncode == 0, done.stderr  # partly failed jobs still SUCCEED, as on Vertex
    lines = read_predictions(out)
    check_every_row_once(lines, rows, done)
    by_key = {line["key"]: line["status"] for line in lines}

    assert by_key[5].startswith("Internal Server Error: ")
    assert status_body(by_key[5])["error"]["code"] == 500
    assert "after 2 attempts: The server had an error." in by_key[5]
    assert by_key[6].startswith('Too Many Requests: {"error": {"code": 429')
    assert status_body(by_key[6])["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert by_key[7].startswith("Service Unavailable: ")
    assert by_key[8] == ('Bad Request: {"error": {"code": 400, "message": "Injected error 400.", '
                         '"status": "INVALID_ARGUMENT"}}')
    assert by_key[9].startswith("Bad Request: ") and "valid role" in by_key[9]
    sent = [body["messages"][0]["content"] for _, _, body in server.received]
    assert sent.count("refused [fault:400]") == 1  # a client error is not retried
    assert sent.count("always [fault:500]") == 2  # first attempt + 1 retry
    assert "x" not in sent  # an invalid row never reaches the server

    # Random faults that outlast the retries end as timeouts, drops, 429s or 5xx, all explained.
    others = [s for k, s in by_key.items() if k >= 10 and s]
    assert others, "with 50% faults and 1 retry some rows must fail"
    phrases = {s.split(":", 1)[0] for s in others}
    assert phrases <= {"Too Many Requests", "Internal Server Error", "Service Unavailable",
                       "Gateway Timeout"}, phrases
    drops = [s for s in others if "ServerDisconnectedError" in s]
    timeouts = [s for s in others if s.startswith("Gateway Timeout")]
    assert drops and timeouts
    assert all("DEADLINE_EXCEEDED" in s and "No answer within 0.5 s" in s for s in timeouts)

    job = orjson.loads(run_cli("jobs", "get", "1", "--json").stdout)
    stats = job["completionStats"]
    assert int(stats["successfulCount"]) == sum(1 for s in by_key.values() if s == "")
    assert int(stats["failedCount"]) == sum(1 for s in by_key.values() if s != "")
    assert stats["incompleteCount"] == "0"
