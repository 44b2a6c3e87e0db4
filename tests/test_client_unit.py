"""archmesh_client.realtime (clients/python) against real gateway processes (in-memory broker)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from archmesh_client.realtime import (
    ClientClosed,
    Item,
    Position,
    Publication,
    RealtimeClient,
    RecoveryFailed,
    RequestError,
    State,
    StateChange,
    backoff_delay,
    should_reconnect,
)

from deploy.ports import free_port
from shared.tokens import issue_token

SECRET = "archmesh-client-tests-secret-0123456789"  # >= 32 bytes (HS256)
API_KEY = "k"
WRONG_SECRET = "not-the-gateway-secret-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent / "archmesh-rt"


class Gateway:
    """One `archmesh-rt gateway` subprocess on a fixed port (so it can be restarted)."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.http = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        env = {
            **os.environ,
            "ARCHMESH_JWT_SECRET": SECRET,
            "ARCHMESH_API_KEY": API_KEY,
            "ARCHMESH_REDIS_URL": "",
            "ARCHMESH_DRAIN_SECONDS": "0",
            "ARCHMESH_LOG_LEVEL": "warning",
            "ARCHMESH_NODE_ID": f"client-tests-{self.port}",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(BIN), "gateway", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        with httpx.Client(timeout=1.0) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
                try:
                    reply = http.get(f"{self.http}/healthz")
                    # Ours, not a process that took the port first (ours then fails to bind).
                    if reply.status_code == 200 and reply.json()["node"] == env["ARCHMESH_NODE_ID"]:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not become healthy in 20 s")
                time.sleep(0.05)  # poll interval, not a wait for readiness

    def stop(self) -> None:
        """SIGTERM: the gateway sends every client disconnect 4000, then exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def publish(self, channel: str, **data: Any) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.post(
                f"{self.http}/api/publish",
                headers={"Authorization": f"Bearer {API_KEY}"},
                json={"channel": channel, "data": {"type": "workflow_update", **data}},
            )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    node = Gateway(free_port(), tmp_path_factory.mktemp("gw") / "gateway.log")
    node.start()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def fresh_gateway(tmp_path: Path) -> Iterator[Gateway]:
    node = Gateway(free_port(), tmp_path / "gateway.log")
    node.start()
    try:
        yield node
    finally:
        node.stop()


def unique() -> str:
    return uuid.uuid4().hex[:10]


def token(user: str, *sessions: str, secret: str = SECRET) -> str:
    return issue_token(secret, user, sessions=list(sessions), ttl=3600)


async def next_item(items: AsyncIterator[Item], timeout: float = 10.0) -> Item:
    return await asyncio.wait_for(anext(items), timeout)


@pytest.fixture
async def closing() -> AsyncIterator[list[RealtimeClient]]:
    """Clients appended here are closed at the end of the test."""
    clients: list[RealtimeClient] = []
    yield clients
    for client in clients:
        await client.close()


async def test_connect_subscribe_receive_and_requests(
    gateway: Gateway, closing: list[RealtimeClient]
) -> None:
    user, session = f"u-{unique()}", unique()
    client = RealtimeClient(gateway.url, token(user, session))
    closing.append(client)
    info = await client.connect()
    assert client.state == "connected"
    assert info.user_id == user
    assert info.expires_at > time.time()
    items = client.publications()

    channel = f"session:{session}"
    reply = await client.subscribe(channel)
    assert reply.channel == channel
    assert reply.recovered is None
    published = await gateway.publish(channel, stage="design", progress=0.5)
    pub = await next_item(items)
    assert isinstance(pub, Publication)
    assert pub.channel == channel
    assert pub.data["stage"] == "design"
    assert (pub.offset, pub.epoch) == (published["offset"], published["epoch"])
    assert pub.offset == reply.offset + 1
    assert client.position(channel) == Position(published["offset"], published["epoch"])

    # The own user channel is joined by the gateway on connect.
    await gateway.publish(f"user:{user}", stage="inbox", progress=1.0)
    own = await next_item(items)
    assert isinstance(own, Publication)
    assert own.channel == f"user:{user}"

    # Request helpers are matched by id.
    replies = await asyncio.gather(client.ping(), client.ping(), client.presence(channel))
    assert [r["type"] for r in replies[:2]] == ["pong", "pong"]
    assert replies[0]["id"] != replies[1]["id"]
    assert {"client_id": info.client_id, "user_id": user} in replies[2]
    counted = await client.presence_stats(channel)
    assert (counted["type"], counted["channel"]) == ("presence_stats", channel)
    assert (counted["connections"], counted["users"]) == (1, 1)
    refreshed = await client.refresh(token(user, session))
    assert refreshed["type"] == "refreshed"
    with pytest.raises(RequestError) as refused:
        await client.refresh(token(user, session, secret=WRONG_SECRET))
    assert refused.value.code == "invalid_token"
    assert refused.value.request == "refresh"

    # After unsubscribing, the channel's messages stop (the user channel's still come).
    await client.unsubscribe(channel)
    assert client.channels == []
    await gateway.publish(channel, stage="gone", progress=1.0)
    await gateway.publish(f"user:{user}", stage="after", progress=1.0)
    after = await next_item(items)
    assert isinstance(after, Publication)
    assert (after.channel, after.data["stage"]) == (f"user:{user}", "after")

    await client.close()
    assert client.state is State.CLOSED
    with pytest.raises(StopAsyncIteration):
        await next_item(items)


async def test_duplicates_are_dropped(
    gateway: Gateway, closing: list[RealtimeClient], caplog: pytest.LogCaptureFixture
) -> None:
    session = unique()
    channel = f"session:{session}"
    client = RealtimeClient(gateway.url, token("u1", session))
    closing.append(client)
    await client.connect()
    items = client.publications()
    await client.subscribe(channel)
    for progress in (0.1, 0.2, 0.3):
        await gateway.publish(channel, stage="s", progress=progress)
    got = [await next_item(items) for _ in range(3)]
    offsets = [p.offset for p in got if isinstance(p, Publication)]
    assert offsets == [1, 2, 3]
    epoch = client.position(channel)
    assert epoch is not None

    # Ask the gateway to replay from offset 1: it resends 2 and 3, which the client has.
    caplog.set_level(logging.DEBUG, logger="archmesh_client.realtime")
    reply = await client.subscribe(channel, since=Position(1, epoch.epoch))
    assert reply.recovered is True
    await gateway.publish(channel, stage="s", progress=0.4)
    fourth = await next_item(items)
    assert isinstance(fourth, Publication)
    assert fourth.offset == 4
    duplicates = [r for r in caplog.records if "duplicate" in r.getMessage()]
    assert len(duplicates) == 2


async def test_forbidden_subscribe_raises(gateway: Gateway, closing: list[RealtimeClient]) -> None:
    client = RealtimeClient(gateway.url, token("u1", "mine"))
    closing.append(client)
    await client.connect()
    with pytest.raises(RequestError) as refused:
        await client.subscribe("session:not-mine")
    assert refused.value.code == "forbidden"
    assert refused.value.channel == "session:not-mine"
    assert client.channels == []
    with pytest.raises(RequestError) as invalid:
        await client.subscribe("nope")
    assert invalid.value.code == "invalid_channel"
    # A subscription token grants a session the connection token does not.
    grant = issue_token(SECRET, "u1", channel="session:granted", ttl=60)
    assert (await client.subscribe("session:granted", token=grant)).channel == "session:granted"
    assert client.state is State.CONNECTED
    assert (await client.ping())["type"] == "pong"


async def test_invalid_token_closes_without_reconnecting(gateway: Gateway) -> None:
    states: list[StateChange] = []
    client = RealtimeClient(
        gateway.url, token("u1", secret=WRONG_SECRET), backoff_base=0.01, on_state=states.append
    )
    items = client.publications()
    with pytest.raises(ClientClosed) as closed:
        await client.connect()
    assert closed.value.code == 4501
    assert closed.value.reason == "invalid_token"
    assert [s.state for s in states] == [State.CONNECTING, State.CLOSED]
    assert client.state is State.CLOSED
    with pytest.raises(ClientClosed):
        await next_item(items)
    with pytest.raises(ClientClosed):
        await client.ping()


async def test_reconnect_after_gateway_restart(
    fresh_gateway: Gateway, closing: list[RealtimeClient]
) -> None:
    gateway = fresh_gateway
    states: asyncio.Queue[StateChange] = asyncio.Queue()
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return token("u1", "s1")

    client = RealtimeClient(
        gateway.url, provider, backoff_base=0.05, backoff_cap=0.5, on_state=states.put_nowait
    )
    closing.append(client)
    await client.connect()
    items = client.publications()
    await client.subscribe("session:s1")
    before = await gateway.publish("session:s1", stage="before", progress=0.1)
    first = await next_item(items)
    assert isinstance(first, Publication)
    assert first.offset == before["offset"]

    await gateway.astop()
    await gateway.astart()  # same port, new in-memory broker: history and epoch are gone

    # The own channel's position is known from `connected` on, so its lost history is told
    # too, first (with `connected`), then the session's (with its `subscribed`).
    own = await next_item(items, timeout=20)
    assert isinstance(own, RecoveryFailed)
    assert (own.channel, own.reason) == ("user:u1", "epoch_changed")
    recovery = await next_item(items, timeout=20)
    assert isinstance(recovery, RecoveryFailed)
    assert recovery.channel == "session:s1"
    assert recovery.reason == "epoch_changed"
    assert recovery.epoch != before["epoch"]

    seen = [states.get_nowait() for _ in range(states.qsize())]
    kinds = [s.state for s in seen]
    assert kinds[:2] == [State.CONNECTING, State.CONNECTED]
    assert kinds[2] is State.RECONNECTING
    assert (seen[2].code, seen[2].reason, seen[2].attempt) == (4000, "shutdown", 1)
    assert kinds[-1] is State.CONNECTED
    assert set(kinds[2:-1]) == {State.RECONNECTING}
    assert [s.attempt for s in seen[2:-1]] == list(range(1, len(seen) - 2))
    assert calls >= 2  # the token provider is asked again on reconnect
    assert client.attempt == 0

    after = await gateway.publish("session:s1", stage="after", progress=0.9)
    pub = await next_item(items)
    assert isinstance(pub, Publication)
    assert (pub.offset, pub.epoch, pub.data["stage"]) == (after["offset"], after["epoch"], "after")
    assert client.position("session:s1") == Position(after["offset"], after["epoch"])


def test_backoff_delay_bounds() -> None:
    base, cap = 0.5, 20.0
    for attempt in range(20):
        ceiling = min(cap, base * 2**attempt)
        delays = [backoff_delay(attempt, base, cap) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert backoff_delay(attempt, base, cap, rng=lambda: 1.0) == ceiling
        assert backoff_delay(attempt, base, cap, rng=lambda: 0.0) == 0
    assert backoff_delay(10_000, base, cap, rng=lambda: 1.0) == cap


def test_reconnect_codes() -> None:
    for code in (None, 1001, 1006, 1011, 1012, 4000, 4001, 4002, 4004, 4005, 4006, 4499):
        assert should_reconnect(code), code
    for code in (4500, 4501, 4503, 4999, 1008, 1009):
        assert not should_reconnect(code), code


async def test_reconnect_loop_uses_bounded_backoff_and_gives_up() -> None:
    states: list[StateChange] = []
    base, cap = 0.01, 0.03
    client = RealtimeClient(
        f"ws://127.0.0.1:{free_port()}/ws",  # nothing listens there
        "unused",
        backoff_base=base,
        backoff_cap=cap,
        max_attempts=5,
        on_state=states.append,
    )
    items = client.publications()
    with pytest.raises(ClientClosed, match="gave up after 5 reconnect attempts"):
        await client.connect()
    with pytest.raises(ClientClosed):  # a failure, not a close(): the iterator raises
        await next_item(items)
    retries = [s for s in states if s.state is State.RECONNECTING]
    assert [s.attempt for s in retries] == [1, 2, 3, 4, 5]
    for change in retries:
        assert change.delay is not None
        assert 0 <= change.delay <= min(cap, base * 2 ** (change.attempt - 1))
    assert states[-1].state is State.CLOSED


async def test_subscribe_with_latest_gets_the_latest_publication_first(
    gateway: Gateway, closing: list[RealtimeClient]
) -> None:
    user, session = f"u-{unique()}", unique()
    channel = f"session:{session}"
    await gateway.publish(channel, stage="a")
    last = await gateway.publish(channel, stage="b")
    client = RealtimeClient(gateway.url, token(user, session))
    closing.append(client)
    await client.connect()
    items = client.publications()
    reply = await client.subscribe(channel, latest=True)
    assert reply.offset == last["offset"]
    pub = await next_item(items)
    assert isinstance(pub, Publication)
    assert (pub.offset, pub.data["stage"]) == (last["offset"], "b")
    assert client.position(channel) == Position(last["offset"], last["epoch"])


async def test_history_pages_without_subscribing(
    gateway: Gateway, closing: list[RealtimeClient]
) -> None:
    user, session = f"u-{unique()}", unique()
    channel = f"session:{session}"
    published = [await gateway.publish(channel, stage=str(n)) for n in range(4)]
    epoch = published[-1]["epoch"]
    client = RealtimeClient(gateway.url, token(user, session))
    closing.append(client)
    await client.connect()
    page = await client.history(channel, 2, since=Position(1, epoch))
    assert [p["data"]["stage"] for p in page["publications"]] == ["1", "2"]
    assert (page["offset"], page["epoch"]) == (published[-1]["offset"], epoch)
    newest = await client.history(channel, 3, reverse=True)
    assert [p["offset"] for p in newest["publications"]] == [4, 3, 2]
    assert (await client.history(channel, 0))["publications"] == []
    with pytest.raises(RequestError) as refused:
        await client.history("session:not-mine", 1)
    assert refused.value.code == "forbidden"
    assert channel not in client.channels  # reading history subscribes to nothing


async def test_own_channel_is_recovered_from_the_first_moment(
    gateway: Gateway, closing: list[RealtimeClient]
) -> None:
    user = f"u-{unique()}"
    own = f"user:{user}"
    gate = asyncio.Event()
    gate.set()
    states: asyncio.Queue[StateChange] = asyncio.Queue()

    async def provider() -> str:
        await gate.wait()  # held while the client is away, so it misses what is published
        return token(user)

    client = RealtimeClient(
        gateway.url, provider, backoff_base=0.05, backoff_cap=0.2, on_state=states.put_nowait
    )
    closing.append(client)
    await client.connect()
    start = client.position(own)
    assert start is not None  # from `connected`, before any publication on it
    assert start.offset == 0
    items = client.publications()
    gate.clear()
    async with httpx.AsyncClient(timeout=5.0) as http:
        reply = await http.post(
            f"{gateway.http}/api/control/disconnect",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"user": user, "reconnect": True},
        )
        reply.raise_for_status()
    while (await asyncio.wait_for(states.get(), 10)).state is not State.RECONNECTING:
        pass
    missed = [await gateway.publish(own, stage=str(n)) for n in range(2)]
    assert missed[0]["epoch"] == start.epoch
    gate.set()
    got = [await next_item(items) for _ in missed]
    assert all(isinstance(pub, Publication) for pub in got)
    assert [(p.channel, p.offset) for p in got if isinstance(p, Publication)] == [
        (own, 1),
        (own, 2),
    ]
    assert client.position(own) == Position(2, start.epoch)
