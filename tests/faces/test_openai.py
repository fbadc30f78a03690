"""The unmodified `openai` SDK against a real server: files, batches, output and error files,
cancel, pagination, errors and tenant isolation."""

from __future__ import annotations

import io
import time
from pathlib import Path

import openai
import orjson
import pytest

from tests.faces.conftest import chat_line
from tests.server.conftest import ThreadServer

FINAL = {"completed", "failed", "cancelled", "expired"}


def client(server: ThreadServer, token: str = "t") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=token, max_retries=0)


def jsonl(rows: list[object]) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in rows)


def upload(c: openai.OpenAI, rows: list[object], name: str = "requests.jsonl") -> str:
    return c.files.create(file=(name, io.BytesIO(jsonl(rows))), purpose="batch").id


def wait(c: openai.OpenAI, batch_id: str, timeout: float = 120) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = c.batches.retrieve(batch_id)
        if batch.status in FINAL:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.05)


def lines(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    assert file_id is not None
    return [orjson.loads(x) for x in c.files.content(file_id).read().splitlines()]


def test_upload_create_poll_download_list_delete(server: ThreadServer) -> None:
    c = client(server)
    rows: list[object] = [chat_line(f"r{i}", f"question {i}", max_tokens=8) for i in range(3)]
    rows += [b"{not json", {"custom_id": "bad-body", "method": "POST",
                            "url": "/v1/chat/completions", "body": {"model": "fast-model"}}]
    file_id = upload(c, rows)
    stored = c.files.retrieve(file_id)
    assert (stored.purpose, stored.filename, stored.bytes) == ("batch", "requests.jsonl",
                                                             len(jsonl(rows)))

    batch = c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                             completion_window="24h", metadata={"team": "ml"})
    assert batch.id.startswith("batch_") and batch.status in ("validating", "in_progress")
    assert batch.input_file_id == file_id and batch.metadata == {"team": "ml"}
    assert batch.model == "fast-model"

    done = wait(c, batch.id)
    assert done.status == "completed", done.errors
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed,
            done.request_counts.failed) == (5, 3, 2)
    assert done.completed_at and done.in_progress_at and done.created_at
    assert done.usage is not None and done.usage.input_tokens == 6

    output = lines(c, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["r0", "r1", "r2"]
    for line in output:
        assert set(line) == {"id", "custom_id", "response", "error"} and line["error"] is None
        response = line["response"]
        assert response["status_code"] == 200 and response["request_id"]
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == "test-double"
        assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                    "logprobs": None, "finish_reason": "stop"}]
        assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}

    errors = lines(c, done.error_file_id)
    assert [e["custom_id"] for e in errors] == [None, "bad-body"]
    assert errors[0]["response"] is None
    assert errors[0]["error"]["code"] == "invalid_request"
    assert "Line 4 of" in errors[0]["error"]["message"]
    assert errors[1]["error"] is None and errors[1]["response"]["status_code"] == 400
    assert "'messages' is a required property" in (
        errors[1]["response"]["body"]["error"]["message"])

    listed = [f.id for f in c.files.list()]
    assert set(listed) == {file_id, done.output_file_id, done.error_file_id}
    out_file = c.files.retrieve(done.output_file_id or "")
    assert out_file.purpose == "batch_output" and out_file.bytes > 0

    assert c.files.delete(file_id).deleted is True
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(file_id)
    assert c.batches.retrieve(batch.id).status == "completed"  # its output stays


def test_a_file_of_bad_lines_fails_the_batch_with_errors(server: ThreadServer) -> None:
    c = client(server)
    rows = [chat_line("a", "hi"), chat_line("b", "hi")]
    for row in rows:
        row["body"]["messages"] = []  # type: ignore[index]
    done = wait(c, c.batches.create(input_file_id=upload(c, rows),
                                    endpoint="/v1/chat/completions",
                                    completion_window="24h").id)
    assert done.status == "failed" and done.failed_at and done.output_file_id is None
    assert done.errors is not None and done.errors.data
    assert "All 2 rows failed" in (done.errors.data[0].message or "")
    assert [e["custom_id"] for e in lines(c, done.error_file_id)] == ["a", "b"]


