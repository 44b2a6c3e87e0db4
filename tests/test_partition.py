"""A silent network partition between a node and Redis: no reset, no error, just nothing back.
The node must notice by itself (PING timeouts), say it is not ready, fail commands instead of
hanging them, and once the network heals repair the gap so its clients miss nothing."""

from __future__ import annotations

import asyncio
import time

import pytest
from archmesh_client.publisher import connect_publisher

from shared.broker import BrokerError, Liveness, create_broker
from tests.servers import GatewayProcess, RedisServer, wait_until
from tests.tcpproxy import TcpProxy
from tests.test_broker_contract import Recorder, _until, event
from tests.wsclient import assert_silent, connect, recv_type, subscribe

INTERVAL, TIMEOUT = 0.2, 0.8
# Silence is noticed after TIMEOUT at most, plus a poll step; the rest is slack for 2 busy cores.
DETECTION_BOUND = TIMEOUT + 1.2


async def test_broker_notices_a_silent_partition_and_comes_back(
    redis_server: RedisServer,
) -> None:
    with TcpProxy(redis_server.port) as proxy:
        b = create_broker(f"redis://127.0.0.1:{proxy.port}/0", liveness=Liveness(INTERVAL, TIMEOUT))
        rec = Recorder()
        await b.start(rec.on_message, rec.on_state)
        try:
            await b.subscribe("session:quiet")
            await _until(lambda: b.connected)

            proxy.blackhole()
            started = time.monotonic()
            await _until(lambda: not b.connected, timeout=DETECTION_BOUND)
            assert rec.states == [True, False]
            with pytest.raises(BrokerError):  # bounded by the timeout, never hangs
                await asyncio.wait_for(b.publish("session:quiet", event(1)), TIMEOUT + 1)
            assert time.monotonic() - started < DETECTION_BOUND + TIMEOUT + 1

            proxy.resume()
            await _until(lambda: b.connected, timeout=10)
            assert rec.states == [True, False, True]
            position = await b.publish("session:quiet", event(2))
            assert (await rec.next()).offset == position.offset
        finally:
            await b.close()


@pytest.mark.slow
async def test_partitioned_node_goes_unready_and_repairs_the_gap(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    with TcpProxy(redis_server.port) as proxy:
        node = GatewayProcess(
            f"redis://127.0.0.1:{proxy.port}/0",
            ARCHMESH_REDIS_PING_INTERVAL=str(INTERVAL),
            ARCHMESH_REDIS_PING_TIMEOUT=str(TIMEOUT),
        )
        gateways.append(node)
        node.start()
        wait_until(node.ready, what="ready through the proxy")
        ws = await connect(node.ws, "alice", sessions=["cut"])
        await subscribe(ws, "session:cut")
        # Backends publish straight to Redis: they are on the healthy side of the partition.
        async with connect_publisher(redis_server.url) as publisher:
            before = await publisher.publish("session:cut", {"type": "t", "n": 0})
            assert (await recv_type(ws, "publication"))["offset"] == before.offset

            proxy.blackhole()
            started = time.monotonic()
            sent = []
            while node.ready():
                sent.append(await publisher.publish("session:cut", {"type": "t", "n": len(sent)}))
                assert time.monotonic() - started < DETECTION_BOUND, "partition not noticed"
                await asyncio.sleep(0.05)
            detected = time.monotonic() - started
            for _ in range(5):  # and more while the node knows it is cut off
                sent.append(await publisher.publish("session:cut", {"type": "t", "n": len(sent)}))
            proxy.resume()
            wait_until(node.ready, timeout=15, what="ready after the partition heals")
            healed = time.monotonic() - started

            got = [await recv_type(ws, "publication", timeout=10) for _ in sent]
            assert [p["offset"] for p in got] == [p.offset for p in sent]  # in order, all
            assert [p["data"]["n"] for p in got] == list(range(len(sent)))
            await assert_silent(ws)  # and no duplicates after them
            after = await publisher.publish("session:cut", {"type": "t", "n": -1})
            assert (await recv_type(ws, "publication"))["offset"] == after.offset
        log = node.log.read_text()
        assert "gap_repaired" in log  # they came from history, not from the cut link
        print(f"unready after {detected:.2f}s, {len(sent)} repaired, ready again at {healed:.2f}s")
        await ws.close()
