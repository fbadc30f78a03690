"""The REST API over raw HTTP: exact JSON, errors, filters, pages, delete, health, metrics."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.server.conftest import ThreadServer, job_body, predictions, stats

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def test_created_job_is_vertex_json_and_runs_to_success(server: ThreadServer, make_input,
                                                        tmp_path: Path) -> None:
    inputs = make_input(12)
    created = server.create(job_body(inputs, tmp_path / "out", labels={"team": "ml"}))
    assert re.fullmatch(r"projects/p/locations/us-central1/batchPredictionJobs/\d+",
                        created["name"])
    assert created["displayName"] == "test job"
    assert created["model"] == "fast-model"
    assert created["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
    assert created["inputConfig"] == {"instancesFormat": "jsonl", "gcsSource": {"uris": [inputs]}}
    assert created["outputConfig"] == {
        "predictionsFormat": "jsonl",
        "gcsDestination": {"outputUriPrefix": str(tmp_path / "out")},
    }
    assert created["labels"] == {"team": "ml"}
    assert RFC3339.match(created["createTime"]) and RFC3339.match(created["updateTime"])

    done = server.wait(created)
    assert done["state"] == "JOB_STATE_SUCCEEDED"
    assert done["completionStats"] == {
        "successfulCount": "12", "failedCount": "0", "incompleteCount": "0"
    }
    for key in ("createTime", "startTime", "endTime", "updateTime"):
        assert RFC3339.match(done[key]), key
    assert "error" not in done
    out_dir = done["outputInfo"]["gcsOutputDirectory"]
    assert re.fullmatch(
        re.escape(str(tmp_path / "out")) + r"/prediction-model-\d{4}-\d\d-\d\dT[\d:.]+Z", out_dir
    )
    lines = predictions(done)
    assert [line["key"] for line in lines] == list(range(12))
    assert all(line["status"] == "" and line["response"]["candidates"] for line in lines)
    assert done["progress"]["doneCount"] == "12" and done["progress"]["totalCount"] == "12"
    # The same job under v1beta1 and in express form.
    job_id = created["name"].rsplit("/", 1)[1]
    beta = server.call("GET", f"{server.jobs_path(version='v1beta1')}/{job_id}").json
    express = server.call("GET", f"/v1beta1/batchPredictionJobs/{job_id}").json
    assert beta["name"] == express["name"] == created["name"]


def test_partly_failed_rows_succeed_and_all_failed_rows_fail(server: ThreadServer, make_input,
                                                             tmp_path: Path) -> None:
    mixed = make_input(3, extra=["not json", '{"request": {"contents": []}}'])
    job = server.wait(server.create(job_body(mixed, tmp_path / "a")))
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert stats(job) == (3, 2, 0)
    assert len(predictions(job)) == 5

    bad = make_input(0, extra=["not json", "[1, 2]"])
    job = server.wait(server.create(job_body(bad, tmp_path / "b")))
    assert job["state"] == "JOB_STATE_FAILED"
    assert stats(job) == (0, 2, 0)
    assert job["error"]["code"] == 3 and "All 2 rows failed" in job["error"]["message"]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b.pop("displayName"), "displayName is required"),
        (lambda b: b.pop("model"), "model is required"),
        (lambda b: b["inputConfig"]["gcsSource"].__setitem__("uris", 5),
         "inputConfig.gcsSource.uris"),
        (lambda b: b["inputConfig"]["gcsSource"].__setitem__("uris", []),
         "inputConfig.gcsSource.uris"),
        (lambda b: b.__setitem__("colour", "blue"), 'Unknown name "colour"'),
        (lambda b: b["outputConfig"].__setitem__("shape", 1),
         """Unknown name "shape" at 'outputConfig'"""),
        (lambda b: b.__setitem__("displayName", 7), "displayName"),
        (lambda b: b["inputConfig"].pop("gcsSource"), "inputConfig.gcsSource is required"),
        (lambda b: b["outputConfig"].pop("gcsDestination"),
         "outputConfig.gcsDestination is required"),
        (lambda b: b["inputConfig"].__setitem__("instancesFormat", "csv"),
         "inputConfig.instancesFormat"),
        (lambda b: b.__setitem__("encryptionSpec", {}), "encryptionSpec is not supported"),
        (lambda b: b.__setitem__("labels", {"team": 1}), "labels.team"),
    ],
)
def test_malformed_create_body_is_400_naming_the_field(server: ThreadServer, make_input,
                                                       tmp_path: Path, mutate, field) -> None:
    body = job_body(make_input(1), tmp_path / "out")
    mutate(body)
    reply = server.call("POST", server.jobs_path(), body)
    assert reply.status == 400, reply
    error = reply.json["error"]
    assert error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert field in error["message"]


def test_create_errors(server: ThreadServer, make_input, tmp_path: Path) -> None:
    path = server.jobs_path()
    reply = server.call("POST", path, raw=b"{not json")
    assert reply.status == 400 and "Invalid JSON payload" in reply.json["error"]["message"]

    reply = server.call("POST", path, job_body(make_input(1), tmp_path, model="no-such-model"))
    assert reply.status == 400
    assert "Available: " in reply.json["error"]["message"]
    assert "slow-*" in reply.json["error"]["message"]

    missing = str(tmp_path / "missing.jsonl")
    reply = server.call("POST", path, job_body(missing, tmp_path))
    assert reply.status == 404 and reply.json["error"]["status"] == "NOT_FOUND"
    assert missing in reply.json["error"]["message"]

    reply = server.call("POST", path, job_body(str(tmp_path / "nothing-*.jsonl"), tmp_path))
    assert reply.status == 404 and "matches no file" in reply.json["error"]["message"]

    reply = server.call("POST", path, job_body(make_input(1), "ftp://host/out"))
    assert reply.status == 400 and "ftp://" in reply.json["error"]["message"]

    reply = server.call("POST", path, job_body(make_input(1), "bq://project.dataset.table"))
    assert reply.status == 400
    assert reply.json["error"]["message"].startswith(
        "BigQuery destinations (bq://project.dataset.table) go in outputConfig.bigqueryDestination")

    blocked = tmp_path / "read-only"
    blocked.write_text("a file, so nothing can be made under it")
    reply = server.call("POST", path, job_body(make_input(1), blocked / "out"))
    assert reply.status in (400, 404) and str(blocked) in reply.json["error"]["message"]
    assert server.call("GET", path).json == {"batchPredictionJobs": []}  # none was created


def test_get_cancel_delete_errors(server: ThreadServer, make_input, tmp_path: Path) -> None:
    path = server.jobs_path()
    assert server.call("GET", f"{path}/abc").json["error"]["status"] == "INVALID_ARGUMENT"
    reply = server.call("GET", f"{path}/999")
    assert reply.status == 404
    assert reply.json == {"error": {"code": 404, "message": "BatchPredictionJob 999 was not found.",
                                    "status": "NOT_FOUND"}}
    reply = server.call("GET", "/v2/whatever")
    assert reply.status == 404 and reply.json["error"]["status"] == "NOT_FOUND"

    running = server.create(job_body(make_input(200), tmp_path, model="slow-model"))
    running = server.wait(running, lambda j: j["state"] == "JOB_STATE_RUNNING")
    reply = server.call("DELETE", f"/v1/{running['name']}")
    assert reply.status == 400 and reply.json["error"]["status"] == "FAILED_PRECONDITION"
    assert server.call("POST", f"/v1/{running['name']}:cancel", {}).json == {}
    ended = server.wait(running)
    assert ended["state"] == "JOB_STATE_CANCELLED"
    reply = server.call("POST", f"/v1/{running['name']}:cancel", {})
    assert reply.status == 400 and reply.json["error"]["status"] == "FAILED_PRECONDITION"

    reply = server.call("DELETE", f"/v1/{running['name']}")
    assert reply.status == 200
    op = reply.json
    assert re.fullmatch(r"projects/p/locations/us-central1/operations/\d+", op["name"])
    assert op["done"] is True
    assert op["response"] == {"@type": "type.googleapis.com/google.protobuf.Empty"}
    assert server.call("GET", f"/v1/{running['name']}").status == 404
    assert Path(ended["outputInfo"]["gcsOutputDirectory"], "predictions.jsonl").exists()


def test_list_filters_and_pages(server: ThreadServer, make_input, tmp_path: Path) -> None:
    inputs = make_input(1)
    made = []
    for i, (name, team) in enumerate([("my_job_a", "ml"), ("my_job_b", "web"), ("other", None),
                                      ("my_job_c", "ml"), ("last", None)]):
        labels = {"team": team} if team else {}
        made.append(server.create(job_body(inputs, tmp_path / str(i), display_name=name,
                                           labels=labels)))
    for job in made:
        server.wait(job)
    server.create(job_body(inputs, tmp_path, display_name="elsewhere"), project="q")
    path = server.jobs_path()

    def names(filter_text: str) -> list[str]:
        reply = server.call("GET", path + "?" + _query(filter=filter_text))
        assert reply.status == 200, reply
        return [j["displayName"] for j in reply.json["batchPredictionJobs"]]

    assert names("") == ["last", "my_job_c", "other", "my_job_b", "my_job_a"]  # newest first
    assert names('state="JOB_STATE_SUCCEEDED"') == names("")
    assert names("state=JOB_STATE_RUNNING") == []
    assert names('display_name="other"') == ["other"]
    assert names('display_name:"my_job_*"') == ["my_job_c", "my_job_b", "my_job_a"]
    assert names("labels.team=ml") == ["my_job_c", "my_job_a"]
    assert names("labels.team:*") == ["my_job_c", "my_job_b", "my_job_a"]
    assert names("NOT labels.team:*") == ["last", "other"]
    assert names('labels.team=web OR (display_name="last" AND state=SUCCEEDED)') == [
        "last", "my_job_b"]
    assert names('displayName:"my_job_*" -labels.team=ml') == ["my_job_b"]
    third = server.get(made[2])["createTime"]
    assert names(f'create_time>"{third}"') == ["last", "my_job_c"]
    assert names(f'create_time<="{third}" AND labels.team:*') == ["my_job_b", "my_job_a"]
    for bad, words in [("state=", "expected a value"), ("colour=red", "unknown field 'colour'"),
                       ("(state=SUCCEEDED", "missing ')'"), ("state=DONE", "not a job state"),
                       ('create_time>"yesterday"', "RFC 3339")]:
        reply = server.call("GET", path + "?" + _query(filter=bad))
        assert reply.status == 400 and words in reply.json["error"]["message"], (bad, reply)

    seen, token = [], ""
    while True:
        reply = server.call("GET", path + "?" + _query(pageSize=2, pageToken=token,
                                                       filter="labels.team:* OR NOT labels.team:*"))
        page = reply.json
        assert len(page["batchPredictionJobs"]) <= 2
        seen += [j["displayName"] for j in page["batchPredictionJobs"]]
        token = page.get("nextPageToken", "")
        if not token:
            break
    assert seen == ["last", "my_job_c", "other", "my_job_b", "my_job_a"]
    reply = server.call("GET", path + "?pageToken=garbage")
    assert reply.status == 400 and "pageToken" in reply.json["error"]["message"]
    reply = server.call("GET", path + "?pageSize=many")
    assert reply.status == 400 and "pageSize" in reply.json["error"]["message"]
    # Express mode without tokens: the caller may see every project.
    everything = server.call("GET", "/v1/batchPredictionJobs").json["batchPredictionJobs"]
    assert everything[0]["displayName"] == "elsewhere"


def _query(**params: object) -> str:
    from urllib.parse import urlencode

    return urlencode({k: v for k, v in params.items() if v not in ("", None)})


def test_health_metrics_and_docs(server: ThreadServer, make_input, tmp_path: Path) -> None:
    server.wait(server.create(job_body(make_input(4), tmp_path)))
    assert server.call("GET", "/healthz").json["status"] == "ok"
    reply = server.call("GET", "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.body.decode()
    assert 'batchpredict_jobs{state="JOB_STATE_SUCCEEDED"} 1.0' in text
    assert 'batchpredict_job_rows{result="succeeded"} 4.0' in text
    assert 'batchpredict_job_tokens{kind="prompt"} 8.0' in text
    assert re.search(r'batchpredict_http_request_duration_seconds_count\{code="200",method="POST",'
                     r'route="/v1/projects/\{project\}/locations/\{location\}/'
                     r'batchPredictionJobs"\} 1\.0', text)
    docs = server.call("GET", "/docs")
    assert docs.status == 200
    page = docs.body.decode()
    assert "cdn." not in page  # works offline: Swagger UI is served by this server
    script = re.search(r'src="(/[^"]*swagger-ui-bundle\.js)"', page)
    assert script and server.call("GET", script.group(1)).status == 200
    spec = server.call("GET", "/openapi.json").json
    assert "/v1beta1/batchPredictionJobs/{job_id}:cancel" in spec["paths"]
    assert "/v1/projects/{project}/locations/{location}/batchPredictionJobs" in spec["paths"]
