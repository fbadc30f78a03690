"""The console, driven as a person would in real Chromium, against a real server: upload a file,
create a job, watch it end, read its counts, download its output, cancel a running job, delete a
finished one, find jobs by state and name, and enter a token when the server asks for one.
Screenshots of the three pages go to docs/screenshots/.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.sync_api import expect

from tests.conftest import REPO, text_request, write_jsonl
from tests.e2e.conftest import e2e_settings
from tests.server.conftest import ThreadServer, predictions, stats

pytestmark = pytest.mark.browser

JOB_URL = re.compile(r"/console/projects/[^/]+/locations/[^/]+/batchPredictionJobs/\d+$")


def good_rows(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [{"key": f"{prefix}{i}", "request": text_request(f"Question {i}?")} for i in range(n)]


def jobs_named(server: ThreadServer, name: str) -> list[dict[str, Any]]:
    from urllib.parse import quote

    reply = server.call("GET", "/v1/batchPredictionJobs?filter=" + quote(f'display_name="{name}"'))
    assert reply.status == 200, reply
    return reply.json.get("batchPredictionJobs", [])  # type: ignore[no-any-return]


def job_body(uri: str, output: Path, model: str, name: str) -> dict[str, Any]:
    return {
        "displayName": name,
        "model": model,
        "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [uri]}},
        "outputConfig": {"predictionsFormat": "jsonl",
                         "gcsDestination": {"outputUriPrefix": str(output)}},
    }


def test_bad_file_shows_its_wrong_lines_and_runs_only_when_asked(
    page: Any, server: ThreadServer, tmp_path: Path, screenshots: Path
) -> None:
    rows: list[Any] = good_rows(80)
    rows.insert(2, "this is not json")  # line 3
    bad_role = {"contents": [{"role": "bot", "parts": [{"text": "hi"}]}]}
    rows.insert(6, {"key": "bad-role", "request": bad_role})  # line 7
    rows.insert(11, {"key": "no-request", "prompt": "hi"})  # line 12
    path = write_jsonl(tmp_path / "with-typos.jsonl", rows)

    page.goto(server.url + "/console/create")
    page.set_input_files("#input-file", str(path))
    report = page.locator("#input-bad")
    expect(report).to_contain_text("3 of 83 lines are not valid requests")
    problems = page.locator("#input-problems tbody tr")
    expect(problems).to_have_count(3)
    expect(problems.nth(0).locator("td").nth(0)).to_have_text("3")
    expect(problems.nth(0)).to_contain_text("is not valid JSON")
    expect(problems.nth(1).locator("td").nth(0)).to_have_text("7")
    expect(problems.nth(1)).to_contain_text("Please use a valid role: user, model.")
    expect(problems.nth(2).locator("td").nth(0)).to_have_text("12")
    expect(problems.nth(2)).to_contain_text('has no "request" field')

    page.select_option("#model-select", "steady")
    page.fill("#output-prefix", str(tmp_path / "out"))
    page.fill("#display-name", "nightly-eval-with-typos")
    page.fill("#labels", "team=ml\nrun=nightly")
    page.evaluate("document.activeElement.blur()")
    page.screenshot(path=str(screenshots / "create.png"), full_page=True)

    # Not without saying so: the bad lines block the submit.
    page.click("#create-submit")
    expect(page.locator("#create-errors")).to_contain_text("3 lines of the input are not valid")
    assert jobs_named(server, "nightly-eval-with-typos") == []

    page.check("#allow-invalid")
    page.click("#create-submit")
    page.wait_for_url(JOB_URL)
    expect(page.locator("#job-state")).to_have_text("RUNNING")
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED", timeout=30_000)
    expect(page.locator("#rows-panel")).to_contain_text("Succeeded80")
    expect(page.locator("#rows-panel")).to_contain_text("Failed3")
    expect(page.locator("#progress-text")).to_contain_text("83 / 83 rows")
    failed = page.locator("#failed-table tbody tr")
    expect(failed).to_have_count(3)
    expect(failed.nth(1)).to_contain_text("Please use a valid role: user, model.")
    expect(failed.nth(1)).to_contain_text('"key":"bad-role"')
    # The page sampled the job while it ran: both charts have a line.
    expect(page.locator("#chart-rows polyline")).to_have_count(1)
    expect(page.locator("#chart-tokens polyline")).to_have_count(1)
    page.screenshot(path=str(screenshots / "detail.png"), full_page=True)

    job = jobs_named(server, "nightly-eval-with-typos")[0]
    assert job["labels"] == {"team": "ml", "run": "nightly"}
    assert stats(job) == (80, 3, 0)
    uri = job["inputConfig"]["gcsSource"]["uris"][0]
    assert uri.startswith(server.settings.uploads_uri)
    assert Path(uri).read_bytes() == path.read_bytes()


def test_upload_create_watch_download_and_delete(
    page: Any, server: ThreadServer, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "questions.jsonl", good_rows(40))
    calls: list[str] = []
    page.on("request",
            lambda r: calls.append(r.url) if r.resource_type in ("fetch", "xhr") else None)

    page.goto(server.url + "/console/")
    page.focus("a[data-nav=create]")
    page.keyboard.press("Enter")  # keyboard navigation, and focus lands on the new page's heading
    expect(page.locator("h1")).to_be_focused()
    page.set_input_files("#input-file", str(path))
    expect(page.locator("#input-ok")).to_contain_text("40 rows, all valid")
    expect(page.locator("#display-name")).to_have_value(re.compile(r"^questions-\d{8}-\d{6}$"))
    page.select_option("#model-select", "instant")
    page.fill("#output-prefix", str(tmp_path / "out"))
    page.fill("#display-name", "questions-console")
    page.click("#create-submit")
    page.wait_for_url(JOB_URL)

    expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
    expect(page.locator("#rows-panel")).to_contain_text("Succeeded40")
    expect(page.locator("#rows-panel")).to_contain_text("Failed0")
    expect(page.locator("#usage-panel")).to_contain_text("Total tokens160")
    expect(page.locator("#no-failed-rows")).to_have_text("No failed rows.")
    expect(page.locator("#timeline li")).to_have_count(3)
    expect(page.locator("#timeline")).to_contain_text("Ended succeeded")

    with page.expect_download() as info:
        page.click("#download")
    lines = [orjson.loads(x) for x in Path(info.value.path()).read_bytes().splitlines()]
    assert [x["key"] for x in lines] == [f"q{i}" for i in range(40)]
    assert all(x["status"] == "" and x["response"]["candidates"] for x in lines)
    job = jobs_named(server, "questions-console")[0]
    assert lines == predictions(job)

    # Everything the page called is the public API, documented in the OpenAPI schema.
    documented = server.call("GET", "/openapi.json").json["paths"]
    patterns = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$") for p in documented]
    paths = {re.sub(r"^https?://[^/]+", "", u).split("?")[0] for u in calls}
    assert paths and all(any(p.match(path) for p in patterns) for path in paths), paths

    # Delete asks first; "Keep it" keeps it.
    page.click("#delete-job")
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-no")).to_be_focused()
    page.click("#confirm-no")
    assert server.call("GET", f"/v1/{job['name']}").status == 200
    page.click("#delete-job")
    page.click("#confirm-yes")
    page.wait_for_url(re.compile(r"/console/$"))
    expect(page.locator("#toast")).to_contain_text("deleted")
    assert server.call("GET", f"/v1/{job['name']}").status == 404
    assert Path(job["outputInfo"]["gcsOutputDirectory"], "predictions.jsonl").exists()


def test_code_snippets_create_the_same_job(page: Any, server: ThreadServer, tmp_path: Path) -> None:
    """The CLI, google-genai and curl snippets on a job's page run as shown and make the job."""
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(5))
    job = server.create(job_body(str(path), tmp_path / "out", "instant", "snippet-source"))
    server.wait(job)
    page.goto(server.url + "/console/" + job["name"])
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHPREDICT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["BATCHPREDICT_TOKEN"] = "any"  # an open server takes any token
    for tab, runner in (("cli", ["bash", "-euc"]), ("sdk", [sys.executable, "-c"]),
                        ("curl", ["bash", "-euc"])):
        page.click(f"#tab-{tab}")
        text = page.locator(f"#snippet-{tab}").inner_text()
        if tab == "curl":
            text = text.replace("curl -sS", "curl -sSf")
        done = subprocess.run([*runner, text], capture_output=True, text=True, env=env,
                              timeout=60, cwd=tmp_path)
        assert done.returncode == 0, f"{tab} snippet failed:\n{text}\n{done.stdout}\n{done.stderr}"
    made = jobs_named(server, "snippet-source")
    assert len(made) == 4  # the original and one per snippet
    for made_job in made:
        finished = server.wait(made_job)
        assert stats(finished) == (5, 0, 0), finished


