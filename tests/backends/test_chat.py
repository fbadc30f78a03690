"""The one Gemini-to-chat translation (backends/chat.py) and the default temperature it fixes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from batchpredict.backends import chat
from batchpredict.backends.chat import Sampling, response_format, text_messages
from batchpredict.backends.openai import OpenAIBackend, OpenAISettings
from batchpredict.errors import InvalidArgument
from batchpredict.schema import parse_request
from tests.doubles.openai_server import TestDoubleServer


def test_messages_roles_system_and_thoughts() -> None:
    req = parse_request({
        "systemInstruction": {"role": "anything", "parts": [{"text": "Be brief."},
                                                            {"text": "Be kind."}]},
        "contents": [
            {"parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}, {"text": "hmm", "thought": True}]},
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
        ],
    })
    assert text_messages(req, "m") == [
        {"role": "system", "content": "Be brief.\nBe kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "a\nb"},
    ]


def test_text_only_engines_name_the_media_part() -> None:
    req = parse_request({"contents": [{"parts": [
        {"text": "x"}, {"fileData": {"fileUri": "gs://b/v.mp4", "mimeType": "video/mp4"}}]}]})
    with pytest.raises(InvalidArgument) as err:
        text_messages(req, "M")
    assert err.value.message == (
        "Unable to submit request because contents[0].parts[1] is fileData (video/mp4), and the "
        "model M takes text only. Remove the part or use a model that takes video/mp4."
    )


def test_sampling_reads_every_setting_once() -> None:
    cfg = parse_request({"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {
        "temperature": 0.5, "topP": 0.9, "topK": 7, "maxOutputTokens": 9, "seed": 3,
        "stopSequences": ["", "END"], "candidateCount": 2, "presencePenalty": 0.1,
        "responseMimeType": "Application/JSON",
        "responseSchema": {"type": "OBJECT", "nullable": True}}}).config
    s = Sampling.from_config(cfg)
    assert (s.temperature, s.top_p, s.top_k, s.max_output_tokens, s.seed) == (0.5, 0.9, 7, 9, 3)
    assert s.stop_sequences == ("END",) and s.candidate_count == 2
    assert s.response_mime_type == "application/json"
    assert s.json_schema == {"type": ["object", "null"]} and s.schema_field == "responseSchema"
    assert response_format(s, "E") == "json"


def test_unset_temperature_is_the_gemini_default() -> None:
    s = Sampling.from_config(parse_request({"contents": [{"parts": [{"text": "x"}]}]}).config)
    assert s.temperature is None and s.candidate_count == 1
    assert chat.DEFAULT_TEMPERATURE == 1.0
    assert s.temperature_or() == 1.0
    assert s.temperature_or(0.0) == 0.0  # an engine told otherwise
    assert Sampling(temperature=0.0).temperature_or() == 0.0


def test_response_format_errors() -> None:
    with pytest.raises(InvalidArgument, match="responseSchema without responseMimeType"):
        response_format(Sampling(json_schema={"type": "object"}), "E")
    with pytest.raises(InvalidArgument, match=r"text/x\.enum is not supported by E\. Use"):
        response_format(Sampling(response_mime_type="text/x.enum"), "E")
    assert response_format(Sampling(), "E") == "text"


def test_find_stop_and_candidate_seed() -> None:
    assert chat.find_stop("Hello Paris!", [" Paris", "zz"]) == 5
    assert chat.find_stop("Hello", ["zz"]) is None
    assert chat.find_stop("aaaaaaaaaaEND", ["END"], scanned=12) == 10  # straddles the scan point
    assert chat.candidate_seed(7, 0) == 7
    assert len({chat.candidate_seed(7, i) for i in range(4)}) == 4


def test_unsupported_fields_name_who() -> None:
    req = parse_request({"contents": [{"parts": [{"text": "x"}]}],
                         "tools": [{"functionDeclarations": [{"name": "f"}]}]})
    with pytest.raises(InvalidArgument, match="sets tools, which the openai backend does not"):
        chat.refuse_unsupported(req, "the openai backend")


@pytest.fixture
async def openai_backend(double: TestDoubleServer) -> AsyncIterator[OpenAIBackend]:
    b = OpenAIBackend("m", OpenAISettings(base_url=double.url + "/v1", retries=0))
    await b.start()
    yield b
    await b.close()


async def test_openai_leaves_an_unset_temperature_to_the_server(openai_backend, double) -> None:
    """The agreed default on the openai backend: unset means the served model's default, so
    nothing is sent; an explicit value, 0 included, is sent as is."""
    await openai_backend.generate([parse_request({"contents": [{"parts": [{"text": "x"}]}]})])
    assert "temperature" not in double.received[-1][2]
    await openai_backend.generate([parse_request({
        "contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"temperature": 0}})])
    assert double.received[-1][2]["temperature"] == 0
