"""The operator console at `/admin` in headless Chromium against a local deployment on a real
Redis: `archmesh-rt dev` (a gateway with the notifier on the same origin, as behind nginx) and a
second gateway process. The console signs in, lists the three nodes, draws charts from their
announcements while messages flow, shows a channel's history, publishes, requeues a dead
letter that is then delivered once, shows a notification's timeline, and disconnects a real
client on the other node after a confirmation. Any JavaScript error or CSP refusal fails it
(the `page` fixture). `make screenshots` keeps the picture as docs/console.png."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.browser.cdp import Page
from tests.browser.processes import DevProcess
from tests.servers import API_KEY, GatewayProcess, RedisServer, wait_until
from tests.wsclient import token

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # `make screenshots` runs longer

KEY = {"Authorization": f"Bearer {API_KEY}"}
ENV = {
    "ARCHMESH_ANNOUNCE_INTERVAL": "0.5",
    "ARCHMESH_ANNOUNCE_TTL": "2",
    "ARCHMESH_PRESENCE_PREFIXES": "session:,user:",
    "ARCHMESH_LOG_LEVEL": "warning",
}
USER, CHANNEL = "console-ada", "session:design-review"


@pytest.fixture(scope="module")
def deployment() -> Iterator[tuple[DevProcess, GatewayProcess]]:
    redis = RedisServer()
    redis.start()
    dev = DevProcess(redis.url, **ENV).start()
    other = GatewayProcess(redis.url, **ENV).start()
    yield dev, other
    other.stop()
    dev.stop()
    redis.cleanup()


def client(sockets: ExitStack, gateway: GatewayProcess, user: str) -> ClientConnection:
    """A real WebSocket client of `gateway`, connected as `user` and following CHANNEL."""
    # Unbounded: a client that reads nothing must still see its close frame at the end.
    ws = sockets.enter_context(connect(gateway.ws, open_timeout=5, max_queue=None))
    session = CHANNEL.partition(":")[2]
    ws.send(json.dumps({"type": "connect", "token": token(user, [session]), "id": 1}))
    assert json.loads(ws.recv(timeout=5))["type"] == "connected"
    ws.send(json.dumps({"type": "subscribe", "channel": CHANNEL, "id": 2}))
    assert json.loads(ws.recv(timeout=5))["type"] == "subscribed"
    return ws


def frames_until(ws: ClientConnection, kind: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        frame: dict[str, Any] = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame["type"] == kind:
            return frame


def dead_letter(dev: DevProcess, user: str) -> str:
    request = {"id": f"dl-{user}", "user_id": user, "type": "build_done", "title": "Build done"}
    fields = {
        "request": json.dumps(request),
        "reason": "template store unreachable",
        "entry": "1-0",
        "failed_at": str(int(time.time() * 1000)),
    }
    import redis as redis_py

    with redis_py.Redis.from_url(dev.env["ARCHMESH_REDIS_URL"]) as store:
        return str(store.xadd("nt:dead", fields).decode())  # type: ignore[arg-type, union-attr]


def notify(dev: DevProcess, user: str, title: str) -> str:
    request = {"user_id": user, "type": "review_ready", "title": title, "channels": ["in_app"]}
    reply = httpx.post(f"{dev.http}/api/notifications", json=request, headers=KEY, timeout=5)
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


def delivered(dev: DevProcess, notification: str) -> bool:
    reply = httpx.get(f"{dev.http}/api/notifications/{notification}", headers=KEY, timeout=5)
    found = reply.json().get("deliveries", {}).get("in_app", {})
    return reply.is_success and found.get("status") == "sent"


def count(page: Page, selector: str) -> int:
    return int(page.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length"))


def test_the_console_sees_and_steers_a_running_deployment(
    page: Page, deployment: tuple[DevProcess, GatewayProcess], tmp_path: Path
) -> None:
    dev, other = deployment
    picture = os.environ.get("ARCHMESH_SCREENSHOT_CONSOLE")
    target = Path(picture or tmp_path / "console.png")
    reduced = [{"name": "prefers-reduced-motion", "value": "reduce"}]
    page.call("Emulation.setEmulatedMedia", {"features": reduced})
    with ExitStack() as sockets:
        run(page, dev, other, sockets, target, bool(picture))


def run(
    page: Page,
    dev: DevProcess,
    other: GatewayProcess,
    sockets: ExitStack,
    target: Path,
    picture: bool,
) -> None:
    doomed = GatewayProcess(dev.env["ARCHMESH_REDIS_URL"], **ENV).start()
    sockets.callback(doomed.stop)
    ada = client(sockets, other, USER)
    for i in range(3):
        client(sockets, dev, f"watcher-{i}")
    for stage in ("requirements_analysis", "architecture_design"):
        event = {"type": "workflow_update", "session_id": "design-review", "stage": stage}
        assert dev.publish(CHANNEL, {**event, "progress": 0.4, "status": "running"}).is_success
    sent = notify(dev, "console-maria", "Review the payments design")
    first, second = dead_letter(dev, "console-tom"), dead_letter(dev, "console-ivy")
    wait_until(lambda: delivered(dev, sent), what="the notification sent (for the analytics)")

    # A user token is refused; the API key signs in.
    page.goto(f"{dev.http}/admin")
    page.fill("#credential", token("console-ada"))
    page.click("#sign-in-form button")
    page.wait_for("/user token/.test(document.querySelector('#sign-in-error').textContent)")
    page.fill("#credential", API_KEY)
    page.click("#sign-in-form button")
    page.wait_for("!document.querySelector('#console').hidden", what="signed in")
    assert page.evaluate(f"sessionStorage.getItem('archmesh-admin-credential') === '{API_KEY}'")

    # Nodes: the dev gateway, its notifier, the other gateway and one about to be killed.
    page.wait_for("document.querySelectorAll('#nodes tbody tr').length === 4", what="4 nodes")
    roles = page.evaluate(
        "[...document.querySelectorAll('#nodes tbody tr')].map(r => r.dataset.role).sort()"
    )
    assert roles == ["gateway", "gateway", "gateway", "notifier"]
    other_row = f'#nodes tbody tr[data-node="{other.env["ARCHMESH_NODE_ID"]}"]'
    page.wait_for(f"document.querySelector({json.dumps(other_row)})", what="the other's row")
    doomed.stop(signal.SIGKILL)
    doomed_row = f'#nodes tbody tr[data-node="{doomed.env["ARCHMESH_NODE_ID"]}"]'
    page.wait_for(f"!document.querySelector({json.dumps(doomed_row)})", what="the killed one gone")
    assert count(page, "#nodes tbody tr") == 3

    # Charts move while messages flow.
    flowing = threading.Event()

    def flow() -> None:
        beat = 0
        while not flowing.is_set():
            dev.publish(CHANNEL, {"type": "tick", "at": time.time()})
            beat += 1
            time.sleep(0.03 + 0.05 * (beat // 40 % 3))  # a rate that changes, for the picture

    publisher = threading.Thread(target=flow, daemon=True)
    publisher.start()
    try:
        page.wait_for(
            "Number(document.querySelector('#chart-deliveries').dataset.max) > 0",
            timeout=15,
            what="the deliveries chart drawn above zero",
        )
        if picture:  # `make screenshots`: traffic for a while, so the charts have a shape
            flowing.wait(40)
    finally:
        flowing.set()
        publisher.join()
    assert int(page.evaluate("document.querySelector('#chart-connections').dataset.points")) >= 2

    # Channels: the busiest one, its presence and history; then a publication from the form.
    page.wait_for(f"document.querySelector('#busiest li[data-channel=\"{CHANNEL}\"]')")
    page.click(f'#busiest li[data-channel="{CHANNEL}"] button')
    page.wait_for("document.querySelectorAll('#channel-history li[data-offset]').length > 0")
    page.wait_for("/4 connection/.test(document.querySelector('#channel-stats').textContent)")
    page.fill("#publish-data", '{"type": "announcement", "text": "Maintenance at 18:00"}')
    page.click("#publish-form button")
    page.wait_for("/offset/.test(document.querySelector('#publish-result').textContent)")
    assert frames_until(ada, "publication")["channel"] == CHANNEL
    page.wait_for(
        "[...document.querySelectorAll('#channel-history li')].some(li =>"
        " /Maintenance/.test(li.textContent))",
        what="the new publication in the history",
    )

    # Notifier: a dead letter requeued (after confirming) is delivered once.
    page.wait_for(f"document.querySelector('#dead-letters li[data-id=\"{first}\"]')")
    page.click(f'#dead-letters li[data-id="{first}"] .requeue')
    page.wait_for("document.querySelector('#confirm').open")
    page.click("#confirm-ok")
    page.wait_for(f"!document.querySelector('#dead-letters li[data-id=\"{first}\"]')")
    assert count(page, "#dead-letters li") == 1
    wait_until(lambda: delivered(dev, "dl-console-tom"), what="the requeued request delivered")
    inbox = httpx.get(f"{dev.http}/api/users/console-tom/inbox", headers=KEY).json()["items"]
    assert [item["id"] for item in inbox] == ["dl-console-tom"]

    # A notification's timeline, and the hourly analytics chart.
    page.fill("#notification", sent)
    page.click("#timeline-form button")
    page.wait_for("document.querySelector('#timeline li[data-medium=\"in_app\"]')")
    assert page.evaluate("document.querySelector('#timeline li').dataset.status") == "sent"
    page.wait_for("Number(document.querySelector('#chart-analytics').dataset.buckets) > 0")

    # Users: Ada's connection is on the other node.
    page.fill("#user", USER)
    page.click("#user-form button")
    there = f'#user-connections li[data-node="{other.env["ARCHMESH_NODE_ID"]}"]'
    page.wait_for(f"document.querySelector({json.dumps(there)})", what="Ada's connection")
    page.evaluate("document.activeElement.blur()")
    page.screenshot(target)

    # Disconnect: cancelled first (nothing happens), then confirmed.
    page.click("#user-disconnect")
    page.wait_for("document.querySelector('#confirm').open")
    page.click("#confirm-cancel")
    page.wait_for("document.querySelector('#user-result').textContent === 'Cancelled'")
    page.click("#user-disconnect")
    page.wait_for("document.querySelector('#confirm').open")
    page.click("#confirm-ok")
    page.wait_for("/disconnect: sent/.test(document.querySelector('#user-result').textContent)")
    told = frames_until(ada, "disconnect")
    assert told["reconnect"] is False
    assert page.evaluate(f"!!document.querySelector('#dead-letters li[data-id=\"{second}\"]')")
