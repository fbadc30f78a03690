"""The unmodified google-genai SDK in Developer API mode (`genai.Client(api_key=...)`) against a
real server: inlined and file batches, the Files API's resumable upload and download, list,
cancel, delete, a bad line, and tenant isolation."""

from __future__ import annotations

import io
import time

import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.conftest import text_request
from tests.server.conftest import ThreadServer

S = types.JobState
FINISHED = {S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED,
            S.JOB_STATE_EXPIRED}


def client(server: ThreadServer, key: str = "t", version: str | None = None) -> genai.Client:
    """The SDK's default version with a base_url is v1; the real service's is v1beta."""
    return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=server.url,
                                                                    api_version=version))


def wait(c: genai.Client, name: str, timeout: float = 120) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = c.batches.get(name=name)
        if job.state in FINISHED:
            return job
        assert time.monotonic() < deadline, f"batch still {job.state}"
        time.sleep(0.05)


def upload_jsonl(c: genai.Client, rows: list[object], name: str = "batch.jsonl") -> types.File:
    data = b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)
    return c.files.upload(file=io.BytesIO(data),
                          config=types.UploadFileConfig(display_name=name, mime_type="jsonl"))


@pytest.mark.parametrize("version", [None, "v1beta"])
def test_inlined_requests_come_back_inlined_in_order(server: ThreadServer,
                                                     version: str | None) -> None:
    c = client(server, version=version)
    requests = [types.InlinedRequest(contents=f"question {i}", metadata={"n": str(i)},
                                     config=types.GenerateContentConfig(max_output_tokens=8))
                for i in range(3)]
    job = c.batches.create(model="fast-model", src=requests,
                           config=types.CreateBatchJobConfig(display_name="inline"))
    assert job.name and job.name.startswith("batches/")
    assert job.display_name == "inline" and job.model == "models/fast-model"
    done = wait(c, job.name)
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.inlined_responses is not None
    responses = done.dest.inlined_responses
    assert [r.metadata for r in responses] == [{"n": "0"}, {"n": "1"}, {"n": "2"}]
    for r in responses:
        assert r.error is None and r.response is not None and r.response.text == "ok"
        assert r.response.usage_metadata is not None
        assert r.response.usage_metadata.total_token_count == 4


def test_file_batch_upload_download_list_delete(server: ThreadServer) -> None:
    c = client(server)
    rows: list[object] = [{"key": f"k{i}", "request": text_request(f"q{i}", maxOutputTokens=8)}
                          for i in range(3)]
    rows.insert(1, b'{"key": "broken", "request": {"contents": []}}')
    rows.append(b"not json")
    uploaded = upload_jsonl(c, rows)
    assert uploaded.name and uploaded.name.startswith("files/")
    assert uploaded.state == types.FileState.ACTIVE and uploaded.size_bytes
    assert c.files.get(name=uploaded.name).display_name == "batch.jsonl"

    job = c.batches.create(model="fast-model", src=uploaded.name)
    done = wait(c, job.name or "")
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.file_name
    out = [orjson.loads(x) for x in c.files.download(file=done.dest.file_name).splitlines()]
    assert [line.get("key") for line in out] == ["k0", "broken", "k1", "k2", None]
    for i in (0, 2, 3):
        assert set(out[i]) == {"key", "response"}
        assert out[i]["response"]["candidates"][0]["content"]["parts"] == [{"text": "ok"}]
    assert set(out[1]) == {"key", "error"} and out[1]["error"]["code"] == 400
    assert out[1]["error"]["status"] == "INVALID_ARGUMENT"
    assert set(out[4]) == {"error"} and "not valid JSON" in out[4]["error"]["message"]
    result = c.files.get(name=done.dest.file_name)
    assert result.source == types.FileSource.GENERATED
    assert c.files.download(file=result) == c.files.download(file=done.dest.file_name)

    listed = {f.name for f in c.files.list(config=types.ListFilesConfig(page_size=1))}
    assert listed == {uploaded.name, done.dest.file_name}
    assert [j.name for j in c.batches.list()] == [job.name]
    c.batches.delete(name=job.name or "")
    with pytest.raises(genai_errors.ClientError) as caught:
        c.batches.get(name=job.name or "")
    assert caught.value.code == 404
    c.files.delete(name=uploaded.name)
    with pytest.raises(genai_errors.ClientError) as caught:
        c.files.get(name=uploaded.name)
    assert caught.value.code == 404


