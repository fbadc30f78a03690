"""Access: tokens and the projects they allow, express mode's default project, loopback-only
when no token is configured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchpredict.config import Settings
from batchpredict.errors import InvalidArgument, PermissionDenied, Unauthenticated
from batchpredict.server.app import check_bind_address
from batchpredict.server.auth import AccessPolicy
from tests.server.conftest import ThreadServer, job_body

TOKENS_TOML = """
[tokens]
"tok-ml" = ["team-ml"]
"tok-admin" = "*"

[tokens."tok-web"]
projects = ["web", "shared"]
default_project = "shared"
"""


@pytest.fixture
def secured(start_server, tmp_path: Path) -> ThreadServer:
    path = tmp_path / "tokens.toml"
    # the data policy: every project may read and write this test's folder (tests/security
    # covers what a project may not reach)
    grant = f'[projects."*"]\nread = ["{tmp_path}"]\nwrite = ["{tmp_path}"]\n'
    path.write_text(TOKENS_TOML + grant)
    return start_server(tokens_file=str(path))  # type: ignore[no-any-return]


def test_another_projects_token_cannot_see_or_cancel_a_job(secured: ThreadServer, make_input,
                                                           tmp_path: Path) -> None:
    server = secured
    body = job_body(make_input(100), tmp_path, model="slow-model")
    job = server.create(body, project="team-ml", token="tok-ml")
    job_id = job["name"].rsplit("/", 1)[1]
    theirs = f"/v1/projects/team-ml/locations/us-central1/batchPredictionJobs/{job_id}"
    mine = f"/v1/projects/web/locations/us-central1/batchPredictionJobs/{job_id}"
    for path in (theirs, mine, f"/v1/batchPredictionJobs/{job_id}"):
        for method, suffix in (("GET", ""), ("POST", ":cancel"), ("DELETE", "")):
            reply = server.call(method, path + suffix, {} if method == "POST" else None,
                                token="tok-web")
            assert reply.status == 404, (method, path, reply)
            assert reply.json["error"]["status"] == "NOT_FOUND"
            assert "team-ml" not in reply.body.decode()
    assert server.get(job, token="tok-ml")["state"] != "JOB_STATE_CANCELLED"

    listed = server.call("GET", "/v1/batchPredictionJobs", token="tok-web").json
    assert listed == {"batchPredictionJobs": []}
    reply = server.call("GET", server.jobs_path("team-ml"), token="tok-web")
    assert reply.status == 403 and reply.json["error"]["status"] == "PERMISSION_DENIED"
    reply = server.call("POST", server.jobs_path("team-ml"), body, token="tok-web")
    assert reply.status == 403

    everything = server.call("GET", "/v1/batchPredictionJobs", token="tok-admin").json
    assert [j["name"] for j in everything["batchPredictionJobs"]] == [job["name"]]
    assert server.call("POST", f"/v1/{job['name']}:cancel", {}, token="tok-admin").json == {}
    assert server.wait(job, token="tok-ml")["state"] == "JOB_STATE_CANCELLED"


def test_tokens_are_required_once_configured(secured: ThreadServer, make_input,
                                             tmp_path: Path) -> None:
    server = secured
    reply = server.call("GET", "/v1/batchPredictionJobs")
    assert reply.status == 401 and reply.json["error"]["status"] == "UNAUTHENTICATED"
    assert "Authorization: Bearer" in reply.json["error"]["message"]
    assert server.call("GET", "/v1/batchPredictionJobs", token="nope").status == 401
    reply = server.call("GET", "/v1/batchPredictionJobs", headers={"x-goog-api-key": "tok-ml"})
    assert reply.status == 200
    assert server.call("GET", "/v1/batchPredictionJobs?key=tok-ml").status == 200
    assert server.call("GET", "/healthz").status == 200  # probes need no token

    # Express mode creates in the token's default project.
    reply = server.call("POST", "/v1beta1/batchPredictionJobs",
                        job_body(make_input(1), tmp_path), token="tok-web")
    assert reply.json["name"].startswith("projects/shared/locations/us-central1/")
    reply = server.call("POST", "/v1beta1/batchPredictionJobs",
                        job_body(make_input(1), tmp_path), token="tok-admin")
    assert reply.json["name"].startswith("projects/default/")


def test_token_configuration_forms(tmp_path: Path) -> None:
    json_file = tmp_path / "tokens.json"
    json_file.write_text(json.dumps({"tokens": {"a": ["p1", "p2"], "b": "*"}}))
    policy = AccessPolicy.from_settings(Settings(tokens_file=str(json_file), tokens="c=p3"))
    caller = policy.authenticate({"authorization": "Bearer a"}, {}, "10.1.2.3")
    assert caller.projects == frozenset({"p1", "p2"}) and caller.default_project == "p1"
    assert policy.authenticate({"x-goog-api-key": "b"}, {}, None).projects is None
    assert policy.authenticate({}, {"key": "c"}, None).default_project == "p3"
    with pytest.raises(Unauthenticated):
        policy.authenticate({"authorization": "Bearer z"}, {}, "127.0.0.1")

    for bad in ("justatoken", "t=", "=p"):
        with pytest.raises(InvalidArgument, match="TOKEN=PROJECT"):
            AccessPolicy.from_settings(Settings(tokens=bad))
    with pytest.raises(InvalidArgument, match="does-not-exist"):
        AccessPolicy.from_settings(Settings(tokens_file=str(tmp_path / "does-not-exist.toml")))


def test_without_tokens_only_loopback(tmp_path: Path, run_cli) -> None:
    open_policy = AccessPolicy.from_settings(Settings())
    assert open_policy.authenticate({}, {}, "127.0.0.1").projects is None
    assert open_policy.authenticate({"authorization": "Bearer x"}, {}, "::1").projects is None
    with pytest.raises(PermissionDenied, match="BATCHPREDICT_TOKENS"):
        open_policy.authenticate({}, {}, "192.168.1.20")
    check_bind_address(Settings(), "127.0.0.1")
    check_bind_address(Settings(tokens="t=p"), "0.0.0.0")
    with pytest.raises(InvalidArgument, match=r"Refusing to listen on 0\.0\.0\.0"):
        check_bind_address(Settings(), "0.0.0.0")

    result = run_cli("serve", "--host", "0.0.0.0", "--port", "1", timeout=60)
    assert result.returncode == 2
    assert "Refusing to listen on 0.0.0.0" in result.stderr
    assert "BATCHPREDICT_TOKENS" in result.stderr and "Traceback" not in result.stderr
