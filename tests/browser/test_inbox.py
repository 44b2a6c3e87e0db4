"""The page's notification inbox and preferences form against the notifier (in `archmesh-rt
dev`), with a real SMTP server to see what the notifier delivers."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import httpx
import pytest
from pydantic import ValidationError

from notifier.schemas import Preferences
from tests.browser.cdp import Page
from tests.browser.processes import DevProcess
from tests.fakes.smtp import SmtpServer
from tests.servers import API_KEY, wait_until

pytestmark = pytest.mark.slow

KEY = {"Authorization": f"Bearer {API_KEY}"}
CONNECTED = "document.querySelector('#connection').dataset.state === 'connected'"


def send(server: DevProcess, **request: Any) -> str:
    response = httpx.post(f"{server.http}/api/notifications", json=request, headers=KEY, timeout=5)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def delivery(server: DevProcess, notification: str, channel: str, *states: str) -> dict[str, Any]:
    """Wait until the notification's `channel` delivery reaches one of `states`."""

    def check() -> dict[str, Any] | None:
        response = httpx.get(f"{server.http}/api/notifications/{notification}", headers=KEY)
        found = response.json().get("deliveries", {}).get(channel) if response.is_success else None
        return found if found and found["status"] in states else None

    result: dict[str, Any] = wait_until(check, what=f"{channel} of {notification} in {states}")
    return result


def badge(page: Page, count: int) -> None:
    page.wait_for(
        f"document.querySelector('#badge').textContent === '{count}'", what=f"badge {count}"
    )


def inbox_ids(page: Page) -> list[str]:
    return list(
        page.evaluate("[...document.querySelectorAll('#inbox li.item')].map(li => li.dataset.id)")
    )


def test_inbox_shows_notifications_with_a_badge_and_marks_them_read(
    page: Page, dev: DevProcess
) -> None:
    page.goto(f"{dev.http}/#user=dana")
    page.wait_for(CONNECTED, what="connected")
    page.wait_for("document.querySelector('#inbox .empty')", what="the empty inbox")

    first = send(
        dev,
        user_id="dana",
        type="comment_added",
        title="Priya commented",
        body="Could the cache sit behind the API gateway?",
        channels=["in_app"],
    )
    page.wait_for(f"document.querySelector('#toasts .toast[data-id=\"{first}\"]')", what="toast")
    badge(page, 1)
    second = send(
        dev,
        user_id="dana",
        type="workflow_review_required",
        priority="high",
        title="Review the payments design",
        body="architecture_review is waiting",
    )
    badge(page, 2)
    assert inbox_ids(page) == [second, first]  # newest first
    assert "Review the payments design" in page.text(f'#inbox li[data-id="{second}"]')

    page.click(f'#inbox li[data-id="{first}"] .mark-read')
    badge(page, 1)
    page.wait_for(f"document.querySelector('#inbox li[data-id=\"{first}\"]').matches('.read')")
    # Focus moved to the remaining unread item's button, for keyboard users.
    assert page.evaluate("document.activeElement.closest('li')?.dataset.id") == second
    stored = httpx.get(f"{dev.http}/api/users/dana/inbox", headers=KEY).json()
    assert stored["unread"] == 1
    assert {i["id"]: i["read"] for i in stored["items"]} == {first: True, second: False}

    page.focus("#read-all")
    page.press("Enter")
    badge(page, 0)
    assert page.text("#badge-label") == "0 unread"
    assert httpx.get(f"{dev.http}/api/users/dana/inbox", headers=KEY).json()["unread"] == 0

    # A fresh load reads the stored inbox through the notifier API with the user's token.
    page.goto("about:blank")
    page.goto(f"{dev.http}/#user=dana")
    page.wait_for("document.querySelectorAll('#inbox li.item.read').length === 2", what="inbox")
    assert inbox_ids(page) == [second, first]
    badge(page, 0)


