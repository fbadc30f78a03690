"""The default embedded engine (OnnxGenaiBackend) with the real int4 SmolLM2-135M-Instruct.

The model loads once per session (`onnx_backend` in conftest.py, ~1 s). Outputs stay short.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from batchpredict.errors import FailedPrecondition, InvalidArgument
from batchpredict.schema import parse_request
from tests.conftest import cli_env, text_request, write_jsonl

pytestmark = pytest.mark.slow

CAPITAL = "What is the capital of France?"
STORY = "Tell me a story about a dragon."
MODEL_VERSION = "SmolLM2-135M-Instruct-onnx-int4"
PERSON = {  # a Gemini responseSchema
    "type": "OBJECT",
    "properties": {
        "name": {"type": "STRING", "maxLength": 24},
        "job": {"type": "STRING", "enum": ["baker", "pilot", "teacher"]},
        "age": {"type": "INTEGER", "minimum": 1, "maximum": 99},
        "happy": {"type": "BOOLEAN"},
    },
    "required": ["name", "job", "age", "happy"],
    "propertyOrdering": ["name", "job", "age", "happy"],
}


def req(text: str = CAPITAL, system: str | None = None, **config: Any):
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if config:
        body["generationConfig"] = config
    return parse_request(body)


def gen(backend: Any, *requests: Any) -> list:
    return asyncio.run(backend.generate(list(requests)))


def text_of(response: dict, i: int = 0) -> str:
    return response["candidates"][i]["content"]["parts"][0]["text"]


def test_greedy_answer_and_response_shape(onnx_backend):
    [res] = gen(onnx_backend, req(temperature=0, maxOutputTokens=12))
    assert set(res) == {"candidates", "modelVersion", "usageMetadata"}
    assert res["modelVersion"] == MODEL_VERSION
    [cand] = res["candidates"]
    assert set(cand) == {"content", "finishReason", "avgLogprobs"}
    assert cand["content"]["role"] == "model"
    assert "Paris" in text_of(res)
    assert isinstance(cand["avgLogprobs"], float) and cand["avgLogprobs"] < 0
    json.dumps(res)


def test_usage_counts_follow_the_chat_template(onnx_backend):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(onnx_backend.folder, local_files_only=True)

    def templated(messages: list[dict]) -> int:
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(hf(text, add_special_tokens=False)["input_ids"])

    plain, system = gen(onnx_backend, req(temperature=0, maxOutputTokens=16),
                        req(system="Answer in one word.", maxOutputTokens=2))
    usage = plain["usageMetadata"]
    assert usage["promptTokenCount"] == templated([{"role": "user", "content": CAPITAL}])
    assert 0 < usage["candidatesTokenCount"] <= 16
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]
    assert system["usageMetadata"]["promptTokenCount"] == templated(
        [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": CAPITAL}]
    )


def test_max_output_tokens(onnx_backend):
    [res] = gen(onnx_backend, req("Write a long essay about the history of Rome.",
                                  temperature=0, maxOutputTokens=4))
    assert res["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert res["usageMetadata"]["candidatesTokenCount"] == 4
    assert text_of(res)


def test_stop_sequences(onnx_backend):
    full, cut = gen(onnx_backend, req(temperature=0, maxOutputTokens=12),
                    req(temperature=0, maxOutputTokens=12, stopSequences=[" Paris", "zzz"]))
    assert " Paris" in text_of(full)
    assert text_of(cut) == text_of(full).split(" Paris")[0]
    assert cut["candidates"][0]["finishReason"] == "STOP"
    # generation stopped at the stop sequence, not at the end of the answer
    assert (cut["usageMetadata"]["candidatesTokenCount"]
            < full["usageMetadata"]["candidatesTokenCount"])


def test_seed_reproduces_a_row_whatever_shares_its_batch(onnx_backend):
    from batchpredict.backends.onnx_engine import OnnxGenaiBackend

    story = {"temperature": 1.0, "seed": 1234, "maxOutputTokens": 12, "topP": 0.95}
    [alone] = gen(onnx_backend, req(STORY, **story))
    mixed = gen(
        onnx_backend,
        req("Explain quantum computing in detail, with examples." * 3, maxOutputTokens=5),
        req(STORY, **story),
        req("Hi", temperature=0.7, seed=1, topK=5, maxOutputTokens=12, candidateCount=2),
        req("A person.", responseMimeType="application/json", responseSchema=PERSON, seed=3),
        req(STORY, **{**story, "seed": 1234}),  # the same row twice in one batch
    )
    for res in (mixed[1], mixed[4]):
        assert text_of(res) == text_of(alone)
        assert res["candidates"][0]["avgLogprobs"] == pytest.approx(
            alone["candidates"][0]["avgLogprobs"], abs=1e-4)
    # a rerun on a freshly loaded model answers the same
    fresh = OnnxGenaiBackend()
    try:
        [again] = gen(fresh, req(STORY, **story))
    finally:
        asyncio.run(fresh.close())
    assert text_of(again) == text_of(alone)
    others = gen(onnx_backend, *[req(STORY, **{**story, "seed": s}) for s in (1, 2, 3)])
    assert len({text_of(r) for r in [*others, alone]}) > 1  # the seed matters


def test_unset_temperature_samples_at_gemini_default(onnx_backend):
    """chat.py's agreed default: an unset temperature is the model's default, 1.0."""
    assert onnx_backend.default_temperature == 1.0
    unset, explicit = gen(onnx_backend, req(STORY, seed=99, maxOutputTokens=10),
                          req(STORY, seed=99, temperature=1.0, maxOutputTokens=10))
    assert text_of(unset) == text_of(explicit)
    others = gen(onnx_backend, *[req(STORY, seed=s, maxOutputTokens=10) for s in (1, 2)])
    assert len({text_of(r) for r in [unset, *others]}) > 1  # it samples


def test_sampling_cuts_reduce_to_greedy(onnx_backend):
    greedy, top_k_1, tiny_top_p, penalized = gen(
        onnx_backend,
        req("Name some fruits.", temperature=0, maxOutputTokens=10),
        req("Name some fruits.", temperature=1.5, topK=1, seed=4, maxOutputTokens=10),
        req("Name some fruits.", temperature=1.5, topP=0.0, seed=5, maxOutputTokens=10),
        req("Name some fruits.", temperature=0, frequencyPenalty=1.9, maxOutputTokens=10),
    )
    assert text_of(top_k_1) == text_of(greedy)
    assert text_of(tiny_top_p) == text_of(greedy)
    assert text_of(penalized)  # penalties apply (the text may or may not change)


def test_candidate_count(onnx_backend):
    [res] = gen(onnx_backend, req("Tell me a joke.", candidateCount=2, maxOutputTokens=8, seed=5))
    cands = res["candidates"]
    assert [c["index"] for c in cands] == [0, 1]
    assert all(c["content"]["parts"][0]["text"] for c in cands)
    assert text_of(res, 0) != text_of(res, 1)
    usage = res["usageMetadata"]
    assert usage["candidatesTokenCount"] <= 16
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]


def test_json_schema_output_parses_and_validates(onnx_backend):
    jsonschema = pytest.importorskip("jsonschema")
    from batchpredict.backends.chat import gemini_schema_to_json_schema

    raw_schema = {"type": "object", "properties": {"colours": {
        "type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]},
        "minItems": 1, "maxItems": 3}}, "required": ["colours"]}
    common = {"responseMimeType": "application/json", "maxOutputTokens": 80}
    results = gen(
        onnx_backend,
        req("Describe a person as JSON.", temperature=0, responseSchema=PERSON, **common),
        req("Describe a person as JSON.", seed=7, candidateCount=2, responseSchema=PERSON,
            **common),
        req("Pick some colours.", temperature=0.7, seed=1, responseJsonSchema=raw_schema,
            **common),
        req("Give me a JSON object with your name.", temperature=0, **common),
        req(maxOutputTokens=6, temperature=0),  # a plain row in the same call
    )
    person = {**gemini_schema_to_json_schema(PERSON), "additionalProperties": False}
    checks = [(results[0], 0, person), (results[1], 0, person), (results[1], 1, person),
              (results[2], 0, raw_schema)]
    for res, i, schema in checks:
        assert res["candidates"][i]["finishReason"] == "STOP", res
        value = json.loads(text_of(res, i))
        jsonschema.validate(value, schema)
        if schema is person:
            assert list(value) == PERSON["propertyOrdering"]
    assert isinstance(json.loads(text_of(results[3])), dict)  # no schema: any object
    assert "Paris" in text_of(results[4])
    # structured rows reproduce too
    [again] = gen(onnx_backend, req("Describe a person as JSON.", seed=7, candidateCount=2,
                                    responseSchema=PERSON, **common))
    assert [text_of(again, i) for i in (0, 1)] == [text_of(results[1], i) for i in (0, 1)]


def test_bad_rows_are_row_errors(onnx_backend):
    video = parse_request({"contents": [{"role": "user", "parts": [
        {"text": "What is in this video?"},
        {"fileData": {"fileUri": "gs://b/v.mp4", "mimeType": "video/mp4"}}]}]})
    tools = parse_request({"contents": [{"parts": [{"text": "Weather?"}]}],
                           "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]})
    enum = req(responseMimeType="text/x.enum")
    bad_video, ok, bad_tools, bad_enum = gen(
        onnx_backend, video, req(temperature=0, maxOutputTokens=4), tools, enum)
    assert isinstance(bad_video, InvalidArgument) and bad_video.code == 400
    assert bad_video.message == (
        "Unable to submit request because contents[0].parts[1] is fileData (video/mp4), and the "
        f"model {MODEL_VERSION} takes text only. Remove the part or use a model that takes "
        "video/mp4."
    )
    assert isinstance(bad_tools, InvalidArgument) and "sets tools" in bad_tools.message
    assert isinstance(bad_enum, InvalidArgument) and "text/x.enum" in bad_enum.message
    assert isinstance(ok, dict) and text_of(ok)


def test_cancel_stops_generation(onnx_backend):
    async def scenario() -> float:
        long = req("Count from 1 to 1000, separated by commas.", maxOutputTokens=2000)
        task = asyncio.create_task(onnx_backend.generate([long]))
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - t0

    assert asyncio.run(scenario()) < 2.0
    [res] = gen(onnx_backend, req(maxOutputTokens=4))  # and the model is free again
    assert text_of(res)


def test_missing_model_tells_the_user_to_pull(tmp_path: Path, monkeypatch):
    from batchpredict.backends.onnx_engine import OnnxGenaiBackend

    cache = tmp_path / "models" / "SmolLM2-135M-Instruct"
    monkeypatch.setenv("BATCHPREDICT_MODEL_CACHE", str(cache))
    with pytest.raises(FailedPrecondition, match=r"Run `batchpredict models pull` once"):
        asyncio.run(OnnxGenaiBackend().start())
    # and through the command line: one line, no traceback
    import subprocess
    import sys

    inp = write_jsonl(tmp_path / "in.jsonl", [{"request": text_request("Hi")}])
    done = subprocess.run(
        [sys.executable, "-m", "batchpredict", "run", str(inp), "--output", str(tmp_path / "o")],
        capture_output=True, text=True, timeout=120,
        env={**cli_env(tmp_path / "data"), "BATCHPREDICT_MODEL_CACHE": str(cache)},
    )
    # the job is made, then fails with the reason in its summary (as a server's job would)
    assert done.returncode == 1
    text = " ".join(done.stdout.split())
    assert "state FAILED" in text and "batchpredict models pull" in text
    assert "Traceback" not in done.stdout + done.stderr
