"""The console through a real outage (headless Chromium): a job waiting for its full disk says
so, and once it FAILED past the deadline its page offers Resume, which runs it on to the end."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import CHROMIUM, browser, e2e_settings, open_tab  # noqa: F401
from tests.faults.conftest import CHUNK_ROWS, write_input
from tests.server.conftest import ThreadServer, job_body

pytestmark = [pytest.mark.timeout(120), pytest.mark.browser,
              pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing")]


def test_the_job_page_shows_the_wait_and_resumes(browser: Any, tmp_path: Path,  # noqa: F811
                                                 small_disk) -> None:
    from playwright.sync_api import expect

    disk = small_disk("32k")
    server = ThreadServer(e2e_settings(tmp_path, chunk_rows=CHUNK_ROWS, chunk_seconds=600,
                                       outage_deadline_seconds=8)).start()
    try:
        job = server.create(job_body(write_input(tmp_path / "in.jsonl", 100), disk.path / "out",
                                     "steady", "full disk"))
        with open_tab(browser) as page:
            page.goto(server.url + "/console/" + job["name"])
            waiting = page.locator("#job-waiting")
            expect(waiting).to_contain_text(f"Waiting for {disk.path}/out/prediction-model-")
            expect(waiting).to_contain_text("No space left")
            expect(page.locator("#job-state")).to_have_text("FAILED")
            expect(page.locator("#job-error")).to_contain_text("batchpredict jobs resume")
            resume = page.locator("#resume-job")
            expect(resume).to_be_visible()
            disk.grow("4m")
            resume.click()
            expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
            expect(resume).to_be_hidden()
            expect(page.locator("#job-error")).to_have_count(0)
        final = server.get(job)
        assert final["completionStats"]["successfulCount"] == "100"
    finally:
        server.stop()