def stored_inbox(server: DevProcess, user: str, **params: Any) -> dict[str, Any]:
    response = httpx.get(f"{server.http}/api/users/{user}/inbox", params=params, headers=KEY)
    assert response.is_success, response.text
    result: dict[str, Any] = response.json()
    return result


def send_many(server: DevProcess, user: str, count: int) -> list[str]:
    """`count` in-app notifications in one batch, oldest first."""
    ids = [f"{user}-{i}" for i in range(count)]
    batch = [
        {"id": i, "user_id": user, "type": "comment_added", "title": f"Comment {i}"} for i in ids
    ]
    response = httpx.post(
        f"{server.http}/api/notifications/batch", json={"notifications": batch}, headers=KEY
    )
    assert response.json()["successful"] == count, response.text
    wait_until(
        lambda: len(stored_inbox(server, user, limit=500)["items"]) == count,
        what=f"{count} items stored",
    )
    return ids


def test_items_on_screen_are_reported_seen_and_counts_follow_other_clients_live(
    page: Page, dev: DevProcess
) -> None:
    page.goto(f"{dev.http}/#user=fay")
    page.wait_for(CONNECTED, what="connected")
    page.wait_for("document.querySelector('#inbox .empty')", what="the empty inbox")
    page.click('#inbox-views button[data-view="archived"]')
    page.wait_for("document.querySelector('#inbox .empty').textContent.includes('archived')")
    # Arrives while the archived view is shown: counted, not displayed, so not seen.
    hidden = send(dev, user_id="fay", type="comment_added", title="While away", channels=["in_app"])
    page.wait_for("document.querySelector('#unseen').textContent === '1 new'", what="1 new")
    badge(page, 1)
    assert stored_inbox(dev, "fay")["unseen"] == 1
    page.click('#inbox-views button[data-view="inbox"]')
    page.wait_for(f"document.querySelector('#inbox li[data-id=\"{hidden}\"]')", what="the item")
    # Displayed: reported seen, still unread.
    page.wait_for("document.querySelector('#unseen').textContent === ''", what="no new")
    wait_until(lambda: stored_inbox(dev, "fay")["unseen"] == 0, what="stored as seen")
    assert stored_inbox(dev, "fay")["unread"] == 1
    badge(page, 1)
    live = send(dev, user_id="fay", type="comment_added", title="Live one", channels=["in_app"])
    page.wait_for(f"document.querySelector('#inbox li[data-id=\"{live}\"]')", what="live item")
    wait_until(lambda: stored_inbox(dev, "fay")["unseen"] == 0, what="the live item seen")
    badge(page, 2)
    # Another client reads one: the pushed counts move the badge here.
    httpx.post(f"{dev.http}/api/users/fay/inbox/{hidden}/read", headers=KEY)
    badge(page, 1)


def test_archive_and_unarchive_move_items_between_the_views(page: Page, dev: DevProcess) -> None:
    older = send(dev, user_id="gus", type="comment_added", title="Older", channels=["in_app"])
    newer = send(dev, user_id="gus", type="comment_added", title="Newer", channels=["in_app"])
    wait_until(lambda: len(stored_inbox(dev, "gus")["items"]) == 2, what="two items")
    page.goto(f"{dev.http}/#user=gus")
    page.wait_for(CONNECTED, what="connected")
    page.wait_for("document.querySelectorAll('#inbox li.item').length === 2", what="two items")
    badge(page, 2)
    page.click(f'#inbox li[data-id="{newer}"] .archive')
    page.wait_for("document.querySelectorAll('#inbox li.item').length === 1", what="archived")
    assert inbox_ids(page) == [older]
    badge(page, 1)  # archived implies read
    assert [i["id"] for i in stored_inbox(dev, "gus", archived="true")["items"]] == [newer]
    page.click('#inbox-views button[data-view="archived"]')
    page.wait_for(f"document.querySelector('#inbox li[data-id=\"{newer}\"] .unarchive')")
    page.focus(f'#inbox li[data-id="{newer}"] .unarchive')
    page.press("Enter")
    page.wait_for("document.querySelector('#inbox .empty')", what="the archive empty")
    page.click('#inbox-views button[data-view="inbox"]')
    page.wait_for("document.querySelectorAll('#inbox li.item').length === 2", what="both back")
    assert inbox_ids(page) == [newer, older]
    page.click("#archive-all")
    page.wait_for("document.querySelector('#inbox .empty')", what="all archived")
    badge(page, 0)
    assert stored_inbox(dev, "gus")["items"] == []


