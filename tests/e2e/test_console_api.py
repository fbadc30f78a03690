"""The endpoints the console uses beside Vertex's API (/batchpredict/v1/...), called as a script
would: uploads to local, gs:// and s3:// roots, input checks, failed rows and downloads while a job
runs, and the same token rules as the job methods. No browser needed.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import text_request, write_jsonl
from tests.e2e.conftest import e2e_settings
from tests.emulators import gcs, gcs_emulator, s3, s3_server  # noqa: F401  (fixtures)
from tests.server.conftest import Reply, ThreadServer, http, stats


def multipart(file_name: str, data: bytes) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{file_name}"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def upload(server: ThreadServer, path: str, file_name: str, data: bytes, **kw: Any) -> Reply:
    body, headers = multipart(file_name, data)
    return http("POST", server.url + path, raw=body, headers=headers, **kw)


def jsonl(rows: list[Any]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)


GOOD = [{"key": i, "request": text_request(f"q{i}")} for i in range(5)]


@pytest.fixture
def api_server(tmp_path: Path) -> Any:
    srv = ThreadServer(e2e_settings(tmp_path)).start()
    yield srv
    srv.stop()


def test_models_and_defaults(api_server: ThreadServer) -> None:
    models = api_server.call("GET", "/batchpredict/v1/models").json["models"]
    assert [m["name"] for m in models] == ["instant", "steady", "slow", "gemini-*"]
    defaults = api_server.call("GET", "/batchpredict/v1/defaults").json
    data_dir = api_server.settings.data_dir
    assert defaults == {"project": "default", "location": "us-central1",
                        "uploadsRoot": f"{data_dir}/uploads",
                        "outputUriPrefix": f"{data_dir}/outputs/default",  # the project's area
                        "projects": ["default"], "allProjects": True}


def test_defaults_list_the_projects_a_caller_may_pick(tmp_path: Path) -> None:
    """What the jobs list's project filter offers: the token's projects, or for an open server
    ("*") every project that has jobs."""
    srv = ThreadServer(e2e_settings(tmp_path, tokens="tok-ab=team-b,team-a;tok-a=team-a;"
                                                      "tok-all=*")).start()
    try:
        data = Path(srv.settings.data_dir)
        (data / "uploads" / "elsewhere").mkdir(parents=True)  # the project's own areas
        path = write_jsonl(data / "uploads" / "elsewhere" / "in.jsonl", GOOD)
        out = data / "outputs" / "elsewhere"
        srv.create({"displayName": "x", "model": "instant",
                    "inputConfig": {"gcsSource": {"uris": [str(path)]}},
                    "outputConfig": {"gcsDestination": {"outputUriPrefix": str(out)}}},
                   project="elsewhere", token="tok-all")
        mine = [(t, srv.call("GET", "/batchpredict/v1/defaults", token=t).json)
                for t in ("tok-ab", "tok-a", "tok-all")]
        assert [(t, d["projects"], d["allProjects"]) for t, d in mine] == [
            ("tok-ab", ["team-a", "team-b"], False),
            ("tok-a", ["team-a"], False),
            ("tok-all", ["default", "elsewhere"], True),
        ]
    finally:
        srv.stop()


def test_validate_and_upload_report_bad_lines_by_number(api_server: ThreadServer) -> None:
    data = jsonl([GOOD[0], b"", b"{not json", {"request": {"contents": []}}, [1, 2], GOOD[1]])
    report = upload(api_server, "/batchpredict/v1/uploads:validate", "my file.jsonl", data).json
    assert report["rowCount"] == 5 and report["invalidRowCount"] == 3
    assert [(p["line"], p["row"]) for p in report["problems"]] == [(3, 1), (4, 2), (5, 3)]
    assert report["problems"][0]["message"].startswith("Line 3 of my_file.jsonl is not valid JSON")

    refused = upload(api_server, "/batchpredict/v1/uploads", "my file.jsonl", data)
    assert refused.status == 400
    assert "Of 5 lines, 3 are not valid" in refused.json["error"]["message"]
    assert not Path(api_server.settings.uploads_uri).exists()

    stored = upload(api_server, "/batchpredict/v1/uploads?allowInvalidLines=true", "../../x.jsonl",
                    data).json
    assert Path(stored["uri"]).read_bytes() == data
    assert stored["uri"].startswith(api_server.settings.uploads_uri + "/default/")
    assert stored["uri"].endswith("/x.jsonl")

    empty = upload(api_server, "/batchpredict/v1/uploads", "empty.jsonl", b"\n\n")
    assert empty.status == 400 and "has no rows" in empty.json["error"]["message"]


def test_inputs_validate_reads_uris_and_wildcards(api_server: ThreadServer, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "a.jsonl", GOOD)
    write_jsonl(tmp_path / "b.jsonl", [*GOOD[:2], "oops"])
    reply = api_server.call("POST", "/batchpredict/v1/inputs:validate",
                            {"uris": [str(tmp_path / "*.jsonl")]}).json
    assert reply["rowCount"] == 8 and reply["invalidRowCount"] == 1
    assert reply["problems"][0]["file"].endswith("b.jsonl") and reply["problems"][0]["line"] == 3
    capped = api_server.call("POST", "/batchpredict/v1/inputs:validate?maxRows=3",
                             {"uris": [str(tmp_path / "a.jsonl")]}).json
    assert capped["rowCount"] == 3 and capped["truncated"] is True
    missing = api_server.call("POST", "/batchpredict/v1/inputs:validate",
                              {"uris": [str(tmp_path / "nope.jsonl")]})
    assert missing.status == 404 and "does not exist" in missing.json["error"]["message"]


def test_failed_rows_and_download_while_running_then_final(
    api_server: ThreadServer, tmp_path: Path
) -> None:
    rows: list[Any] = [GOOD[0], "broken", *[{"key": i, "request": text_request("x")}
                                            for i in range(200)]]
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    job = api_server.create({
        "displayName": "watched", "model": "slow",
        "inputConfig": {"gcsSource": {"uris": [str(path)]}},
        "outputConfig": {"gcsDestination": {"outputUriPrefix": str(tmp_path / "out")}},
    })
    base = f"/batchpredict/v1/{job['name']}"
    job = api_server.wait(job, until=lambda j: int((j.get("completionStats") or {})
                                                   .get("successfulCount") or 0) >= 10)
    assert job["state"] == "JOB_STATE_RUNNING"
    failed = api_server.call("GET", base + "/failedRows?pageSize=5").json
    assert [r["outputLine"] for r in failed["failedRows"]] == [2]
    assert "Line 2 of" in failed["failedRows"][0]["status"]
    partial = api_server.call("GET", base + "/predictions.jsonl")
    assert partial.headers["x-batchpredict-partial"] == "true"
    assert len(partial.body.splitlines()) >= 11

    api_server.call("POST", f"/v1/{job['name']}:cancel", {})
    job = api_server.wait(job)
    final = api_server.call("GET", base + "/predictions.jsonl")
    assert final.headers["x-batchpredict-partial"] == "false"
    succeeded, bad, _ = stats(job)
    assert len(final.body.splitlines()) == succeeded + bad
    assert api_server.call("GET", base + "/failedRows").json["failedRows"][0]["outputLine"] == 2


def test_extras_follow_the_token_rules(tmp_path: Path) -> None:
    srv = ThreadServer(e2e_settings(tmp_path, tokens="tok-a=team-a;tok-b=team-b")).start()
    try:
        assert srv.call("GET", "/batchpredict/v1/models").status == 401
        assert upload(srv, "/batchpredict/v1/uploads", "a.jsonl", jsonl(GOOD)).status == 401
        stored = upload(srv, "/batchpredict/v1/uploads", "a.jsonl", jsonl(GOOD), token="tok-a").json
        assert "/team-a/" in stored["uri"]
        # with tokens, a project writes under its own output area (or configured prefixes)
        out = srv.call("GET", "/batchpredict/v1/defaults", token="tok-a").json["outputUriPrefix"]
        body = {"displayName": "mine", "model": "instant",
                "inputConfig": {"gcsSource": {"uris": [stored["uri"]]}},
                "outputConfig": {"gcsDestination": {"outputUriPrefix": out}}}
        job = srv.create(body, project="team-a", token="tok-a")
        srv.wait(job, token="tok-a")
        path = f"/batchpredict/v1/{job['name']}/predictions.jsonl"
        assert srv.call("GET", path).status == 401
        assert srv.call("GET", path, token="tok-b").status == 404  # another project's job
        assert len(srv.call("GET", path, token="tok-a").body.splitlines()) == 5
        assert len(srv.call("GET", path + "?key=tok-a").body.splitlines()) == 5
    finally:
        srv.stop()


@pytest.mark.parametrize("store", ["gcs", "s3"])
def test_uploads_root_on_object_storage(store: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    bucket = request.getfixturevalue(store)
    srv = ThreadServer(e2e_settings(tmp_path, uploads_root=bucket.uri("uploads"))).start()
    try:
        stored = upload(srv, "/batchpredict/v1/uploads", "in.jsonl", jsonl(GOOD)).json
        assert stored["uri"].startswith(bucket.uri("uploads/default/"))
        key = stored["uri"].split(f"{bucket.name}/", 1)[1]
        assert bucket.read(key) == jsonl(GOOD)
        job = srv.create({
            "displayName": "from-bucket", "model": "instant",
            "inputConfig": {"gcsSource": {"uris": [stored["uri"]]}},
            "outputConfig": {"gcsDestination": {"outputUriPrefix": bucket.uri("out")}},
        })
        assert stats(srv.wait(job)) == (5, 0, 0)
    finally:
        srv.stop()


def test_a_job_without_predictions_has_no_download(
    api_server: ThreadServer, tmp_path: Path
) -> None:
    """A FAILED job whose input had no rows has an output folder but no predictions: its download
    is a 404 that says so, not an empty file."""
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n\n")
    job = api_server.wait(api_server.create({
        "displayName": "no-rows", "model": "instant",
        "inputConfig": {"gcsSource": {"uris": [str(path)]}},
        "outputConfig": {"gcsDestination": {"outputUriPrefix": str(tmp_path / "out")}},
    }))
    assert job["state"] == "JOB_STATE_FAILED" and job["outputInfo"]["gcsOutputDirectory"]
    reply = api_server.call("GET", f"/batchpredict/v1/{job['name']}/predictions.jsonl")
    assert reply.status == 404, reply
    message = reply.json["error"]["message"]
    assert message.startswith(f"Job {job['name'].rsplit('/', 1)[1]} has no predictions: it ended "
                              "FAILED before any row completed (The input has no rows")


def test_progress_history_outlives_the_run(api_server: ThreadServer, tmp_path: Path) -> None:
    """The server keeps a job's progress samples, so a finished job's throughput can be drawn."""
    path = write_jsonl(tmp_path / "in.jsonl", [{"key": i, "request": text_request("x")}
                                               for i in range(100)])
    job = api_server.wait(api_server.create({
        "displayName": "sampled", "model": "steady",  # ~20 rows/s: about 5 s
        "inputConfig": {"gcsSource": {"uris": [str(path)]}},
        "outputConfig": {"gcsDestination": {"outputUriPrefix": str(tmp_path / "out")}},
    }))
    assert stats(job) == (100, 0, 0)
    samples = api_server.call(
        "GET", f"/batchpredict/v1/{job['name']}/progressHistory").json["samples"]
    assert 3 <= len(samples) <= 200, samples
    times = [s["time"] for s in samples]
    ms = len("2026-01-01T00:00:00.000")  # samples keep milliseconds
    assert times == sorted(times) and job["startTime"][:ms] <= times[0][:ms]
    assert times[-1][:ms] <= job["endTime"][:ms]
    assert samples[0] | {"time": ""} == {"time": "", "doneCount": "0", "totalTokenCount": "0"}
    assert samples[-1]["doneCount"] == "100"
    assert samples[-1]["totalTokenCount"] == job["progress"]["totalTokenCount"] == "400"
    done = [int(s["doneCount"]) for s in samples]
    assert done == sorted(done) and 0 < done[1] < 100
    other = api_server.call("GET", "/batchpredict/v1/projects/q/locations/us-central1/"
                                   f"batchPredictionJobs/{job['name'].rsplit('/', 1)[1]}"
                                   "/progressHistory")
    assert other.status == 404  # the job is named by its own project only
