"""The README's screenshot, taken from a real run: `make screenshots` sets ARCHMESH_SCREENSHOT
to docs/screenshot.png; in `make test` the same scenario runs and writes to a temporary file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import httpx
import pytest

from tests.browser.cdp import Page
from tests.browser.processes import DevProcess
from tests.servers import API_KEY

pytestmark = pytest.mark.slow

KEY = {"Authorization": f"Bearer {API_KEY}"}
USER, SESSION = "maria", "checkout-redesign"
STAGES = [
    ("requirements_intake", 0.05, "running", "Reading the requirements document"),
    ("requirements_analysis", 0.2, "running", "Extracted 14 functional requirements"),
    ("architecture_design", 0.4, "running", "Drafting components and interfaces"),
    ("design_generation", 0.6, "running", "Generating C4 diagrams"),
    ("architecture_review", 0.7, "review_required", "The proposed architecture needs your review"),
]


def _notify(server: DevProcess, kind: str, title: str, body: str) -> str:
    request = {"user_id": USER, "type": kind, "title": title, "body": body, "channels": ["in_app"]}
    response = httpx.post(f"{server.http}/api/notifications", json=request, headers=KEY)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_screenshot_of_the_page_at_work(page: Page, dev: DevProcess, tmp_path: Path) -> None:
    target = Path(os.environ.get("ARCHMESH_SCREENSHOT") or tmp_path / "page.png")
    # Still pictures: no toast caught halfway through its slide-in.
    reduced = [{"name": "prefers-reduced-motion", "value": "reduce"}]
    page.call("Emulation.setEmulatedMedia", {"features": reduced})
    page.goto(f"{dev.http}/#user={USER}&session={SESSION}")
    page.wait_for("document.querySelector('#connection').dataset.state === 'connected'")

    older = _notify(
        dev, "design_shared", "Tom shared “Payments v2” with you", "Open it in ArchMesh."
    )
    _notify(dev, "comment_added", "Priya commented on the data model", "Should orders be sharded?")
    page.wait_for("document.querySelector('#badge').textContent === '2'")
    page.click(f'#inbox li[data-id="{older}"] .mark-read')
    page.wait_for("document.querySelector('#badge').textContent === '1'")

    # The notifier watches the session for its owner: the review stage notifies Maria.
    owned = httpx.put(f"{dev.http}/api/sessions/{SESSION}", json={"owner_id": USER}, headers=KEY)
    assert owned.is_success, owned.text
    for stage, progress, status, message in STAGES:
        event = {
            "type": "workflow_update",
            "session_id": SESSION,
            "stage": stage,
            "progress": progress,
            "status": status,
            "message": message,
        }
        assert dev.publish(f"session:{SESSION}", event).is_success
    page.wait_for("document.querySelector('#wf-progress').ariaValueNow === '70'")
    page.wait_for(
        "[...document.querySelectorAll('#toasts .toast')].some(t => /review/.test(t.textContent))",
        what="the review notification's toast",
    )
    page.wait_for("document.querySelector('#badge').textContent === '2'")
    # The two older toasts are dismissed with their close buttons; the review's stays.
    for toast in page.evaluate(
        "[...document.querySelectorAll('#toasts .toast')].filter(t => !/review/.test("
        "t.textContent)).map(t => t.dataset.id)"
    ):
        page.click(f'#toasts .toast[data-id="{toast}"] .toast-close')
    page.wait_for("document.querySelectorAll('#toasts .toast').length === 1")
    page.evaluate("document.activeElement.blur()")

    page.screenshot(target)
    width, height = _png_size(target)
    assert (width, height) == (1360, 900)