def test_load_more_pages_through_the_whole_inbox_once(page: Page, dev: DevProcess) -> None:
    ids = send_many(dev, "hugo", 45)
    page.goto(f"{dev.http}/#user=hugo")
    page.wait_for(CONNECTED, what="connected")
    page.wait_for("document.querySelectorAll('#inbox li.item').length === 20", what="a page")
    assert page.evaluate("!document.querySelector('#more').hidden")
    page.click("#more")
    page.wait_for("document.querySelectorAll('#inbox li.item').length === 40", what="two pages")
    # One arriving meanwhile goes on top and does not shift the pages.
    fresh = send(dev, user_id="hugo", type="comment_added", title="Fresh", channels=["in_app"])
    page.wait_for("document.querySelectorAll('#inbox li.item').length === 41", what="the new one")
    page.focus("#more")
    page.press("Enter")
    page.wait_for("document.querySelector('#more').hidden", what="the last page")
    assert inbox_ids(page) == [fresh, *reversed(ids)]
    badge(page, 46)


def test_action_buttons_open_their_link_and_read_the_item(page: Page, dev: DevProcess) -> None:
    actions = [
        {"id": "review", "label": "Review now", "url": "/#review"},
        {"id": "docs", "label": "Read the design", "url": "https://docs.example.com/design"},
    ]
    page.goto(f"{dev.http}/#user=ida")
    page.wait_for(CONNECTED, what="connected")
    item = send(
        dev, user_id="ida", type="workflow_review_required", title="Review", actions=actions
    )
    selector = f'#inbox li[data-id="{item}"] a.action'
    page.wait_for(f"document.querySelectorAll({json.dumps(selector)}).length === 2")
    links = page.evaluate(
        f"[...document.querySelectorAll({json.dumps(selector)})]"
        ".map(a => [a.textContent, a.getAttribute('href'), a.target, a.rel])"
    )
    assert links == [
        ["Review now", "/#review", "", ""],
        ["Read the design", "https://docs.example.com/design", "_blank", "noopener noreferrer"],
    ]
    badge(page, 1)
    page.click(f'{selector}[data-action="review"]')
    badge(page, 0)  # from the pushed counts
    assert page.evaluate("location.hash") == "#review"
    (stored,) = stored_inbox(dev, "ida")["items"]
    assert (stored["read"], stored["actions"]) == (True, actions)


def test_every_time_zone_the_browser_offers_is_accepted_by_the_notifier(
    page: Page, dev: DevProcess
) -> None:
    page.goto(f"{dev.http}/#user=tz-check")
    page.wait_for("document.querySelector('#timezone').options.length > 300", what="time zones")
    zones = page.evaluate("[...document.querySelector('#timezone').options].map(o => o.value)")
    # The validator scans the tz database on each call (~20 ms): run it on every zone the
    # database does not list, and on a sample of the rest.
    listed = available_timezones()
    unusual = [zone for zone in zones if zone not in listed]
    refused = []
    for zone in [*unusual, *zones[::25]]:
        try:
            Preferences(timezone=zone)
        except ValidationError:
            refused.append(zone)
    assert refused == []


def _set_field(page: Page, selector: str, value: str) -> None:
    """Set a <select> or <input type=time> as a user's pick would, with its events."""
    page.evaluate(
        f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
        f" el.value = {json.dumps(value)};"
        " el.dispatchEvent(new Event('input', {bubbles: true}));"
        " el.dispatchEvent(new Event('change', {bubbles: true})); })()"
    )


