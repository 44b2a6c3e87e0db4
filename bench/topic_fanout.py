"""`make bench-topics`: one notifier fans a topic request out to every subscriber; how long it
takes and how much memory the notifier needs (its peak RSS, /proc/<pid>/status VmHWM).

For each size (default 10,000 and 100,000 subscribers) a fresh private redis-server and a fresh
notifier process (`archmesh-rt notifier`, pinned to core 0; Redis on core 1): the subscribers
are written straight into the topic's keys, one in-app request to the topic is queued, and the
clock runs until every subscriber's in-app notification is recorded sent. Peak RSS that does
not grow with the topic is the point: the fan-out walks the subscribers in batches
(`ARCHMESH_NOTIFIER_TOPIC_BATCH`) and never holds the topic.

    .venv/bin/python bench/topic_fanout.py [--sizes 10000,100000] [--batch 500] [--json-line]

`make bench` runs it for 100,000 subscribers (bench/run.py's `topics` scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import redis.asyncio as aioredis
from archmesh_client.notifier import NotifierClient
from run import REPO, SERVER_CORE, free_port, redis_server, stop, wait_port  # bench/run.py

from notifier import keys

TOPIC = "bench:topic"
TYPE = "bench_topic"


@contextlib.contextmanager
def notifier(redis_url: str, batch: int) -> Iterator[subprocess.Popen[bytes]]:
    port = free_port()
    env = {
        **os.environ,
        "ARCHMESH_REDIS_URL": redis_url,
        "ARCHMESH_API_KEY": "bench-api-key",
        "ARCHMESH_JWT_SECRET": "bench-jwt-secret-0123456789abcdef-0123",
        "ARCHMESH_NOTIFIER_TOPIC_BATCH": str(batch),
        "ARCHMESH_LOG_LEVEL": "warning",
    }
    archmesh = str(REPO / ".venv" / "bin" / "archmesh-rt")
    command = ["taskset", "-c", SERVER_CORE, archmesh, "notifier", "--port", str(port)]
    proc = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        stop(proc)


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


async def seed(redis: aioredis.Redis, count: int) -> None:
    """`count` subscribers, written as subscribing writes them (both sides), 10,000 a trip."""
    for start in range(0, count, 10_000):
        users = [f"u{n:07d}" for n in range(start, min(count, start + 10_000))]
        async with redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.topic_subscribers(TOPIC), dict.fromkeys(users, 0))
            for user in users:
                pipe.sadd(keys.user_topics(user), TOPIC)
            await pipe.execute()


def hours_since(start: float) -> list[str]:
    """The analytics hours (`keys.stats`) from `start` (unix seconds) to now, UTC."""
    hour = int(start) // 3600 * 3600
    found = []
    while hour <= time.time():
        found.append(time.strftime("%Y%m%d%H", time.gmtime(hour)))
        hour += 3600
    return found


async def delivered(redis: aioredis.Redis, since: float) -> int:
    """The in-app sends recorded in the hourly counts: read by their names (a SCAN for them
    would walk every key of the 100,000 users on each poll, and slow Redis down with it)."""
    field = f"{TYPE}|in_app|sent"
    counts = [await redis.hget(keys.stats(hour), field) for hour in hours_since(since)]
    return sum(int(count or 0) for count in counts)


async def until_delivered(
    redis: aioredis.Redis, count: int, since: float, within: float = 600
) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await delivered(redis, since) >= count:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{count} in-app deliveries never recorded")


async def measure(count: int, batch: int) -> dict[str, float | int]:
    since = time.time()
    with redis_server() as (url, _):
        redis = aioredis.Redis.from_url(url, decode_responses=True)
        await seed(redis, count)
        with notifier(url, batch) as proc:
            async with NotifierClient(url) as client:
                # Warm up (imports, scripts, connections) on a one-user request first.
                await client.send({"user_id": "warm", "type": TYPE, "title": "warm up"})
                await until_delivered(redis, 1, since)
                rss_before = status_kb(proc.pid, "VmRSS")
                started = time.perf_counter()
                await client.send(
                    {"id": "fanout", "topic": TOPIC, "type": TYPE, "title": "Topic news"}
                )
            job = keys.fanout(TOPIC, "fanout")
            fanned = None
            while True:
                if fanned is None and await redis.hget(job, "state") == "done":
                    fanned = time.perf_counter() - started
                if fanned is not None and await delivered(redis, since) >= count + 1:
                    break
                await asyncio.sleep(0.05)
            finished = time.perf_counter() - started
            hwm = status_kb(proc.pid, "VmHWM")
            await asyncio.sleep(1)  # a subscriber notified twice would be recorded by now
            recorded = await delivered(redis, since) - 1  # less the warm-up
        await redis.aclose()
    return {
        "subscribers": count,
        "batch": batch,
        "fanned_out_s": round(fanned, 2),
        "all_delivered_s": round(finished, 2),
        "per_second": round(count / finished),
        "rss_before_fanout_mb": round(rss_before / 1024, 1),
        "peak_rss_mb": round(hwm / 1024, 1),
        "sent": recorded,
        "duplicates": max(0, recorded - count),
    }


def terminated(signum: int, frame: object) -> None:
    """run.py's timeout: unwind, so the notifier and its Redis are stopped."""
    raise SystemExit(f"signal {signum}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument(
        "--json-line", action="store_true", help="the last size's result on one line (run.py)"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, terminated)
    results = [await measure(int(size), args.batch) for size in args.sizes.split(",")]
    growth = {
        str(r["subscribers"]): round(float(r["peak_rss_mb"]) - float(r["rss_before_fanout_mb"]), 1)
        for r in results
    }
    for result in results:
        result["rss_growth_mb_by_size"] = growth  # bounded: the same whatever the topic's size
    print(json.dumps(results[-1]) if args.json_line else json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
