"""Two `batchpredict serve` processes on one real PostgreSQL store, each with a running limit of
1: the store never holds more than one RUNNING job, and every job ends SUCCEEDED with every row
exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from batchpredict.store.postgres import PostgresJobStore
from tests.conftest import text_request, write_jsonl
from tests.server.conftest import (
    FINISHED,
    MODELS_TOML,
    ProcessServer,
    job_body,
    predictions,
    server_env,
)

JOBS = 6
ROWS = 8


class Sampler(threading.Thread):
    """Counts RUNNING jobs in the store every few milliseconds."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.store = PostgresJobStore(url)
        self.most = 0
        self.samples = 0
        self.owners: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            rows, _ = self.store._query(
                "SELECT owner FROM jobs WHERE state='JOB_STATE_RUNNING'")
            self.most = max(self.most, len(rows))
            self.owners.update(r[0] for r in rows if r[0])
            self.samples += 1
            time.sleep(0.005)


def test_two_servers_share_one_running_slot(postgres_url: str, tmp_path: Path) -> None:
    PostgresJobStore(postgres_url)._query("DROP TABLE IF EXISTS jobs, job_chunks")
    models = tmp_path / "models.toml"
    models.write_text(MODELS_TOML)
    env = server_env(models, BATCHPREDICT_STORE_URL=postgres_url,
                     BATCHPREDICT_MAX_RUNNING_JOBS="1")
    servers = [ProcessServer(tmp_path / name / "data", env) for name in ("a", "b")]
    sampler = Sampler(postgres_url)
    sampler.start()
    try:
        created = []
        for i in range(JOBS):
            rows = [{"key": f"{i}-{r}", "request": text_request(f"row {r}")} for r in range(ROWS)]
            src = write_jsonl(tmp_path / f"in-{i}.jsonl", rows)
            server = servers[i % 2]
            created.append(server.create(job_body(str(src), tmp_path / f"out-{i}",
                                                  model="slow-model")))
        finished = [servers[0].wait(job, timeout=120) for job in created]
    finally:
        sampler.done.set()
        sampler.join(5)
        for server in servers:
            server.terminate()
    assert sampler.samples > 100
    assert sampler.most == 1, "two jobs ran at once"
    for i, job in enumerate(finished):
        assert job["state"] == "JOB_STATE_SUCCEEDED", job
        assert job["state"] in FINISHED
        assert [line["key"] for line in predictions(job)] == [f"{i}-{r}" for r in range(ROWS)]
    print(f"runners seen: {sorted(sampler.owners)}")