def test_cancel_a_running_job_keeps_its_completed_rows(
    page: Any, server: ThreadServer, tmp_path: Path
) -> None:
    path = write_jsonl(tmp_path / "long.jsonl", good_rows(300))

    page.goto(server.url + "/console/create")
    page.check("input[name=mode][value=uri]")
    page.fill("#input-uris", str(path))
    page.click("text=Check input")
    expect(page.locator("#input-ok")).to_contain_text("300 rows, all valid")
    page.select_option("#model-select", "slow")
    page.fill("#output-prefix", str(tmp_path / "out"))
    page.fill("#display-name", "to-be-cancelled")
    page.click("#create-submit")
    page.wait_for_url(JOB_URL)
    expect(page.locator("#job-state")).to_have_text("RUNNING")
    job = server.wait(jobs_named(server, "to-be-cancelled")[0],
                      until=lambda j: int(j["completionStats"]["successfulCount"]) >= 10
                      if "completionStats" in j else False)
    expect(page.locator("#cancel-job")).to_be_visible()

    page.click("#cancel-job")
    expect(page.locator("#confirm-message")).to_contain_text("every completed row is kept")
    page.click("#confirm-yes")
    expect(page.locator("#job-state")).to_have_text("CANCELLED")
    expect(page.locator("#cancel-job")).to_be_hidden()
    job = server.get(job)
    succeeded, failed, incomplete = stats(job)
    assert succeeded >= 10 and failed == 0 and incomplete > 0
    assert succeeded + incomplete == 300
    expect(page.locator("#rows-panel")).to_contain_text(f"Succeeded{succeeded}")
    expect(page.locator("#rows-panel")).to_contain_text(f"Incomplete{incomplete}")

    with page.expect_download() as info:
        page.click("#download")
    kept = [orjson.loads(x) for x in Path(info.value.path()).read_bytes().splitlines()]
    assert len(kept) == succeeded and all(x["status"] == "" for x in kept)
    assert kept == predictions(job)


