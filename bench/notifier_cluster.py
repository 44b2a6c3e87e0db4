"""`make bench`'s `notifier-cluster` (issue 15): do two notifier processes on a 3-master Redis
Cluster deliver more than one?

A private 3-master Cluster (tests/servers.py's `RedisCluster`, the tests' cluster fixture),
`--users` users with saved preferences (quiet hours 22:00-07:00 in one of five time zones,
email on, as the `notifier` scenario saves them), then drains of `--count` in-app
notifications to random users by one `archmesh-rt notifier` process and by two (sharing the
Cluster's 8 partitions by their leases, 4 each), `--repeat` times each in the order one, two,
two, one... (a drift in the machine's other load falls on both alike); the best drain of each
is the figure, all rates are reported. Each drain: fresh notifiers start and take their
partitions, warm up on one notification per user, are stopped (SIGSTOP)
while the requests are queued with `NotifierClient.send_batch` (500 a trip, each on its user's
partition's stream), and the clock runs from SIGCONT until every notification is recorded
sent (the partitions' hourly counts, `nt:{tag}:stats:<hour>`): queueing is not in the time, so
the producer does not limit it.

Checked after each drain, where users see it: every notification of the drain is in its
user's inbox (`not_delivered` counts those missing), the sends recorded are exactly the
requests (`duplicates` counts any beyond), and no request went to the dead letters.

Cores (2 on the bench machine): the first notifier on core 0; the second, when there are two,
on core 1; this driver (idle while a drain runs) on core 1; the Redis nodes on either core,
placed by the kernel, so that two notifiers each get what Redis leaves of a core rather than
one of them sharing its core with all three nodes (there is no third core): the figure is what
a second process adds on this machine, not a scaling law.

Prints one JSON line. Run by bench/run.py with the project's venv:
    .venv/bin/python bench/notifier_cluster.py [--count 20000] [--users 1000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from archmesh_client.notifier import NotifierClient
from archmesh_client.request_stream import Partitioning
from redis.asyncio.cluster import ClusterNode, RedisCluster
from run import (  # bench/run.py
    API_KEY,
    JWT_SECRET,
    LOAD_CORE,
    REPO,
    SERVER_CORE,
    free_port,
    server_log,
    stop,
    wait_port,
)

sys.path.insert(0, str(REPO))

from notifier import keys
from tests.servers import RedisCluster as ClusterServers

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]
WARM = "bench_warm"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def waited_seconds(pid: int) -> float:
    """Time the process's main thread was runnable but waited for its core (schedstat): on
    a shared machine, what others took from it."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


@dataclass
class Process:
    node: str  # its ARCHMESH_NODE_ID, the name its partitions' leases hold
    core: str
    port: int
    proc: subprocess.Popen[bytes]


@contextlib.contextmanager
def notifiers(url: str, cores: list[str], run: str) -> Iterator[list[Process]]:
    """`archmesh-rt notifier` processes, one per core in `cores`."""
    archmesh = str(REPO / ".venv" / "bin" / "archmesh-rt")
    started: list[Process] = []
    try:
        for index, core in enumerate(cores):
            port, node = free_port(), f"{run}-notifier-{index + 1}"
            env = {
                **os.environ,
                "ARCHMESH_REDIS_URL": url,
                "ARCHMESH_API_KEY": API_KEY,
                "ARCHMESH_JWT_SECRET": JWT_SECRET,
                "ARCHMESH_NODE_ID": node,
                "ARCHMESH_LOG_LEVEL": "warning",
            }
            command = ["taskset", "-c", core, archmesh, "notifier", "--port", str(port)]
            with server_log("archmesh", f"notifier-cluster-{node}") as out:
                proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=out)
            started.append(Process(node, core, port, proc))
            wait_port(port, proc)
        yield started
    finally:
        for each in started:
            with contextlib.suppress(ProcessLookupError):
                each.proc.send_signal(signal.SIGCONT)
            stop(each.proc)


async def until(check: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.02)


