"""Whole jobs through the CLI against real object stores: gs:// -> gs:// (GCS emulator) and
s3:// -> s3:// (moto server). Wildcard inputs, clear failures, and a job SIGKILLed while it
exports chunks to a bucket, then resumed by running the same command again."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from tests.conftest import cli_env, text_request
from tests.emulators import Bucket

MODELS = """
[[models]]
name = "fast"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"

[[models]]
name = "slow"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
options = { delay_seconds = 0.25, batch_size = 2, max_concurrency = 1 }
"""


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in rows)


def rows(prefix: str, n: int) -> list[dict]:
    return [{"key": f"{prefix}{i}", "request": text_request(f"Say {prefix}{i}.")} for i in range(n)]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    models = tmp_path / "models.toml"
    models.write_text(MODELS)
    return {"BATCHPREDICT_MODELS_FILE": str(models)}


def cli(bucket: Bucket, data_dir: Path, env: dict[str, str]) -> list:
    """(command prefix, environment) for `python -m batchpredict` against `bucket`'s server."""
    return [[sys.executable, "-m", "batchpredict"],
            cli_env(data_dir, **bucket.env(), **env)]


def run(bucket: Bucket, data_dir: Path, env: dict[str, str], *args: str,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd, environ = cli(bucket, data_dir, env)
    return subprocess.run([*cmd, *args], env=environ, capture_output=True, text=True,
                          timeout=timeout)


def jobs_list(bucket: Bucket, data_dir: Path, env: dict[str, str]) -> list[dict]:
    listed = run(bucket, data_dir, env, "jobs", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return orjson.loads(listed.stdout)["batchPredictionJobs"]  # type: ignore[no-any-return]


def predictions(bucket: Bucket, prefix: str = "out/") -> list[dict]:
    """The lines of the one predictions.jsonl under `prefix`; no chunk may be left over."""
    keys = bucket.keys(prefix)
    assert len(keys) == 1 and keys[0].endswith("/predictions.jsonl"), keys
    assert keys[0].startswith(f"{prefix}prediction-model-")
    return [orjson.loads(line) for line in bucket.read(keys[0]).splitlines()]


def test_wildcard_job_bucket_to_bucket(store: Bucket, tmp_path: Path, env: dict) -> None:
    for name, n in (("b", 3), ("a", 4), ("c", 2)):
        store.write(f"in/part-{name}.jsonl", jsonl(rows(name, n)))
    store.write("in/notes.txt", b"not an input\n")
    single = store.write("extra/z.jsonl", jsonl(rows("z", 1)))
    done = run(store, tmp_path / "data", env, "run", store.uri("in/part-*.jsonl"), single,
               "--output", store.uri("out"), "--model", "fast", "--chunk-rows", "2", "-q")
    assert done.returncode == 0, done.stderr
    lines = predictions(store)
    expected = [f"{p}{i}" for p, n in (("a", 4), ("b", 3), ("c", 2), ("z", 1)) for i in range(n)]
    assert [line["key"] for line in lines] == expected
    assert all(line["status"] == "" and line["response"]["candidates"] for line in lines)
    [job] = jobs_list(store, tmp_path / "data", env)
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["completionStats"]["successfulCount"] == str(len(expected))
    out_dir = job["outputInfo"]["gcsOutputDirectory"]
    assert out_dir.startswith(store.uri("out/prediction-model-"))


@pytest.mark.parametrize("missing", ["in/missing.jsonl", "in/*.jsonl", "BUCKET"])
def test_missing_input_is_a_clear_error(store: Bucket, tmp_path: Path, env: dict,
                                        missing: str) -> None:
    uri = (f"{store.scheme}://no-such-bucket-{store.name[-6:]}/in.jsonl" if missing == "BUCKET"
           else store.uri(missing))
    done = run(store, tmp_path / "data", env, "run", uri, "--output", store.uri("out"),
               "--model", "fast", "-q")
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert "Traceback" not in text
    assert uri in " ".join(text.split())  # the table may wrap the message
    assert "does not exist" in text or "matches no file" in text
    assert store.keys("out/") == []


def test_unwritable_output_prefix_is_refused_before_any_job(
    store: Bucket, tmp_path: Path, env: dict
) -> None:
    """The same check as a server's create: a clear error, exit 3 (not found), no job made."""
    src = store.write("in/x.jsonl", jsonl(rows("r", 2)))
    prefix = f"{store.scheme}://no-such-bucket-{store.name[-6:]}/out"
    done = run(store, tmp_path / "data", env, "run", src, "--output", prefix, "--model", "fast",
               "-q")
    text = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 3
    assert "Traceback" not in text
    assert f"The output bucket {store.scheme}://no-such-bucket-{store.name[-6:]} does not exist" \
        in text
    assert jobs_list(store, tmp_path / "data", env) == []


def chunk_keys(bucket: Bucket) -> list[str]:
    return [k for k in bucket.keys("out/") if "/incremental_predictions/" in k]


def test_sigkilled_job_resumes_against_object_storage(store: Bucket, tmp_path: Path,
                                                      env: dict) -> None:
    total = 32
    store.write("in/a.jsonl", jsonl(rows("a", total // 2)))
    store.write("in/b.jsonl", jsonl(rows("b", total // 2)))
    cmd, environ = cli(store, tmp_path / "data", env)
    args = [*cmd, "run", store.uri("in/*.jsonl"), "--output", store.uri("out"), "--model", "slow",
            "--chunk-rows", "2", "--chunk-seconds", "600", "-q"]
    proc = subprocess.Popen(args, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        while len(chunk_keys(store)) < 3:
            assert proc.poll() is None, f"finished before it was killed: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "no chunks reached the bucket"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    chunks = chunk_keys(store)
    before = [orjson.loads(line) for k in chunks for line in store.read(k).splitlines()]
    assert 0 < len(before) < total
    assert not [k for k in store.keys("out/") if k.endswith("predictions.jsonl")
                and "/incremental_predictions/" not in k]

    again = subprocess.run(args, env=environ, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"Resuming job 1 ({len(before)} rows already done)" in again.stderr
    lines = predictions(store)
    expected = [f"{p}{i}" for p in "ab" for i in range(total // 2)]
    assert [line["key"] for line in lines] == expected  # each row once, in input order
    assert lines[: len(before)] == before  # committed rows were kept, not redone
    [job] = jobs_list(store, tmp_path / "data", env)
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["completionStats"] == {
        "successfulCount": str(total), "failedCount": "0", "incompleteCount": "0"}


@pytest.mark.slow
def test_embedded_model_answers_land_in_gcs(gcs: Bucket, tmp_path: Path) -> None:
    reqs = [{"key": f"q{i}", "request": text_request(q, temperature=0, maxOutputTokens=8)}
            for i, q in enumerate(["What is the capital of France?", "Say hello."])]
    gcs.write("in/requests.jsonl", jsonl(reqs))
    done = run(gcs, tmp_path / "data", {}, "run", gcs.uri("in/requests.jsonl"), "--output",
               gcs.uri("out"), "--model", "smollm2-135m", "-q", timeout=300)
    assert done.returncode == 0, done.stderr
    lines = predictions(gcs)
    assert [line["key"] for line in lines] == ["q0", "q1"]
    for line in lines:
        assert line["status"] == ""
        cand = line["response"]["candidates"][0]
        assert cand["content"]["parts"][0]["text"].strip()
        assert 0 < line["response"]["usageMetadata"]["candidatesTokenCount"] <= 8
        assert "SmolLM2" in line["response"]["modelVersion"]