@pytest.mark.parametrize("version", [None, "v1beta"])
def test_a_large_upload_goes_in_chunks(server: ThreadServer, version: str | None) -> None:
    c = client(server, version=version)
    row = orjson.dumps({"key": "k", "request": text_request("x" * 1000)}) + b"\n"
    data = row * (9 * 1024 * 1024 // len(row) + 1)  # over the SDK's 8 MiB chunk
    uploaded = c.files.upload(file=io.BytesIO(data), config={"mime_type": "jsonl"})
    assert int(uploaded.size_bytes or 0) == len(data)
    assert c.files.download(file=uploaded.name or "") == data


def test_cancel_keeps_completed_rows(server: ThreadServer) -> None:
    c = client(server)
    uploaded = upload_jsonl(c, [{"key": f"k{i}", "request": text_request("hi")}
                                for i in range(200)])
    job = c.batches.create(model="slow-model", src=uploaded.name or "")
    while c.batches.get(name=job.name or "").state == S.JOB_STATE_PENDING:
        time.sleep(0.05)
    time.sleep(0.5)  # ~20 rows/s: some rows are answered before the cancel
    c.batches.cancel(name=job.name or "")
    done = wait(c, job.name or "")
    assert done.state == S.JOB_STATE_CANCELLED
    assert done.dest is not None and done.dest.file_name
    out = c.files.download(file=done.dest.file_name).splitlines()
    assert 0 < len(out) < 200
    assert [orjson.loads(x)["key"] for x in out] == [f"k{i}" for i in range(len(out))]


def test_another_projects_key_sees_nothing(start_server) -> None:
    server: ThreadServer = start_server(tokens="key-a=team-a;key-b=team-b")
    a, b = client(server, "key-a"), client(server, "key-b")
    uploaded = upload_jsonl(a, [{"key": "k", "request": text_request("hi")}])
    job = a.batches.create(model="fast-model", src=uploaded.name or "")
    done = wait(a, job.name or "")
    assert done.state == S.JOB_STATE_SUCCEEDED and done.dest is not None
    for call in (lambda: b.files.get(name=uploaded.name or ""),
                 lambda: b.files.download(file=uploaded.name or ""),
                 lambda: b.files.download(file=done.dest.file_name or ""),
                 lambda: b.files.delete(name=uploaded.name or ""),
                 lambda: b.batches.get(name=job.name or ""),
                 lambda: b.batches.cancel(name=job.name or ""),
                 lambda: b.batches.delete(name=job.name or ""),
                 lambda: b.batches.create(model="fast-model", src=uploaded.name or "")):
        with pytest.raises(genai_errors.ClientError) as caught:
            call()
        assert caught.value.code == 404
    assert list(b.files.list()) == [] and list(b.batches.list()) == []
    stranger = client(server, "wrong")
    with pytest.raises(genai_errors.ClientError) as caught:
        stranger.batches.list()
    assert caught.value.code == 401


def test_each_face_sees_only_its_own_batches(server: ThreadServer) -> None:
    import openai

    g = client(server)
    o = openai.OpenAI(base_url=server.url + "/v1", api_key="t", max_retries=0)
    gemini_job = g.batches.create(model="fast-model", src=[types.InlinedRequest(contents="hi")])
    wait(g, gemini_job.name or "")
    job_id = (gemini_job.name or "").removeprefix("batches/")
    with pytest.raises(openai.NotFoundError):
        o.batches.retrieve(f"batch_{job_id}")
    assert list(o.batches.list()) == []
    faces = [j["face"] for j in server.call("GET", "/v1/batchPredictionJobs").json[
        "batchPredictionJobs"]]
    assert faces == ["gemini"]


@pytest.mark.slow
def test_the_embedded_model_answers_a_gemini_batch(server: ThreadServer) -> None:
    c = client(server)
    requests = [types.InlinedRequest(contents=q, config=types.GenerateContentConfig(
        max_output_tokens=8, temperature=0)) for q in ("What is 2+2?", "Name a colour.")]
    job = c.batches.create(model="gemini-2.5-flash", src=requests)
    done = wait(c, job.name or "", timeout=300)
    assert done.state == S.JOB_STATE_SUCCEEDED
    assert done.dest is not None and done.dest.inlined_responses is not None
    for r in done.dest.inlined_responses:
        assert r.response is not None and (r.response.text or "").strip()
        assert r.response.usage_metadata is not None
        assert 0 < (r.response.usage_metadata.candidates_token_count or 0) <= 9
