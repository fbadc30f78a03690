"""`batchpredict jobs ... --server URL`: the CLI as a client of a real server."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from batchpredict.cli import main
from tests.server.conftest import ThreadServer, job_body


@pytest.fixture
def cli(server: ThreadServer, monkeypatch: pytest.MonkeyPatch):
    """Run `batchpredict ARGS` in this process with BATCHPREDICT_SERVER pointing at `server`."""
    monkeypatch.setenv("BATCHPREDICT_SERVER", server.url)
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return run


def test_create_get_list_wait_delete(cli, server: ThreadServer, make_input,
                                     tmp_path: Path) -> None:
    inputs = make_input(6)
    result = cli("jobs", "create", inputs, "-o", str(tmp_path / "out"), "-m", "fast-model",
                 "--display-name", "from cli", "--label", "team=ml", "--project", "p", "--json")
    assert result.exit_code == 0, result.stderr
    job = orjson.loads(result.stdout)
    assert job["displayName"] == "from cli" and job["labels"] == {"team": "ml"}
    assert job["name"].startswith("projects/p/locations/us-central1/batchPredictionJobs/")
    job_id = job["name"].rsplit("/", 1)[1]

    result = cli("jobs", "wait", job_id, "--interval", "0.1", "--project", "p")
    assert result.exit_code == 0, result.stderr
    assert "SUCCEEDED" in result.stdout and "6 succeeded, 0 failed, 0 incomplete" in result.stdout

    result = cli("jobs", "get", job["name"], "--json")
    assert orjson.loads(result.stdout)["completionStats"]["successfulCount"] == "6"
    # Express form (no --project) finds it too: without tokens every project is visible.
    assert cli("jobs", "get", job_id, "--json").exit_code == 0

    result = cli("jobs", "list", "--filter", "labels.team=ml", "--json")
    listed = orjson.loads(result.stdout)["batchPredictionJobs"]
    assert [j["name"] for j in listed] == [job["name"]]
    result = cli("jobs", "list")
    assert "from cli" in result.stdout and "SUCCEEDED" in result.stdout

    result = cli("jobs", "delete", job_id, "--json")
    assert orjson.loads(result.stdout)["done"] is True
    result = cli("jobs", "get", job_id)
    assert result.exit_code == 3  # not found
    assert result.stderr.strip() == f"Error: BatchPredictionJob {job_id} was not found."


def test_cancel_and_wait_exit_code(cli, server: ThreadServer, make_input, tmp_path: Path) -> None:
    job = server.create(job_body(make_input(200), tmp_path, model="slow-model"))
    job_id = job["name"].rsplit("/", 1)[1]
    result = cli("jobs", "cancel", job_id, "--project", "p")
    assert result.exit_code == 0, result.stderr
    result = cli("jobs", "wait", job_id, "--interval", "0.1", "--json")
    assert result.exit_code == 1
    assert orjson.loads(result.stdout)["state"] == "JOB_STATE_CANCELLED"


def test_client_errors_are_one_line(cli, make_input, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    result = cli("jobs", "create", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path))
    assert result.exit_code == 3  # not found
    assert result.stderr.count("\n") == 1 and "does not exist" in result.stderr

    result = cli("jobs", "create", make_input(1), "-o", str(tmp_path), "-m", "nope")
    assert result.exit_code == 2 and "Available:" in result.stderr

    monkeypatch.setenv("BATCHPREDICT_SERVER", "http://127.0.0.1:9")
    result = cli("jobs", "get", "1")
    assert result.exit_code == 5 and result.stderr.count("\n") == 1  # unavailable
    assert "Cannot reach the server at http://127.0.0.1:9" in result.stderr

    monkeypatch.delenv("BATCHPREDICT_SERVER")
    result = cli("jobs", "wait", "1")
    assert result.exit_code == 2 and "needs a server: pass --server URL" in result.stderr
    monkeypatch.setenv("BATCHPREDICT_DATA_DIR", str(tmp_path / "local"))
    result = cli("jobs", "cancel", "1")  # without --server: the local job store
    assert result.exit_code == 3
    assert result.stderr == "Error: BatchPredictionJob 1 was not found.\n"
