"""Faults under steady load: a gateway killed, Redis restarted, crashed, unreachable, or cut
off from one node. SDK clients connect through nginx; the publisher writes to Redis directly
(a backend on the healthy side). Each scenario ends by itself and returns one table row."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from chaos.cluster import HISTORY_SIZE, SCENARIO_ENV, lever, running
from chaos.load import Audience, SteadyPublisher
from chaos.table import Row
from deploy.local_cluster import LocalCluster
from deploy.ports import free_port
from tests.tcpproxy import TcpProxy

CLIENTS = 30
RATE = 200.0  # events per second on one channel, to every client
OUTAGE = 30.0
PARTITION = 10.0


@asynccontextmanager
async def traffic(
    cluster: LocalCluster, clients: int = CLIENTS, rate: float = RATE
) -> AsyncIterator[tuple[Audience, SteadyPublisher]]:
    channel = "session:chaos"
    audience = Audience(
        cluster.ws_url, lambda user: cluster.token(user, ["chaos"]), channel, clients
    )
    publisher = SteadyPublisher(cluster.redis_url, channel, rate, HISTORY_SIZE)
    await audience.start()
    publisher.start()
    try:
        yield audience, publisher
    finally:
        await publisher.stop()
        await audience.close()


async def settle(
    name: str,
    audience: Audience,
    publisher: SteadyPublisher,
    fault_at: float,
    checks: dict[str, bool],
    note: str,
    healed: float | None = None,
) -> Row:
    """Stop publishing, give clients time to catch up, and compare."""
    published = await publisher.stop()
    complete = await audience.wait_for(published, within=30)
    tally = audience.tally(published)
    failed = [what for what, ok in checks.items() if not ok]
    if not complete:
        failed.append("clients did not catch up within 30 s")
    if tally.out_of_order:
        failed.append(f"{tally.out_of_order} out of order")
    if tally.recovery_failures:
        failed.append(f"{tally.recovery_failures} recovery failures")
    passed = not failed and tally.lost == 0 and tally.duplicated == 0
    return Row(
        name,
        published,
        tally.delivered,
        tally.lost,
        tally.duplicated,
        audience.recovered_after(publisher, fault_at, healed),
        passed,
        "; ".join([*failed, note]),
    )


def on_node(audience: Audience, node: str) -> int:
    return sum(1 for r in audience.receivers if r.nodes and r.nodes[-1] == node)


async def statuses(cluster: LocalCluster, path: str) -> list[int | None]:
    async with httpx.AsyncClient(timeout=1) as http:

        async def one(url: str) -> int | None:
            try:
                return (await http.get(url + path)).status_code
            except httpx.HTTPError:
                return None

        return list(await asyncio.gather(*(one(g.url) for g in cluster.gateways)))


async def wait_ready(cluster: LocalCluster, within: float) -> float | None:
    """Seconds until every gateway answers /readyz 200, None if not within `within`."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        if all(code == 200 for code in await statuses(cluster, "/readyz")):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


async def gateway_sigkill() -> Row:
    name = "gateway SIGKILL under load, behind nginx"
    async with (
        running(LocalCluster(3, notifier=False, env=SCENARIO_ENV)) as cluster,
        traffic(cluster) as (audience, publisher),
    ):
        await asyncio.sleep(3)
        busiest = max(range(3), key=lambda i: on_node(audience, f"gw{i + 1}"))
        node = f"gw{busiest + 1}"
        count = on_node(audience, node)
        fault_at = time.monotonic()
        await lever(cluster.kill_gateway, busiest, signal.SIGKILL)
        await asyncio.sleep(4)
        left = on_node(audience, node)
        checks = {f"{left} clients still on the dead node": left == 0}
        note = f"{count} of {CLIENTS} SDK clients moved to the other nodes"
        return await settle(name, audience, publisher, fault_at, checks, note)


async def redis_restart() -> Row:
    name = "Redis restart (SIGTERM, AOF) under load"
    async with (
        running(LocalCluster(3, notifier=False, env=SCENARIO_ENV)) as cluster,
        traffic(cluster) as (audience, publisher),
    ):
        await asyncio.sleep(3)
        fault_at = time.monotonic()
        await lever(cluster.stop_redis, signal.SIGTERM)
        await lever(cluster.start_redis)
        healed = time.monotonic()
        ready = await wait_ready(cluster, 20)
        await asyncio.sleep(3)
        checks = {"nodes not ready again within 20 s": ready is not None}
        note = f"Redis down {healed - fault_at:.1f} s; history kept, gaps repaired"
        return await settle(name, audience, publisher, fault_at, checks, note, healed)


