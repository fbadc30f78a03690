"""The contract as a Vertex user finds it, with the Vertex docs open beside the server: what the
docs' own bodies send, live completion stats, partialFailures, per-row processed_time, an
unwritable output prefix, and model patterns."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import text_request, write_jsonl
from tests.server.conftest import ThreadServer, job_body, predictions, stats


def test_gcs_source_uris_as_one_string_is_one_uri(server: ThreadServer, make_input,
                                                  tmp_path: Path) -> None:
    body = job_body(make_input(3), tmp_path / "out")
    body["inputConfig"]["gcsSource"]["uris"] = body["inputConfig"]["gcsSource"]["uris"][0]
    job = server.wait(server.create(body))
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["inputConfig"]["gcsSource"]["uris"] == [body["inputConfig"]["gcsSource"]["uris"]]
    assert stats(job) == (3, 0, 0)


def test_completion_stats_follow_committed_rows_and_agree_with_progress(
    server: ThreadServer, make_input, tmp_path: Path
) -> None:
    """Sampled while the job runs, while it is cancelling and after: successful + failed is
    always progress.doneCount, and neither ever goes backwards."""
    job = server.create(job_body(make_input(60), tmp_path / "out", model="slow-model"))
    samples = []
    cancelled = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        current = server.get(job)
        if current["state"] != "JOB_STATE_PENDING":
            ok, failed, _ = stats(current)
            samples.append((ok + failed, int(current["progress"]["doneCount"]),
                            current["state"]))
        if not cancelled and samples and samples[-1][0] >= 10:
            assert server.call("POST", f"/v1/{job['name']}:cancel", {}).status == 200
            cancelled = True
        if current["state"] == "JOB_STATE_CANCELLED":
            break
        time.sleep(0.02)
    assert samples[-1][2] == "JOB_STATE_CANCELLED"
    assert all(stat == done for stat, done, _ in samples), samples
    counts = [stat for stat, _, _ in samples]
    assert counts == sorted(counts) and counts[-1] >= 10
    assert any(0 < stat < counts[-1] for stat, _, s in samples if s == "JOB_STATE_RUNNING")
    assert len(predictions(current)) == counts[-1]


def test_partial_failures_hold_the_first_twenty_failed_rows(server: ThreadServer,
                                                             tmp_path: Path) -> None:
    rows: list[object] = [{"key": i, "request": text_request("hi")} for i in range(5)]
    rows += [b"not json"] * 25
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    job = server.wait(server.create(job_body(str(src), tmp_path / "out")))
    assert stats(job) == (5, 25, 0)
    failures = job["partialFailures"]
    assert len(failures) == 20
    assert failures[0] == {
        "code": 3,
        "message": f"Output line 6: Line 6 of {src} is not valid JSON: invalid literal, "
                   "expected 'null' at column 1. Each line must be one JSON object such as "
                   '{"request": {"contents": [...]}}.',
    }
    assert [f["message"].split(":")[0] for f in failures] == [
        f"Output line {n}" for n in range(6, 26)]


def test_each_row_is_stamped_when_it_was_processed(server: ThreadServer, make_input,
                                                   tmp_path: Path) -> None:
    """slow-model answers one row per call, 0.05 s apart: one chunk holds rows with their own
    times, in order."""
    job = server.wait(server.create(job_body(make_input(5), tmp_path / "out",
                                             model="slow-model")))
    times = [line["processed_time"] for line in predictions(job)]
    assert len(set(times)) == 5 and times == sorted(times)


def test_an_output_prefix_that_cannot_be_written_is_refused_at_create(
    server: ThreadServer, make_input
) -> None:
    reply = server.call("POST", server.jobs_path(), job_body(make_input(1), "/proc/out"))
    assert reply.status == 403, reply  # the data policy refuses it before any probe
    assert reply.json["error"]["message"].startswith("The output prefix /proc/out is refused: ")
    listed = server.call("GET", server.jobs_path()).json
    assert listed.get("batchPredictionJobs", []) == []


def test_a_model_pattern_is_not_a_model(server: ThreadServer, make_input,
                                        tmp_path: Path) -> None:
    reply = server.call("POST", server.jobs_path(),
                        job_body(make_input(1), tmp_path / "out", model="gemini-*"))
    assert reply.status == 400
    assert reply.json["error"]["message"] == (
        "Model 'gemini-*' is a pattern, not a model: name one model it matches, e.g. "
        "'gemini-2.5-flash'. `batchpredict models list` shows the registry.")
    models = server.call("GET", "/batchpredict/v1/models").json["models"]
    assert {m["name"]: m["pattern"] for m in models}["gemini-*"] is True
    assert {m["name"]: m["pattern"] for m in models}["smollm2-135m"] is False