class Drive:
    """What the drains share: the Cluster (a client, the nodes' pids), the users, the layout."""

    def __init__(
        self, redis: RedisCluster, pids: list[int], users: int, layout: Partitioning
    ) -> None:
        self.redis = redis
        self.pids = pids
        self.users = [f"u{i}" for i in range(users)]
        self.layout = layout
        self.hours: set[str] = set()

    def hour(self) -> None:
        self.hours.add(time.strftime("%Y%m%d%H", time.gmtime()))

    async def sent(self, kind: str) -> int:
        """In-app sends of `kind` recorded, all partitions (the hour may turn meanwhile)."""
        self.hour()
        async with self.redis.pipeline() as pipe:
            for hour in sorted(self.hours):
                for partition in range(self.layout.partitions):
                    pipe.hget(keys.stats(hour, partition), f"{kind}|in_app|sent")
            counts = await pipe.execute()
        return sum(int(c or 0) for c in counts)

    async def holders(self) -> dict[str, int]:
        async with self.redis.pipeline() as pipe:
            for partition in range(self.layout.partitions):
                pipe.get(keys.lease(partition))
            held = await pipe.execute()
        count: dict[str, int] = {}
        for node in held:
            if node is not None:
                name = node.decode() if isinstance(node, bytes) else str(node)
                count[name] = count.get(name, 0) + 1
        return count

    def redis_cpu(self) -> list[float]:
        return [cpu_seconds(pid) for pid in self.pids]

    async def inbox_missing(self, sent: dict[str, list[str]]) -> int:
        async with self.redis.pipeline() as pipe:
            for user in sent:
                pipe.zrange(keys.inbox(user).order, 0, -1)
            inboxes = await pipe.execute()
        missing = 0
        for (_, ids), inbox in zip(sent.items(), inboxes, strict=True):
            have = {i.decode() if isinstance(i, bytes) else i for i in inbox}
            missing += sum(1 for i in ids if i not in have)
        return missing

    async def dead_letters(self) -> int:
        async with self.redis.pipeline() as pipe:
            for partition in range(self.layout.partitions):
                pipe.xlen(keys.dead_letters(partition))
            return sum(await pipe.execute())


