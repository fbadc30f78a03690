"""One real job on the embedded model through the CLI, and what its output must look like.

The job mixes good rows with every kind of bad line; each test below reads the same run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.conftest import cli_env, read_predictions, text_request, write_jsonl

pytestmark = pytest.mark.slow

MAX_LINE = 4096
GOOD = [
    {"key": "g0", "request": text_request("What is the capital of France?", temperature=0,
                                          maxOutputTokens=8)},
    {"key": "g1", "custom_id": "c-1",
     "request": text_request("Say hello.", temperature=0, maxOutputTokens=6)},
    {"key": "g2", "request": {
        "systemInstruction": {"parts": [{"text": "Answer in one word."}]},
        "contents": [{"role": "user", "parts": [{"text": "Name a colour."}]}],
        "generation_config": {"max_output_tokens": 4, "temperature": 0}}},
]
MORE = [{"key": "m0", "request": text_request("Count to three.", maxOutputTokens=5, seed=1,
                                              temperature=0.7)}]
BAD_ROLE = {"contents": [{"role": "tester",
                          "parts": [{"text": "Explain how AI works in a few words"}]}]}
MEDIA = {"contents": [{"role": "user", "parts": [
    {"text": "What is in this video?"},
    {"fileData": {"fileUri": "gs://cloud-samples-data/generative-ai/video/animals.mp4",
                  "mimeType": "video/mp4"}}]}]}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("embedded")
    main = write_jsonl(tmp / "main.jsonl", [
        GOOD[0],
        {"key": "role", "request": BAD_ROLE},
        b'{"key": "broken", "request": ',
        GOOD[1],
        {"key": "no-request", "prompt": "hi"},
        "",
        {"key": "unknown-field", "request": {"contents": [{"parts": [{"txt": "typo"}]}]}},
        {"key": "too-long", "request": text_request("x" * MAX_LINE)},
        b'{"key": "latin1", "request": {"contents": [{"parts": [{"text": "caf\xe9"}]}]}}',
        {"key": "media", "request": MEDIA},
        GOOD[2],
    ])
    write_jsonl(tmp / "more-1.jsonl", MORE)
    data, out = tmp / "data", tmp / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "batchpredict", "run", str(main), str(tmp / "more-*.jsonl"),
         "--output", str(out), "--display-name", "embedded-e2e"],
        capture_output=True, text=True, timeout=300,
        env=cli_env(data, BATCHPREDICT_MAX_LINE_BYTES=str(MAX_LINE)),
    )
    got = subprocess.run(
        [sys.executable, "-m", "batchpredict", "jobs", "get", "1", "--json"],
        capture_output=True, text=True, env=cli_env(data), timeout=60,
    )
    return {"proc": proc, "lines": read_predictions(out), "main": main, "tmp": tmp,
            "job": orjson.loads(got.stdout)}


def by_key(job: dict) -> dict[str, dict]:
    return {line.get("key"): line for line in job["lines"]}


def bad_request(message: str) -> str:
    body = {"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT"}}
    import json

    return "Bad Request: " + json.dumps(body)


def test_the_job_succeeds_with_a_summary(job: dict) -> None:
    proc = job["proc"]
    assert proc.returncode == 0, proc.stderr
    assert "SUCCEEDED" in proc.stdout
    assert "4 succeeded, 7 failed, 0 incomplete" in proc.stdout
    # the whole output path on one line, ready to copy, however narrow the terminal
    out = job["tmp"] / "out"
    assert re.search(rf"^output  {out}/prediction-model-[^/\s]+/predictions\.jsonl$",
                     proc.stdout, re.M), proc.stdout
    assert "Loading weights" not in proc.stderr  # no library progress bars beside ours
    assert "Traceback" not in proc.stderr


def test_rows_come_back_once_each_in_input_order(job: dict) -> None:
    keys = [line.get("key") for line in job["lines"]]
    # the unparseable lines (broken JSON, over the size limit, not UTF-8) have no key to echo
    assert keys == ["g0", "role", None, "g1", "no-request", "unknown-field", None,
                    None, "media", "g2", "m0"]


def test_successful_line_has_the_contract_shape(job: dict) -> None:
    line = by_key(job)["g0"]
    assert list(line) == ["key", "status", "processed_time", "request", "response"]
    assert line["status"] == ""
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["processed_time"])
    assert line["request"] == GOOD[0]["request"]
    response = line["response"]
    assert set(response) == {"candidates", "modelVersion", "usageMetadata"}
    (cand,) = response["candidates"]
    assert cand["content"]["role"] == "model"
    assert isinstance(cand["content"]["parts"][0]["text"], str)
    assert cand["content"]["parts"][0]["text"].strip()
    assert cand["finishReason"] in ("STOP", "MAX_TOKENS")
    assert isinstance(cand["avgLogprobs"], float) and cand["avgLogprobs"] < 0
    assert response["modelVersion"] == "SmolLM2-135M-Instruct-onnx-int4"  # the default engine
    usage = response["usageMetadata"]
    assert usage["promptTokenCount"] > 5
    assert 1 <= usage["candidatesTokenCount"] <= 8
    assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["candidatesTokenCount"]


def test_extra_fields_are_echoed(job: dict) -> None:
    line = by_key(job)["g1"]
    assert line["custom_id"] == "c-1"
    assert line["request"] == GOOD[1]["request"]
    # snake_case requests are accepted and echoed exactly as given
    assert by_key(job)["g2"]["request"] == GOOD[2]["request"]
    assert by_key(job)["g2"]["status"] == ""


def test_invalid_role_row_matches_vertex(job: dict) -> None:
    line = by_key(job)["role"]
    assert line["status"] == (
        'Bad Request: {"error": {"code": 400, "message": "Please use a valid role: user, model.", '
        '"status": "INVALID_ARGUMENT"}}'
    )
    assert line["request"] == BAD_ROLE
    assert line["response"] == {}


def test_every_bad_line_kind_becomes_an_error_line(job: dict) -> None:
    main = job["main"]
    lines = job["lines"]
    expected = {
        2: f"Line 3 of {main} is not valid JSON: unexpected end of data at column 30. "
           "Each line must be one JSON object such as "
           '{"request": {"contents": [...]}}.',
        4: f'Line 5 of {main} has no "request" field. Put the GenerateContentRequest under '
           '"request": {"request": {"contents": [...]}}.',
        5: 'Invalid JSON payload received. Unknown name "txt" at \'contents[0].parts[0]\': '
           "Cannot find field.",
        7: f"Line 9 of {main} is not valid UTF-8 (byte 68). Save the file as UTF-8.",
    }
    for index, message in expected.items():
        assert lines[index]["status"] == bad_request(message), index
        assert lines[index]["response"] == {}
    too_long = lines[6]["status"]
    assert too_long.startswith("Bad Request: ")
    assert f"Line 8 of {main} is " in too_long
    assert f"bytes; the limit is {MAX_LINE} bytes" in too_long
    assert lines[4]["prompt"] == "hi"  # the fields it had are still echoed


def test_media_part_says_the_model_takes_text_only(job: dict) -> None:
    status = by_key(job)["media"]["status"]
    assert status.startswith('Bad Request: {"error": {"code": 400, "message": "')
    assert "contents[0].parts[1]" in status
    assert "video/mp4" in status
    assert "text only" in status


def test_counts_and_usage_over_successful_rows(job: dict) -> None:
    api = job["job"]
    assert api["state"] == "JOB_STATE_SUCCEEDED"
    assert api["displayName"] == "embedded-e2e"
    assert api["completionStats"] == {
        "successfulCount": "4", "failedCount": "7", "incompleteCount": "0"}
    ok = [line for line in job["lines"] if line["status"] == ""]
    prompt = sum(line["response"]["usageMetadata"]["promptTokenCount"] for line in ok)
    cand = sum(line["response"]["usageMetadata"]["candidatesTokenCount"] for line in ok)
    assert api["progress"]["promptTokenCount"] == str(prompt)
    assert api["progress"]["candidatesTokenCount"] == str(cand)
    assert api["progress"]["totalCount"] == "11"
    out_dir = api["outputInfo"]["gcsOutputDirectory"]
    assert re.search(r"/prediction-model-\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", out_dir)
    assert sorted(p.name for p in Path(out_dir).iterdir()) == ["predictions.jsonl"]