def test_an_expired_file_is_gone(server: ThreadServer) -> None:
    c = client(server)
    kept = upload(c, [chat_line("a", "hi")])
    brief = c.files.create(file=("brief.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
                           expires_after={"anchor": "created_at", "seconds": 1})
    assert brief.expires_at == brief.created_at + 1
    time.sleep(1.1)
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(brief.id)
    assert [f.id for f in c.files.list()] == [kept]


def test_list_pages_with_after_and_cancel_keeps_rows(server: ThreadServer) -> None:
    c = client(server)
    slow = c.batches.create(
        input_file_id=upload(c, [chat_line(f"s{i}", "hi", model="slow-model")
                                 for i in range(200)]),
        endpoint="/v1/chat/completions", completion_window="24h")
    quick = [c.batches.create(input_file_id=upload(c, [chat_line("q", "hi")]),
                              endpoint="/v1/chat/completions", completion_window="24h")
             for _ in range(3)]
    first = c.batches.list(limit=2)
    assert [b.id for b in first.data] == [quick[2].id, quick[1].id] and first.has_more
    assert [b.id for b in c.batches.list(limit=2, after=quick[1].id).data] == [quick[0].id,
                                                                              slow.id]
    assert [b.id for b in c.batches.list(limit=2)] == [b.id for b in [*reversed(quick), slow]]

    while c.batches.retrieve(slow.id).request_counts.completed == 0:  # (some rows to keep)
        time.sleep(0.05)
    cancelling = c.batches.cancel(slow.id)
    assert cancelling.status in ("cancelling", "cancelled")
    cancelled = wait(c, slow.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    assert cancelled.request_counts is not None
    kept = cancelled.request_counts.completed
    assert 0 < kept < 200 and cancelled.request_counts.total == 200
    # every completed row once, in row order (ranges in flight at the cancel: maybe not a prefix)
    ids = [int(line["custom_id"][1:]) for line in lines(c, cancelled.output_file_id)]
    assert len(ids) == kept and ids == sorted(set(ids))
    for b in quick:
        assert wait(c, b.id).status == "completed"


def test_refusals_are_clear_400s(server: ThreadServer) -> None:
    c = client(server)
    file_id = upload(c, [chat_line("a", "hi")])
    with pytest.raises(openai.BadRequestError) as caught:
        c.batches.create(input_file_id=file_id, endpoint="/v1/embeddings",
                         completion_window="24h")
    assert "/v1/embeddings is not supported" in caught.value.message
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                         completion_window="48h")  # type: ignore[arg-type]
    unknown = upload(c, [chat_line("a", "hi", model="no-such-model")])
    with pytest.raises(openai.BadRequestError) as caught:
        c.batches.create(input_file_id=unknown, endpoint="/v1/chat/completions",
                         completion_window="24h")
    assert "no-such-model" in caught.value.message
    with pytest.raises(openai.NotFoundError):
        c.batches.retrieve("batch_999")
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions",
                         completion_window="24h")


def test_another_projects_token_sees_nothing(start_server, tmp_path: Path) -> None:
    server: ThreadServer = start_server(tokens="tok-a=team-a;tok-b=team-b")
    a, b = client(server, "tok-a"), client(server, "tok-b")
    file_id = upload(a, [chat_line("r", "hi")])
    batch = a.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                             completion_window="24h")
    done = wait(a, batch.id)
    assert done.status == "completed"
    for call in (lambda: b.files.retrieve(file_id), lambda: b.files.content(file_id),
                 lambda: b.files.delete(file_id), lambda: b.batches.retrieve(batch.id),
                 lambda: b.batches.cancel(batch.id),
                 lambda: b.files.content(done.output_file_id or ""),
                 lambda: b.batches.create(input_file_id=file_id,
                                          endpoint="/v1/chat/completions",
                                          completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert list(b.files.list()) == [] and list(b.batches.list()) == []
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong").batches.list()
    assert a.batches.retrieve(batch.id).status == "completed"


def test_jobs_from_this_face_are_jobs_like_any_other(server: ThreadServer) -> None:
    c = client(server)
    batch = c.batches.create(input_file_id=upload(c, [chat_line("r", "hi")]),
                             endpoint="/v1/chat/completions", completion_window="24h")
    job_id = batch.id.removeprefix("batch_")
    listed = server.call("GET", "/v1/batchPredictionJobs").json["batchPredictionJobs"]
    assert [(j["name"].rsplit("/", 1)[1], j["face"]) for j in listed] == [(job_id, "openai")]


@pytest.mark.slow
def test_the_embedded_model_answers_an_openai_batch(server: ThreadServer) -> None:
    c = client(server)
    rows = [chat_line(f"r{i}", q, model="smollm2-135m", max_tokens=8, temperature=0)
            for i, q in enumerate(["What is 2+2?", "Name a colour."])]
    batch = c.batches.create(input_file_id=upload(c, rows), endpoint="/v1/chat/completions",
                             completion_window="24h")
    done = wait(c, batch.id, timeout=300)
    assert done.status == "completed", done.errors
    output = lines(c, done.output_file_id)
    assert [line["custom_id"] for line in output] == ["r0", "r1"]
    for line in output:
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"].strip()
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 0 < body["usage"]["completion_tokens"] <= 8