def test_jobs_list_filters_pages_and_refreshes_itself(
    page: Any, server: ThreadServer, tmp_path: Path, screenshots: Path
) -> None:
    small = str(write_jsonl(tmp_path / "small.jsonl", good_rows(6)))
    long = str(write_jsonl(tmp_path / "long.jsonl", good_rows(400)))
    out = tmp_path / "out"
    for i in range(12):
        server.create(job_body(small, out, "instant", f"sweep-{i:02d}"))
    # every row invalid: the job ends FAILED (an unwritable output is refused at create)
    bad = str(write_jsonl(tmp_path / "bad.jsonl", [{"request": {"contents": []}}] * 3))
    failed = server.create(job_body(bad, out, "instant", "bad-rows-only"))
    assert server.wait(failed)["state"] == "JOB_STATE_FAILED"

    page.goto(server.url + "/console/?name=sweep-&pageSize=10")
    expect(page.locator("#active-filter")).to_have_text('display_name:"sweep-*"')
    table = page.locator("#jobs-table tbody tr")
    expect(table).to_have_count(10)
    expect(table.first).to_contain_text("sweep-11")  # newest first
    page.click("text=Older →")
    expect(table).to_have_count(2)
    expect(table.last).to_contain_text("sweep-00")
    page.click("text=← Newer")
    expect(table).to_have_count(10)

    page.select_option("#filter-state", "FAILED")  # applies at once
    page.wait_for_url(re.compile(r"state=FAILED"))
    expect(page.locator("#active-filter")).to_have_text(
        'state="JOB_STATE_FAILED" AND display_name:"sweep-*"')
    expect(page.locator("#jobs-table tbody")).to_contain_text("No job matches this filter.")
    page.fill("#filter-name", "bad-rows")
    page.press("#filter-name", "Enter")
    expect(table).to_have_count(1)
    expect(table.first.locator(".state")).to_have_text("FAILED")

    # Running, pending and cancelled jobs beside the finished ones; the list follows them.
    running = [server.create(job_body(long, out, "slow", f"long-run-{i}")) for i in range(2)]
    waiting = server.create(job_body(long, out, "slow", "waits-for-a-slot"))
    queued = server.create(job_body(small, out, "instant", "queued-then-cancelled"))
    server.call("POST", f"/v1/{queued['name']}:cancel", {})
    quick = server.create(job_body(str(write_jsonl(tmp_path / "q.jsonl", good_rows(30))), out,
                                   "steady", "finishes-while-watched"))
    page.goto(server.url + "/console/")
    rows = page.locator("#jobs-table tbody tr")
    expect(rows.filter(has_text="waits-for-a-slot").locator(".state")).to_have_text("PENDING")
    expect(rows.filter(has_text="queued-then-cancelled").locator(".state")).to_have_text("CANCELLED")
    for name in ("long-run-0", "long-run-1"):
        expect(rows.filter(has_text=name).locator(".state")).to_have_text("RUNNING")
        expect(rows.filter(has_text=name).locator(".progress-text")).to_have_text(
            re.compile(r"^([3-9]\d|\d{3}) / 400 rows$"))
    expect(page.locator(".refresh-note")).to_contain_text("refreshing")
    page.screenshot(path=str(screenshots / "list.png"), full_page=False)
    for job in [*running, waiting]:
        server.call("POST", f"/v1/{job['name']}:cancel", {})
    # No reload: the page refreshes itself until the jobs end.
    expect(rows.filter(has_text="long-run-1").locator(".state")).to_have_text("CANCELLED")
    expect(rows.filter(has_text="finishes-while-watched").locator(".state")).to_have_text(
        "SUCCEEDED", timeout=30_000)
    server.wait(quick)