def _save(page: Page) -> None:
    page.click("#prefs-form button[type=submit]")
    page.wait_for(
        "document.querySelector('#prefs-status').textContent.startsWith('Saved at') ||"
        " document.querySelector('#prefs-status').dataset.result === 'error'",
        what="the save to finish",
    )
    assert page.evaluate("document.querySelector('#prefs-status').dataset.result") == "saved", (
        page.text("#prefs-status")
    )


def _stored(server: DevProcess, user: str) -> dict[str, Any]:
    response = httpx.get(f"{server.http}/api/users/{user}/preferences", headers=KEY)
    assert response.is_success
    result: dict[str, Any] = response.json()
    return result


def test_preferences_saved_in_the_form_change_what_the_notifier_delivers(page: Page) -> None:
    with SmtpServer() as smtp:
        server = DevProcess(
            ARCHMESH_SMTP_HOST=smtp.host,
            ARCHMESH_SMTP_PORT=str(smtp.port),
            ARCHMESH_SMTP_SECURITY="none",
            ARCHMESH_LOG_LEVEL="warning",
        ).start()
        try:
            _preferences_scenario(page, server, smtp)
        finally:
            server.stop()


def _preferences_scenario(page: Page, server: DevProcess, smtp: SmtpServer) -> None:
    page.goto(f"{server.http}/#user=erin")
    page.wait_for(CONNECTED, what="connected")
    page.click("#prefs-panel summary")
    page.wait_for("document.querySelector('#prefs-panel').open")
    page.wait_for("document.querySelectorAll('#channel-rows tr').length >= 4", what="the form")
    page.fill("#contact-email", "erin@example.com")
    _save(page)

    # Email on: a review request reaches the SMTP server.
    sent = send(server, user_id="erin", type="workflow_review_required", title="Review me")
    delivery(server, sent, "email", "sent")
    [mail] = smtp.wait_for_messages(1)
    assert mail.rcpt_tos == ("erin@example.com",)

    # Off for this type, from the keyboard: the next one is suppressed, in-app still arrives.
    email_box = 'input[aria-label="Email for workflow_review_required"]'
    page.focus(email_box)
    page.press("Space")
    assert page.evaluate(f"document.querySelector({json.dumps(email_box)}).checked") is False
    _save(page)
    stored = _stored(server, "erin")
    assert stored["channels"]["workflow_review_required"] == {"email": False}
    assert stored["channels"]["default"]["email"] is True
    off = send(server, user_id="erin", type="workflow_review_required", title="Review again")
    assert "preferences" in delivery(server, off, "email", "suppressed")["last_error"]
    delivery(server, off, "in_app", "sent")

    # Quiet hours around the current time in a zone picked in the form: email is held.
    zone = "Asia/Tokyo"
    now = datetime.now(ZoneInfo(zone))
    start, end = (
        (now - timedelta(hours=1)).strftime("%H:%M"),
        (now + timedelta(hours=1)).strftime("%H:%M"),
    )
    page.click("#quiet-enabled")
    _set_field(page, "#timezone", zone)
    _set_field(page, "#quiet-start", start)
    _set_field(page, "#quiet-end", end)
    _save(page)
    stored = _stored(server, "erin")
    assert stored["timezone"] == zone
    assert stored["quiet_hours"] == {"enabled": True, "start": start, "end": end}
    quiet = send(server, user_id="erin", type="comment_added", title="A comment at night")
    delivery(server, quiet, "email", "held")
    delivery(server, quiet, "in_app", "sent")
    assert len(smtp.messages) == 1

    # A refused value is shown next to the form, and nothing is lost.
    _set_field(page, "#contact-phone", "12345")
    page.click("#prefs-form button[type=submit]")
    page.wait_for("document.querySelector('#prefs-status').dataset.result === 'error'")
    assert "phone" in page.text("#prefs-status")
    assert page.evaluate("document.querySelector('#contact-phone').ariaInvalid") == "true"
    assert _stored(server, "erin")["contacts"]["phone"] is None
