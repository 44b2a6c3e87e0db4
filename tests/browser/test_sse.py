"""Headless Chromium's own EventSource on `GET /sse`: it reads the events, and when the gateway
restarts (publications in between) its reconnect with `Last-Event-ID`, which the browser
makes by itself, recovers every channel with no gap and no duplicate. And the JS SDK in the
browser, in its default configuration, behind a proxy that refuses WebSocket upgrades: it
falls back to SSE, moves back to a WebSocket once upgrades pass, and to SSE again when they
are refused anew, every publication arriving once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
from collections.abc import Iterator

import pytest

from tests.browser.cdp import Page
from tests.servers import GatewayProcess, RedisServer, wait_until
from tests.tcpproxy import LoopbackServer
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


class UpgradeGate(LoopbackServer):
    """A loopback proxy in front of a gateway, like one that blocks WebSockets: while
    `refusing`, a WebSocket upgrade is answered 403; every other connection (and an upgrade
    once allowed) is tunnelled as is. Runs its own loop in a thread (LoopbackServer), so
    that the test may block on the browser meanwhile."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__("upgrade-gate")
        self.upstream_port = upstream_port
        self.refusing = True
        self.refused = 0
        self.passed = 0
        self._upgraded: set[asyncio.StreamWriter] = set()

    def refuse(self) -> None:
        """Refuse upgrades again, and drop the WebSockets that went through."""

        def drop() -> None:
            self.refusing = True
            for writer in list(self._upgraded):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(drop)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        upgrade = b"\r\nupgrade: websocket" in head.lower()
        if upgrade and self.refusing:
            self.refused += 1
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        if upgrade:
            self.passed += 1
            self._upgraded.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return
        up_writer.write(head)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self._upgraded.discard(writer)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.transport.abort()


@pytest.fixture
def gate(redis_server: RedisServer, gateways: list[GatewayProcess]) -> Iterator[UpgradeGate]:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    with UpgradeGate(node.port) as proxy:
        yield proxy


def test_the_sdk_falls_back_to_sse_and_back_to_websocket_by_itself(
    page: Page, gate: UpgradeGate, gateways: list[GatewayProcess]
) -> None:
    node = gateways[-1]
    page.goto(f"http://127.0.0.1:{gate.port}/healthz")
    jwt = token("bea", ["bx"])
    page.evaluate(
        f"""(async () => {{
          const {{ ArchMeshRealtime }} = await import("/static/archmesh-realtime.js");
          const client = new ArchMeshRealtime(`ws://${{location.host}}/ws`, {{
            token: {json.dumps(jwt)},
            backoffBase: 10,
            backoffCap: 50,
            websocketRetryInterval: 300,
          }});
          const seen = {{publications: [], moves: []}};
          window.fallback = {{client, seen}};
          client.on("transport", (move) => seen.moves.push(move.transport));
          client.on("publication", (p) => seen.publications.push([p.offset, client.transport]));
          await client.connect();
          await client.subscribe("session:bx");
        }})()"""
    )
    assert page.evaluate("window.fallback.client.transport") == "sse"
    assert page.evaluate("window.fallback.client.transports") == ["websocket", "sse"]
    assert gate.refused >= 2
    published = 0

    def publish(count: int) -> None:
        nonlocal published
        for _ in range(count):
            assert node.publish("session:bx", {"type": "t", "n": published}).is_success
            published += 1

    publish(5)
    page.wait_for(f"window.fallback.seen.publications.length === {published}", what="on SSE")
    refused = gate.refused
    wait_until(lambda: gate.refused > refused, what="a refused try of a WebSocket while on SSE")
    assert page.evaluate("window.fallback.client.transport") == "sse"
    gate.refusing = False  # upgrades pass: the next try of a WebSocket opens
    publish(5)  # while the client moves
    page.wait_for(
        "window.fallback.client.transport === 'websocket'"
        " && window.fallback.client.state === 'connected'",
        what="the move to WebSocket",
    )
    publish(5)
    page.wait_for(f"window.fallback.seen.publications.length === {published}", what="all so far")
    gate.refuse()
    publish(5)  # while the client moves back
    page.wait_for(
        "window.fallback.seen.moves.length === 3 && window.fallback.client.state === 'connected'",
        what="the move back to SSE",
    )
    publish(5)
    page.wait_for(f"window.fallback.seen.publications.length >= {published}", what="every one")
    seen = page.evaluate("window.fallback.seen")
    offsets = [offset for offset, _ in seen["publications"]]
    by = {t: sum(1 for _, used in seen["publications"] if used == t) for t in ("sse", "websocket")}
    duplicates = len(offsets) - len(set(offsets))
    gaps = sum(1 for a, b in itertools.pairwise(offsets) if b != a + 1)
    print(
        f"published={published} received={len(offsets)} duplicates={duplicates} gaps={gaps} "
        f"by={by} moves={seen['moves']} upgrades_refused={gate.refused} passed={gate.passed}"
    )
    assert (len(offsets), duplicates, gaps) == (published, 0, 0)
    assert offsets == list(range(1, published + 1))
    assert seen["moves"] == ["sse", "websocket", "sse"]
    assert by["websocket"] > 0
    assert by["sse"] > 0
    page.evaluate("window.fallback.client.close()")