def test_asks_for_a_token_and_sends_it(browser: Any, tmp_path: Path) -> None:
    secured = ThreadServer(e2e_settings(tmp_path, tokens="tok-e2e=*")).start()
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        page = context.new_page()
        sent: list[str | None] = []
        page.on("request", lambda r: sent.append(r.headers.get("authorization"))
                if "/v1/batchPredictionJobs" in r.url else None)
        page.goto(secured.url + "/console/")
        dialog = page.locator("#token-dialog")
        expect(dialog).to_be_visible()
        expect(page.locator("#token-message")).to_contain_text("needs an access token")
        page.fill("#token-input", "wrong")
        page.press("#token-input", "Enter")
        expect(page.locator("#token-message")).to_contain_text("not accepted")
        page.fill("#token-input", "tok-e2e")
        page.click("#token-form button[type=submit]")
        expect(dialog).to_be_hidden()
        expect(page.locator("#jobs-table tbody")).to_contain_text("No jobs yet")
        assert sent[-1] == "Bearer tok-e2e"
        assert page.evaluate("sessionStorage.getItem('batchpredict.token')") == "tok-e2e"
        expect(page.locator("#who")).to_contain_text("Using an access token")
        page.click("#who button")
        expect(dialog).to_be_visible()  # forgotten: the next call asks again
        assert page.evaluate("sessionStorage.getItem('batchpredict.token')") is None
        context.close()
    finally:
        secured.stop()


