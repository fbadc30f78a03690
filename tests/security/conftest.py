"""A hostile-tenant setup: a real server (uvicorn on loopback, tests/server/conftest.py) with two
projects and their tokens, each with private data the other must never see.

    root/
      data/                       the server's data dir (job store, uploads/, outputs/)
      team-a/in/   team-a/out/    team-a's configured read and write prefixes
      team-b/in/   team-b/out/    team-b's
      server-secret.json          a file of the server that no project may read

Every private file holds a marker (`SECRET_A`, `SECRET_B`, `SERVER_SECRET`) in a line that is a
valid request, so a leak would show in a reply, an output line or a validation report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import text_request, write_jsonl
from tests.server.conftest import (  # noqa: F401  (fixtures)
    Reply,
    ThreadServer,
    http,
    job_body,
    make_input,
    make_settings,
    models_file,
    start_server,
)

SECRET_A = "team-a-private-7f3a91"
SECRET_B = "team-b-private-c04e2d"
SERVER_SECRET = "server-private-5b8e17"
TOKENS = {"a": "tok-a", "b": "tok-b"}
PROJECTS = {"a": "team-a", "b": "team-b"}


def secret_rows(marker: str, n: int = 3) -> list[dict[str, Any]]:
    return [{"key": f"{marker}-{i}", "request": text_request(f"{marker} row {i}")}
            for i in range(n)]


@dataclass
class Tenants:
    server: ThreadServer
    root: Path
    data: Path
    a_in: Path
    a_out: Path
    b_in: Path
    b_out: Path
    server_file: Path

    def call(self, who: str, method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return self.server.call(method, path, body, token=TOKENS[who], **kw)

    def jobs(self, who: str) -> str:
        return self.server.jobs_path(PROJECTS[who])

    def create(self, who: str, inputs: str | list[str], output: str | Path,
               model: str = "fast-model", **extra: Any) -> Reply:
        return self.call(who, "POST", self.jobs(who),
                         job_body(inputs, str(output), model=model, **extra))

    def validate(self, who: str, uris: list[str]) -> Reply:
        return self.call(who, "POST", "/batchpredict/v1/inputs:validate", {"uris": uris})

    def upload(self, who: str, name: str, data: bytes) -> Reply:
        from tests.e2e.test_console_api import upload

        return upload(self.server, "/batchpredict/v1/uploads", name, data, token=TOKENS[who])

    def wait(self, who: str, job: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
        return self.server.wait(job, token=TOKENS[who], timeout=timeout)

    def job_count(self, who: str) -> int:
        reply = self.call(who, "GET", self.jobs(who))
        assert reply.status == 200, reply
        return len(reply.json["batchPredictionJobs"])


def assert_refused(reply: Reply, status: int = 403, *names: str) -> None:
    """A clear 4xx in the Vertex shape that names what it refused and leaks no secret."""
    assert reply.status == status, reply
    error = reply.json["error"]
    assert error["code"] == status and error["status"] and error["message"], reply
    for name in names:
        assert name in error["message"], (name, reply)
    for marker in (SECRET_A, SECRET_B, SERVER_SECRET):
        assert marker.encode() not in reply.body, reply


def leaked(folder: Path, *markers: str) -> list[Path]:
    """Files under `folder` holding any of `markers`."""
    out = []
    for path in folder.rglob("*"):
        if path.is_file() and any(m.encode() in path.read_bytes() for m in markers):
            out.append(path)
    return out


def tenants_setup(root: Path, start: Callable[..., ThreadServer], **overrides: Any) -> Tenants:
    dirs = {name: root / name for name in ("team-a/in", "team-a/out", "team-b/in", "team-b/out")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    write_jsonl(dirs["team-a/in"] / "in.jsonl", secret_rows(SECRET_A))
    write_jsonl(dirs["team-b/in"] / "in.jsonl", secret_rows(SECRET_B))
    (dirs["team-b/in"] / "notes.txt").write_text(f"{SECRET_B} notes\n")
    server_file = root / "server-secret.json"
    write_jsonl(server_file, secret_rows(SERVER_SECRET))
    projects = root / "projects.toml"
    projects.write_text(
        f'[projects.team-a]\nread = ["{dirs["team-a/in"]}/"]\nwrite = ["{dirs["team-a/out"]}/"]\n'
        f'[projects.team-b]\nread = ["{dirs["team-b/in"]}"]\nwrite = ["{dirs["team-b/out"]}"]\n'
    )
    values: dict[str, Any] = dict(
        data_dir=str(root / "data"),
        tokens="tok-a=team-a;tok-b=team-b",
        projects_file=str(projects),
    )
    values.update(overrides)
    server = start(**values)
    return Tenants(server, root, root / "data", dirs["team-a/in"], dirs["team-a/out"],
                   dirs["team-b/in"], dirs["team-b/out"], server_file)


@pytest.fixture
def tenants(tmp_path: Path, start_server: Callable[..., ThreadServer]) -> Tenants:  # noqa: F811
    return tenants_setup(tmp_path, start_server)


@pytest.fixture
def b_job(tenants: Tenants) -> dict[str, Any]:
    """A finished job of team-b (its output holds SECRET_B) and team-b's upload."""
    up = tenants.upload("b", "b.jsonl", b"".join(orjson.dumps(r) + b"\n"
                                                 for r in secret_rows(SECRET_B)))
    assert up.status == 200, up
    reply = tenants.create("b", up.json["uri"], tenants.b_out)
    assert reply.status == 200, reply
    job = tenants.wait("b", reply.json)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    job["upload"] = up.json["uri"]
    return job
