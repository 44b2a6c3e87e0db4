"""Headless Chromium's own EventSource on `GET /sse`: it reads the events, and when the gateway
restarts (publications in between) its reconnect with `Last-Event-ID`, which the browser
makes by itself, recovers every channel with no gap and no duplicate."""

from __future__ import annotations

import itertools
import json
import signal

import pytest

from tests.browser.cdp import Page
from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import token

pytestmark = pytest.mark.slow

CHANNELS = ("session:es", "broadcast")


def received(page: Page) -> list[tuple[str, int]]:
    return [tuple(item) for item in page.evaluate("window.sse.publications")]


def test_event_source_reconnects_across_a_restart_without_gap_or_duplicate(
    page: Page, redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    helper = GatewayProcess(redis_server.url).start()  # publishes while `node` is down
    gateways.extend([node, helper])
    query = "&".join(f"channel={c}" for c in CHANNELS) + f"&token={token('eve', ['es'])}"
    page.goto(f"{node.http}/healthz")
    page.evaluate(
        f"""(() => {{
          const sse = {{publications: [], opens: 0, lastIds: [], recovered: []}};
          window.sse = sse;
          const source = new EventSource({json.dumps("/sse?" + query)});
          source.onopen = () => (sse.opens += 1);
          source.onmessage = (event) => {{
            const frame = JSON.parse(event.data);
            if (frame.type === "publication") sse.publications.push([frame.channel, frame.offset]);
            if ("recovered" in frame) sse.recovered.push(frame.recovered);
            sse.lastIds.push(event.lastEventId);
          }};
          window.source = source;
        }})()"""
    )
    page.wait_for("window.sse.opens === 1", what="the stream")
    page.wait_for("window.sse.lastIds.length >= 3", what="subscribed events")
    published = 0
    for n in range(6):
        assert node.publish(CHANNELS[n % 2], {"type": "t", "n": n}).is_success
        published += 1
    page.wait_for(f"window.sse.publications.length === {published}", what="the first batch")

    node.stop(signal.SIGTERM)
    for n in range(6, 16):
        assert helper.publish(CHANNELS[n % 2], {"type": "t", "n": n}).is_success
        published += 1
    restarted = GatewayProcess(redis_server.url, port=node.port).start()
    gateways.append(restarted)
    page.wait_for("window.sse.opens === 2", timeout=30, what="the browser's own reconnect")
    for n in range(16, 20):
        assert restarted.publish(CHANNELS[n % 2], {"type": "t", "n": n}).is_success
        published += 1
    page.wait_for(f"window.sse.publications.length >= {published}", what="every publication")
    seen = received(page)
    duplicates = len(seen) - len(set(seen))
    gaps = 0
    for channel in CHANNELS:
        offsets = [offset for c, offset in seen if c == channel]
        assert offsets == sorted(offsets)
        gaps += sum(1 for a, b in itertools.pairwise(offsets) if b != a + 1)
    print(f"published={published} received={len(seen)} duplicates={duplicates} gaps={gaps}")
    assert (len(seen), duplicates, gaps) == (published, 0, 0)
    assert page.evaluate("window.sse.recovered") == [True, True, True]  # user:eve too
    page.evaluate("window.source.close()")
