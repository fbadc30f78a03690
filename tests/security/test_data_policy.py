"""A tenant reaches only its project's data: inputs, wildcards, validation, outputs, uploads and
downloads, each attack a clear 4xx with no byte of the other side's data; and what a legitimate
tenant did before still works."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import text_request, write_jsonl
from tests.security.conftest import (
    SECRET_A,
    SECRET_B,
    SERVER_SECRET,
    Tenants,
    assert_refused,
    leaked,
    secret_rows,
)


def outside_uris(t: Tenants, b_job: dict[str, Any]) -> list[str]:
    """Inputs team-a must not read."""
    b_pred = Path(b_job["outputInfo"]["gcsOutputDirectory"]) / "predictions.jsonl"
    a_upload_area = t.data / "uploads" / "team-a"
    rel_b_upload = os.path.relpath(b_job["upload"], a_upload_area)
    link = t.a_in / "link.jsonl"
    link.symlink_to(t.b_in / "in.jsonl")
    dir_link = t.a_in / "b-folder"
    dir_link.symlink_to(t.b_in)
    return [
        str(t.server_file),                                   # a server path
        f"file://{t.server_file}",                            # the same as file://
        "/etc/passwd",
        str(t.data / "jobs.sqlite3"),                         # the job store
        str(t.b_in / "in.jsonl"),                             # B's configured data
        f"{t.a_in}/../../team-b/in/in.jsonl",                 # a `..` escape
        str(link),                                            # a symlink escape
        str(dir_link / "in.jsonl"),                           # through a symlinked folder
        b_job["upload"],                                      # B's upload
        str(a_upload_area / rel_b_upload),                    # {uploads}/team-a/../team-b/...
        str(b_pred),                                          # B's output
        "memory://team-b/in.jsonl",                           # the server's memory
    ]


def test_inputs_outside_the_project_are_refused(tenants: Tenants, b_job: dict[str, Any]) -> None:
    t = tenants
    for uri in outside_uris(t, b_job):
        reply = t.create("a", uri, t.a_out)
        assert_refused(reply, 403, uri)
        assert reply.json["error"]["status"] == "PERMISSION_DENIED"
        assert "[projects.team-a]" in reply.json["error"]["message"] or (
            "no setting allows it" in reply.json["error"]["message"]
            or "BATCHPREDICT_ALLOW_MEMORY_URIS" in reply.json["error"]["message"]), reply
        # validation reads nothing either
        assert_refused(t.validate("a", [uri]), 403, uri)
    assert t.job_count("a") == 0
    assert leaked(t.a_out, SECRET_B, SERVER_SECRET) == []


def test_a_refusal_does_not_reveal_whether_a_file_exists(tenants: Tenants) -> None:
    t = tenants
    there = t.create("a", str(t.b_in / "in.jsonl"), t.a_out)
    missing = t.create("a", str(t.b_in / "nothing.jsonl"), t.a_out)
    assert there.status == missing.status == 403


def test_wildcards_check_their_base_and_every_file(tenants: Tenants,
                                                   b_job: dict[str, Any]) -> None:
    t = tenants
    (t.a_in / "link.jsonl").symlink_to(t.b_in / "in.jsonl")
    for uri in (
        f"{t.root}/*/in/*.jsonl",                 # a base above both projects
        f"{t.root}/team-*/in/in.jsonl",
        f"{t.data}/uploads/*/*/*.jsonl",          # every project's uploads
        f"{t.data}/**/*.jsonl",
        f"{t.a_in}/*.jsonl",                      # A's folder, holding a link to B's file
        f"{t.a_in}/../../team-b/in/*.jsonl",
        f"{t.data}/uploads/team-a/../team-b/*/*.jsonl",
        "/proc/self/*",
    ):
        assert_refused(t.create("a", uri, t.a_out), 403)
        assert_refused(t.validate("a", [uri]), 403)
    (t.a_in / "link.jsonl").unlink()
    ok = t.validate("a", [f"{t.a_in}/*.jsonl"])
    assert ok.status == 200 and ok.json["rowCount"] == 3, ok


def test_wildcards_are_capped_in_count_and_time(tmp_path: Path, start_server: Any) -> None:
    from tests.security.conftest import tenants_setup

    t = tenants_setup(tmp_path, start_server, max_input_files=5)
    for i in range(8):
        write_jsonl(t.a_in / f"part-{i}.jsonl", [{"request": text_request("x")}])
    reply = t.create("a", f"{t.a_in}/part-*.jsonl", t.a_out)
    assert_refused(reply, 400, "BATCHPREDICT_MAX_INPUT_FILES")
    assert_refused(t.validate("a", [f"{t.a_in}/part-*.jsonl"]), 400)

    slow = tenants_setup(tmp_path / "slow", start_server, storage_call_seconds=0.0)
    for i in range(300):
        (slow.a_in / "deep" / f"d{i}").mkdir(parents=True)
    reply = slow.create("a", f"{slow.a_in}/**/*.jsonl", slow.a_out)
    assert_refused(reply, 400, "took too long", "BATCHPREDICT_STORAGE_CALL_SECONDS")


def test_outputs_outside_the_project_are_refused(tenants: Tenants, b_job: dict[str, Any],
                                                 tmp_path: Path) -> None:
    t = tenants
    elsewhere = tmp_path / "x"
    for prefix in (
        str(elsewhere),
        "/tmp/x",
        str(t.data),
        str(t.data / "outputs" / "team-b"),
        str(t.data / "outputs" / "team-a" / ".." / "team-b"),
        str(t.data / "uploads" / "team-b"),
        str(t.data / "uploads" / "team-a"),       # uploads are the server's to write
        str(t.b_out),
        f"file://{t.b_out}",
        "/proc/self",
        "memory://out",
    ):
        reply = t.create("a", str(t.a_in / "in.jsonl"), prefix)
        assert_refused(reply, 403, prefix)
    assert not elsewhere.exists()
    assert leaked(t.b_out, SECRET_A) == [] and leaked(t.data / "uploads", SECRET_A) == []
    assert t.job_count("a") == 0


def test_downloads_and_failed_rows_stay_in_their_project(tenants: Tenants,
                                                         b_job: dict[str, Any]) -> None:
    t = tenants
    base = f"/batchpredict/v1/{b_job['name']}"
    for suffix in ("/predictions.jsonl", "/failedRows"):
        assert_refused(t.call("a", "GET", base + suffix), 404)
        as_a = base.replace("projects/team-b", "projects/team-a") + suffix
        assert_refused(t.call("a", "GET", as_a), 404)
    listed = t.call("a", "GET", "/v1/batchPredictionJobs")
    assert listed.json == {"batchPredictionJobs": []}
    mine = t.call("b", "GET", base + "/predictions.jsonl")
    assert mine.status == 200 and SECRET_B.encode() in mine.body


def test_uploads_land_in_the_callers_area(tenants: Tenants) -> None:
    t = tenants
    data = b"".join(orjson.dumps(r) + b"\n" for r in secret_rows(SECRET_A))
    reply = t.upload("a", "../../team-b/x.jsonl", data)
    assert reply.status == 200, reply
    uri = Path(reply.json["uri"])
    assert uri.is_relative_to(t.data / "uploads" / "team-a") and uri.read_bytes() == data
    assert leaked(t.data / "uploads" / "team-b", SECRET_A) == []


def test_a_legitimate_tenant_still_works(tenants: Tenants) -> None:
    """Upload, create into the default output area, download; and the configured prefixes."""
    t = tenants
    defaults = t.call("a", "GET", "/batchpredict/v1/defaults").json
    assert defaults["outputUriPrefix"] == str(t.data / "outputs" / "team-a")
    data = b"".join(orjson.dumps({"key": i, "request": text_request(f"q{i}")}) + b"\n"
                    for i in range(4))
    up = t.upload("a", "mine.jsonl", data).json
    assert t.validate("a", [up["uri"]]).json["rowCount"] == 4
    job = t.create("a", up["uri"], defaults["outputUriPrefix"]).json
    job = t.wait("a", job)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    got = t.call("a", "GET", f"/batchpredict/v1/{job['name']}/predictions.jsonl")
    assert got.status == 200 and len(got.body.splitlines()) == 4

    job = t.create("a", [str(t.a_in / "in.jsonl"), f"file://{t.a_in}/*.jsonl"], t.a_out).json
    job = t.wait("a", job)
    assert job["state"] == "JOB_STATE_SUCCEEDED", job
    assert Path(job["outputInfo"]["gcsOutputDirectory"]).is_relative_to(t.a_out)
    # its output can be read back (write prefixes are readable) and fed to the next job
    out = f"{job['outputInfo']['gcsOutputDirectory']}/predictions.jsonl"
    assert t.validate("a", [out]).status == 200


def test_without_tokens_local_paths_work_but_not_the_servers_own(start_server: Any,
                                                                 tmp_path: Path) -> None:
    """Loopback mode (one trusted local user): today's behaviour for the user's paths, every
    project's uploads and outputs included; never the rest of the data dir (the job store),
    /proc, devices or memory://."""
    server = start_server(data_dir=str(tmp_path / "data"))
    mine = write_jsonl(tmp_path / "anywhere.jsonl", [{"request": text_request("hi")}])
    reply = server.call("POST", server.jobs_path("p"), _body(str(mine), tmp_path / "out"))
    assert reply.status == 200, reply
    server.wait(reply.json)
    (tmp_path / "data" / "uploads" / "q").mkdir(parents=True)
    other = write_jsonl(tmp_path / "data" / "uploads" / "q" / "x.jsonl",
                        [{"request": text_request("q's")}])
    reply = server.call("POST", server.jobs_path("p"), _body(str(other), tmp_path / "out"))
    assert reply.status == 200, reply
    for uri in (str(tmp_path / "data" / "jobs.sqlite3"), str(tmp_path / "data" / "*"),
                "/proc/self/environ", "/dev/zero", "memory://x.jsonl",
                f"{tmp_path}/data/*/*/*.jsonl", f"{tmp_path}/*/*.sqlite3"):
        reply = server.call("POST", server.jobs_path("p"), _body(uri, tmp_path / "out"))
        assert_refused(reply, 403)
        assert_refused(server.call("POST", "/batchpredict/v1/inputs:validate", {"uris": [uri]}),
                       403)
    for prefix in (str(tmp_path / "data"), str(tmp_path / "data" / "uploads" / "q"), "/proc/x"):
        reply = server.call("POST", server.jobs_path("p"), _body(str(mine), prefix))
        assert_refused(reply, 403, prefix)
    own = server.call("POST", server.jobs_path("p"),
                      _body(str(mine), tmp_path / "data" / "outputs" / "p"))
    assert own.status == 200, own


