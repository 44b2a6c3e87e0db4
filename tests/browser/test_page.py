"""The page at `/` in headless Chromium: connection state, the workflow view, live
notifications, tokens, and a gateway restart that the page recovers from."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from archmesh_client.publisher import connect_publisher

from tests.browser.cdp import Page
from tests.browser.processes import DevProcess, NotifierProcess
from tests.servers import API_KEY, GatewayProcess, RedisServer
from tests.wsclient import token

KEY = {"Authorization": f"Bearer {API_KEY}"}

pytestmark = pytest.mark.slow

CONNECTED = "document.querySelector('#connection').dataset.state === 'connected'"


def update(session: str, stage: str, progress: float, status: str = "running") -> dict[str, Any]:
    return {
        "type": "workflow_update",
        "session_id": session,
        "stage": stage,
        "progress": progress,
        "status": status,
        "message": f"{stage} at {progress:.0%}",
    }


def progress(page: Page) -> int:
    return int(page.evaluate("document.querySelector('#wf-progress').ariaValueNow"))


def wait_progress(page: Page, percent: int, timeout: float = 10) -> None:
    page.wait_for(
        f"document.querySelector('#wf-progress').ariaValueNow === '{percent}'",
        timeout=timeout,
        what=f"progress bar at {percent}%",
    )


def timeline(page: Page) -> list[str]:
    return list(
        page.evaluate(
            "[...document.querySelectorAll('#timeline li')].map(li =>"
            " li.querySelector('.tl-stage').textContent + ' ' +"
            " li.querySelector('.tl-progress').textContent)"
        )
    )


def test_page_connects_and_published_updates_move_the_progress_bar(
    page: Page, dev: DevProcess
) -> None:
    # Published before the page opens: the page shows the session's current state at once.
    assert dev.publish("session:s-live", update("s-live", "requirements_analysis", 0.2)).is_success
    page.goto(f"{dev.http}/#session=s-live")
    page.wait_for(CONNECTED, what="connected")
    assert page.text("#connection-text") == f"Connected to node-{dev.port}"
    assert page.evaluate("document.querySelector('#session-select').value") == "s-live"
    wait_progress(page, 20)
    assert page.text("#wf-stage") == "Requirements analysis"

    assert dev.publish("session:s-live", update("s-live", "architecture_design", 0.4)).is_success
    wait_progress(page, 40)
    assert page.text("#wf-stage") == "Architecture design"
    assert page.evaluate("document.querySelector('.progress-fill').style.width") == "40%"
    assert page.text("#wf-status") == "Running"

    review = update("s-live", "architecture_review", 0.7, "review_required")
    assert dev.publish("session:s-live", review).is_success
    wait_progress(page, 70)
    assert page.text("#wf-status") == "Review required"
    assert page.evaluate("document.querySelector('#workflow').dataset.status") == "review_required"
    assert page.text("#wf-message") == "architecture_review at 70%"
    assert timeline(page) == [
        "Architecture review 70%",
        "Architecture design 40%",
        "Requirements analysis 20%",
    ]


def test_simulate_workflow_from_the_keyboard(page: Page, dev: DevProcess) -> None:
    page.goto(f"{dev.http}/#session=s-sim&user=sim-owner")
    page.wait_for(CONNECTED, what="connected")
    page.focus("#simulate")
    page.press("Enter")
    page.wait_for(
        "document.querySelector('#timeline li[data-status=review_required]')",
        what="the review stage",
    )
    wait_progress(page, 100, timeout=15)
    assert page.text("#wf-status") == "Completed"
    statuses = page.evaluate(
        "[...document.querySelectorAll('#timeline li')].map(li => li.dataset.status)"
    )
    assert statuses[0] == "completed"
    assert "review_required" in statuses
    assert len(statuses) == 8
    # The simulation made this user the session's owner: the notifier told them about the review.
    page.wait_for(
        "/review required/.test(document.querySelector('#inbox').textContent)",
        what="the review notification",
    )


def test_a_new_session_is_watched_after_minting_a_token_for_it(page: Page, dev: DevProcess) -> None:
    page.goto(f"{dev.http}/#session=s-before")
    page.wait_for(CONNECTED, what="connected")
    page.fill("#session-new", "payments-redesign")
    page.press("Enter")
    page.wait_for(
        "document.querySelector('#session-select').value === 'payments-redesign'",
        what="the new session selected",
    )
    assert page.text("#wf-stage") == "No updates yet"
    # The page swapped in a token that lists the session (refresh), so live updates arrive.
    page.wait_for("!document.querySelector('#session-note').textContent", what="no refusal")
    # Even if this lands before the subscription, the page replays the session's history.
    published = update("payments-redesign", "design_generation", 0.55)
    assert dev.publish("session:payments-redesign", published).is_success
    wait_progress(page, 55)
    # Switching back shows the other session's own state.
    page.evaluate(
        "(() => { const s = document.querySelector('#session-select'); s.value = 's-before';"
        " s.dispatchEvent(new Event('change')); })()"
    )
    assert progress(page) == 0


def test_live_notification_shows_a_toast_and_the_badge(page: Page, dev: DevProcess) -> None:
    """Notifications sent through the notifier (the store and the live events agree, so the
    counts a reply carries and the ones pushed tell the same story)."""
    page.goto(f"{dev.http}/#user=alice")
    page.wait_for(CONNECTED, what="connected")
    assert page.evaluate("document.querySelector('#user-id').value") == "alice"
    request = {
        "user_id": "alice",
        "type": "workflow_review_required",
        "title": "Review the payments architecture",
        "body": "Stage architecture_review is waiting for you.",
        "priority": "high",
        "channels": ["in_app"],
    }
    assert notify(dev, id="n-1", **request).is_success
    page.wait_for("document.querySelector('#toasts .toast[data-id=\"n-1\"]')", what="toast")
    assert "Review the payments architecture" in page.text("#toasts")
    assert page.evaluate("document.querySelector('#toasts').getAttribute('aria-live')") == "polite"
    page.wait_for("document.querySelector('#inbox li[data-id=\"n-1\"].unread')", what="inbox item")
    # Another user's notification never reaches this page; two more of alice's make 3 unread.
    assert notify(dev, **{**request, "id": "n-2", "user_id": "bob"}).is_success
    for n in (3, 4):
        assert notify(dev, **{**request, "id": f"n-{n}", "title": f"Review {n}"}).is_success
    page.wait_for("document.querySelector('#badge').textContent === '3'", what="badge 3")
    assert page.text("#badge-label") == "3 unread"
    assert page.evaluate("document.querySelector('#inbox li[data-id=\"n-2\"]')") is None
    # The toast can be dismissed from the keyboard.
    page.focus("#toasts .toast-close")
    page.press("Escape")
    page.wait_for("!document.querySelector('#toasts .toast')", what="toast dismissed")


def notify(dev: DevProcess, **request: Any) -> httpx.Response:
    return httpx.post(f"{dev.http}/api/notifications", json=request, headers=KEY, timeout=5)


def test_outside_dev_mode_the_host_provides_the_token(
    page: Page, gateways: list[GatewayProcess]
) -> None:
    gateway = GatewayProcess(ARCHMESH_LOG_LEVEL="warning").start()
    gateways.append(gateway)
    refused = httpx.post(f"{gateway.http}/api/dev/token", json={"user_id": "mallory"})
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found"

    page.goto(f"{gateway.http}/")
    page.wait_for("!document.querySelector('#no-token').hidden", what="the no-token banner")
    assert page.evaluate("document.querySelector('#user-form').hidden") is True
    assert page.evaluate("document.querySelector('#simulate').hidden") is True

    jwt = token("bob", ["s1"])
    page.goto("about:blank")  # a new document: a fragment change alone does not reload
    page.goto(f"{gateway.http}/#token={jwt}&session=s1")
    page.wait_for(CONNECTED, what="connected")
    assert page.evaluate("location.hash") == ""  # the token left the address bar
    assert page.text("#user-label") == "Signed in as bob"
    assert page.evaluate("document.querySelector('#session-select').value") == "s1"
    assert gateway.publish("session:s1", update("s1", "validation", 0.85)).is_success
    wait_progress(page, 85)


def _publish_directly(redis_url: str, items: list[tuple[str, dict[str, Any]]]) -> None:
    """Publish through Redis while no gateway runs, as a backend service does."""

    async def run() -> None:
        async with connect_publisher(redis_url) as publisher:
            for channel, data in items:
                await publisher.publish(channel, data)

    asyncio.run(run())


def test_gateway_restart_shows_reconnecting_then_recovered(
    page: Page, private_redis: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """A node goes away and another takes its port: what was published in between, a workflow
    update and a notification from the notifier process, appears once the page recovered."""
    notifier = NotifierProcess(private_redis.url, ARCHMESH_LOG_LEVEL="warning").start()
    gateways.append(notifier)
    first = GatewayProcess(private_redis.url, ARCHMESH_LOG_LEVEL="warning").start()
    gateways.append(first)
    jwt = token("carol", ["s1"])
    page.goto(f"{first.http}/#token={jwt}&session=s1")
    page.wait_for(CONNECTED, what="connected")
    assert first.publish("session:s1", update("s1", "requirements_analysis", 0.2)).is_success
    wait_progress(page, 20)

    first.stop()  # SIGTERM: drains, asks the page to reconnect; nothing listens on the port
    page.wait_for(
        "document.querySelector('#connection').dataset.state === 'reconnecting'",
        what="reconnecting",
    )
    assert "Reconnecting (attempt " in page.text("#connection-text")
    _publish_directly(
        private_redis.url,
        [
            ("session:s1", update("s1", "architecture_design", 0.4)),
            ("session:s1", update("s1", "architecture_review", 0.7, "review_required")),
        ],
    )
    sent = notifier.send(
        {"user_id": "carol", "type": "comment_added", "title": "Sent while you were away"}
    )
    assert sent.status_code == 202, sent.text
    notifier.wait_delivered(sent.json()["id"], "in_app")
    second = GatewayProcess(private_redis.url, port=first.port, ARCHMESH_LOG_LEVEL="warning")
    gateways.append(second.start())
    page.wait_for(
        "document.querySelector('#connection').dataset.recovery === 'recovered'",
        timeout=20,
        what="recovered",
    )
    text = page.text("#connection-text")
    assert text.startswith(f"Reconnected to node-{second.port}: recovered "), text
    wait_progress(page, 70)
    assert timeline(page) == [
        "Architecture review 70%",
        "Architecture design 40%",
        "Requirements analysis 20%",
    ]
    page.wait_for("document.querySelector('#inbox li.item.unread')", what="the notification")
    assert "Sent while you were away" in page.text("#inbox")
    assert "Sent while you were away" in page.text("#toasts")
