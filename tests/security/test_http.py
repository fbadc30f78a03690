"""No web page can drive the server, and what a client sends is bounded: Host and cross-site checks,
JSON Content-Type, body sizes, labels, filters, job ids, and tokens kept out of logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import Tenants, assert_refused
from tests.server.conftest import Reply, ThreadServer, http, job_body


@pytest.fixture
def open_server(start_server: Any) -> ThreadServer:
    """No tokens: loopback only, one trusted local user."""
    return start_server(max_request_bytes=64 * 1024, max_upload_bytes=256 * 1024)  # type: ignore[no-any-return]


def call(server: ThreadServer, method: str, path: str, body: Any = None,
         **headers: str) -> Reply:
    return http(method, server.url + path, body,
                headers={k.replace("_", "-"): v for k, v in headers.items()})


def test_a_cross_site_page_cannot_create_cancel_or_read(open_server: ThreadServer, make_input,
                                                        tmp_path: Path) -> None:
    s = open_server
    body = job_body(make_input(50), tmp_path / "out", model="slow-model")
    jobs = s.jobs_path()
    # what a <form> or a no-cors fetch can send: no JSON content type
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"):
        assert_refused(call(s, "POST", jobs, body, Content_Type=ctype), 415)
    assert_refused(http("POST", s.url + jobs, raw=b'{"displayName": "x"}',
                        headers={"Content-Type": ""}), 415)
    evil = {"Origin": "http://evil.example"}
    assert_refused(call(s, "POST", jobs, body, **evil), 403, "Cross-site")
    assert_refused(call(s, "POST", jobs, body, Sec_Fetch_Site="cross-site"), 403)
    assert_refused(call(s, "POST", jobs, body, Sec_Fetch_Site="same-site"), 403)
    assert_refused(call(s, "POST", jobs, body, Origin="null"), 403)
    assert s.call("GET", jobs).json == {"batchPredictionJobs": []}

    job = s.create(body)  # a script (no Origin) may
    name = f"/v1/{job['name']}"
    assert_refused(call(s, "POST", name + ":cancel", {}, **evil), 403)
    assert_refused(call(s, "POST", name + ":cancel", {}, Sec_Fetch_Site="cross-site"), 403)
    assert_refused(call(s, "DELETE", name, Sec_Fetch_Site="cross-site"), 403)
    for path in (jobs, name, "/batchpredict/v1/defaults", "/metrics",
                 f"/batchpredict/v1/{job['name']}/predictions.jsonl"):
        assert_refused(call(s, "GET", path, Sec_Fetch_Site="cross-site"), 403)
        assert_refused(call(s, "GET", path, **evil), 403)
    assert s.get(job)["state"] in ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")

    # the console itself (same origin) and links to it still work
    own = {"Origin": s.url, "Sec_Fetch_Site": "same-origin"}
    assert call(s, "GET", jobs, **own).status == 200
    assert call(s, "POST", name + ":cancel", {}, **own).status == 200
    page = call(s, "GET", "/console/", Sec_Fetch_Site="cross-site", Sec_Fetch_Mode="navigate")
    assert page.status == 200 and b"<html" in page.body.lower()
    assert call(s, "GET", "/healthz", Sec_Fetch_Site="cross-site").status == 200
    s.wait(job)


def test_a_foreign_host_is_refused_without_tokens(open_server: ThreadServer, start_server: Any,
                                                  tmp_path: Path) -> None:
    s = open_server
    for host in ("evil.example", "evil.example:8080", "127.0.0.1.evil.example",
                 "localhost.evil.example", "10.0.0.1"):
        reply = call(s, "GET", s.jobs_path(), Host=host)
        assert_refused(reply, 403, "BATCHPREDICT_ALLOWED_HOSTS")
        assert call(s, "GET", "/console/", Host=host).status == 403
    for host in ("localhost", "localhost:1234", "127.0.0.1", "127.1.2.3:9", "[::1]:8080"):
        assert call(s, "GET", s.jobs_path(), Host=host).status == 200, host
    named = start_server(data_dir=str(tmp_path / "named"), allowed_hosts="batch.example.com")
    assert call(named, "GET", named.jobs_path(), Host="batch.example.com:8080").status == 200
    assert call(named, "GET", named.jobs_path(), Host="evil.example").status == 403
    # with tokens, any Host (a real deployment's name) unless BATCHPREDICT_ALLOWED_HOSTS is set
    secured = start_server(data_dir=str(tmp_path / "secured"), tokens="t=p")
    reply = http("GET", secured.url + secured.jobs_path(), token="t",
                 headers={"Host": "batch.internal"})
    assert reply.status == 200, reply


def test_clients_without_origin_still_work(open_server: ThreadServer, make_input,
                                           tmp_path: Path) -> None:
    """What the google-genai SDK and openai-style clients send: JSON, no Origin."""
    from google.genai import types

    from tests.server.test_sdk import local_dest, local_source, vertex_client

    client = vertex_client(open_server)
    job = client.batches.create(model="fast-model", src=local_source(make_input(2)),
                                config=types.CreateBatchJobConfig(dest=local_dest(tmp_path / "o")))
    assert job.name
    assert [j.name for j in client.batches.list()] == [job.name]
    open_server.wait(job.name)


def test_oversized_bodies_are_413(open_server: ThreadServer) -> None:
    s = open_server
    big = {"displayName": "x" * (80 * 1024)}
    reply = s.call("POST", s.jobs_path(), big)
    assert_refused(reply, 413, "BATCHPREDICT_MAX_REQUEST_BYTES")
    # streamed without a Content-Length: counted as it arrives
    conn = HTTPConnection("127.0.0.1", s.port, timeout=30)

    def chunks() -> Iterator[bytes]:
        for _ in range(20):
            yield b" " * 8192

    conn.request("POST", s.jobs_path(), body=chunks(), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 413 and b'"code":413' in answer.read()
    conn.close()
    from tests.e2e.test_console_api import upload

    reply = upload(s, "/batchpredict/v1/uploads", "big.jsonl", b"{}\n" * 100_000)
    assert_refused(reply, 413, "BATCHPREDICT_MAX_UPLOAD_BYTES")
    assert call(s, "POST", "/batchpredict/v1/uploads", {"x": 1}).status == 415
    assert s.call("GET", "/healthz").status == 200


@pytest.mark.parametrize("labels,words", [
    ({f"k{i}": "v" for i in range(65)}, "at most 64 labels"),
    ({"Team": "ml"}, "must start with a lowercase letter"),
    ({"1team": "ml"}, "must start with a lowercase letter"),
    ({"": "ml"}, "must start with a lowercase letter"),
    ({"team": "ML"}, "may hold only"),
    ({"team": "a b"}, "may hold only"),
    ({"k" * 64: "v"}, "at most 63 characters"),
    ({"team": "v" * 64}, "at most 63 characters"),
    ({"équipe": "ml"}, "must start with a lowercase letter"),
])
def test_labels_are_checked_as_vertex_does(open_server: ThreadServer, make_input, tmp_path: Path,
                                           labels: dict[str, str], words: str) -> None:
    body = job_body(make_input(1), tmp_path, labels=labels)
    assert_refused(open_server.call("POST", open_server.jobs_path(), body), 400, words)


def test_good_labels_pass(open_server: ThreadServer, make_input, tmp_path: Path) -> None:
    labels = {f"k{i}": "v" for i in range(62)} | {"team_a-1": "", "x" * 63: "y" * 63}
    job = open_server.create(job_body(make_input(1), tmp_path, labels=labels))
    assert open_server.wait(job)["labels"] == labels


@pytest.mark.parametrize("text", [
    "NOT " * 2000 + 'state="JOB_STATE_SUCCEEDED"',
    "-" * 5000 + "state=x",
    "(" * 200 + 'state="SUCCEEDED"' + ")" * 200,
    "NOT " * 40 + 'state="JOB_STATE_SUCCEEDED"',
    " OR ".join(f"labels.k{i}=v" for i in range(700)),
])
def test_deep_or_long_filters_are_400(open_server: ThreadServer, text: str) -> None:
    from urllib.parse import quote

    reply = open_server.call("GET", open_server.jobs_path() + "?filter=" + quote(text))
    assert_refused(reply, 400)
    assert "filter" in reply.json["error"]["message"]
    ok = " OR ".join(f"labels.k{i}=v" for i in range(50))
    assert open_server.call("GET", open_server.jobs_path() + "?filter=" + quote(ok)).status == 200


@pytest.mark.parametrize("job_id", ["١٢٣", "１２３", "12a", "-1", "1" * 19, "12%0A", "²"])
def test_job_ids_are_ascii_digits(open_server: ThreadServer, job_id: str) -> None:
    from urllib.parse import quote

    path = open_server.jobs_path() + "/" + quote(job_id, safe="%")
    for method, suffix in (("GET", ""), ("DELETE", ""), ("POST", ":cancel")):
        reply = open_server.call(method, path + suffix, {} if method == "POST" else None)
        assert_refused(reply, 400, "not a valid BatchPredictionJob id")


def test_tokens_stay_out_of_access_logs(tenants: Tenants) -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    access = logging.getLogger("uvicorn.access")
    level, keep = access.level, Keep()
    access.setLevel(logging.INFO)
    access.addHandler(keep)
    try:
        t = tenants
        assert t.server.call("GET", t.jobs("a") + "?pageSize=5&key=tok-a").status == 200
        assert t.server.call("GET", t.jobs("a") + "?key=tok-a&x=1").status == 200
        assert t.call("a", "GET", t.jobs("a")).status == 200
        assert http("GET", t.server.url + t.jobs("a"), headers={"x-goog-api-key": "tok-a"}
                    ).status == 200
    finally:
        access.removeHandler(keep)
        access.setLevel(level)
    assert len(records) >= 4, records
    assert not [r for r in records if "tok-a" in r], records
    assert any("key=[redacted]" in r for r in records), records
