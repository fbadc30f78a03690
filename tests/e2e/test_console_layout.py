"""Every console page works from a phone to a wide screen: at 390, 1366 and 1920 px wide no page
scrolls sideways, every column of the jobs list can be read (cards on a narrow screen), forms stay
inside their cards, and long model names are cut to one line with the whole name in a tooltip.
Screenshots of each page at each width go to docs/screenshots/PAGE-WIDTH.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import text_request, write_jsonl
from tests.e2e.conftest import e2e_settings, open_tab
from tests.server.conftest import ThreadServer

pytestmark = pytest.mark.browser

LONG_MODEL = "publishers/google/models/gemini-2.5-flash-lite-preview-09-2025-long-context"
WIDTHS = [390, 1366, 1920]


def body(uri: str, out: Path, model: str, name: str) -> dict[str, Any]:
    return {"displayName": name, "model": model,
            "inputConfig": {"instancesFormat": "jsonl", "gcsSource": {"uris": [uri]}},
            "outputConfig": {"predictionsFormat": "jsonl",
                             "gcsDestination": {"outputUriPrefix": str(out)}}}


@pytest.fixture(scope="module")
def jobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Its own server, so the pages show the same jobs in every run: finished jobs with long
    model and display names, a FAILED one, one with failed rows, and one still running."""
    root = tmp_path_factory.mktemp("layout")
    srv = ThreadServer(e2e_settings(root)).start()
    out = root / "out"
    rows: list[Any] = [{"key": f"q{i}", "request": text_request(f"Question {i}?")}
                       for i in range(120)]
    rows[7] = {"key": "bad-role",
               "request": {"contents": [{"role": "bot", "parts": [{"text": "hi"}]}]}}
    rows[30] = "this is not json"
    mixed = str(write_jsonl(root / "mixed.jsonl", rows))
    small = str(write_jsonl(root / "small.jsonl", rows[:20]))
    bad = str(write_jsonl(root / "bad.jsonl", [{"request": {"contents": []}}] * 3))
    long = str(write_jsonl(root / "long.jsonl", [{"request": text_request("x")}] * 2000))
    srv.wait(srv.create(body(bad, out, "instant", "all-rows-invalid")))
    for i in range(3):
        srv.wait(srv.create(body(small, out, LONG_MODEL, f"nightly-eval-{i}")))
    srv.wait(srv.create(body(small, out, "instant", "a-display-name-much-longer-than-any-"
                                                    "column-should-have-to-show-whole")))
    detail = srv.wait(srv.create(body(mixed, out, "steady", "eval-with-two-bad-rows")))
    running = srv.create(body(long, out, "slow", "long-running-sweep"))
    srv.wait(running, until=lambda j: int(j["progress"]["doneCount"]) >= 20)
    yield {"server": srv, "detail": detail, "running": running}
    srv.call("POST", f"/v1/{running['name']}:cancel", {})
    srv.stop()


def no_sideways_scroll(page: Any) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"the page is {widths[0]} px wide in a {widths[1]} px window"


def boxes_inside(page: Any, inner: str, outer: str) -> list[str]:
    """The `inner` elements (CSS) that stick out of their closest `outer` ancestor."""
    return page.evaluate(  # type: ignore[no-any-return]
        """([inner, outer]) => [...document.querySelectorAll(inner)].filter((el) => {
             if (!el.offsetParent) return false;  // hidden
             const a = el.getBoundingClientRect();
             const b = el.closest(outer).getBoundingClientRect();
             return a.left < b.left - 0.5 || a.right > b.right + 0.5;
           }).map((el) => el.outerHTML.slice(0, 120))""", [inner, outer])


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_the_screen(
    browser: Any, jobs: dict[str, Any], screenshots: Path, width: int
) -> None:
    srv = jobs["server"]
    with open_tab(browser, width=width) as page:
        # -- the jobs list: every column of every job on screen, in a table or in cards
        page.goto(srv.url + "/console/")
        rows = page.locator("#jobs-table tbody tr")
        expect(rows).to_have_count(7)
        expect(rows.first.locator(".progress-text")).to_contain_text("/ 2,000 rows")
        no_sideways_scroll(page)
        cells = page.evaluate("""() => [...document.querySelectorAll('#jobs-table tbody td')]
            .map((td) => { const r = td.getBoundingClientRect();
                           return [td.dataset.label, r.left, r.right, r.width, r.height]; })""")
        assert len(cells) == 7 * 10
        for label, left, right, w, h in cells:
            assert w > 0 and h > 0 and 0 <= left and right <= width, (label, left, right)
        wrap = page.evaluate("(() => { const w = document.querySelector('.table-wrap');"
                             " return [w.scrollWidth, w.clientWidth]; })()")
        assert wrap[0] <= wrap[1], f"the table is clipped: {wrap}"
        model = page.locator("#jobs-table tbody tr", has_text="nightly-eval-0").locator(
            ".model-name")
        expect(model).to_have_attribute("title", LONG_MODEL)
        expect(model).to_have_text(LONG_MODEL.rsplit("/", 1)[1])
        one_line = model.evaluate("""(el) => [el.scrollWidth > el.clientWidth,
            el.getBoundingClientRect().height <= 1.6 * parseFloat(getComputedStyle(el).lineHeight),
            getComputedStyle(el).textOverflow]""")
        assert one_line == [True, True, "ellipsis"], one_line
        page.evaluate("document.activeElement.blur()")
        page.screenshot(path=str(screenshots / f"list-{width}.png"), full_page=True)

        # -- create: every control inside its fieldset, every fieldset inside the card
        page.goto(srv.url + "/console/create")
        expect(page.locator("#model-select option")).to_have_count(4)
        page.fill("#display-name", "nightly-eval-with-a-rather-long-display-name-20261130")
        page.check("input[name=mode][value=uri]")
        page.fill("#input-uris", "gs://my-team-bucket/batch-inputs/2026-11-30/nightly/*.jsonl")
        no_sideways_scroll(page)
        assert boxes_inside(page, "#create-form fieldset", ".panel") == []
        assert boxes_inside(page, "#create-form input, #create-form select, "
                                  "#create-form textarea, #create-form .hint", "fieldset") == []
        assert boxes_inside(page, "#create-form .actions", ".panel") == []
        page.evaluate("document.activeElement.blur()")
        page.screenshot(path=str(screenshots / f"create-{width}.png"), full_page=True)

        # -- one job: panels, charts and code inside the page
        page.goto(srv.url + "/console/" + jobs["detail"]["name"])
        expect(page.locator("#job-state")).to_have_text("SUCCEEDED")
        expect(page.locator("#failed-table tbody tr")).to_have_count(2)
        expect(page.locator("#chart-rows polyline")).to_have_count(1)
        no_sideways_scroll(page)
        assert boxes_inside(page, ".panel, figure.chart, pre.code", "main") == []
        page.evaluate("document.activeElement.blur()")
        page.screenshot(path=str(screenshots / f"detail-{width}.png"), full_page=True)
