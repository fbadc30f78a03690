"""Whole jobs with BigQuery tables, on the real emulator: through the CLI (bq:// -> bq://,
bq:// -> JSONL, JSONL -> bq://, a job SIGKILLed mid-way and resumed), the REST API (with tokens:
one project cannot reach another's tables) and the unmodified google-genai SDK."""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from google.genai import types

from tests.bigquery.conftest import BAD_REQUEST, input_rows
from tests.bigquery.emulator import BigQueryDataset
from tests.conftest import read_predictions, text_request, write_jsonl
from tests.doubles.instant import RESPONSE
from tests.server.conftest import ThreadServer
from tests.server.test_sdk import vertex_client

TABLE_NAME = re.compile(r"predictions_\d{4}_\d\d_\d\dT\d\d_\d\d_\d\d_\d{3}Z")
OUTPUT_COLUMNS = [("key", "STRING"), ("n", "INT64"), ("score", "FLOAT64"), ("day", "DATE"),
                  ("meta", "JSON"), ("request", "JSON"), ("response", "JSON"),
                  ("status", "STRING"), ("processed_time", "TIMESTAMP")]


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "batchpredict", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def predictions_table(bq: BigQueryDataset) -> str:
    found = [t for t in bq.tables() if t.startswith("predictions_")]
    assert len(found) == 1, found
    assert TABLE_NAME.fullmatch(found[0])
    return found[0]


def check_rows(rows: list[dict[str, Any]], n: int, bad: tuple[int, ...] = ()) -> None:
    """The output rows of an input made by `input_rows(n, bad)`: each exactly once, in order."""
    assert [r["key"] for r in rows] == [f"k{i}" for i in range(n)]
    expected = input_rows(n, bad)
    for i, (row, given) in enumerate(zip(rows, expected, strict=True)):
        assert (row["n"], row["score"], row["day"], row["meta"]) == (
            i, i / 2, dt.date(2024, 1, 2), {"i": i})
        assert row["request"] == given["request"]
        assert isinstance(row["processed_time"], dt.datetime)
        if i in bad:
            assert row["status"].startswith('Bad Request: {"error": {"code": 400, "message": '
                                            '"Please use a valid role: user, model.')
            assert row["response"] == {}
        else:
            assert row["status"] == "" and row["response"] == RESPONSE


# -- CLI ------------------------------------------------------------------------------------------
def test_cli_table_to_a_dataset(bq: BigQueryDataset, make_table, bq_env) -> None:
    uri = make_table(5, bad=(1,))
    done = cli(bq_env, "run", uri, "--output", bq.uri, "--model", "fast-model", "-q")
    assert done.returncode == 0, done.stderr
    table = predictions_table(bq)
    assert f"output  {bq.table_uri(table)}" in done.stdout
    assert bq.columns(table) == OUTPUT_COLUMNS
    check_rows(bq.rows(table), 5, bad=(1,))
    shown = cli(bq_env, "jobs", "get", "1")
    assert uri in shown.stdout and bq.table_uri(table) in shown.stdout
    job = orjson.loads(cli(bq_env, "jobs", "get", "1", "--json").stdout)
    assert job["inputConfig"] == {"instancesFormat": "bigquery",
                                  "bigquerySource": {"inputUri": uri}}
    assert job["outputConfig"] == {"predictionsFormat": "bigquery",
                                   "bigqueryDestination": {"outputUri": bq.uri}}
    assert job["outputInfo"] == {"bigqueryOutputDataset": bq.uri, "bigqueryOutputTable": table}
    assert job["completionStats"] == {"successfulCount": "4", "failedCount": "1",
                                      "incompleteCount": "0"}


def test_cli_table_to_local_jsonl(make_table, bq_env, tmp_path: Path) -> None:
    done = cli(bq_env, "run", make_table(3, bad=(2,)), "--output", str(tmp_path / "out"),
               "--model", "fast-model", "-q")
    assert done.returncode == 0, done.stderr
    lines = read_predictions(tmp_path / "out")
    assert [line["key"] for line in lines] == ["k0", "k1", "k2"]
    assert {k: lines[1][k] for k in ("n", "score", "day", "meta")} == {
        "n": 1, "score": 0.5, "day": "2024-01-02", "meta": {"i": 1}}
    assert lines[0]["response"] == RESPONSE and lines[2]["request"] == BAD_REQUEST
    assert "valid role" in lines[2]["status"]


