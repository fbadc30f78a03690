"""Whole jobs through the CLI against a real OpenAI-compatible server: `transformers serve`
(transformers' own server) loading the embedded model's converted folder on CPU.

The server starts once for this module and answers a handful of tiny requests (a few tokens each,
greedy): outputs must carry the server's real text and token counts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backends.conftest import summary_counts, transformers_cli, write_registry
from tests.conftest import read_predictions, text_request, write_jsonl

pytestmark = pytest.mark.slow

MAX_TOKENS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return bytes(reply.read())


def chat(url: str, body: dict) -> dict:
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return dict(json.loads(reply.read()))


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(base URL, model id) of a `transformers serve` process on loopback."""
    from batchpredict.backends.embedded_model import prepare_embedded_model

    folder = str(prepare_embedded_model())  # converts once (~1 min), then a no-op
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [transformers_cli(), "serve", folder, "--host", "127.0.0.1", "--port", str(port),
             "--device", "cpu"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited ({proc.returncode}):\n"
                            f"{log_path.read_text()[-3000:]}")
            try:
                if b"ok" in _get(url + "/health"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not healthy in 180 s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, folder
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_job_gets_the_servers_real_text_and_token_counts(
    run_cli, tmp_path: Path, transformers_server: tuple[str, str]
) -> None:
    url, model_id = transformers_server
    registry = write_registry(tmp_path / "models.toml", {
        "name": "smollm-served", "backend": "openai", "base_url": url + "/v1",
        "served_model": model_id, "concurrency": 2, "timeout": 240, "retries": 2,
    })
    capital = text_request("What is the capital of France?", temperature=0,
                           maxOutputTokens=MAX_TOKENS)
    rows = [
        {"key": "capital", "request": capital},
        {"key": "system", "request": {
            "systemInstruction": {"parts": [{"text": "Answer in one word."}]},
            "contents": [{"role": "user", "parts": [{"text": "Name a colour."}]},
                         {"role": "model", "parts": [{"text": "Blue."}]},
                         {"role": "user", "parts": [{"text": "Another one."}]}],
            "generationConfig": {"temperature": 0, "maxOutputTokens": MAX_TOKENS}}},
        {"key": "twin", "request": capital},  # identical at temperature 0: not sent again
        {"key": "bad", "request": {"contents": [{"role": "user", "parts": [
            {"inlineData": {"mimeType": "application/pdf", "data": "AA=="}}]}]}},
    ]
    out = tmp_path / "out"
    done = run_cli("run", str(write_jsonl(tmp_path / "in.jsonl", rows)), "--output", str(out),
                   "--model", "smollm-served", "-q",
                   env={"BATCHPREDICT_MODELS_FILE": str(registry)}, timeout=400)
    assert done.returncode == 0, done.stderr + done.stdout
    assert summary_counts(done.stdout) == (3, 1, 0)
    lines = {line["key"]: line for line in read_predictions(out)}
    assert lines["bad"]["status"].startswith("Bad Request: ")
    assert "application/pdf" in lines["bad"]["status"]

    for key in ("capital", "system", "twin"):
        response = lines[key]["response"]
        assert lines[key]["status"] == ""
        assert response["modelVersion"] == model_id  # the model the server says answered
        [candidate] = response["candidates"]
        assert candidate["content"]["role"] == "model"
        assert candidate["content"]["parts"][0]["text"].strip()
        assert candidate["finishReason"] in ("STOP", "MAX_TOKENS")
        usage = response["usageMetadata"]
        assert usage["promptTokenCount"] > 5
        assert 0 < usage["candidatesTokenCount"] <= MAX_TOKENS
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage[
            "candidatesTokenCount"]
    assert lines["twin"]["response"]["candidates"] == lines["capital"]["response"]["candidates"]

    # The same question asked directly: the job's line holds exactly the server's answer.
    question = {"role": "user", "content": "What is the capital of France?"}
    direct = chat(url, {"model": model_id, "max_tokens": MAX_TOKENS, "temperature": 0,
                        "messages": [question]})
    mine = lines["capital"]["response"]
    assert mine["candidates"][0]["content"]["parts"][0]["text"] == \
        direct["choices"][0]["message"]["content"]
    assert mine["usageMetadata"]["promptTokenCount"] == direct["usage"]["prompt_tokens"]
    assert mine["usageMetadata"]["candidatesTokenCount"] == direct["usage"]["completion_tokens"]
    finish = {"stop": "STOP", "length": "MAX_TOKENS"}[direct["choices"][0]["finish_reason"]]
    assert mine["candidates"][0]["finishReason"] == finish
    total = sum(line["response"].get("usageMetadata", {}).get("totalTokenCount", 0)
                for line in lines.values())
    assert f"= {total} (successful rows)" in done.stdout


def test_a_server_error_is_a_row_error_not_a_lost_row(
    run_cli, tmp_path: Path, transformers_server: tuple[str, str]
) -> None:
    """The server refuses a model it does not serve (a 4xx): that row says so, not retried."""
    url, _ = transformers_server
    registry = write_registry(tmp_path / "models.toml", {
        "name": "wrong-model", "backend": "openai", "base_url": url + "/v1", "retries": 3,
    })
    rows = [{"key": 0, "request": text_request("hi", maxOutputTokens=2)}]
    out = tmp_path / "out"
    done = run_cli("run", str(write_jsonl(tmp_path / "in.jsonl", rows)), "--output", str(out),
                   "--model", "wrong-model", "-q",
                   env={"BATCHPREDICT_MODELS_FILE": str(registry)}, timeout=120)
    assert done.returncode == 1  # every row failed: the job is FAILED
    [line] = read_predictions(out)
    assert line["status"].startswith(("Bad Request: ", "Not Found: ", "Unprocessable Entity: "))
    assert "wrong-model" in line["status"]
