"""How much a notifier costs per in-app notification, without HTTP or WebSockets in the way.

Starts a private redis-server, saves preferences with quiet hours (as loadgen.mjs's notifier
scenario does) for `--users` users, queues `--count` in-app requests on the request stream,
then runs a real notifier (notifier/app.py: its worker, with the commit publishing live) in
this process and times it draining the stream. Reports wall time, this process's CPU-seconds
and redis-server's CPU-seconds per 1,000 notifications, the commands Redis ran (INFO
commandstats), with --slowlog each script's time and with --profile the top of a cProfile.

Usage: .venv/bin/python bench/notifier_drain.py [--count 20000] [--users 1000] [--slowlog]
       [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import os
import pstats
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from archmesh_client.notifications import Medium, NotificationRequest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from notifier import keys  # noqa: E402
from notifier.app import Notifier  # noqa: E402
from notifier.schemas import Preferences  # noqa: E402
from notifier.settings import NotifierSettings  # noqa: E402

ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Tokyo", "Australia/Sydney"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_cpu(info: dict[str, Any]) -> float:
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


async def drain(args: argparse.Namespace, url: str) -> None:
    settings = NotifierSettings(redis_url=url, api_key="bench-key", jwt_secret="x" * 32)
    notifier = Notifier(settings)
    if not args.default_gc:
        with contextlib.suppress(ImportError):  # an older tree has none
            from shared import collector

            collector.tune_for_a_server()  # as `archmesh-rt notifier` (notifier/server.py)
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    prefs = {
        "quiet_hours": {"enabled": True, "start": "22:00", "end": "07:00"},
        "channels": {"default": {"in_app": True, "email": True, "push": False, "sms": False}},
    }
    for i in range(args.users):
        saved = Preferences.model_validate({**prefs, "timezone": ZONES[i % len(ZONES)]})
        await notifier.preferences.put(f"u{i}", saved)
    requests = [
        NotificationRequest(
            user_id=f"u{seq % args.users}",
            type="bench_event",
            title="Bench",
            body="A benchmark notification",
            channels=[Medium.IN_APP],
            data={"seq": seq, "ts": "0000000000000"},
        )
        for seq in range(args.count)
    ]
    for partition in keys.partitions():  # so the backlog counts what is queued
        await notifier.intake.ensure_group(partition)
    queued = time.process_time()
    for start in range(0, len(requests), 100):  # as the HTTP batches of the bench scenario
        await notifier.intake.enqueue(requests[start : start + 100])
    queued = time.process_time() - queued
    await admin.config_resetstat()
    if args.slowlog:  # every command logged: costs Redis a little CPU
        await admin.config_set("slowlog-log-slower-than", 0)
        await admin.config_set("slowlog-max-len", 100000)
    await admin.slowlog_reset()
    before_redis = redis_cpu(await admin.info("cpu"))
    profile = cProfile.Profile() if args.profile else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if profile:
        profile.enable()
    async with notifier.lifespan():
        while True:
            lag, pending = await notifier.intake.backlog()
            if lag == 0 and pending == 0:
                break
            await asyncio.sleep(0.01)
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        if profile:
            profile.disable()
    redis_seconds = redis_cpu(await admin.info("cpu")) - before_redis
    stats = await admin.info("commandstats")
    count = args.count
    scripts = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    print(f"drained: {count}  wall: {wall:.2f}s  rate: {count / wall:,.0f}/s")
    print(f"queueing them (Intake.enqueue, by 100): {queued / count * 1000:.3f} s per 1,000")
    print(f"notifier process CPU: {cpu:.2f}s = {cpu / count * 1000:.3f} s per 1,000")
    print(f"redis CPU: {redis_seconds:.2f}s = {redis_seconds / count * 1000:.3f} s per 1,000")
    print(f"script calls (evalsha): {scripts}")
    for name, row in sorted(stats.items(), key=lambda kv: -float(kv[1]["usec"]))[:12]:
        calls, usec, per = row["calls"], row["usec"], row["usec_per_call"]
        print(f"  {name[8:]:<22} calls={calls:>8} usec={usec:>10} per call={per}")
    per_script: dict[str, list[int]] = {}
    rows = await admin.slowlog_get(100000) if args.slowlog else []
    for row in rows:
        text = row["command"]
        command = (text.decode() if isinstance(text, bytes) else str(text)).split()
        if command and command[0].upper() == "EVALSHA":
            spent = per_script.setdefault(command[1][:8], [0, 0])
            spent[0] += 1
            spent[1] += int(row["duration"])
    for sha, (calls, usec) in per_script.items():
        print(f"  script {sha}: calls={calls} usec={usec} per call={usec / calls:.0f}")
    inbox = await admin.zcard(keys.inbox("u0").order)
    print(f"u0's inbox: {inbox} items")
    await admin.aclose()
    if profile:
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(30)
        print(out.getvalue())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--default-gc", action="store_true", help="CPython's GC thresholds")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--slowlog", action="store_true", help="time each script (SLOWLOG)")
    args = parser.parse_args()
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="nt-drain-")
    server = subprocess.Popen(
        [
            shutil.which("redis-server") or "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.1).close()
                break
            except OSError:
                time.sleep(0.02)
        os.environ.setdefault("ARCHMESH_LOG_LEVEL", "warning")
        asyncio.run(drain(args, url))
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
