"""The gemini backend: the google-genai SDK pointed at a recording test double of the Gemini API
(the real API cannot be reached here). Requests pass through; answers come back as camelCase."""

from __future__ import annotations

import base64
import re
from typing import Any

from batchpredict.backends.gemini import GeminiBackend, GeminiSettings
from batchpredict.errors import BatchPredictError
from batchpredict.schema import parse_request
from tests.backends.conftest import summary_counts, write_registry
from tests.conftest import read_predictions, text_request, write_jsonl
from tests.doubles.openai_server import TestDoubleServer

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
REQUEST: dict[str, Any] = {
    "systemInstruction": {"parts": [{"text": "Answer in JSON."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "Describe"},
                                   {"inlineData": {"mimeType": "image/png", "data": PNG}},
                                   {"fileData": {"fileUri": "gs://b/cat.jpg",
                                                 "mimeType": "image/jpeg"}}]},
        {"role": "model", "parts": [{"text": "{}"}]},
        {"role": "user", "parts": [{"text": "Again"}]},
    ],
    "generationConfig": {"temperature": 0.2, "topK": 5, "maxOutputTokens": 64,
                         "stopSequences": ["END"], "responseMimeType": "application/json",
                         "responseSchema": {"type": "OBJECT",
                                            "properties": {"a": {"type": "STRING"}}},
                         "thinkingConfig": {"thinkingBudget": 0}},
    "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
    "tools": [{"functionDeclarations": [{"name": "lookup", "description": "find"}]}],
    "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
    "labels": {"team": "ml"},
}


def camel(obj: Any) -> Any:
    """Keys in camelCase (the SDK writes some nested keys in snake_case; the API takes both)."""
    if isinstance(obj, dict):
        return {re.sub(r"_([a-z])", lambda m: m.group(1).upper(), k): camel(v)
                for k, v in obj.items()}
    return obj


async def generate(double: TestDoubleServer, request: dict[str, Any],
                   **settings: Any) -> Any:
    backend = GeminiBackend("gemini-2.5-flash", GeminiSettings(
        base_url=double.url, api_key_env="TEST_GEMINI_KEY", **settings))
    await backend.start()
    try:
        [result] = await backend.generate([parse_request(request)])
    finally:
        await backend.close()
    return result


async def test_requests_pass_through_and_answers_come_back(double, monkeypatch) -> None:
    monkeypatch.setenv("TEST_GEMINI_KEY", "key-123")
    result = await generate(double, REQUEST)
    [(path, headers, body)] = double.received
    assert path.endswith("/models/gemini-2.5-flash:generateContent")
    assert headers["x-goog-api-key"] == "key-123"
    assert body["systemInstruction"] == {"parts": [{"text": "Answer in JSON."}]}
    assert body["safetySettings"] == REQUEST["safetySettings"]
    assert body["tools"] == REQUEST["tools"]
    assert body["toolConfig"] == REQUEST["toolConfig"]
    assert body["labels"] == {"team": "ml"}
    assert camel(body["generationConfig"]) == {
        "temperature": 0.2, "topK": 5.0, "maxOutputTokens": 64, "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}},
        "thinkingConfig": {"thinkingBudget": 0},
    }
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"text": "Describe"}
    blob = parts[1].get("inlineData") or parts[1].get("inline_data")
    assert blob["data"] == PNG  # the bytes travel unchanged
    file_data = parts[2].get("fileData") or parts[2].get("file_data")
    assert file_data["fileUri" if "fileUri" in file_data else "file_uri"] == "gs://b/cat.jpg"
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    # The answer: camelCase, as the API wrote it, without the SDK's own fields.
    assert result == {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "echo: Again"}]},
                        "finishReason": "STOP", "avgLogprobs": -0.25, "index": 0}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 2,
                          "totalTokenCount": 5},
        "modelVersion": "gemini-2.5-flash-test-double",
        "responseId": result["responseId"],
    }


async def test_errors_are_retried_then_reported(double, monkeypatch) -> None:
    monkeypatch.setenv("TEST_GEMINI_KEY", "k")
    result = await generate(double, text_request("x [fault:429]"), retries=2,
                            backoff_initial=0.01)
    assert isinstance(result, BatchPredictError)
    assert result.row_status().startswith('Too Many Requests: {"error": {"code": 429')
    assert "Rate limit reached" in result.message
    assert len(double.received) == 3
    result = await generate(double, text_request("x [fault:400]"), retries=2)
    assert isinstance(result, BatchPredictError) and result.http_code == 400
    assert len(double.received) == 4  # not retried


async def test_a_dropped_connection_is_retried(monkeypatch) -> None:
    monkeypatch.setenv("TEST_GEMINI_KEY", "k")
    server = TestDoubleServer(fault_rate=1.0, fault_kinds=("drop",), max_faults_per_request=1)
    await server.start()
    try:
        result = await generate(server, text_request("hello"), backoff_initial=0.01)
    finally:
        await server.stop()
    assert result["candidates"][0]["content"]["parts"][0]["text"] == "echo: hello"
    assert server.outcomes == {"drop": 1, "ok": 1}


def test_a_job_through_the_cli(run_cli, tmp_path, serve_double) -> None:
    server = TestDoubleServer(record=True, fault_rate=0.3, seed=5, retry_after=0.01)
    url = serve_double(server)
    registry = write_registry(tmp_path / "m.toml", {
        "name": "publishers/google/models/gemini-*", "backend": "gemini", "base_url": url,
        "api_key_env": "TEST_GEMINI_KEY", "backoff_initial": 0.01, "timeout": 2,
    })
    rows = [{"key": i, "request": text_request(f"q{i}")} for i in range(20)]
    out = tmp_path / "out"
    done = run_cli("run", str(write_jsonl(tmp_path / "in.jsonl", rows)), "--output", str(out),
                   "--model", "publishers/google/models/gemini-2.5-flash", "-q",
                   env={"BATCHPREDICT_MODELS_FILE": str(registry), "TEST_GEMINI_KEY": "k"})
    assert done.returncode == 0, done.stderr
    assert summary_counts(done.stdout) == (20, 0, 0)
    lines = read_predictions(out)
    assert [line["response"]["candidates"][0]["content"]["parts"][0]["text"] for line in lines] \
        == [f"echo: q{i}" for i in range(20)]
    assert {line["response"]["modelVersion"] for line in lines} == {"gemini-2.5-flash-test-double"}
    assert all(p.endswith("/models/gemini-2.5-flash:generateContent")
               for p, _, _ in server.received)