async def redis_crash() -> Row:
    name = "Redis crash (SIGKILL, AOF fsync always)"
    cluster = LocalCluster(3, notifier=False, env=SCENARIO_ENV, appendfsync="always")
    async with running(cluster), traffic(cluster) as (audience, publisher):
        await asyncio.sleep(3)
        fault_at = time.monotonic()
        await lever(cluster.stop_redis, signal.SIGKILL)
        await lever(cluster.start_redis)
        healed = time.monotonic()
        ready = await wait_ready(cluster, 20)
        await asyncio.sleep(3)
        checks = {"nodes not ready again within 20 s": ready is not None}
        note = f"Redis down {healed - fault_at:.1f} s; every acknowledged publish was on disk"
        return await settle(name, audience, publisher, fault_at, checks, note, healed)


async def redis_outage() -> Row:
    name = f"Redis unreachable {OUTAGE:.0f} s"
    async with (
        running(LocalCluster(3, notifier=False, env=SCENARIO_ENV)) as cluster,
        traffic(cluster) as (audience, publisher),
    ):
        await asyncio.sleep(3)
        reconnects = sum(len(r.disconnects()) for r in audience.receivers)
        await lever(cluster.stop_redis, signal.SIGTERM)
        stopped = time.monotonic()
        alive = unready = True
        while time.monotonic() - stopped < OUTAGE:
            alive &= all(code == 200 for code in await statuses(cluster, "/healthz"))
            if time.monotonic() - stopped > 5:  # time to notice
                unready &= all(code == 503 for code in await statuses(cluster, "/readyz"))
            await asyncio.sleep(0.5)
        dropped = sum(len(r.disconnects()) for r in audience.receivers) - reconnects
        await lever(cluster.start_redis)
        back_at = time.monotonic()
        ready = await wait_ready(cluster, 30)
        await asyncio.sleep(3)
        checks = {
            "a node stopped answering /healthz": alive,
            "a node said ready without Redis": unready,
            "nodes not ready again within 30 s": ready is not None,
            f"{dropped} clients were dropped": dropped == 0,
        }
        ready_note = "-" if ready is None else f"{ready:.1f} s"
        note = (
            f"nodes stayed up and not-ready, kept all {CLIENTS} clients; ready {ready_note} "
            "after Redis returned (recovery timed from then); the publisher waited it out"
        )
        return await settle(name, audience, publisher, back_at, checks, note)


async def partition() -> Row:
    name = f"one node cut off from Redis {PARTITION:.0f} s (TCP blackhole)"
    redis_port = free_port()
    with TcpProxy(redis_port) as proxy:
        cut_url = f"redis://127.0.0.1:{proxy.port}/0"
        cluster = LocalCluster(
            3,
            notifier=False,
            env=SCENARIO_ENV,
            redis_port=redis_port,
            gateway_env={0: {"ARCHMESH_REDIS_URL": cut_url}},
        )
        async with running(cluster), traffic(cluster) as (audience, publisher):
            await asyncio.sleep(3)
            on_cut = on_node(audience, "gw1")
            proxy.blackhole()
            fault_at = time.monotonic()
            noticed = None
            while time.monotonic() - fault_at < PARTITION:
                if noticed is None and (await statuses(cluster, "/readyz"))[0] == 503:
                    noticed = time.monotonic() - fault_at
                await asyncio.sleep(0.2)
            still = on_node(audience, "gw1")
            proxy.resume()
            healed = time.monotonic()
            ready = await wait_ready(cluster, 30)
            await asyncio.sleep(3)
            checks = {
                "the cut node never reported not-ready": noticed is not None,
                "the cut node not ready again within 30 s": ready is not None,
            }
            noticed_note = "-" if noticed is None else f"{noticed:.1f} s"
            row = await settle(name, audience, publisher, fault_at, checks, "", healed)
            after_heal = "-"
            if row.recovered_s is not None:
                after_heal = f"{row.recovered_s - (healed - fault_at):.2f} s"
            row.note += (
                f"node not-ready after {noticed_note}; {on_cut - still} of its {on_cut} clients "
                f"moved off during the cut; gaps repaired {after_heal} after the heal"
            )
            return row
