"""The unmodified google-genai SDK against a real server: Vertex mode and express mode."""

from __future__ import annotations

import time
from pathlib import Path

import google.oauth2.credentials
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.conftest import text_request
from tests.emulators import Bucket
from tests.server.conftest import ThreadServer

FINISHED = {types.JobState.JOB_STATE_SUCCEEDED, types.JobState.JOB_STATE_FAILED,
            types.JobState.JOB_STATE_CANCELLED}


def vertex_client(server: ThreadServer, token: str = "t", project: str = "p") -> genai.Client:
    return genai.Client(
        vertexai=True,
        project=project,
        location="us-central1",
        credentials=google.oauth2.credentials.Credentials(token=token),
        http_options=types.HttpOptions(base_url=server.url),
    )


def express_client(server: ThreadServer, api_key: str) -> genai.Client:
    return genai.Client(vertexai=True, api_key=api_key,
                        http_options=types.HttpOptions(base_url=server.url))


def wait(client: genai.Client, name: str, timeout: float = 120) -> types.BatchJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.batches.get(name=name)
        if job.state in FINISHED:
            return job
        assert time.monotonic() < deadline, f"job still {job.state}"
        time.sleep(0.1)


def local_source(path: str) -> types.BatchJobSource:
    """In Vertex mode the SDK takes a string `src` only as gs:// or bq://; a BatchJobSource
    carries any URI the server can read, such as a local path."""
    return types.BatchJobSource(format="jsonl", gcs_uri=[path])


def local_dest(path: Path) -> types.BatchJobDestination:
    return types.BatchJobDestination(format="jsonl", gcs_uri=str(path))


@pytest.mark.slow
def test_vertex_mode_gcs_and_the_embedded_model(server: ThreadServer, gcs: Bucket) -> None:
    rows = [{"key": f"k{i}", "request": text_request(q, maxOutputTokens=8)}
            for i, q in enumerate(["What is 2+2?", "Name a colour.", "Say hello."])]
    gcs.write("in/requests.jsonl", b"".join(orjson.dumps(r) + b"\n" for r in rows))
    client = vertex_client(server)

    job = client.batches.create(
        model="gemini-2.5-flash",
        src=gcs.uri("in/requests.jsonl"),
        config=types.CreateBatchJobConfig(dest=gcs.uri("out")),
    )
    assert job.name and job.name.rsplit("/", 1)[1].isdigit()
    assert job.model == "publishers/google/models/gemini-2.5-flash"
    assert job.display_name and job.display_name.startswith("genai_batch_job_")
    assert job.src and job.src.gcs_uri == [gcs.uri("in/requests.jsonl")]
    assert job.dest and job.dest.gcs_uri == gcs.uri("out")

    job = wait(client, job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED, job.error
    assert job.completion_stats and job.completion_stats.successful_count == 3
    assert job.completion_stats.failed_count == 0
    out_dir = job.output_info.gcs_output_directory if job.output_info else ""
    assert out_dir.startswith(gcs.uri("out/prediction-model-"))
    key = out_dir.removeprefix(f"gs://{gcs.name}/") + "/predictions.jsonl"
    lines = [orjson.loads(line) for line in gcs.read(key).splitlines()]
    assert [line["key"] for line in lines] == ["k0", "k1", "k2"]
    for line in lines:
        assert line["status"] == ""
        response = line["response"]
        assert response["candidates"][0]["content"]["parts"][0]["text"].strip()
        assert response["modelVersion"] != "gemini-2.5-flash"  # names the model that answered
        assert 0 < response["usageMetadata"]["candidatesTokenCount"] <= 9


def test_vertex_mode_list_pages_cancel_delete(server: ThreadServer, make_input,
                                              tmp_path: Path) -> None:
    client = vertex_client(server)
    slow = client.batches.create(
        model="slow-model", src=local_source(make_input(200)),
        config=types.CreateBatchJobConfig(dest=local_dest(tmp_path / "slow"), display_name="slow"),
    )
    quick = [
        client.batches.create(
            model="fast-model", src=local_source(make_input(2)),
            config=types.CreateBatchJobConfig(dest=local_dest(tmp_path / f"q{i}"),
                                              display_name=f"q{i}"),
        )
        for i in range(4)
    ]
    names = [j.name for j in [slow, *quick]]
    pager = client.batches.list(config=types.ListBatchJobsConfig(page_size=2))
    listed = [j.name for j in pager]
    assert sorted(listed) == sorted(names) and len(listed) == 5

    assert client.batches.get(name=slow.name).state in (types.JobState.JOB_STATE_RUNNING,
                                                        types.JobState.JOB_STATE_PENDING)
    client.batches.cancel(name=slow.name)
    cancelled = wait(client, slow.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.completion_stats is not None
    assert cancelled.completion_stats.incomplete_count > 0

    finished = wait(client, quick[0].name)
    assert finished.state == types.JobState.JOB_STATE_SUCCEEDED
    deleted = client.batches.delete(name=quick[0].name)
    assert deleted.done is True and deleted.error is None
    with pytest.raises(genai_errors.ClientError) as caught:
        client.batches.get(name=quick[0].name)
    assert caught.value.code == 404
    for job in quick[1:]:
        wait(client, job.name)


def test_express_mode_with_an_api_key(start_server, make_input, tmp_path: Path) -> None:
    projects = tmp_path / "projects.toml"  # the data policy: both may use this test's folder
    projects.write_text(f'[projects."*"]\nread = ["{tmp_path}"]\nwrite = ["{tmp_path}"]\n')
    server: ThreadServer = start_server(tokens="key-a=team-a;key-b=team-b",
                                        projects_file=str(projects))
    a, b = express_client(server, "key-a"), express_client(server, "key-b")
    job = a.batches.create(model="fast-model", src=local_source(make_input(3)),
                           config=types.CreateBatchJobConfig(dest=local_dest(tmp_path / "out")))
    assert job.name and job.name.startswith("projects/team-a/locations/us-central1/")
    done = wait(a, job.name)
    assert done.state == types.JobState.JOB_STATE_SUCCEEDED
    assert [j.name for j in a.batches.list()] == [job.name]
    assert list(b.batches.list()) == []
    with pytest.raises(genai_errors.ClientError) as caught:
        b.batches.get(name=job.name)
    assert caught.value.code == 404
    stranger = express_client(server, "wrong")  # kept: a collected client closes its session
    with pytest.raises(genai_errors.ClientError) as caught:
        stranger.batches.get(name=job.name)
    assert caught.value.code == 401
    assert a.batches.delete(name=job.name).done is True


def test_create_into_a_missing_bucket_is_refused_at_once(server: ThreadServer, gcs: Bucket) -> None:
    gcs.write("in/requests.jsonl", orjson.dumps({"request": {"contents": [
        {"role": "user", "parts": [{"text": "hi"}]}]}}) + b"\n")
    source = {"uris": [gcs.uri("in/requests.jsonl")]}
    body = {"displayName": "x", "model": "fast-model",
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": source},
            "outputConfig": {"predictionsFormat": "jsonl",
                             "gcsDestination": {"outputUriPrefix": "gs://no-such-bucket-xyz/out"}}}
    reply = server.call("POST", server.jobs_path(), body)
    assert reply.status == 404, reply.json
    assert reply.json["error"]["message"].startswith(
        "The output bucket gs://no-such-bucket-xyz does not exist")
