"""`batchpredict run` and a server-created job go through the same job service and the same
scheduler path: for one input they make the same job record and the same output lines, and both
are jobs of the one store that every face lists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from batchpredict.store.sqlite import SQLiteJobStore
from tests.conftest import cli_env, run_cli  # noqa: F401  (fixture)
from tests.server.conftest import ThreadServer, job_body, predictions, server_env

#: The API each came through: `batchpredict run` makes a "cli" job, a Vertex create a "vertex" one.
BY_FACE = {"face"}
#: What differs between two runs of one job by nature: identity, clocks, who and where.
PER_RUN = {"id", "display_name", "project", "create_time", "start_time", "end_time",
           "update_time", "heartbeat", "owner", "output_dir", "runs_in", "fingerprint",
           "output_prefix", "progress_history"}


def comparable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in PER_RUN | BY_FACE}


def without_time(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in line.items() if k != "processed_time"} for line in lines]


def test_cli_run_and_server_create_make_the_same_job(
    server: ThreadServer, make_input, models_file: Path, tmp_path: Path, run_cli  # noqa: F811
) -> None:
    src = make_input(12, extra=[b"not json", {"request": {"contents": []}}])
    via_server = server.wait(server.create(job_body(src, tmp_path / "out-server")))
    done = run_cli("run", src, "--output", str(tmp_path / "out-cli"), "--model", "fast-model",
                   "-q", env={**server_env(models_file), "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr

    store = SQLiteJobStore(Path(server.settings.data_dir) / "jobs.sqlite3")
    server_job = store.get(int(via_server["name"].rsplit("/", 1)[1]))
    [cli_job] = [j for j in store.list() if j.id != server_job.id]
    assert comparable(cli_job.to_record()) == comparable(server_job.to_record())
    assert (cli_job.runs_in.value, server_job.runs_in.value) == ("command", "scheduler")
    assert server_job.counts.succeeded == 12 and server_job.counts.failed == 2

    [cli_predictions] = (tmp_path / "out-cli").glob("prediction-model-*/predictions.jsonl")
    cli_lines = [orjson.loads(x) for x in cli_predictions.read_bytes().splitlines()]
    assert without_time(cli_lines) == without_time(predictions(via_server))

    # one store, one list: the server lists the command's job too (in the project "local")
    listed = server.call("GET", "/v1/batchPredictionJobs").json["batchPredictionJobs"]
    assert {j["name"].rsplit("/", 1)[1] for j in listed} == {str(cli_job.id),
                                                              str(server_job.id)}
