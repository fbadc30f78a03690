"""What the faces stand on: the files table (SQLite and PostgreSQL), the OpenAI line codec under
resume and recount, and the chat <-> GenerateContent translation."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchpredict.errors import InvalidArgument
from batchpredict.files import FileState, StoredFile
from batchpredict.formats import codec_for
from batchpredict.formats.chat import chat_completion, chat_to_request
from batchpredict.jobs import JobState, LineFormat, RunsIn, utcnow
from batchpredict.output import ChunkedOutput, make_output_dir
from batchpredict.schema import parse_request
from batchpredict.service import JobRequest, Scope
from batchpredict.store.sqlite import SQLiteJobStore
from tests.conftest import job_service, read_predictions, write_jsonl
from tests.doubles.instant import RESPONSE, InstantTestDouble
from tests.faces.conftest import chat_line


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield SQLiteJobStore(tmp_path / "jobs.sqlite3")
        return
    from batchpredict.store.postgres import PostgresJobStore

    pg = PostgresJobStore(request.getfixturevalue("postgres_url"))
    pg._query("DELETE FROM files")
    yield pg
    pg.close()


def test_files_table_lists_newest_first_by_project_with_a_cursor(store: Any) -> None:
    now = utcnow()
    made = []
    for i in range(5):
        f = StoredFile(id=f"file-{i}", project="a" if i != 2 else "b", filename=f"{i}.jsonl",
                       purpose="batch", create_time=now + timedelta(seconds=i))
        assert store.create_file(f) is True
        made.append(f)
    assert store.create_file(made[0]) is False  # the same id twice: one file
    expired = StoredFile(id="file-old", project="a", filename="x", purpose="batch",
                         create_time=now, expire_time=now - timedelta(seconds=1))
    store.create_file(expired)
    micros = int(utcnow().timestamp() * 1_000_000)
    assert [f.id for f in store.list_files(["a"], micros, 10)] == [
        "file-4", "file-3", "file-1", "file-0"]
    assert [f.id for f in store.list_files(None, micros, 2)] == ["file-4", "file-3"]
    cursor = (int(made[3].create_time.timestamp() * 1_000_000), "file-3")
    assert [f.id for f in store.list_files(["a", "b"], micros, 2, cursor)] == [
        "file-2", "file-1"]
    made[1].state = FileState.DELETED
    store.save_file(made[1])
    assert store.get_file("file-1").state == FileState.DELETED
    assert [f.id for f in store.list_files(["a"], micros, 10)] == ["file-4", "file-3", "file-0"]
    store.delete_file("file-0")
    assert [f.id for f in store.list_files(["a"], micros, 10)] == ["file-4", "file-3"]


async def _openai_job(tmp_path: Path, backend: Any, n: int) -> tuple[Any, Any]:
    src = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", "hi") for i in range(n)])
    service = job_service(SQLiteJobStore(tmp_path / "jobs.sqlite3"), backend, tmp_path)
    job = await service.submit(Scope.local(), JobRequest(
        "t", "test-double", [str(src)], str(tmp_path / "out"), runs_in=RunsIn.COMMAND,
        line_format=LineFormat.OPENAI))
    return service, job


async def test_an_interrupted_openai_job_resumes_writing_each_row_once(tmp_path: Path) -> None:
    backend = InstantTestDouble(batch_size=5, max_concurrency=2, delay_seconds=0.01)
    service, job = await _openai_job(tmp_path, backend, 300)
    interrupt = asyncio.Event()
    task = asyncio.ensure_future(service.scheduler.run_here(job.id, interrupt=interrupt))
    while service.store.get(job.id).counts.done < 20:
        await asyncio.sleep(0.01)
    interrupt.set()
    stopped = await task
    assert stopped.state == JobState.JOB_STATE_RUNNING and 20 <= stopped.counts.done < 300
    done = await service.scheduler.run_here(job.id)
    assert done.state == JobState.JOB_STATE_SUCCEEDED
    assert (done.counts.succeeded, done.counts.failed) == (300, 0)
    assert done.counts.prompt_tokens == 600 and done.counts.candidates_tokens == 600
    lines = read_predictions(tmp_path / "out")
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(300)]


async def test_openai_chunks_written_before_a_crash_are_recounted(tmp_path: Path) -> None:
    backend = InstantTestDouble()
    service, job = await _openai_job(tmp_path, backend, 10)
    job.output_dir = make_output_dir(str(tmp_path / "out"))
    service.store.save_progress(job)
    codec = codec_for(LineFormat.OPENAI)
    earlier = codec.success_line({"custom_id": "r0"}, {}, RESPONSE, "t") + codec.error_line(
        {"custom_id": "r1"}, {}, InvalidArgument("no"), "t")
    ChunkedOutput(job.output_dir).write_chunk(0, 1, earlier)
    done = await service.scheduler.run_here(job.id)
    assert backend.requests == 8
    assert (done.counts.succeeded, done.counts.failed, done.counts.prompt_tokens) == (9, 1, 18)


def test_chat_requests_become_gemini_requests() -> None:
    body = {
        "model": "m", "user": "u", "max_completion_tokens": 20, "temperature": 0.5, "n": 2,
        "stop": "END", "seed": 3, "top_p": 0.9, "logprobs": True, "top_logprobs": 2,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object"}}},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}]},
            {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "Sure?"},
        ],
    }
    assert chat_to_request(body) == {
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "What is this?"},
                                       {"inlineData": {"mimeType": "image/png", "data": "iVBO"}}]},
            {"role": "model", "parts": [{"text": "A cat."}]},
            {"role": "user", "parts": [{"text": "Sure?"}]},
        ],
        "generationConfig": {
            "maxOutputTokens": 20, "temperature": 0.5, "candidateCount": 2,
            "stopSequences": ["END"], "seed": 3, "topP": 0.9, "responseLogprobs": True,
            "logprobs": 2, "responseMimeType": "application/json",
            "responseJsonSchema": {"type": "object"}},
    }
    parse_request(chat_to_request(body))  # a valid Gemini request
    for bad, words in [({"messages": []}, "'messages' is a required property"),
                       ({"messages": [{"role": "tool", "content": "x"}]}, "role"),
                       ({"messages": [{"role": "user", "content": "x"}], "frobnicate": 1},
                        "Unrecognized request argument supplied: frobnicate"),
                       ({"messages": [{"role": "user", "content": "x"}], "stream": True},
                        "'stream' must be false")]:
        with pytest.raises(InvalidArgument) as caught:
            chat_to_request(bad)
        assert words in caught.value.message


def test_gemini_responses_become_chat_completions() -> None:
    response = {
        "candidates": [
            {"content": {"role": "model", "parts": [{"text": "thinking", "thought": True},
                                                    {"text": "Paris"}]},
             "finishReason": "MAX_TOKENS", "index": 0,
             "logprobsResult": {"chosenCandidates": [{"token": "Paris", "logProbability": -0.1}],
                                "topCandidates": [{"candidates": [
                                    {"token": "Paris", "logProbability": -0.1}]}]}},
        ],
        "modelVersion": "smollm2-135m", "responseId": "abc",
        "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1,
                          "thoughtsTokenCount": 2, "totalTokenCount": 8},
    }
    assert chat_completion(response, "m", 7) == {
        "id": "chatcmpl-abc", "object": "chat.completion", "created": 7, "model": "smollm2-135m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"},
                     "logprobs": {"content": [{"token": "Paris", "logprob": -0.1, "top_logprobs": [
                         {"token": "Paris", "logprob": -0.1}]}]},
                     "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
                  "completion_tokens_details": {"reasoning_tokens": 2}},
    }
    line = orjson.loads(codec_for(LineFormat.OPENAI).success_line(
        {"custom_id": "c"}, {}, response, "t"))
    assert codec_for(LineFormat.OPENAI).outcome(line) == (True, 5, 1)  # as the runner counts
