"""`batchpredict run` on an OpenAI-format file, as a `vllm run-batch -i in.jsonl -o out.jsonl`
user would switch: the output and error files, line by line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tests.conftest import read_predictions, write_jsonl
from tests.faces.conftest import chat_line

ANY = object()  # ids and times: any value of the right kind

OK_BODY = {"id": ANY, "object": "chat.completion", "created": ANY, "model": "test-double",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                        "logprobs": None, "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}}


def ok(custom_id: str) -> dict[str, Any]:
    return {"id": ANY, "custom_id": custom_id, "error": None,
            "response": {"status_code": 200, "request_id": ANY, "body": OK_BODY}}


def same(actual: Any, expected: Any) -> bool:
    """Equal, where ANY in `expected` takes any string or number."""
    if expected is ANY:
        return isinstance(actual, str | int) and actual != ""
    if isinstance(expected, dict):
        return (isinstance(actual, dict) and actual.keys() == expected.keys()
                and all(same(actual[k], v) for k, v in expected.items()))
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) == len(expected)
                and all(same(a, e) for a, e in zip(actual, expected, strict=True)))
    return bool(actual == expected)


def read(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_run_an_openai_file_writes_output_and_error_files(run_cli, tmp_path: Path,
                                                          models_file: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [
        chat_line("r1", "What is 2+2?", max_tokens=8),
        b'{"custom_id": "broken", ',
        {**chat_line("emb", "hi"), "url": "/v1/embeddings"},
        chat_line("tools", "hi", tools=[{"type": "function"}]),
        chat_line("r2", "Name a colour.", temperature=0),
    ])
    out = tmp_path / "out.jsonl"
    env = {"BATCHPREDICT_MODELS_FILE": str(models_file)}
    proc = run_cli("run", str(source), "--output-file", str(out), "--model", "fast-model",
                   "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"{out}: 2 lines (succeeded rows)" in proc.stderr

    output = read(out)
    assert [line["custom_id"] for line in output] == ["r1", "r2"]
    for line, custom_id in zip(output, ["r1", "r2"], strict=True):
        assert same(line, ok(custom_id)), line
    assert output[0]["id"].startswith("batch_req_")
    assert output[0]["response"]["body"]["id"].startswith("chatcmpl-")

    errors = read(tmp_path / "out.errors.jsonl")
    assert same(errors[0], {"id": ANY, "custom_id": None, "response": None, "error": {
        "code": "invalid_request", "message": ANY}})
    assert errors[0]["error"]["message"].startswith(f"Line 2 of {source} is not valid JSON")
    assert same(errors[1], {"id": ANY, "custom_id": "emb", "response": None, "error": {
        "code": "invalid_request", "message": ANY}})
    assert "has url '/v1/embeddings'" in errors[1]["error"]["message"]
    assert same(errors[2], {"id": ANY, "custom_id": "tools", "error": None, "response": {
        "status_code": 400, "request_id": ANY, "body": {"error": {
            "message": "'tools' is not supported in a batch here: batchpredict's backends "
                       "answer plain chat requests. Remove it.",
            "type": "invalid_request_error", "param": None, "code": "invalid_argument"}}}})
    assert len(errors) == 3


def test_output_prefix_still_works_and_jobs_list_shows_the_face(run_cli, tmp_path: Path,
                                                       models_file: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [chat_line(f"r{i}", "hi") for i in range(3)])
    env = {"BATCHPREDICT_MODELS_FILE": str(models_file)}
    prefix = tmp_path / "out"
    proc = run_cli("run", str(source), "--output", str(prefix), "--model", "fast-model", "-q",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    lines = read_predictions(prefix)
    assert [line["custom_id"] for line in lines] == ["r0", "r1", "r2"]
    assert all(same(line, ok(line["custom_id"])) for line in lines)
    listed = run_cli("jobs", "list", env=env).stdout.splitlines()
    assert "face" in listed[1].split() and "cli" in listed[3].split(), listed
