"""What one connection costs a gateway, measured without a load generator's noise: memory (RSS
and, with --trace, tracemalloc by line), CPU-seconds of the gateway per connect, and Redis
commands per connect (INFO commandstats). The gateway runs in this process (the same uvicorn
configuration as `archmesh-rt gateway`); the clients run in a child process.

    .venv/bin/python bench/conn_cost.py --clients 5000 [--channels user,broadcast] [--trace]

Every client is its own user (`u<i>`), on its own `user:` channel (joined at connect) and on
each further channel named (`broadcast` by default). Prints one JSON line. Run it with
PYTHONPATH=<other checkout> to measure that tree's gateway ("before").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from run import JWT_SECRET, free_port, redis_server  # noqa: E402


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


WRITES = [0]  # writes of commands to Redis by this process: its round trips


def count_writes() -> None:
    """Count every write of one command or one pipeline to Redis (redis-py's one path)."""
    from redis.asyncio.connection import AbstractConnection

    original = AbstractConnection.send_packed_command

    async def counted(self: Any, command: Any, check_health: bool = True) -> None:
        WRITES[0] += 1
        await original(self, command, check_health)

    AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]


def type_counts() -> Counter[str]:
    counts: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        counts[f"{kind.__module__}.{kind.__qualname__}"] += 1
    return counts


async def redis_calls(url: str) -> dict[str, int]:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        stats = await client.info("commandstats")
    finally:
        await client.aclose()
    return {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}


# -- the clients (child process) --------------------------------------------------------------


async def clients_main(port: int, first: int, count: int, extra: list[str]) -> None:
    from websockets.asyncio.client import connect

    from shared.tokens import issue_token

    held: list[Any] = []
    expected = 1 + len(extra)

    async def one(index: int) -> None:
        ws = await connect(f"ws://127.0.0.1:{port}/ws", compression=None, ping_interval=None)
        token = issue_token(JWT_SECRET, f"u{index}")
        await ws.send(json.dumps({"type": "connect", "token": token, "subscribe": extra}))
        answers = 0
        while answers < expected:
            frame = json.loads(await ws.recv())
            if frame["type"] in ("connected", "subscribed"):
                answers += 1
            elif frame["type"] in ("error", "disconnect"):
                raise RuntimeError(f"client {index}: {frame}")
        held.append(ws)

    queue = iter(range(first, first + count))

    async def worker() -> None:
        for index in queue:
            await one(index)

    await asyncio.gather(*(worker() for _ in range(min(100, count))))
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)


# -- the gateway (this process) ----------------------------------------------------------------


async def measure(
    opts: argparse.Namespace, server: Any, gateway: Any, port: int, url: str
) -> dict[str, Any]:
    while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, no event)
        await asyncio.sleep(0.05)
    extra = [c for c in opts.channels.split(",") if c and c != "user"]

    async def spawn(first: int, count: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--client",
            str(port),
            str(first),
            str(count),
            ",".join(extra),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError(f"clients failed: {line!r}")
        return proc

    warm = await spawn(0, 10)  # the shared channel exists, the code paths have run
    await asyncio.sleep(1.0)
    gc.collect()
    rss0, calls0, cpu0 = rss_kib(), await redis_calls(url), time.process_time()
    writes0 = WRITES[0]
    reads = gateway.broker.history_reads
    asked0, issued0 = reads.asked, reads.issued
    types0 = type_counts() if opts.types else Counter()
    snap0 = tracemalloc.take_snapshot() if opts.trace else None
    # CPU time (not wall): a write to Redis that wakes redis-server on this core would
    # otherwise be charged the server's work too.
    clock = time.thread_time if opts.profile_clock == "cpu" else time.perf_counter
    profile = cProfile.Profile(clock) if opts.profile else None
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    if profile is not None:
        profile.enable()
    main = await spawn(10, opts.clients)
    if profile is not None:
        profile.disable()
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    if profile is not None:
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out).sort_stats(opts.profile)
        stats.print_stats(opts.top)
        if opts.callees:
            stats.print_callees(opts.callees)
        print(out.getvalue(), file=sys.stderr)
    writes = WRITES[0] - writes0
    calls1 = await redis_calls(url)
    await asyncio.sleep(2.0)
    gc.collect()
    rss1 = rss_kib()
    n = opts.clients
    idle_cpu = None
    if opts.idle:  # what holding them costs: keepalive pings, timers, presence refresh
        idle0 = time.process_time()
        await asyncio.sleep(opts.idle)
        idle_cpu = (time.process_time() - idle0) / opts.idle  # of a core
    result: dict[str, Any] = {
        "clients": n,
        "gateway": str(Path(sys.modules["gateway"].__file__ or "").parent.parent),
        "channels": opts.channels,
        "rss_kib_per_conn": round((rss1 - rss0) / n, 2),
        "cpu_ms_per_connect": round(cpu * 1000 / n, 3),
        "idle_cpu_share_of_a_core": None if idle_cpu is None else round(idle_cpu, 4),
        "connects_per_s_wall": round(n / wall, 1),
        "redis_round_trips_per_connect": round(writes / n, 2),
        "history_reads_asked_per_connect": round((reads.asked - asked0) / n, 2),
        "history_reads_issued_per_connect": round((reads.issued - issued0) / n, 2),
        "redis_commands_per_connect": {
            name: round((calls1.get(name, 0) - calls0.get(name, 0)) / n, 2)
            for name in sorted(calls1)
            if calls1.get(name, 0) != calls0.get(name, 0) and name != "info"
        },
    }
    if opts.types:
        diff = type_counts() - types0
        result["objects_per_conn"] = {
            k: round(v / n, 2) for k, v in diff.most_common(40) if v >= n // 2
        }
    if snap0 is not None:
        snap1 = tracemalloc.take_snapshot()
        stats = snap1.compare_to(snap0, "lineno")
        result["traced_kib_per_conn"] = round(sum(s.size_diff for s in stats) / 1024 / n, 2)
        result["top_lines"] = [
            f"{s.size_diff / n:8.0f} B {s.count_diff / n:5.2f} blk  {s.traceback[0]}"
            for s in stats[: opts.top]
            if s.size_diff > 0
        ]
    for proc in (main, warm):
        assert proc.stdin is not None
        proc.stdin.write(b"\n")
        await proc.stdin.drain()
        await proc.wait()
    deadline = time.monotonic() + 60  # the clients leave before the server stops
    while gateway.hub.connections and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    return result


