"""10% of the clients never read. The others must keep their latency (p99 within 2x of a run
without slow clients) and get everything; the slow ones are closed as slow consumers (4001)
instead of holding anyone up. Everyone shares one gateway behind nginx: the worst case."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from chaos.cluster import HISTORY_SIZE, SCENARIO_ENV, running
from chaos.load import Audience, SteadyPublisher, Tally, percentile
from chaos.table import Row
from deploy.local_cluster import LocalCluster
from tests.wsclient import RawSocketClient

CLIENTS = 30
SLOW = CLIENTS // 10
RATE = 100.0
SECONDS = 12.0  # a stalled socket is caught after ~8 s: loopback buffers take ~6 MB first
PADDING = "x" * 8000  # 8 KB events: enough bytes to fill every buffer on the way
QUEUE_BYTES = 256 * 1024


class PaddedPublisher(SteadyPublisher):
    """SteadyPublisher whose events carry `PADDING`."""

    def event(self, n: int) -> dict[str, Any]:
        return {**super().event(n), "pad": PADDING}


@dataclass(frozen=True)
class Run:
    tally: Tally
    complete: bool
    p99: float
    told_4001: int  # stalled clients whose byte stream ends with the disconnect frame


async def _run(cluster: LocalCluster, channel: str, readers: int, slow: int) -> Run:
    session = channel.split(":", 1)[1]
    audience = Audience(
        cluster.ws_url, lambda user: cluster.token(user, [session]), channel, readers
    )
    await audience.start()
    stalled = [await asyncio.to_thread(_stalled_client, cluster, channel) for _ in range(slow)]
    publisher = PaddedPublisher(cluster.redis_url, channel, RATE, HISTORY_SIZE)
    publisher.start()
    await asyncio.sleep(SECONDS)
    published = await publisher.stop()
    complete = await audience.wait_for(published, within=30)
    await audience.close()
    tails = [await asyncio.to_thread(client.read_until_closed, 15) for client in stalled]
    for client in stalled:
        client.close()
    latencies = [x for r in audience.receivers for x in r.latencies]
    told = sum(1 for tail in tails if b'"code":4001' in tail)
    return Run(audience.tally(published), complete, percentile(latencies, 0.99), told)


def _stalled_client(cluster: LocalCluster, channel: str) -> RawSocketClient:
    """Connects through nginx, subscribes, and then never reads a byte."""
    client = RawSocketClient(cluster.port, rcvbuf=4096)
    session = channel.split(":", 1)[1]
    token = cluster.token(f"slow-{time.monotonic_ns()}", [session])
    client.send_text(json.dumps({"type": "connect", "token": token}))
    client.send_text(json.dumps({"type": "subscribe", "channel": channel, "id": 1}))
    return client


async def _slow_disconnects(cluster: LocalCluster) -> float:
    async with httpx.AsyncClient(timeout=5) as http:
        text = (await http.get(f"{cluster.gateways[0].url}/metrics")).text
    for line in text.splitlines():
        if line.startswith("archmesh_disconnects_total{") and 'code="4001"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def slow_consumers() -> Row:
    name = f"slow consumers: {SLOW} of {CLIENTS} never read"
    env = {**SCENARIO_ENV, "ARCHMESH_CLIENT_QUEUE_BYTES": str(QUEUE_BYTES)}
    async with running(LocalCluster(1, notifier=False, env=env)) as cluster:
        baseline = await _run(cluster, "session:baseline", CLIENTS - SLOW, 0)
        loaded = await _run(cluster, "session:slowrun", CLIENTS - SLOW, SLOW)
        closed = await _slow_disconnects(cluster)
    tally, base_p99, p99 = loaded.tally, baseline.p99, loaded.p99
    checks = {
        f"p99 {p99 * 1000:.1f} ms is over 2x the baseline's": p99 <= 2 * base_p99,
        f"{closed:.0f} of {SLOW} slow clients closed with 4001": closed == SLOW,
        "readers did not get everything": loaded.complete,
        "the baseline run lost messages": baseline.tally.lost == 0,
    }
    failed = [what for what, ok in checks.items() if not ok]
    note = (
        f"readers' p99 {p99 * 1000:.1f} ms vs {base_p99 * 1000:.1f} ms without slow clients; "
        f"{closed:.0f} slow clients closed with 4001 ({loaded.told_4001} got the frame)"
    )
    return Row(
        name,
        tally.published,
        tally.delivered,
        tally.lost,
        tally.duplicated,
        None,
        not failed and tally.lost == 0 and tally.duplicated == 0,
        "; ".join([*failed, note]),
    )