def test_cli_jsonl_to_a_named_table(bq: BigQueryDataset, bq_env, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [
        {"key": "a", "request": text_request("hi")},
        b"{not json",
        {"custom_id": 7, "request": text_request("ho")},
    ])
    done = cli(bq_env, "run", str(src), "--output", bq.table_uri("results"), "--model",
               "fast-model", "-q")
    assert done.returncode == 0, done.stderr
    assert bq.columns("results") == [("key", "JSON"), ("custom_id", "JSON"), ("request", "JSON"),
                                     ("response", "JSON"), ("status", "STRING"),
                                     ("processed_time", "TIMESTAMP")]
    rows = bq.rows("results")
    assert [(r["key"], r["custom_id"]) for r in rows] == [("a", None), (None, None), (None, 7)]
    assert rows[0]["response"] == RESPONSE and rows[2]["status"] == ""
    assert "Line 2 of" in rows[1]["status"] and "is not valid JSON" in rows[1]["status"]
    again = cli(bq_env, "run", str(src), "--output", bq.table_uri("results"), "--model",
                "fast-model", "--display-name", "another")
    assert again.returncode != 0  # the job is done, so this is a new job: refused at create
    assert f"The output table {bq.table_uri('results')} already exists" in again.stderr


def test_cli_refused_column_and_missing_table(bq: BigQueryDataset, bq_env) -> None:
    uri = bq.create_table("dt", [("request", "JSON"), ("at", "DATETIME")])
    done = cli(bq_env, "run", uri, "--output", bq.uri, "--model", "fast-model", "-q")
    assert done.returncode != 0
    assert f"Column 'at' of the input table {uri} has type DATETIME" in done.stderr
    done = cli(bq_env, "run", bq.table_uri("nope"), "--output", bq.uri, "--model", "fast-model")
    assert done.returncode != 0
    assert f"The BigQuery input table {bq.table_uri('nope')} does not exist" in done.stderr
    assert not [t for t in bq.tables() if t.startswith("predictions_")]
    assert "Created job" not in done.stderr  # refused at create: no job


def staged_chunks(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("outputs/local/bigquery/prediction-model-*/"
                                "incremental_predictions/predictions_*.jsonl"))


