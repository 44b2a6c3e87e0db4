"""The page's preferences form when a user tries to switch a critical type off: the notifier
refuses, and the form says why next to that very switch, saving nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.browser.cdp import Page
from tests.browser.processes import DevProcess
from tests.servers import API_KEY

pytestmark = pytest.mark.slow

CONNECTED = "document.querySelector('#connection').dataset.state === 'connected'"
STATUS = "document.querySelector('#prefs-status')"


@pytest.fixture(scope="module")
def dev() -> Iterator[DevProcess]:
    server = DevProcess(
        ARCHMESH_LOG_LEVEL="warning", ARCHMESH_NOTIFIER_CRITICAL_TYPES="workflow_failed"
    ).start()
    yield server
    server.stop()


def test_switching_a_critical_type_off_is_refused_with_the_reason(
    page: Page, dev: DevProcess
) -> None:
    page.goto(f"{dev.http}/#user=cora")
    page.wait_for(CONNECTED, what="connected")
    page.click("#prefs-panel summary")
    page.wait_for("document.querySelectorAll('#channel-rows tr').length >= 4", what="the form")
    box = 'input[aria-label="Email for workflow_failed"]'
    page.focus(box)
    page.press("Space")
    page.click("#prefs-form button[type=submit]")
    page.wait_for(f"{STATUS}.dataset.result === 'error'", what="the refusal")
    shown = page.text("#prefs-status")
    assert "channels.workflow_failed.email" in shown
    assert "critical" in shown
    assert page.evaluate(f"document.querySelector('{box}').ariaInvalid") == "true"
    assert page.evaluate("document.querySelector('#contact-email').ariaInvalid") is None
    stored = httpx.get(
        f"{dev.http}/api/users/cora/preferences",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    ).json()
    assert "workflow_failed" not in stored["channels"]
