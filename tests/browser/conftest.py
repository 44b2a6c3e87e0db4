"""Fixtures for the page's browser tests: headless Chromium over CDP and dev-mode servers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.browser.cdp import Browser, Page, find_chromium
from tests.browser.processes import DevProcess


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None and os.environ.get("ARCHMESH_SCREENSHOT"):
        pytest.fail("make screenshots needs Chromium: apt-get install chromium")
    if binary is None:
        pytest.skip(
            "no Chromium found (/usr/bin/chromium, or ARCHMESH_CHROMIUM=path): "
            "`apt-get install chromium` (.ci/run installs it) to run the browser tests"
        )
    chromium = Browser(binary).start()
    yield chromium
    chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh tab in its own browser context; the test fails if the page threw."""
    tab = browser.page()
    yield tab
    errors = tab.errors()
    tab.close()
    assert not errors, f"the page raised: {errors}"


@pytest.fixture(scope="module")
def dev() -> Iterator[DevProcess]:
    """One `archmesh-rt dev` (embedded broker, notifier inside) per test module: tests keep
    apart by using their own users and sessions."""
    server = DevProcess(ARCHMESH_LOG_LEVEL="warning").start()
    yield server
    server.stop()