async def save_preferences(port: int, users: list[str]) -> None:
    """Through the notifier's API, as an application saves them."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:

        async def one(index: int, user: str) -> None:
            prefs = {
                "timezone": ZONES[index % len(ZONES)],
                "quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00"},
                "channels": {
                    "default": {"in_app": True, "email": True, "push": False, "sms": False}
                },
            }
            reply = await http.put(f"/api/users/{user}/preferences", json=prefs)
            reply.raise_for_status()

        for start in range(0, len(users), 50):
            batch = users[start : start + 50]
            await asyncio.gather(*(one(start + i, u) for i, u in enumerate(batch)))


async def drain(
    url: str, drive: Drive, cores: list[str], count: int, seed: int, run: str, first: bool
) -> dict[str, Any]:
    kind = f"bench_{run}"
    rng = random.Random(seed)
    sent: dict[str, list[str]] = {}
    requests = []
    for seq in range(count):
        user = rng.choice(drive.users)
        request_id = f"{run}-{seq}"
        sent.setdefault(user, []).append(request_id)
        requests.append(
            {
                "id": request_id,
                "user_id": user,
                "type": kind,
                "title": "Bench",
                "body": "A benchmark notification",
                "channels": ["in_app"],
                "data": {"seq": seq},
            }
        )
    with notifiers(url, cores, run) as procs:
        share = -(-drive.layout.partitions // len(procs))  # each one's fair share

        async def balanced() -> bool:
            held = await drive.holders()
            every = set(held) == {p.node for p in procs}
            return (
                every
                and sum(held.values()) == drive.layout.partitions
                and max(held.values()) <= share
            )

        await until(balanced, 60, f"{len(procs)} notifiers never shared the partitions")
        if first:
            await save_preferences(procs[0].port, drive.users)
        warm_before = await drive.sent(WARM)
        async with NotifierClient(url) as client:
            warm = [{"user_id": u, "type": WARM, "title": "warm up"} for u in drive.users]
            for start in range(0, len(warm), 500):
                await client.send_batch(warm[start : start + 500])

            async def warmed() -> bool:
                return await drive.sent(WARM) >= warm_before + len(warm)

            await until(warmed, 60, "the warm-up was never delivered")
            for p in procs:
                p.proc.send_signal(signal.SIGSTOP)
            queued = time.perf_counter()
            for start in range(0, count, 500):
                result = await client.send_batch(requests[start : start + 500])
                if result.failed:
                    raise RuntimeError(f"requests refused: {result.results}")
            queued = time.perf_counter() - queued
        cpu0 = [cpu_seconds(p.proc.pid) for p in procs]
        wait0 = [waited_seconds(p.proc.pid) for p in procs]
        redis0 = drive.redis_cpu()
        started = time.perf_counter()
        for p in procs:
            p.proc.send_signal(signal.SIGCONT)

        async def drained() -> bool:
            return await drive.sent(kind) >= count

        await until(drained, 300, f"{count} notifications were never all sent")
        seconds = time.perf_counter() - started
        cpu = [cpu_seconds(p.proc.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        waited = [waited_seconds(p.proc.pid) - w for p, w in zip(procs, wait0, strict=True)]
        redis_cpu = [b - a for a, b in zip(redis0, drive.redis_cpu(), strict=True)]
        held = await drive.holders()
        await asyncio.sleep(1)  # a duplicate would be recorded by now
        recorded = await drive.sent(kind)
    return {
        "notifiers": len(procs),
        "cores": {p.node: p.core for p in procs},
        "partitions_held": held,
        "seconds": round(seconds, 2),
        "rate": round(count / seconds),
        "queue_seconds": round(queued, 2),
        "notifier_cpu": [round(c / seconds, 2) for c in cpu],
        "notifier_cpu_per_1000": round(sum(cpu) / count * 1000, 3),
        "notifier_waited": [round(w / seconds, 2) for w in waited],
        "redis_cpu": [round(c / seconds, 2) for c in redis_cpu],
        "redis_cpu_per_1000": round(sum(redis_cpu) / count * 1000, 3),
        "sent": recorded,
        "not_delivered": await drive.inbox_missing(sent),
        "duplicates": max(0, recorded - count),
        "dead_letters": await drive.dead_letters(),
    }


async def measure(args: argparse.Namespace, cluster: ClusterServers) -> dict[str, Any]:
    layout = Partitioning.of(0, cluster=True)
    keys.use(layout)
    startup = [ClusterNode("127.0.0.1", port) for port in cluster.ports]
    redis = RedisCluster(startup_nodes=startup)
    pids = [proc.pid for proc in cluster.procs if proc is not None]
    drive = Drive(redis, pids, args.users, layout)
    cores = {"one": [SERVER_CORE], "two": [SERVER_CORE, LOAD_CORE]}
    # one, two, two, one...: a drift in the machine's other load falls on both alike.
    pairs = [("one", "two") if i % 2 == 0 else ("two", "one") for i in range(args.repeat)]
    order = [run for pair in pairs for run in pair]
    drains: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
    try:
        for index, run in enumerate(order):
            label = f"{run}{index + 1}"
            found = await drain(
                cluster.url, drive, cores[run], args.count, index + 1, label, index == 0
            )
            drains[run].append(found)
    finally:
        await redis.aclose()
    # The best drain of each: the one the machine's other work disturbed least.
    one, two = (max(drains[run], key=lambda d: d["rate"]) for run in ("one", "two"))
    every = drains["one"] + drains["two"]
    return {
        "masters": len(cluster.ports),
        "partitions": layout.partitions,
        "users": args.users,
        "count": args.count,
        "order": order,
        "rates": {run: [d["rate"] for d in drains[run]] for run in drains},
        "one": one,
        "two": two,
        "ratio": round(two["rate"] / one["rate"], 2),
        "not_delivered": sum(d["not_delivered"] for d in every),
        "duplicates": sum(d["duplicates"] for d in every),
        "dead_letters": sum(d["dead_letters"] for d in every),
    }


def terminated(signum: int, frame: object) -> None:
    """run.py's timeout: unwind, so the notifiers and the Cluster's nodes are stopped."""
    raise SystemExit(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="drains of each, best one kept")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminated)
    os.sched_setaffinity(0, {int(SERVER_CORE), int(LOAD_CORE)})  # the Redis nodes: either
    cluster = ClusterServers(3)
    try:
        cluster.start()
        os.sched_setaffinity(0, {int(LOAD_CORE)})  # this driver
        result = asyncio.run(measure(args, cluster))
    finally:
        cluster.cleanup()
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