def gateway_main(opts: argparse.Namespace) -> None:
    import uvicorn

    from gateway import server as gateway_server
    from gateway.app import Gateway
    from shared.logging import configure_logging
    from shared.settings import Settings

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with redis_server() as (url, _pid):
        os.environ.update(
            ARCHMESH_REDIS_URL=url, ARCHMESH_JWT_SECRET=JWT_SECRET, ARCHMESH_LOG_LEVEL="warning"
        )
        count_writes()
        if opts.trace:
            tracemalloc.start(1)
        settings = Settings()
        configure_logging(settings.log_level, settings.log_format)  # as `archmesh-rt gateway`
        gateway = Gateway(settings)
        port = opts.port or free_port()
        make_config = getattr(gateway_server, "uvicorn_config", None)
        if make_config is not None:
            config = make_config(gateway, port=port)
        else:  # an older tree: the options `serve` used there
            config = uvicorn.Config(
                gateway,
                host="127.0.0.1",
                port=port,
                ws_max_size=gateway.settings.ws_max_bytes,
                ws_ping_interval=gateway.settings.ws_ping_interval,
                ws_ping_timeout=gateway.settings.ws_ping_timeout,
                ws_per_message_deflate=gateway.settings.ws_per_message_deflate,
                loop="uvloop",
                http="httptools",
                ws="websockets-sansio",
                log_config=None,
                access_log=False,
                lifespan="on",
            )
        server = uvicorn.Server(config)
        if not opts.default_gc:
            with contextlib.suppress(ImportError):  # an older tree has none
                from shared import collector

                collector.tune_for_a_server()  # as `archmesh-rt gateway` (gateway/server.py)

        async def both() -> dict[str, Any]:
            serving = asyncio.ensure_future(server.serve())
            try:
                return await measure(opts, server, gateway, port, url)
            finally:
                server.should_exit = True
                server.force_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(serving, 30)

        import uvloop

        result = uvloop.run(both())
        print(json.dumps(result, indent=1))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, first, count, extra = sys.argv[2:6]
        channels = [c for c in extra.split(",") if c]
        asyncio.run(clients_main(int(port), int(first), int(count), channels))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--channels", default="user,broadcast")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--idle", type=float, default=0, help="then hold them this long (s)")
    parser.add_argument("--trace", action="store_true", help="tracemalloc by line (slow)")
    parser.add_argument("--types", action="store_true", help="objects per connection by type")
    parser.add_argument("--profile", default="", help="cProfile the connects, sorted by this")
    parser.add_argument(
        "--profile-clock", choices=("cpu", "wall"), default="cpu", help="what --profile times"
    )
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--default-gc", action="store_true", help="CPython's GC thresholds")
    parser.add_argument("--callees", default="", help="with --profile: what these call")
    gateway_main(parser.parse_args())


if __name__ == "__main__":
    main()
