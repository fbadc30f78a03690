"""Gemini request -> chat completions and back, against the recording test-double server."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from batchpredict.backends.openai import (
    OpenAIBackend,
    OpenAISettings,
    gemini_schema_to_json_schema,
    to_gemini_response,
)
from batchpredict.config import Settings
from batchpredict.data_gate import DataGate
from batchpredict.errors import BatchPredictError
from batchpredict.schema import parse_request
from tests.doubles.openai_server import TestDoubleServer

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()


@pytest.fixture
async def backend(double: TestDoubleServer) -> AsyncIterator[OpenAIBackend]:
    b = OpenAIBackend("my-model", OpenAISettings(base_url=double.url + "/v1", retries=0,
                                                 headers={"X-Team": "ml"}))
    await b.start()
    yield b
    await b.close()


async def ask(backend: OpenAIBackend, request: dict[str, Any]) -> Any:
    [result] = await backend.generate([parse_request(request)])
    return result


async def test_a_full_request_maps_to_chat_completions(backend, double) -> None:
    result = await ask(backend, {
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Be kind."}]},
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}, {"text": "secret", "thought": True}]},
            {"role": "user", "parts": [{"text": "What is this?"},
                                       {"inlineData": {"mimeType": "image/png", "data": PNG}}]},
        ],
        "generationConfig": {
            "temperature": 0.3, "topP": 0.9, "topK": 20, "maxOutputTokens": 50,
            "stopSequences": ["\n\n"], "seed": 7, "candidateCount": 2,
            "presencePenalty": 0.5, "frequencyPenalty": -0.5,
            "responseLogprobs": True, "logprobs": 3,
        },
        "safetySettings": [{"category": "HARM_CATEGORY_HATE_SPEECH", "threshold": "BLOCK_NONE"}],
        "labels": {"team": "ml"},
    })
    path, headers, body = double.received[-1]
    assert path == "/v1/chat/completions"
    assert headers["X-Team"] == "ml"
    assert body == {
        "model": "my-model",
        "messages": [
            {"role": "system", "content": "Be brief.\nBe kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ]},
        ],
        "temperature": 0.3, "top_p": 0.9, "top_k": 20, "seed": 7, "presence_penalty": 0.5,
        "frequency_penalty": -0.5, "max_tokens": 50, "stop": ["\n\n"], "n": 2,
        "logprobs": True, "top_logprobs": 3,
    }
    assert [c["index"] for c in result["candidates"]] == [0, 1]
    first = result["candidates"][0]
    assert first["content"] == {"role": "model", "parts": [{"text": "echo: What is this?"}]}
    assert first["finishReason"] == "STOP"
    assert first["avgLogprobs"] == -0.5
    assert first["logprobsResult"]["chosenCandidates"][0] == {"token": "echo:",
                                                             "logProbability": -0.5}
    assert result["modelVersion"] == "my-model"
    assert result["usageMetadata"] == {"promptTokenCount": 9, "candidatesTokenCount": 8,
                                       "totalTokenCount": 17}


async def test_json_output_and_schema(backend, double) -> None:
    await ask(backend, {"contents": [{"parts": [{"text": "x"}]}],
                        "generationConfig": {"responseMimeType": "application/json"}})
    assert double.received[-1][2]["response_format"] == {"type": "json_object"}
    await ask(backend, {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {
        "responseMimeType": "application/json",
        "responseSchema": {"type": "OBJECT", "propertyOrdering": ["a", "b"], "required": ["a"],
                           "properties": {"a": {"type": "STRING", "enum": ["x", "y"]},
                                          "b": {"type": "ARRAY", "maxItems": "3", "nullable": True,
                                                "items": {"type": "INTEGER"}}}}}})
    assert double.received[-1][2]["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "response",
        "schema": {"type": "object", "required": ["a"], "properties": {
            "a": {"type": "string", "enum": ["x", "y"]},
            "b": {"type": ["array", "null"], "maxItems": 3, "items": {"type": "integer"}}}}}}
    raw = {"type": "object", "properties": {"n": {"type": "number"}}}
    await ask(backend, {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {
        "responseMimeType": "application/json", "responseJsonSchema": raw}})
    assert double.received[-1][2]["response_format"]["json_schema"]["schema"] == raw


def test_gemini_schema_any_of_and_snake_case() -> None:
    assert gemini_schema_to_json_schema(
        {"any_of": [{"type": "STRING"}, {"type": "NUMBER"}], "min_items": "1"}
    ) == {"anyOf": [{"type": "string"}, {"type": "number"}], "minItems": 1}


async def test_max_tokens_field_and_length_finish(double) -> None:
    b = OpenAIBackend("m", OpenAISettings(base_url=double.url + "/v1",
                                          max_tokens_field="max_completion_tokens"))
    try:
        [result] = await b.generate([parse_request({
            "contents": [{"parts": [{"text": "one two three four"}]}],
            "generationConfig": {"maxOutputTokens": 2}})])
    finally:
        await b.close()
    assert double.received[-1][2]["max_completion_tokens"] == 2
    assert result["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert result["candidates"][0]["content"]["parts"][0]["text"] == "echo: one"
    assert "avgLogprobs" not in result["candidates"][0]  # none returned, none invented


async def test_file_data_images_are_fetched_under_the_media_policy(
    backend, double, tmp_path: Path, monkeypatch
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "cat.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (tmp_path / "secret.png").write_bytes(b"no")
    # a job's backend runs in its project's media scope, built from the app's settings
    gate = DataGate(Settings(data_dir=str(tmp_path / "data"), media_roots=str(media)),
                    restricted=False)
    backend = gate.scoped_backend(backend, "p")
    await ask(backend, {"contents": [{"parts": [
        {"fileData": {"fileUri": f"file://{media}/cat.png", "mimeType": "image/png"}}]}]})
    content = double.received[-1][2]["messages"][0]["content"]
    assert content == [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    sent = len(double.received)
    refused = await ask(backend, {"contents": [{"parts": [
        {"fileData": {"fileUri": f"file://{tmp_path}/secret.png", "mimeType": "image/png"}}]}]})
    assert isinstance(refused, BatchPredictError) and refused.code == 400
    assert "outside the allowed media roots" in refused.message
    assert len(double.received) == sent  # refused before sending


async def test_audio_and_text_media(backend, double) -> None:
    wav = base64.b64encode(b"RIFF....WAVE").decode()
    txt = base64.b64encode("notes: été".encode()).decode()
    await ask(backend, {"contents": [{"parts": [
        {"inlineData": {"mimeType": "audio/wav", "data": wav}},
        {"inlineData": {"mimeType": "text/plain", "data": txt}}]}]})
    assert double.received[-1][2]["messages"][0]["content"] == [
        {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
        {"type": "text", "text": "notes: été"},
    ]


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ({"contents": [{"parts": [
            {"inlineData": {"mimeType": "application/pdf", "data": "AA=="}}]}]},
         "contents[0].parts[0] is inlineData (application/pdf), which the openai backend cannot "
         "send"),
        ({"contents": [{"parts": [{"functionCall": {"name": "f", "args": {}}}]}]},
         "contents[0].parts[0] is functionCall, which the openai backend does not support"),
        ({"contents": [{"role": "model", "parts": [
            {"inlineData": {"mimeType": "image/png", "data": PNG}}]}]},
         "in a assistant turn"),
        ({"contents": [{"parts": [{"text": "x"}]}], "tools": [{"functionDeclarations": []}]},
         "it sets tools, which the openai backend does not support"),
        ({"contents": [{"parts": [{"text": "x"}]}],
          "generationConfig": {"responseModalities": ["IMAGE"]}},
         "responseModalities other than TEXT"),
        ({"contents": [{"parts": [{"text": "x"}]}],
          "generationConfig": {"responseMimeType": "text/x.enum"}},
         "responseMimeType text/x.enum is not supported"),
        ({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "!!"}}]}]},
         "Base64 decoding failed"),
    ],
)
async def test_what_cannot_be_sent_is_a_400_on_that_row(backend, double, request_, message) -> None:
    result = await ask(backend, request_)
    assert isinstance(result, BatchPredictError), result
    assert result.code == 400 and message in result.message
    assert double.received == []


async def test_images_off_for_a_text_only_server(double) -> None:
    b = OpenAIBackend("m", OpenAISettings(base_url=double.url + "/v1", images=False))
    try:
        [result] = await b.generate([parse_request({"contents": [{"parts": [
            {"inlineData": {"mimeType": "image/jpeg", "data": PNG}}]}]})])
    finally:
        await b.close()
    assert isinstance(result, BatchPredictError) and "images = false" in result.message


def test_response_mapping_edge_cases() -> None:
    out = to_gemini_response({
        "id": "abc", "model": "served/name",
        "choices": [
            {"index": 0, "finish_reason": "content_filter", "message": {"content": None}},
            {"index": 1, "finish_reason": "weird", "message": {"content": "hi"},
             "logprobs": {"content": [{"token": "hi", "logprob": -1.0},
                                      {"token": "!", "logprob": -3.0}]}},
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 30, "total_tokens": 40,
                  "completion_tokens_details": {"reasoning_tokens": 20},
                  "prompt_tokens_details": {"cached_tokens": 4}},
    })
    assert out["candidates"][0]["finishReason"] == "SAFETY"
    assert out["candidates"][0]["content"]["parts"] == [{"text": ""}]
    assert out["candidates"][1]["finishReason"] == "OTHER"
    assert out["candidates"][1]["avgLogprobs"] == -2.0
    assert "logprobsResult" not in out["candidates"][1]  # not asked for
    assert out["modelVersion"] == "served/name" and out["responseId"] == "abc"
    assert out["usageMetadata"] == {"promptTokenCount": 10, "candidatesTokenCount": 10,
                                    "totalTokenCount": 40, "thoughtsTokenCount": 20,
                                    "cachedContentTokenCount": 4}


async def test_a_non_chat_answer_is_a_bad_gateway_row(double) -> None:
    b = OpenAIBackend("m", OpenAISettings(base_url=double.url + "/v1/models/x", retries=0))
    try:
        [result] = await b.generate([parse_request({"contents": [{"parts": [{"text": "x"}]}]})])
    finally:
        await b.close()
    assert isinstance(result, BatchPredictError)
    assert result.http_code == 404  # aiohttp's 404 for an unknown path: not retried