def test_memory_uris_need_the_setting(start_server: Any, tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/security-test/in.jsonl", orjson.dumps({"request": text_request("m")}) + b"\n")
    server = start_server(allow_memory_uris=True)
    reply = server.call("POST", server.jobs_path("p"),
                        _body("memory://security-test/in.jsonl", "memory://security-test/out"))
    assert reply.status == 200, reply
    assert server.wait(reply.json)["state"] == "JOB_STATE_SUCCEEDED"


def _body(inputs: str, output: str | Path) -> dict[str, Any]:
    from tests.server.conftest import job_body

    return job_body(inputs, str(output))


@pytest.mark.parametrize("config,match", [
    ('[projects.a]\nread = ["relative/path"]\n', "not an absolute path"),
    ('[projects.a]\nreed = ["/x"]\n', "only `read` and `write`"),
    ("[projects]\na = 3\n", "only `read` and `write`"),
    ('[projects.a]\nread = ["bq://p.d/t"]\n', "BigQuery"),
])
def test_a_bad_projects_file_is_refused_at_start(tmp_path: Path, config: str, match: str) -> None:
    from batchpredict.config import Settings
    from batchpredict.data_gate import DataGate
    from batchpredict.errors import InvalidArgument

    path = tmp_path / "projects.toml"
    path.write_text(config)
    with pytest.raises(InvalidArgument, match=match):
        DataGate(Settings(data_dir=str(tmp_path), projects_file=str(path)), restricted=True)