def test_sigkill_mid_job_then_rerun_publishes_every_row_once(
    bq: BigQueryDataset, make_table, bq_env, tmp_path: Path
) -> None:
    rows = 30
    cmd = [sys.executable, "-m", "batchpredict", "run", make_table(rows), "--output", bq.uri,
           "--model", "slow-model", "--chunk-rows", "2", "--chunk-seconds", "600", "-q"]
    proc = subprocess.Popen(cmd, env=bq_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # the driver publishes chunks as it commits them, a moment after a worker staged them
    while len(staged_chunks(tmp_path / "data")) < 5:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no chunks were staged"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    table = predictions_table(bq)
    before = len(bq.rows(table))
    assert 4 <= before < rows  # chunks 1 and 2 were published before chunk 5 was written
    again = subprocess.run(cmd, env=bq_env, capture_output=True, text=True, timeout=180)
    assert again.returncode == 0, again.stderr
    assert "Resuming job 1" in again.stderr
    assert predictions_table(bq) == table
    check_rows(bq.rows(table), rows)  # every row once, in row order
    assert f"output  {bq.table_uri(table)}" in again.stdout


# -- REST and SDK ---------------------------------------------------------------------------------
def bq_body(source: str, dest: str, model: str = "fast-model") -> dict[str, Any]:
    return {"displayName": "bq job", "model": model,
            "inputConfig": {"instancesFormat": "bigquery", "bigquerySource": {"inputUri": source}},
            "outputConfig": {"predictionsFormat": "bigquery",
                             "bigqueryDestination": {"outputUri": dest}}}


def test_rest_api_table_to_table(server: ThreadServer, bq: BigQueryDataset, make_table) -> None:
    uri = make_table(4, bad=(3,))
    job = server.wait(server.create(bq_body(uri, bq.table_uri("answers"))))
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert job["inputConfig"]["bigquerySource"] == {"inputUri": uri}
    assert job["outputInfo"] == {"bigqueryOutputDataset": bq.uri,
                                 "bigqueryOutputTable": "answers"}
    assert job["completionStats"]["failedCount"] == "1"
    assert job["partialFailures"][0]["message"].startswith("Output line 4: Please use a valid")
    check_rows(bq.rows("answers"), 4, bad=(3,))


def test_rest_api_refuses_bad_tables_at_create(server: ThreadServer, bq: BigQueryDataset,
                                               make_table) -> None:
    path = server.jobs_path()
    reply = server.call("POST", path, bq_body(bq.table_uri("nope"), bq.uri))
    assert reply.status == 404
    assert reply.json["error"]["message"].startswith(
        f"The BigQuery input table {bq.table_uri('nope')} does not exist.")
    geo = bq.create_table("geo", [("request", "JSON"), ("place", "GEOGRAPHY")])
    reply = server.call("POST", path, bq_body(geo, bq.uri))
    assert reply.status == 400
    assert reply.json["error"]["message"].startswith(
        f"Column 'place' of the input table {geo} has type GEOGRAPHY")
    reply = server.call("POST", path, bq_body(make_table(1), geo))  # an existing output table
    assert reply.status == 409 and "already exists" in reply.json["error"]["message"]
    reply = server.call("POST", path, bq_body(make_table(1), "bq://test-project.no_such"))
    assert reply.status == 404 and "dataset bq://test-project.no_such does not exist" in (
        reply.json["error"]["message"])
    reply = server.call("POST", path, bq_body(geo, "bq://only-a-project"))
    assert reply.status == 400 and "bq://PROJECT.DATASET" in reply.json["error"]["message"]
    assert server.call("GET", path).json == {"batchPredictionJobs": []}


def test_sdk_src_and_dest_bq(server: ThreadServer, bq: BigQueryDataset, make_table) -> None:
    client = vertex_client(server)
    uri = make_table(3)
    job = client.batches.create(model="fast-model", src=uri,
                                config=types.CreateBatchJobConfig(dest=bq.uri))
    assert job.src and job.src.bigquery_uri == uri and job.src.format == "bigquery"
    assert job.dest and job.dest.bigquery_uri == bq.uri
    deadline = time.monotonic() + 60
    while job.state not in (types.JobState.JOB_STATE_SUCCEEDED, types.JobState.JOB_STATE_FAILED):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.batches.get(name=job.name or "")
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED, job.error
    check_rows(bq.rows(predictions_table(bq)), 3)


def test_a_project_cannot_reach_another_projects_tables(
    start_server, bq: BigQueryDataset, make_table, tmp_path: Path
) -> None:
    other = bq.emulator.dataset()  # team-b's dataset
    projects = tmp_path / "projects.toml"
    projects.write_text(f'[projects.team-a]\nread = ["{bq.uri}."]\nwrite = ["{bq.uri}"]\n'
                        f'[projects.team-b]\nread = ["{other.uri}"]\nwrite = ["{other.uri}."]\n')
    server = start_server(tokens="tok-a=team-a;tok-b=team-b", projects_file=str(projects))
    a_table = make_table(2)
    b_table = other.create_table("mine", [("request", "JSON")],
                                 [{"request": text_request("b")}])
    a_jobs, b_jobs = server.jobs_path("team-a"), server.jobs_path("team-b")

    def create(token: str, path: str, src: str, dest: str) -> Any:
        return server.call("POST", path, bq_body(src, dest), token=token)

    for src, dest in ((a_table, other.uri), (b_table, bq.uri),
                      (b_table, bq.table_uri("stolen"))):
        reply = create("tok-b", b_jobs, src, dest)
        assert reply.status == 403, reply
        assert "Project team-b may not" in reply.json["error"]["message"]
    reply = create("tok-a", a_jobs, a_table, bq.uri + "_old")  # a prefix is a whole dataset
    assert reply.status == 403, reply
    assert server.call("GET", b_jobs, token="tok-b").json == {"batchPredictionJobs": []}
    done = server.wait(create("tok-b", b_jobs, b_table, other.table_uri("out")).json,
                       token="tok-b")
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    assert [r["status"] for r in other.rows("out")] == [""]
    done = server.wait(create("tok-a", a_jobs, a_table, bq.uri).json, token="tok-a")
    assert done["state"] == "JOB_STATE_SUCCEEDED", done
    check_rows(bq.rows(predictions_table(bq)), 2)