def test_a_finished_job_shows_how_it_ran(page: Any, server: ThreadServer, tmp_path: Path) -> None:
    """Throughput comes from the history the server kept while the job ran: a page opened only
    after the job ended still draws both charts."""
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(100))
    job = server.wait(server.create(job_body(str(path), tmp_path / "out", "steady", "ran-unseen")))
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    page.goto(server.url + "/console/" + job["name"])
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
    for chart, unit in (("#chart-rows", "rows/s"), ("#chart-tokens", "tokens/s")):
        expect(page.locator(f"{chart} polyline")).to_have_count(1)
        expect(page.locator(f"{chart} figcaption")).to_contain_text(unit)
        points = page.locator(f"{chart} polyline").get_attribute("points") or ""
        assert len(points.split()) >= 3, points
    # ~20 rows/s (the "steady" model), 4 tokens a row
    latest = float(page.locator("#chart-rows [data-latest]").get_attribute("data-latest") or 0)
    assert 8 < latest < 40, latest
    expect(page.locator("#chart-rows svg")).to_have_attribute(
        "aria-label", re.compile(r"^Rows per second: latest .* over [3-9] seconds\.$"))


def running_view_of(job: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The job resource as it would read while running, with `changes`."""
    view = {k: v for k, v in job.items() if k not in ("endTime", "error")}
    return view | {"state": "JOB_STATE_RUNNING"} | changes


def test_eta_follows_a_steady_rate_not_the_last_burst(
    page: Any, server: ThreadServer, tmp_path: Path
) -> None:
    """A job of known progress (its resource and history served to the page as recorded): 60
    rows at 0.6 rows/s for 100 s, then a burst of 20 rows in 1 s. 120 of 200 rows remain."""
    path = write_jsonl(tmp_path / "in.jsonl", good_rows(5))
    job = server.wait(server.create(job_body(str(path), tmp_path / "out", "instant", "eta")))
    start = 1_790_000_000

    def iso(t: float) -> str:
        return f"{datetime.fromtimestamp(t, UTC):%Y-%m-%dT%H:%M:%S.%fZ}"

    samples = [(start + 10 * i, 6 * i) for i in range(11)] + [(start + 101, 80)]
    history = {"samples": [{"time": iso(t), "doneCount": str(d), "totalTokenCount": str(4 * d)}
                           for t, d in samples]}
    running = running_view_of(job, startTime=iso(start),
                              completionStats={"successfulCount": "80", "failedCount": "0",
                                               "incompleteCount": "0"},
                              progress=job["progress"] | {"doneCount": "80", "totalCount": "200"})
    page.route(f"**/v1/{job['name']}", lambda route: route.fulfill(json=running))
    page.route(f"**/batchpredict/v1/{job['name']}/progressHistory",
               lambda route: route.fulfill(json=history))
    page.goto(server.url + "/console/" + job["name"])
    expect(page.locator("#job-state")).to_have_text("RUNNING")
    # Smoothed over the history: ~0.97 rows/s, so 120 rows take about 2 minutes. The burst alone
    # (20 rows/s) would say 6 s; the last 5 s of samples 2.4 rows/s, 51 s.
    expect(page.locator("#progress-text")).to_have_text(
        "80 / 200 rows · 1.0 rows/s · about 2 min 04 s left")


def test_partial_failures_are_listed_on_the_job_page(
    page: Any, server: ThreadServer, tmp_path: Path
) -> None:
    """`partialFailures` (up to 20 google.rpc.Status), filled by the server from the job's
    failed rows, is shown on the job page; a job without failures shows no such panel."""
    rows: list[Any] = good_rows(6)
    rows[2] = "not json"
    rows[4] = {"key": "bad-role",
               "request": {"contents": [{"role": "bot", "parts": [{"text": "x"}]}]}}
    path = write_jsonl(tmp_path / "in.jsonl", rows)
    job = server.wait(server.create(job_body(str(path), tmp_path / "out", "instant", "partly")))
    assert stats(job) == (4, 2, 0)
    assert [f["code"] for f in job["partialFailures"]] == [3, 3]
    page.goto(server.url + "/console/" + job["name"])
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
    items = page.locator("#partial-failures li")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("INVALID_ARGUMENT (3): Output line 3: Line 3 of")
    expect(items.nth(1)).to_have_text(
        "INVALID_ARGUMENT (3): Output line 5: Please use a valid role: user, model.")
    expect(page.locator("#partial-failures h2")).to_have_text("Partial failures")

    clean = server.wait(server.create(job_body(str(write_jsonl(tmp_path / "ok.jsonl",
                                                                good_rows(2))),
                                               tmp_path / "out", "instant", "clean")))
    assert "partialFailures" not in clean
    page.goto(server.url + "/console/" + clean["name"])
    expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
    expect(page.locator("#partial-failures")).to_be_hidden()


def test_a_failed_job_without_output_offers_no_download(
    page: Any, server: ThreadServer, tmp_path: Path
) -> None:
    path = tmp_path / "blank.jsonl"
    path.write_bytes(b"\n\n\n")
    job = server.wait(server.create(job_body(str(path), tmp_path / "out", "instant", "no-rows")))
    assert job["state"] == "JOB_STATE_FAILED" and "outputInfo" in job
    page.goto(server.url + "/console/" + job["name"])
    expect(page.locator("#job-state")).to_have_text("FAILED")
    expect(page.locator("#job-error")).to_contain_text("The input has no rows")
    expect(page.locator("#delete-job")).to_be_visible()
    expect(page.locator("#download")).to_be_hidden()


def test_the_list_shows_durations_and_filters_by_project(
    page: Any, server: ThreadServer, tmp_path: Path
) -> None:
    small = str(write_jsonl(tmp_path / "small.jsonl", good_rows(3)))
    long = str(write_jsonl(tmp_path / "long.jsonl", good_rows(300)))
    out = tmp_path / "out"
    a = server.wait(server.create(job_body(small, out, "instant", "proj-a-job"), project="team-a"))
    b = server.wait(server.create(job_body(small, out, "instant", "proj-b-job"), project="team-b"))
    running = server.create(job_body(long, out, "slow", "proj-b-running"), project="team-b")
    server.wait(running, until=lambda j: j["state"] == "JOB_STATE_RUNNING")

    page.goto(server.url + "/console/?name=proj-")
    rows = page.locator("#jobs-table tbody tr")
    expect(rows).to_have_count(3)
    # Duration: end - start for a finished job; the time so far for a running one, growing.
    ms = len("2026-01-01T00:00:00.000")  # what JavaScript's Date keeps
    ran = (datetime.fromisoformat(a["endTime"][:ms]) - datetime.fromisoformat(a["startTime"][:ms]))
    expect(rows.filter(has_text="proj-a-job").locator("td[data-label=Duration]")).to_have_text(
        f"{ran.total_seconds():.1f} s")
    so_far = rows.filter(has_text="proj-b-running").locator("td[data-label=Duration]")
    expect(so_far).to_have_text(re.compile(r"^\d+(\.\d)? s$"))
    first = so_far.inner_text()
    expect(so_far).not_to_have_text(first)  # the list refreshes every 2 s while a job runs

    # Several projects: pick one; the filter is on the job's name, shown in the API's syntax.
    project = page.locator("#filter-project")
    expect(project).to_be_visible()
    expect(project.locator("option", has_text="team-a")).to_have_count(1)
    project.select_option("team-b")
    page.wait_for_url(re.compile(r"project=team-b"))
    expect(page.locator("#active-filter")).to_have_text(
        'name:"projects/team-b/*" AND display_name:"proj-*"')
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="proj-a-job")).to_have_count(0)
    expect(project).to_have_value("team-b")
    server.call("POST", f"/v1/{running['name']}:cancel", {})
    server.wait(running)
    assert b["name"].startswith("projects/team-b/")
