"""A rolling restart of 3 gateways behind nginx under steady publishing: SDK clients lose
nothing, get nothing twice, and keep order; each node, on SIGTERM, goes not-ready before it
asks its clients to reconnect (disconnect 4000, reconnect: true), spread over the drain window."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from chaos.load import Audience, SteadyPublisher
from deploy.local_cluster import LocalCluster
from tests.servers import API_KEY, JWT_SECRET

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DRAIN = 1.5
CLIENTS = 12
RATE = 150


async def watch_drain(node_url: str, audience: Audience, victims: set[str]) -> dict[str, object]:
    """Once the first client of the draining node is told to go, the node must already
    answer /readyz with 503 (draining) and refuse new sockets."""
    async with httpx.AsyncClient(timeout=2) as http:
        while not any(r.disconnects() for r in audience.receivers if r.name in victims):
            await asyncio.sleep(0.005)
        ready = await http.get(f"{node_url}/readyz")
        return {"status": ready.status_code, **ready.json()}


async def test_rolling_restart_loses_nothing() -> None:
    cluster = LocalCluster(
        3,
        notifier=False,
        jwt_secret=JWT_SECRET,
        api_key=API_KEY,
        env={"ARCHMESH_DRAIN_SECONDS": str(DRAIN)},
    )
    await asyncio.to_thread(cluster.start)
    audience = Audience(
        cluster.ws_url, lambda user: cluster.token(user, ["roll"]), "session:roll", CLIENTS
    )
    publisher = SteadyPublisher(cluster.redis_url, "session:roll", RATE)
    try:
        await audience.start()
        publisher.start()
        # Traffic reaches every client before the first node goes.
        assert await audience.wait_for(RATE // 4, within=15), "no traffic before the restarts"
        for index, node in enumerate(cluster.gateways):
            node_id = f"gw{index + 1}"
            victims = {r.name for r in audience.receivers if r.nodes[-1] == node_id}
            assert victims, f"nginx sent no client to {node_id}"
            before = {r.name: len(r.disconnects()) for r in audience.receivers}
            watcher = asyncio.create_task(watch_drain(node.url, audience, victims))
            # One SIGTERM (a second one would skip the drain), wait for exit, start again.
            await asyncio.to_thread(cluster.restart_gateway, index, signal.SIGTERM)
            readiness = await asyncio.wait_for(watcher, 10)
            assert readiness["status"] == 503
            assert readiness["draining"] is True
            told = [
                r.disconnects()[before[r.name] :] for r in audience.receivers if r.name in victims
            ]
            events = [event for client in told for event in client]
            assert len(events) == len(victims)  # each client of the node told exactly once
            assert {(code, reason) for _, code, reason in events} == {(4000, "shutdown")}
            times = sorted(at for at, _, _ in events)
            window = DRAIN * (len(times) - 1) / len(times)
            assert times[-1] - times[0] >= 0.5 * window, "reconnects not spread over the drain"
            assert times[-1] - times[0] <= DRAIN + 1.0
            others = [r for r in audience.receivers if r.name not in victims]
            assert all(len(r.disconnects()) == before[r.name] for r in others)
        # Traffic goes on after the last restart, and reaches every client, before it stops.
        after = publisher.published + RATE // 4
        assert await audience.wait_for(after, within=15), "no traffic after the restarts"
        published = await publisher.stop()
        assert await audience.wait_for(published, within=30)
    finally:
        await audience.close()
        await asyncio.to_thread(cluster.stop)
    tally = audience.tally(published)
    assert published > RATE * 3
    assert (tally.lost, tally.duplicated, tally.out_of_order, tally.recovery_failures) == (
        0,
        0,
        0,
        0,
    )
    for receiver in audience.receivers:
        assert receiver.received == list(range(published)), receiver.name
    moved = sum(1 for r in audience.receivers if len(set(r.nodes)) > 1)
    assert moved == CLIENTS  # every client was on a restarted node and moved at least once
    # nginx never handed a reconnecting client to a node that could not take it: every
    # reconnect succeeded at its first attempt.
    retries = [(r.name, c) for r in audience.receivers for _, c in r.states if c.attempt > 1]
    assert retries == []
