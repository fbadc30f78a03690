"""Browser tests of the web console: real headless Chromium (Playwright) against a real server
(`create_app` served by uvicorn on a free loopback port, in a thread of this process).

The model registry here names test doubles only, so jobs are fast and their pace is known:
    instant   answers at once
    steady    2 rows a call, 0.1 s a call: ~20 rows/s (a job long enough to watch)
    slow      1 row a call, 0.1 s a call: ~10 rows/s (a job to cancel part-way)
    gemini-*  answers at once, under any Gemini-style name (long names for the tables)

Tests that use a browser are skipped, with the reason, when /usr/bin/chromium is missing
(`apt-get install -y chromium chromium-driver`; never `playwright install`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpredict.config import Settings
from tests.server.conftest import ThreadServer

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
MODELS_TOML = """
[[models]]
name = "instant"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
description = "test double: answers at once"
options = { batch_size = 16 }

[[models]]
name = "steady"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
description = "test double: ~20 rows/s"
options = { delay_seconds = 0.1, batch_size = 2, max_concurrency = 1 }

[[models]]
name = "slow"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
description = "test double: ~10 rows/s"
options = { delay_seconds = 0.1, batch_size = 1, max_concurrency = 1 }

[[models]]
name = "gemini-*"
backend = "python"
class = "tests.doubles.instant:InstantTestDouble"
description = "test double under Gemini-style names"
options = { batch_size = 16 }
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the tests that drive a browser when Chromium is missing (the API tests still run)."""
    if os.path.exists(CHROMIUM):
        return
    skip = pytest.mark.skip(
        reason=f"{CHROMIUM} is missing: apt-get install -y chromium chromium-driver"
    )
    for item in items:
        in_here = "tests/e2e/" in str(item.fspath).replace(os.sep, "/")
        if in_here and {"page", "browser"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(skip)


def e2e_settings(root: Path, **overrides: Any) -> Settings:
    (root / "models.toml").write_text(MODELS_TOML)
    values: dict[str, Any] = dict(
        data_dir=str(root / "data"),
        models_file=str(root / "models.toml"),
        chunk_rows=5,
        chunk_seconds=0.2,
        poll_seconds=0.1,
        stale_after_seconds=10.0,
        max_running_jobs=2,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """One open (loopback-only, no tokens) server for the browser tests."""
    srv = ThreadServer(e2e_settings(tmp_path_factory.mktemp("e2e-server"))).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped: sync Playwright runs an event loop in this thread while it is open,
    which would break every later test that calls asyncio.run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@contextlib.contextmanager
def open_tab(browser: Any, width: int = 1440, height: int = 900) -> Iterator[Any]:
    """A fresh tab (own sessionStorage) with a `width` x `height` viewport; fails the test on a
    JavaScript error."""
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    context = browser.new_context(viewport={"width": width, "height": height},
                                  accept_downloads=True)
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    # HTTP errors the console handles (401 asks for a token, 400 shows the message) are logged
    # by Chromium as "Failed to load resource": not a fault of the page.
    tab.on("console", lambda msg: errors.append(msg.text)
           if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
    try:
        yield tab
    finally:
        context.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh tab at laptop size; fails the test on a JavaScript error."""
    with open_tab(browser) as tab:
        yield tab


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the console tests save screenshots: a temporary folder, so a test run leaves the
    checkout as it was; `SCREENSHOTS_DIR=docs/screenshots` refreshes the README's."""
    wanted = os.environ.get("SCREENSHOTS_DIR")
    folder = Path(wanted).resolve() if wanted else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
