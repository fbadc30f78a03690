"""Object storage away mid-job, for real: the GCS emulator process killed and started again on
its own data (longer than the 7.5 s the old chunk retries covered), and an S3 endpoint (moto
behind a TCP link) cut for longer than the outage deadline."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from tests.faults.conftest import (
    ROWS,
    GcsProcess,
    Link,
    check_every_row_once,
    check_no_row_twice,
    check_no_traceback,
    jsonl,
    request_rows,
    wait_until,
)

pytestmark = pytest.mark.timeout(150)


def gcs_chunks(gcs: GcsProcess) -> list[str]:
    return [k for k in gcs.keys("out/") if "/incremental_predictions/" in k]


def test_gcs_down_for_12_seconds_is_waited_out(tmp_path: Path, model, run_command,
                                               gcs_process: GcsProcess) -> None:
    src = gcs_process.put("in/requests.jsonl", jsonl(request_rows()))
    cmd = run_command(src, "gs://faults/out", env=gcs_process.env(), deadline=120)
    wait_until(lambda: len(gcs_chunks(gcs_process)) >= 2, 60, "two chunks in the bucket")
    gcs_process.kill()
    cmd.wait_for_stderr("waiting for gs://faults/out/prediction-model-", 30)
    time.sleep(12 - 5)  # the watchdog says so after 5 s: 12 s down in all
    gcs_process.start()
    assert cmd.finish() == 0, cmd.stderr
    check_no_traceback(cmd.stderr, cmd.out_text)
    assert "is back after" in cmd.stderr
    [key] = gcs_process.keys("out/")  # predictions.jsonl only: every chunk assembled, removed
    assert key.endswith("/predictions.jsonl")
    check_every_row_once([orjson.loads(line) for line in gcs_process.get(key).splitlines()])
    check_no_row_twice(model)


def s3_keys(s3_server, bucket: str, prefix: str = "out/") -> list[str]:
    return s3_server.list(bucket, prefix)


def test_s3_away_past_the_deadline_fails_resumable_then_resumes(
    tmp_path: Path, model, run_command, s3_server, s3_link: Link
) -> None:
    bucket = s3_server.bucket()
    s3_server.put(bucket.name, "in/requests.jsonl", jsonl(request_rows()))
    env = {**s3_server.env(), "AWS_ENDPOINT_URL": s3_link.endpoint}
    src, out = f"s3://{bucket.name}/in/requests.jsonl", f"s3://{bucket.name}/out"
    cmd = run_command(src, out, env=env, deadline=2)
    wait_until(lambda: len(s3_keys(s3_server, bucket.name)) >= 2, 60, "two chunks")
    s3_link.cut()
    assert cmd.finish(timeout=120) == 1, cmd.stderr
    check_no_traceback(cmd.stderr, cmd.out_text)
    text = " ".join(cmd.out_text.split())
    assert "FAILED" in text and "Gave up after waiting" in text and out in text
    assert "batchpredict jobs resume 1" in text
    chunks = s3_keys(s3_server, bucket.name)
    assert chunks and all("/incremental_predictions/" in k for k in chunks)
    committed = {orjson.loads(line)["key"] for k in chunks
                 for line in s3_server.get(bucket.name, k).splitlines()}
    assert 0 < len(committed) < ROWS

    s3_link.restore()
    again = run_command(src, out, env=env, deadline=60)
    assert again.finish() == 0, again.stderr
    assert f"Resuming job 1 ({len(committed)} rows already done)" in again.stderr
    check_no_traceback(again.stderr, again.out_text)
    [key] = s3_keys(s3_server, bucket.name)
    assert key.endswith("/predictions.jsonl")
    lines = [orjson.loads(line) for line in s3_server.get(bucket.name, key).splitlines()]
    check_every_row_once(lines)
    check_no_row_twice(model, committed_before=committed)
