"""How long a control command takes from the call on node A to its effect on a client of node B.

Starts a private redis-server and two gateway nodes on it, connects one WebSocket client to
node B, then toggles a server-side subscription of that client's user on and off: each call
(`POST /api/control/subscribe` / `unsubscribe` on node A, or the client package's
`ControlClient` straight to Redis) is timed from just before the call until the client reads
the unasked `subscribed` / `unsubscribed` frame it causes. Prints p50, p99 and max per way in.

    .venv/bin/python bench/control_latency.py [--calls 1000]

Not a test: it asserts nothing about the figures, which depend on the machine (README has one
run's)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import websockets
from archmesh_client.control import connect_control

from shared.tokens import issue_token

REPO = Path(__file__).resolve().parent.parent
JWT_SECRET = "bench-jwt-secret-0123456789abcdef-0123"
API_KEY = "bench-api-key"
CHANNEL = "session:bench-control"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    binary = shutil.which("redis-server") or "redis-server"
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cli = shutil.which("redis-cli") or "redis-cli"
    ping = [cli, "-p", str(port), "ping"]
    wait_for(lambda: subprocess.run(ping, capture_output=True).stdout.strip() == b"PONG", "redis")
    return proc, port


def start_gateway(redis_url: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {
        **os.environ,
        "ARCHMESH_REDIS_URL": redis_url,
        "ARCHMESH_JWT_SECRET": JWT_SECRET,
        "ARCHMESH_API_KEY": API_KEY,
        "ARCHMESH_PORT": str(port),
        "ARCHMESH_NODE_ID": f"bench-{port}",
        "ARCHMESH_LOG_LEVEL": "warning",
        "ARCHMESH_LOG_FORMAT": "json",
    }
    with log.open("ab") as out:
        cmd = [sys.executable, "-m", "archmesh_realtime", "gateway"]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=out)
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _answers(f"{base}/readyz"), f"gateway on {port}")
    return proc, base


async def measure(
    ws: Any, calls: int, call: Callable[[str, dict[str, str]], Awaitable[object]]
) -> list[float]:
    """Seconds from each call to the frame it causes on the client, alternating subscribe and
    unsubscribe."""
    samples = []
    for n in range(calls):
        op = "subscribe" if n % 2 == 0 else "unsubscribe"
        expected = op + "d"
        started = time.perf_counter()
        sent = asyncio.create_task(call(op, {"user": "bench", "channel": CHANNEL}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        samples.append(time.perf_counter() - started)
        await sent
        if frame.get("type") != expected or frame.get("channel") != CHANNEL:
            raise RuntimeError(f"expected {expected}, got {frame}")
    return samples


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p50 = statistics.median(ms)
    p99 = ms[min(len(ms) - 1, round(0.99 * len(ms)) - 1)]
    return (
        f"| {name} | {len(ms):,} | {p50:.2f} | {p99:.2f} | {ms[-1]:.2f} | "
        f"{statistics.fmean(ms):.2f} |"
    )


async def run(calls: int, redis_url: str, a: str, b: str) -> list[str]:
    token = issue_token(JWT_SECRET, "bench")
    rows = []
    async with websockets.connect(b.replace("http", "ws") + "/ws") as ws:
        await ws.send(json.dumps({"type": "connect", "token": token}))
        assert json.loads(await ws.recv())["type"] == "connected"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=a, headers=headers, timeout=10) as http:

            async def via_http(op: str, body: dict[str, str]) -> object:
                reply = await http.post(f"/api/control/{op}", json=body)
                reply.raise_for_status()
                return reply

            await measure(ws, 20, via_http)  # warm-up: connections, caches
            rows.append(summary("HTTP on node A", await measure(ws, calls, via_http)))
        async with connect_control(redis_url) as control:

            async def via_redis(op: str, body: dict[str, str]) -> object:
                if op == "subscribe":
                    return await control.subscribe(body["user"], body["channel"])
                return await control.unsubscribe(body["user"], body["channel"])

            await measure(ws, 20, via_redis)
            samples = await measure(ws, calls, via_redis)
            rows.append(summary("Python ControlClient (Redis)", samples))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls per way in (>= 1000)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="archmesh-bench-control-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis, port = start_redis(workdir)
        procs.append(redis)
        redis_url = f"redis://127.0.0.1:{port}/0"
        node_a, a = start_gateway(redis_url, Path(workdir) / "a.log")
        procs.append(node_a)
        node_b, b = start_gateway(redis_url, Path(workdir) / "b.log")
        procs.append(node_b)
        rows = asyncio.run(run(args.calls, redis_url, a, b))
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=20)
        shutil.rmtree(workdir, ignore_errors=True)
    print("| way in | calls | p50 ms | p99 ms | max ms | mean ms |")
    print("| --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
