"""fileData URIs of a job's rows go through its project's data policy (and the server's media
roots): metadata addresses, loopback URLs, file://, escapes, other projects' files and oversized
objects fail their own row, and no byte of them reaches the model or the output."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import read_predictions, write_jsonl
from tests.doubles.openai_server import ServerThread, TestDoubleServer
from tests.security.conftest import SECRET_B, SERVER_SECRET, Tenants, tenants_setup
from tests.server.conftest import MODELS_TOML


@pytest.fixture
def double() -> Iterator[tuple[TestDoubleServer, str]]:
    """An OpenAI-compatible test double that records what it is sent; (server, its URL)."""
    server = TestDoubleServer(record=True)
    with ServerThread(server) as url:
        yield server, url


def models_with_echo(path: Path, url: str) -> str:
    """The server tests' registry plus `echo-*`: an openai backend, which fetches fileData."""
    path.write_text(MODELS_TOML + f'\n[[models]]\nname = "echo-*"\nbackend = "openai"\n'
                    f'base_url = "{url}/v1"\nretries = 0\n')
    return str(path)


def file_row(key: str, uri: str) -> dict[str, Any]:
    return {"key": key, "request": {"contents": [{"role": "user", "parts": [
        {"text": "quote the file"}, {"fileData": {"fileUri": uri, "mimeType": "text/plain"}}]}]}}


@pytest.fixture(params=["local", "processes"])
def media_tenants(request: pytest.FixtureRequest, tmp_path: Path, start_server: Any,
                  double: Any) -> Tenants:
    """Two tenants; the rows run in the server's process, or on worker processes (which get
    the job's project policy from the driver)."""
    models = models_with_echo(tmp_path / "models-with-echo.toml", double[1])
    # the media roots allow the whole tree: the project's policy is what refuses B's files
    return tenants_setup(tmp_path, start_server, models_file=models,
                         media_roots=str(tmp_path), max_media_bytes=1000,
                         executor=request.param, workers=2)


def test_file_data_outside_the_project_fails_its_row(media_tenants: Tenants,
                                                     double: Any) -> None:
    t = media_tenants
    (t.a_in / "note.txt").write_text("hello from team a\n")
    (t.a_in / "big.txt").write_text("x" * 2000)
    (t.a_in / "b-notes.txt").symlink_to(t.b_in / "notes.txt")
    os.mkfifo(t.a_in / "pipe.txt")
    refused = {
        "metadata": "http://169.254.169.254/computeMetadata/v1/instance/",
        "loopback": f"{t.server.url}/v1/batchPredictionJobs",
        "passwd": "file:///etc/passwd",
        "b-file": f"file://{t.b_in}/notes.txt",
        "escape": f"{t.a_in}/../../team-b/in/notes.txt",
        "symlink": str(t.a_in / "b-notes.txt"),
        "server-file": str(t.server_file),
        "job-store": str(t.data / "jobs.sqlite3"),
        "bucket": "gs://someone-elses-bucket/notes.txt",
        "fifo": str(t.a_in / "pipe.txt"),
        "proc": "/proc/self/environ",
    }
    rows = [file_row("ok", str(t.a_in / "note.txt")), file_row("big", str(t.a_in / "big.txt"))]
    rows += [file_row(key, uri) for key, uri in refused.items()]
    write_jsonl(t.a_in / "media.jsonl", rows)
    for model in ("echo-model", "fast-model"):  # one backend fetches media, one passes URIs on
        reply = t.create("a", str(t.a_in / "media.jsonl"), t.a_out / model, model=model)
        assert reply.status == 200, reply
        job = t.wait("a", reply.json)
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        lines = {line["key"]: line for line in read_predictions(t.a_out / model)}
        for key in refused:
            status = lines[key]["status"]
            assert status.startswith("Forbidden: "), (key, status)
            assert '"PERMISSION_DENIED"' in status, (key, status)
        assert lines["ok"]["status"] == ""
        if model == "echo-model":
            assert "hello from team a" in orjson.dumps(lines["ok"]["response"]).decode()
            assert "the limit is 1000 bytes" in lines["big"]["status"]
        output = (t.a_out / model).rglob("predictions.jsonl")
        for path in output:
            assert SECRET_B.encode() not in path.read_bytes()
            assert SERVER_SECRET.encode() not in path.read_bytes()
    sent = b"".join(orjson.dumps(body) for _, _, body in double[0].received)
    assert b"hello from team a" in sent
    assert SECRET_B.encode() not in sent and SERVER_SECRET.encode() not in sent


def test_without_tokens_file_data_still_avoids_the_servers_own(tmp_path: Path, start_server: Any,
                                                               double: Any) -> None:
    models = models_with_echo(tmp_path / "models-with-echo.toml", double[1])
    server = start_server(models_file=models, media_roots=str(tmp_path))
    mine = tmp_path / "mine.txt"
    mine.write_text("mine to read\n")
    inputs = write_jsonl(tmp_path / "in.jsonl", [
        file_row("ok", str(mine)),
        file_row("store", str(tmp_path / "data" / "jobs.sqlite3")),
        file_row("memory", "memory://x.txt"),
    ])
    from tests.server.conftest import job_body

    job = server.create(job_body(str(inputs), tmp_path / "out", model="echo-model"))
    assert server.wait(job)["state"] == "JOB_STATE_SUCCEEDED"
    lines = {line["key"]: line for line in read_predictions(tmp_path / "out")}
    assert lines["ok"]["status"] == ""
    assert lines["store"]["status"].startswith("Forbidden: ")
    assert lines["memory"]["status"].startswith(("Forbidden: ", "Bad Request: "))
