"""The CLI as a new user meets it: the same refusals as the server with documented exit codes,
local cancel and delete, whole model names in tables, and a clear word for a port in use."""

from __future__ import annotations

import socket
from pathlib import Path

import orjson

from batchpredict.cli import EXIT
from tests.conftest import text_request, write_jsonl

FAST_MODELS = ('[[models]]\nname = "a-very-long-model-name-that-would-not-fit-in-eighty-'
               'columns-of-terminal"\nbackend = "python"\n'
               'class = "tests.doubles.instant:InstantTestDouble"\n')


def test_a_missing_input_creates_no_job_and_exits_not_found(run_cli, tmp_path: Path) -> None:
    done = run_cli("run", str(tmp_path / "nope.jsonl"), "--output", str(tmp_path / "out"))
    assert done.returncode == EXIT["not found"] == 3
    assert done.stderr == f"Error: The input {tmp_path}/nope.jsonl does not exist. Check the " \
                          "path and that it was uploaded.\n"
    listed = run_cli("jobs", "list", "--json")
    assert orjson.loads(listed.stdout) == {"batchPredictionJobs": []}


def test_local_jobs_cancel_and_delete(run_cli, tmp_path: Path) -> None:
    models = tmp_path / "models.toml"
    models.write_text(FAST_MODELS)
    env = {"BATCHPREDICT_MODELS_FILE": str(models), "COLUMNS": "80"}
    src = write_jsonl(tmp_path / "in.jsonl", [{"request": text_request("hi")}] * 3)
    model = "a-very-long-model-name-that-would-not-fit-in-eighty-columns-of-terminal"
    done = run_cli("run", str(src), "--output", str(tmp_path / "out"), "-m", model, "-q",
                   env=env)
    assert done.returncode == 0, done.stderr
    table = run_cli("jobs", "list", env=env).stdout
    model_cells = [line.split("│")[3].strip() for line in table.splitlines()
                   if line.startswith("│")]
    assert "".join(model_cells) == model  # folded over lines, whole: never "a-very-long-…"
    refused = run_cli("jobs", "cancel", "1", env=env)
    assert refused.returncode == EXIT["usage"]
    assert refused.stderr == ("Error: Job 1 is already JOB_STATE_SUCCEEDED; only a pending or "
                              "running job can be cancelled.\n")
    deleted = run_cli("jobs", "delete", "1", env=env)
    assert deleted.returncode == 0 and deleted.stderr == "Deleted job 1.\n"
    assert orjson.loads(run_cli("jobs", "list", "--json", env=env).stdout) == {
        "batchPredictionJobs": []}


def test_serve_on_a_port_in_use_says_so(run_cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--port", str(port), timeout=60)
    assert done.returncode == EXIT["usage"]
    assert done.stderr.startswith(f"Error: Cannot listen on 127.0.0.1:{port}: Address already "
                                  "in use. Another program (another `batchpredict serve`?)")
    assert "Traceback" not in done.stderr


def test_a_refused_file_uri_is_reported_as_refused_before_the_model_s_modalities(
    run_cli, tmp_path: Path
) -> None:
    """On the text-only embedded model, a fileData URI outside BATCHPREDICT_MEDIA_ROOTS says
    what is wrong (not an allowed root) and how to fix it, not "use a model that takes..."."""
    part = {"fileData": {"fileUri": "/srv/notes.txt", "mimeType": "text/plain"}}
    src = write_jsonl(tmp_path / "in.jsonl", [{"request": {"contents": [
        {"role": "user", "parts": [part]}]}}])
    done = run_cli("run", str(src), "--output", str(tmp_path / "out"), "-q")
    assert done.returncode == EXIT["job failed"], done.stderr
    [line] = [orjson.loads(x) for x in next((tmp_path / "out").glob(
        "prediction-model-*/predictions.jsonl")).read_bytes().splitlines()]
    assert line["status"] == (
        'Bad Request: {"error": {"code": 400, "message": "fileData.fileUri \'/srv/notes.txt\' is '
        "not allowed: reading local files is off. Set BATCHPREDICT_MEDIA_ROOTS to the folders "
        'that fileData may read, or upload the file to gs:// or s3://.", "status": '
        '"INVALID_ARGUMENT"}}')
