"""`make bench`: ArchMesh's gateway against its peers, side by side, on this machine.

Installs the peers into `.bench/` (ignored by git), starts a private redis-server, then for
each round and system starts a fresh server pinned to core 0 (`taskset -c 0`) for every
scenario and runs the load generator + publisher pinned to core 1 (with Redis). Medians of the
rounds, as ratios to Node's Socket.IO, go to docs/benchmarks.md.

    python3 bench/run.py [--rounds 3] [--systems a,b] [--scenarios x,y] [--no-write]
    python3 bench/run.py --systems archmesh,socketio --scenarios capacity --no-write
    python3 bench/run.py --systems archmesh --scenarios storm --no-write -- --clients 1000

`capacity` and `storm` run once per system, after the rounds, for ArchMesh and Node's
Socket.IO only (the reference): they are long, and their ratios are what the targets name.
`storm3` runs once, ArchMesh only, last: three gateways behind nginx on their own Redis
(bench/storm_cluster.py), the one holding 10,000 clients SIGKILLed.
    python3 bench/run.py --systems archmesh --scenarios storm3 --no-write -- --live 200
`notifier-cluster` and `topics` run once each, ArchMesh only, on their own Redis (issue 15):
one then two notifier processes draining in-app notifications on a 3-master Redis Cluster
(bench/notifier_cluster.py), and one notifier fanning a topic of 100,000 subscribers out
(bench/topic_fanout.py, its time and peak RSS).
    python3 bench/run.py --systems archmesh --scenarios notifier-cluster,topics --no-write
    python3 bench/run.py --report .bench/results.json   # rewrite the doc from a saved run

Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
PEERS = REPO / ".bench"
VENV_PY = PEERS / "venv" / "bin" / "python"
JWT_SECRET = "bench-jwt-secret-0123456789abcdef-0123"
API_KEY = "bench-api-key"
SERVER_CORE, LOAD_CORE = "0", "1"
ARCHMESH_TREE: Path | None = None  # --archmesh-tree

SYSTEMS = ("archmesh", "socketio", "pysocketio", "broadcaster")
SCENARIOS = ("fanout", "latency", "unicast", "idle", "notifier")
# Run once per system after the rounds, ArchMesh and the reference only.
ONCE = ("capacity", "storm")
ONCE_SYSTEMS = ("archmesh", "socketio")
# ArchMesh alone, once, on its own cluster (three gateways behind nginx, a private Redis).
STORM3 = "storm3"
# ArchMesh's notifier alone, once each, on their own Redis (issue 15); no load generator.
NOTIFIER_CLUSTER = "notifier-cluster"
TOPICS = "topics"
NOTIFIER_ONCE = (NOTIFIER_CLUSTER, TOPICS)
# Not a peer: a bare Node fan-out server that shows how much the load generator can take.
CEILING = "blast"
LABELS = {
    "archmesh": "ArchMesh gateway",
    "socketio": "Node Socket.IO + redis-adapter",
    "pysocketio": "python-socketio + AsyncRedisManager",
    "broadcaster": "encode/broadcaster + Starlette",
    CEILING: "load generator ceiling",
}
REFERENCE = "socketio"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- peers ----------------------------------------------------------------------------------


def install_peers() -> None:
    """Python peers into their own venv, Node peers into .bench/node_modules; both pinned."""
    PEERS.mkdir(exist_ok=True)
    requirements = (BENCH / "requirements-peers.txt").read_text()
    stamp = PEERS / "venv" / ".requirements"
    if not VENV_PY.exists() or not stamp.exists() or stamp.read_text() != requirements:
        log("installing Python peers into .bench/venv")
        subprocess.run([sys.executable, "-m", "venv", str(PEERS / "venv")], check=True)
        pip = [str(VENV_PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "-r", str(BENCH / "requirements-peers.txt")], check=True)
        stamp.write_text(requirements)
    package = (BENCH / "package.json").read_text()
    installed = PEERS / "package.json"
    if (
        not (PEERS / "node_modules").exists()
        or not installed.exists()
        or (installed.read_text() != package)
    ):
        log("installing Node peers and the load generator into .bench/node_modules")
        installed.write_text(package)
        npm = ["npm", "install", "--prefix", str(PEERS), "--no-audit", "--no-fund"]
        subprocess.run([*npm, "--loglevel=error"], check=True)


# -- processes ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def redis_server() -> Iterator[tuple[str, int]]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="archmesh-bench-redis-")
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", workdir, "--logfile", os.path.join(workdir, "redis.log")]
    proc = subprocess.Popen(["taskset", "-c", LOAD_CORE, binary, *args])
    try:
        wait_port(port, proc)
        yield f"redis://127.0.0.1:{port}/0", proc.pid
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def server_command(system: str, port: int) -> list[str]:
    if system == "archmesh":
        # The console script: the same command whichever module holds the CLI in that tree.
        return [str(REPO / ".venv" / "bin" / "archmesh-rt"), "gateway", "--port", str(port)]
    if system in ("socketio", CEILING):
        name = "socketio_server.mjs" if system == "socketio" else "blast_server.mjs"
        return ["node", str(BENCH / "peers" / name)]
    apps = {"pysocketio": "pysocketio_server:app", "broadcaster": "broadcaster_server:app"}
    return [
        *(str(VENV_PY), "-m", "uvicorn", apps[system], "--app-dir", str(BENCH / "peers")),
        *("--port", str(port), "--log-level", "warning", "--no-access-log"),
    ]


def environment(redis_url: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PORT=str(port),
        REDIS_URL=redis_url,
        BENCH_NODE_PREFIX=str(PEERS),
        BENCH_JWT_SECRET=JWT_SECRET,
        BENCH_API_KEY=API_KEY,
        ARCHMESH_REDIS_URL=redis_url,
        ARCHMESH_JWT_SECRET=JWT_SECRET,
        ARCHMESH_API_KEY=API_KEY,
        ARCHMESH_LOG_LEVEL="warning",
        ARCHMESH_DRAIN_SECONDS="0",
        NODE_ENV="production",
    )
    return env


def run_scenario(
    system: str, scenario: str, redis_url: str, redis_pid: int, extra: list[str]
) -> dict[str, object]:
    if scenario == "notifier":
        return run_notifier(redis_url, redis_pid, extra)
    if scenario == "storm":
        return run_storm(system, redis_url, redis_pid, extra)
    if scenario == STORM3:
        return run_storm3(extra)
    port = free_port()
    env = environment(redis_url, port)
    cwd = REPO
    if system == "archmesh" and ARCHMESH_TREE is not None:
        env["PYTHONPATH"] = str(ARCHMESH_TREE)  # an older checkout's gateway, same venv
        cwd = ARCHMESH_TREE
    cmd = ["taskset", "-c", SERVER_CORE, *server_command(system, port)]
    with server_log(system, scenario) as out:
        server = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=out)
    try:
        wait_port(port, server)
        args = ["--system", system, "--scenario", scenario, "--port", str(port)]
        args += ["--redis", redis_url, "--pid", str(server.pid), "--redis-pid", str(redis_pid)]
        return load(args + extra, env)
    finally:
        stop(server)


def start_server(
    system: str, scenario: str, port: int, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    cmd = ["taskset", "-c", SERVER_CORE, *server_command(system, port)]
    with server_log(system, scenario) as out:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=out)


def run_storm(system: str, redis_url: str, redis_pid: int, extra: list[str]) -> dict[str, object]:
    """The reconnect storm: the load generator asks (a `{"restart": true}` line) and the
    server is SIGKILLed and started again at once on the same port, as a supervisor would; the
    new server's pid goes back on the load generator's stdin so it can read its CPU."""
    port = free_port()
    env = environment(redis_url, port)
    server = start_server(system, "storm", port, env)
    try:
        wait_port(port, server)
        args = ["--system", system, "--scenario", "storm", "--port", str(port)]
        args += ["--redis", redis_url, "--pid", str(server.pid), "--redis-pid", str(redis_pid)]
        cmd = ["taskset", "-c", LOAD_CORE, "node", str(BENCH / "loadgen.mjs"), *args, *extra]
        with server_log(system, "storm-loadgen") as err:
            loadgen = subprocess.Popen(
                cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        assert loadgen.stdin is not None
        assert loadgen.stdout is not None
        watchdog = threading.Timer(300, loadgen.kill)  # its own deadlines failed: end it
        watchdog.start()
        last = ""
        for line in loadgen.stdout:
            if line.strip() == '{"restart":true}':
                server.kill()
                server.wait()
                server = start_server(system, "storm", port, env)
                loadgen.stdin.write(json.dumps({"pid": server.pid}) + "\n")
                loadgen.stdin.flush()
            elif line.strip():
                last = line
        loadgen.wait()
        watchdog.cancel()
        if not last:
            return {"error": f"load generator printed nothing (exit {loadgen.returncode})"}
        result: dict[str, object] = json.loads(last)
        return result
    finally:
        stop(server)


def run_storm3(extra: list[str]) -> dict[str, object]:
    """Issue 16's storm: three gateways behind nginx (bench/storm_cluster.py, the cluster and
    the load generator's Redis its own), the node holding the storm's clients SIGKILLed by the
    load generator; the two others stay. The cluster is on core 0, the load generator on 1."""
    venv_python = REPO / ".venv" / "bin" / "python"
    env = environment("", 0)
    cmd = ["taskset", "-c", SERVER_CORE, str(venv_python), str(BENCH / "storm_cluster.py")]
    cmd += ["--jwt-secret", JWT_SECRET, "--api-key", API_KEY]
    with server_log("archmesh", STORM3) as out:
        cluster = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out
        )
    assert cluster.stdin is not None
    assert cluster.stdout is not None
    try:
        line = cluster.stdout.readline()
        if not line:
            return {"error": f"the cluster did not start (exit {cluster.wait()}); see .bench/logs"}
        ready = json.loads(line)
        gateways = ",".join(f"{g['node']}:{g['port']}:{g['pid']}" for g in ready["gateways"])
        args = ["--system", "archmesh", "--scenario", STORM3, "--port", str(ready["port"])]
        args += ["--redis", ready["redis"], "--redis-pid", str(ready["redis_pid"])]
        args += ["--pid", str(ready["gateways"][0]["pid"]), "--gateways", gateways]
        args += ["--nginx-pid", str(ready["nginx_pid"]), "--pinned-port", str(ready["pinned_port"])]
        return load(args + extra, env, timeout=420)
    finally:
        cluster.stdin.close()  # the driver stops every part, nginx included
        try:
            cluster.wait(90)
        except subprocess.TimeoutExpired:
            cluster.kill()  # its children get SIGTERM from the kernel (PDEATHSIG)
            cluster.wait()


def run_script(name: str, scenario: str, args: list[str], timeout: float) -> dict[str, object]:
    """A bench/ script run with the project's venv (it imports the notifier), on the load
    core (it pins what it measures itself); its last line of output is the result. Past
    `timeout` it gets SIGTERM, on which it stops the servers it started."""
    venv_python = REPO / ".venv" / "bin" / "python"
    cmd = ["taskset", "-c", LOAD_CORE, str(venv_python), str(BENCH / name), *args]
    started = time.monotonic()
    log_name = f".bench/logs/archmesh-{scenario}.log"
    with server_log("archmesh", scenario) as err:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=err)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(proc)
            proc.communicate()
            return {"error": f"{name} took more than {timeout:.0f}s; see {log_name}"}
    lines = out.decode().strip().splitlines()
    if proc.returncode or not lines:
        return {"error": f"{name} exited {proc.returncode}; see {log_name}"}
    result: dict[str, object] = json.loads(lines[-1])
    result["scenario_seconds"] = round(time.monotonic() - started, 1)
    return result


def run_notifier_cluster(count: int) -> dict[str, object]:
    """Issue 15: one, then two `archmesh-rt notifier` processes draining `count` in-app
    notifications on a private 3-master Redis Cluster (bench/notifier_cluster.py)."""
    return run_script("notifier_cluster.py", NOTIFIER_CLUSTER, ["--count", str(count)], 420)


def run_topics(subscribers: int) -> dict[str, object]:
    """Issue 15: one notifier fans a topic of `subscribers` out (bench/topic_fanout.py)."""
    sizes = f"{SMALL_TOPIC},{subscribers}" if subscribers > SMALL_TOPIC else str(subscribers)
    args = ["--sizes", sizes, "--json-line"]  # the small one: what growth does not depend on
    return run_script("topic_fanout.py", TOPICS, args, 600)


def run_notifier(redis_url: str, redis_pid: int, extra: list[str]) -> dict[str, object]:
    """The notifier process under test on core 0; the gateway that delivers its in-app
    notifications on core 1 with the load generator (it has little to do here)."""
    port, notifier_port = free_port(), free_port()
    env = environment(redis_url, port)
    archmesh = str(REPO / ".venv" / "bin" / "archmesh-rt")
    with server_log("archmesh", "notifier-gateway") as out:
        gateway = subprocess.Popen(
            ["taskset", "-c", LOAD_CORE, archmesh, "gateway", "--port", str(port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
    with server_log("archmesh", "notifier") as out:
        notifier = subprocess.Popen(
            ["taskset", "-c", SERVER_CORE, archmesh, "notifier", "--port", str(notifier_port)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
    try:
        wait_port(port, gateway)
        wait_port(notifier_port, notifier)
        args = ["--system", "archmesh", "--scenario", "notifier", "--port", str(port)]
        args += ["--notifier-port", str(notifier_port), "--redis", redis_url]
        args += ["--pid", str(notifier.pid), "--redis-pid", str(redis_pid)]
        return load(args + extra, env)
    finally:
        stop(notifier)
        stop(gateway)


@contextlib.contextmanager
def server_log(system: str, scenario: str) -> Iterator[IO[bytes]]:
    """A server's output goes to .bench/logs/, not the terminal (peers log retries)."""
    logs = PEERS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{system}-{scenario}.log").open("ab") as out:
        yield out


def load(args: list[str], env: dict[str, str], timeout: float = 240) -> dict[str, object]:
    """Run the load generator on its core; its last line is the result."""
    cmd = ["taskset", "-c", LOAD_CORE, "node", str(BENCH / "loadgen.mjs"), *args]
    done = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        return {"error": f"load generator printed nothing: {done.stderr.strip()[-500:]}"}
    result: dict[str, object] = json.loads(lines[-1])
    return result


# -- results --------------------------------------------------------------------------------

# (scenario, key in a result, label, higher is better)
METRICS = (
    ("fanout", "rate", "fan-out deliveries/s", True),
    ("fanout", "per_cpu_second", "fan-out deliveries per server CPU-second", True),
    ("fanout", "p99_ms", "fan-out p99 ms (saturated)", False),
    ("latency", "p50_ms", "latency p50 ms", False),
    ("latency", "p99_ms", "latency p99 ms", False),
    ("latency", "max_ms", "latency max ms", False),
    ("unicast", "rate", "unicast deliveries/s", True),
    ("unicast", "per_cpu_second", "unicast deliveries per server CPU-second", True),
    ("idle", "kb_per_conn", "idle KiB per connection", False),
    ("notifier", "rate", "notifier: in-app notifications/s delivered", True),
    ("notifier", "per_cpu_second", "notifier: notifications per notifier CPU-second", True),
    ("notifier", "p99_ms", "notifier: request-to-socket p99 ms (saturated)", False),
)


@dataclass
class Results:
    runs: dict[str, dict[str, list[dict[str, object]]]] = field(default_factory=dict)

    def add(self, system: str, scenario: str, result: dict[str, object]) -> None:
        self.runs.setdefault(system, {}).setdefault(scenario, []).append(result)

    def median(self, system: str, scenario: str, key: str) -> float | None:
        values = [
            float(v)  # type: ignore[arg-type]
            for r in self.runs.get(system, {}).get(scenario, [])
            if "error" not in r and (v := r.get(key)) is not None
        ]
        return statistics.median(values) if values else None

    def total(self, system: str, scenario: str, key: str) -> int:
        return sum(
            int(r.get(key, 0) or 0)  # type: ignore[call-overload]
            for r in self.runs.get(system, {}).get(scenario, [])
        )


def fmt(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def table(results: Results, systems: list[str]) -> str:
    head = "| metric | " + " | ".join(LABELS[s] for s in systems) + " |"
    lines = [head, "|" + " --- |" * (len(systems) + 1)]
    for scenario, key, label, _ in METRICS:
        ref = results.median(REFERENCE, scenario, key)
        cells = []
        for system in systems:
            value = results.median(system, scenario, key)
            ratio = f" ({value / ref:.2f}x)" if value is not None and ref else ""
            cells.append(fmt(value) + ratio)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for scenario in ("fanout", "latency", "unicast", "notifier"):
        cells = [
            f"{results.total(s, scenario, 'lost')} / {results.total(s, scenario, 'duplicates')}"
            for s in systems
        ]
        label = f"{scenario}: not delivered / duplicates (all runs)"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def once(results: Results, system: str, scenario: str, path: str) -> float | None:
    """A figure of a run-once scenario (the last run), by dotted path: `ping.p99_ms`."""
    runs = results.runs.get(system, {}).get(scenario, [])
    value: Any = runs[-1] if runs else None
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def ratio_of(results: Results, scenario: str, path: str) -> float | None:
    ours = once(results, "archmesh", scenario, path)
    ref = once(results, REFERENCE, scenario, path)
    return ours / ref if ours is not None and ref else None


def cell(value: Any) -> str:
    """A figure as the tables show it."""
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else ("yes" if value else "no")
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return fmt(value)
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items())
    return str(value)


def once_table(results: Results, scenario: str, rows: list[tuple[str, str]]) -> str:
    """ArchMesh and the reference side by side, with the ratio; text cells as they are."""
    if not any(results.runs.get(s, {}).get(scenario) for s in ONCE_SYSTEMS):
        return "(not run)"
    head = "| | " + " | ".join(LABELS[s] for s in ONCE_SYSTEMS) + " | ratio |"
    lines = [head, "| --- |" + " --- |" * (len(ONCE_SYSTEMS) + 1)]
    for label, path in rows:
        cells = []
        for system in ONCE_SYSTEMS:
            runs = results.runs.get(system, {}).get(scenario, [])
            value: Any = runs[-1] if runs else None
            for key in path.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            cells.append(cell(value))
        ratio = ratio_of(results, scenario, path)
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {shown} |")
    for system in ONCE_SYSTEMS:
        for run in results.runs.get(system, {}).get(scenario, []):
            if "error" in run:
                lines.append(f"\n{LABELS[system]} failed: `{run['error']}`")
    return "\n".join(lines)


def capacity_table(results: Results) -> str:
    return once_table(
        results,
        "capacity",
        [
            ("connections held (open-files limit less a margin)", "clients"),
            ("time to connect all, s", "connect_seconds"),
            ("connects/s", "connects_per_second"),
            ("server CPU while connecting (of its core)", "connect_server_cpu"),
            ("load generator CPU while connecting (of its core)", "connect_loadgen_cpu"),
            ("what limits the connect rate", "connect_limited_by"),
            ("server RSS per connection, KiB", "kb_per_conn"),
            ("broadcast to all: fan-out p50 ms", "fanout.p50_ms"),
            ("broadcast to all: fan-out p99 ms", "fanout.p99_ms"),
            ("broadcast to all: not delivered", "fanout.lost"),
            ("broadcast to all: duplicates", "fanout.duplicates"),
            ("unicast at a steady rate: messages/s asked", "unicast.rate_target"),
            ("unicast: deliveries/s", "unicast.rate"),
            ("unicast: p50 ms", "unicast.p50_ms"),
            ("unicast: p99 ms", "unicast.p99_ms"),
            ("unicast: not delivered", "unicast.lost"),
            ("unicast: duplicates", "unicast.duplicates"),
            ("unicast: server CPU (of its core)", "unicast.server_cpu"),
            ("application ping during unicast: p50 ms", "ping.p50_ms"),
            ("application ping during unicast: p99 ms", "ping.p99_ms"),
            ("application ping p99 <= 100 ms, all answered", "ping.ok"),
        ],
    )


def storm_table(results: Results) -> str:
    phases = [("drop", "all dropped at once"), ("kill", "SIGKILL and restart")]
    each = [
        ("to every client back and resubscribed, s", "seconds_to_all"),
        ("to the first upgrade answered, s", "seconds_to_first_open"),
        ("to the first client back and resubscribed, s", "seconds_to_first_back"),
        ("first back to all back, s", "seconds_first_back_to_all"),
        ("reconnects/s from the first back", "reconnects_per_second"),
        ("server CPU until all back (of its core)", "server_cpu"),
        ("Redis CPU until all back (of a core)", "redis_cpu"),
        ("what limits the reconnect rate", "limited_by"),
        ("refused connection attempts", "refused_attempts"),
        ("messages published meanwhile", "published_during"),
        ("subscriptions not recovered", "not_recovered"),
    ]
    rows = [
        ("clients (own `user:` channel + the shared one)", "clients"),
        ("recovery of what was missed", "recovery"),
    ]
    rows += [(f"{what}: {label}", f"{kind}.{key}") for kind, what in phases for label, key in each]
    rows += [
        ("messages published in all (broadcast)", "published.broadcast"),
        ("messages published in all (unicast)", "published.unicast"),
        ("deliveries expected (both storms)", "expected"),
        ("not delivered", "lost"),
        ("duplicates", "duplicates"),
    ]
    return once_table(results, "storm", rows)


# storm3's "without the storm" is a baseline only while core 0 (its gateways, nginx and Redis)
# has time to spare: at or above this share of the core it was an overload already.
CALM_CORE_LIMIT = 0.9
# A core this busy is what limited a run (unicast: the publish path's core or the gateway's).
BUSY_CORE = 0.9

STORM3_ROWS = [
    ("clients on the node that is killed (each on its own `user:` channel)", "clients"),
    ("channels per client (own + shared `session:` channels)", "channels_per_client"),
    ("live clients on the two other nodes (through nginx)", "live_clients"),
    ("storm clients back, resubscribed and recovered", "reconnected"),
    ("SIGKILL to every client back and recovered, s", "seconds_to_all"),
    ("SIGKILL to the first client back, s", "seconds_to_first_back"),
    ("SIGKILL to half of the clients back, s", "seconds_to_half_back"),
    ("SIGKILL to 90% of the clients back, s", "seconds_to_90_back"),
    ("refused or failed connection attempts", "refused_attempts"),
    ("subscriptions not recovered", "not_recovered"),
    ("history reads asked (recoveries, positions)", "history_reads.asked"),
    ("history reads issued to Redis", "history_reads.issued"),
    ("history reads merged (same channel and position, same turn)", "history_reads.merged"),
    ("subscribes recovered with `since`", "history_reads.recoveries"),
    (
        "Redis EVALSHA calls meanwhile (history, presence, publications)",
        "history_reads.redis_evalsha",
    ),
    ("the three gateways' CPU without the storm (of a core)", "cpu_without_storm.gateways"),
    ("nginx CPU without the storm (of a core)", "cpu_without_storm.nginx"),
    ("Redis CPU without the storm (of a core)", "cpu_without_storm.redis"),
    ("surviving gateways' CPU during the storm (of a core, both)", "cpu_during_storm.gateways"),
    ("nginx CPU during the storm (of a core)", "cpu_during_storm.nginx"),
    ("Redis CPU during the storm (of a core)", "cpu_during_storm.redis"),
    ("load generator CPU during the storm (of its core)", "cpu_during_storm.loadgen"),
    ("storm clients: deliveries expected", "expected"),
    ("storm clients: not delivered", "lost"),
    ("storm clients: duplicates", "duplicates"),
    ("live clients: delivery p50 ms without the storm", "live.calm.p50_ms"),
    ("live clients: delivery p99 ms without the storm", "live.calm.p99_ms"),
    ("live clients: delivery p50 ms during the storm", "live.storm.p50_ms"),
    ("live clients: delivery p99 ms during the storm", "live.storm.p99_ms"),
    ("live clients: delivery max ms during the storm", "live.storm.max_ms"),
    ("live clients: p99 during / without the storm", "live.p99_ratio"),
    ("live clients: not delivered / duplicates", "live.lost"),
]


def storm3_table(results: Results) -> str:
    """ArchMesh alone: one column, the figures of its last run."""
    runs = results.runs.get("archmesh", {}).get(STORM3, [])
    if not runs:
        return "(not run)"
    run = runs[-1]
    if "error" in run:
        return f"failed: `{run['error']}`"
    lines = ["| | ArchMesh, 3 gateways behind nginx |", "| --- | --- |"]
    for label, path in STORM3_ROWS:
        value: Any = run
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if path == "live.lost":
            value = f"{value} / {run.get('live', {}).get('duplicates')}"
        lines.append(f"| {label} | {cell(value)} |")
    return "\n".join(lines)


def last_run(results: Results, scenario: str) -> dict[str, Any] | str:
    """ArchMesh's last run of a run-once scenario, or what to show instead of its table."""
    runs = results.runs.get("archmesh", {}).get(scenario, [])
    if not runs:
        return "(not run)"
    if "error" in runs[-1]:
        return f"failed: `{runs[-1]['error']}`"
    return runs[-1]


NOTIFIER_CLUSTER_ROWS = [
    ("notifier processes: core of each", "cores"),
    ("partitions held (of 8, by lease)", "partitions_held"),
    ("time to drain, s", "seconds"),
    ("in-app notifications/s", "rate"),
    ("each notifier's CPU (of a core)", "notifier_cpu"),
    ("notifiers' CPU-seconds per 1,000 notifications", "notifier_cpu_per_1000"),
    ("share of the time each notifier waited for its core (others ran)", "notifier_waited"),
    ("each Redis node's CPU (of a core; on either core)", "redis_cpu"),
    ("Redis nodes' CPU-seconds per 1,000 notifications", "redis_cpu_per_1000"),
    ("queueing the notifications (not timed), s", "queue_seconds"),
    ("sends recorded", "sent"),
    ("not delivered (missing from their user's inbox)", "not_delivered"),
    ("duplicates (sends recorded beyond one per notification)", "duplicates"),
    ("dead letters", "dead_letters"),
]


def notifier_cluster_table(results: Results) -> str:
    """One notifier and two side by side, and the ratio of their rates."""
    run = last_run(results, NOTIFIER_CLUSTER)
    if isinstance(run, str):
        return run
    lines = ["| | one notifier | two notifiers |", "| --- | --- | --- |"]
    rates = run["rates"]
    lines.append(f"| notifications/s of each drain | {cell(rates['one'])} | {cell(rates['two'])} |")
    lines.append("| **the best drain of each:** | | |")
    for label, key in NOTIFIER_CLUSTER_ROWS:
        lines.append(f"| {label} | {cell(run['one'].get(key))} | {cell(run['two'].get(key))} |")
    lines.append(f"| **two / one, notifications/s (best drains)** | | **{run['ratio']:.2f}x** |")
    head = (
        f"{run['count']:,} in-app notifications to {run['users']:,} users in each drain, "
        f"{run['partitions']} partitions on {run['masters']} masters; drains in the order "
        f"{', '.join(run['order'])}; the whole scenario took "
        f"{cell(run.get('scenario_seconds'))} s."
    )
    return head + "\n\n" + "\n".join(lines)


TOPICS_ROWS = [
    ("subscribers of the topic", "subscribers"),
    ("subscribers per batch (`ARCHMESH_NOTIFIER_TOPIC_BATCH`)", "batch"),
    ("request to every subscriber queued (fan-out job done), s", "fanned_out_s"),
    ("request to every in-app notification sent, s", "all_delivered_s"),
    ("in-app notifications/s", "per_second"),
    ("notifier RSS before the fan-out, MB", "rss_before_fanout_mb"),
    ("notifier peak RSS (VmHWM), MB", "peak_rss_mb"),
    ("peak RSS growth over the RSS before, MB, by topic size", "rss_growth_mb_by_size"),
    ("sends recorded", "sent"),
    ("duplicates", "duplicates"),
    ("the whole scenario (seeding the topic included), s", "scenario_seconds"),
]


def topics_table(results: Results) -> str:
    run = last_run(results, TOPICS)
    if isinstance(run, str):
        return run
    lines = ["| | ArchMesh, one notifier |", "| --- | --- |"]
    lines += [f"| {label} | {cell(run.get(key))} |" for label, key in TOPICS_ROWS]
    return "\n".join(lines)


# A notifier that held a topic's subscribers' requests at once would need 1 KiB or more each
# (100 MB for 100,000); one batch at a time needs the same few MB whatever the topic's size:
# the target is the big topic's growth against the small one's (SMALL_TOPIC subscribers).
SMALL_TOPIC = 10_000


def targets(results: Results) -> str:
    def ratio(scenario: str, key: str) -> float | None:
        ours = results.median("archmesh", scenario, key)
        ref = results.median(REFERENCE, scenario, key)
        return ours / ref if ours is not None and ref else None

    # Issue 16's goals (stricter than issue 5's: fan-out >= 1.0x, latency <= 1.0x, idle <=
    # 1.3x). Server CPU per unicast delivery is the inverse of deliveries per CPU-second.
    per_cpu = ratio("unicast", "per_cpu_second")
    cpu_per_delivery = 1 / per_cpu if per_cpu else None
    rows = [
        ("fan-out deliveries/s", ratio("fanout", "rate"), ">= 3.0x", lambda r: r >= 3.0),
        ("unicast deliveries/s", ratio("unicast", "rate"), ">= 1.8x", lambda r: r >= 1.8),
        ("unicast: server CPU per delivery", cpu_per_delivery, "<= 0.55x", lambda r: r <= 0.55),
        ("latency p99", ratio("latency", "p99_ms"), "<= 0.9x", lambda r: r <= 0.9),
        ("idle memory per connection", ratio("idle", "kb_per_conn"), "<= 1.0x", lambda r: r <= 1.0),
    ]
    lines = ["| target | measured | goal | met |", "| --- | --- | --- | --- |"]
    for name, value, goal, ok in rows:
        shown = f"{value:.2f}x" if value is not None else "n/a"
        met = "yes" if value is not None and ok(value) else "no"
        if name == "unicast deliveries/s" and met == "no":
            met += unicast_limit(results)
        lines.append(f"| {name} | {shown} | {goal} | {met} |")
    lost = results.total("archmesh", "latency", "lost")
    lines.append(f"| latency scenario loss | {lost} | 0 | {'yes' if lost == 0 else 'no'} |")
    connect = ratio_of(results, "capacity", "connects_per_second")
    if connect is not None:
        met = "yes" if connect >= 1.0 else "no"
        lines.append(f"| capacity: connects/s | {connect:.2f}x | >= 1.0x | {met} |")
    ping = once(results, "archmesh", "capacity", "ping.p99_ms")
    if ping is not None:
        met = "yes" if ping <= 100 else "no"
        lines.append(f"| capacity: ping p99 during unicast | {ping:.1f} ms | <= 100 ms | {met} |")
    storm = results.runs.get("archmesh", {}).get("storm", [])
    if storm and "error" not in storm[-1]:
        gone, dup = storm[-1].get("lost"), storm[-1].get("duplicates")
        met = "yes" if gone == 0 and dup == 0 else "no"
        lines.append(f"| storm: lost / duplicated | {gone} / {dup} | 0 / 0 | {met} |")
    storm3 = results.runs.get("archmesh", {}).get(STORM3, [])
    if storm3 and "error" not in storm3[-1]:
        run = storm3[-1]
        gone, dup = run.get("lost"), run.get("duplicates")
        met = "yes" if gone == 0 and dup == 0 and run.get("not_recovered") == 0 else "no"
        lines.append(
            f"| storm3 (3 nodes, one killed): lost / duplicated | {gone} / {dup} | 0 / 0 | {met} |"
        )
        ratio = once(results, "archmesh", STORM3, "live.p99_ratio")
        if ratio is not None:
            # A ratio over a baseline that already had no core to spare says nothing.
            calm = run.get("cpu_without_storm")
            parts = ("gateways", "nginx", "redis")
            core0 = sum(float(calm.get(k) or 0) for k in parts) if isinstance(calm, dict) else 0.0
            met = "yes" if ratio <= 3 else "no"
            if core0 >= CALM_CORE_LIMIT:
                met = f"no (core 0 at {core0:.2f} before the kill)"
            label = "storm3: live clients' p99 during / without the storm"
            lines.append(f"| {label} | {ratio:.2f}x | <= 3x | {met} |")
    notifier = results.median("archmesh", "notifier", "rate")
    if notifier is not None:
        met = "yes" if notifier >= 5000 else "no"
        lines.append(f"| notifier in-app notifications/s | {notifier:,.0f} | >= 5,000 | {met} |")
        met = "yes" if notifier >= 20000 else f"no ({notifier / 20000:.2f} of it)"
        label = "notifier in-app notifications/s, one process (issue 15)"
        lines.append(f"| {label} | {notifier:,.0f} | >= 20,000 | {met} |")
    cluster = last_run(results, NOTIFIER_CLUSTER)
    if not isinstance(cluster, str):
        ratio = float(cluster["ratio"])
        met = "yes" if ratio > 1.0 else "no"
        label = "notifier-cluster: two notifiers / one (notifications/s, 3 masters)"
        lines.append(f"| {label} | {ratio:.2f}x | > 1.0x | {met} |")
        gone, dup = cluster["not_delivered"], cluster["duplicates"]
        met = "yes" if gone == 0 and dup == 0 else "no"
        label = "notifier-cluster: not delivered / duplicated"
        lines.append(f"| {label} | {gone} / {dup} | 0 / 0 | {met} |")
    topic = last_run(results, TOPICS)
    if not isinstance(topic, str):
        growth = float(topic["peak_rss_mb"]) - float(topic["rss_before_fanout_mb"])
        small = topic.get("rss_growth_mb_by_size", {}).get(str(SMALL_TOPIC))
        bound = None if small is None else 1.5 * float(small) + 4
        met = "yes" if bound is not None and growth <= bound and topic["duplicates"] == 0 else "no"
        label = f"topics: notifier peak RSS growth, {topic['subscribers']:,} subscribers"
        goal = f"<= 1.5x that at {SMALL_TOPIC:,} ({small} MB) + 4 MB"
        lines.append(f"| {label} | {growth:.1f} MB | {goal} | {met} |")
    return "\n".join(lines)


def unicast_limit(results: Results) -> str:
    """Issue 16 asks for 1.8x "wherever the publish path is not what limits it": which side
    was full in ArchMesh's unicast runs. The publish path (the load generator and Redis, which
    runs the publish script) shares the load core; the gateway has the server core."""
    feed = [
        float(run.get("loadgen_cpu") or 0) + float(run.get("redis_cpu") or 0)
        for run in results.runs.get("archmesh", {}).get("unicast", [])
        if "error" not in run
    ]
    gateway = results.median("archmesh", "unicast", "server_cpu")
    if not feed or gateway is None:
        return ""
    load = statistics.median(feed)
    if load >= BUSY_CORE and gateway < BUSY_CORE:
        return f" (the publish path limits: load core {load:.2f}, gateway {gateway:.2f})"
    return f" (load core {load:.2f}, gateway {gateway:.2f})"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    return f"{model}, {os.cpu_count()} cores, {mem} RAM, Linux {platform.release()}"


def versions() -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return "?"

    found = {
        "python": platform.python_version(),
        "node": out(["node", "--version"]),
        "redis-server": out(["redis-server", "--version"]).split(" v=")[-1].split(" ")[0],
        "archmesh-realtime": out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
    }
    pip = out([str(VENV_PY), "-m", "pip", "list", "--format=json"])
    wanted = {"python-socketio", "python-engineio", "broadcaster", "uvicorn", "redis", "uvloop"}
    for item in json.loads(pip if pip.startswith("[") else "[]"):  # "?": no peers installed
        if item["name"].lower() in wanted:
            found[item["name"]] = item["version"]
    for name in ("socket.io", "@socket.io/redis-adapter", "@socket.io/redis-emitter", "ws"):
        package = PEERS / "node_modules" / name / "package.json"
        with contextlib.suppress(OSError, ValueError):
            found[name] = json.loads(package.read_text())["version"]
    return found


def write_doc(results: Results, meta: dict[str, Any]) -> None:
    systems, rounds, minutes = meta["systems"], meta["rounds"], meta["minutes"]
    template = (BENCH / "benchmarks.md.in").read_text()
    loadgen = max(
        (
            float(r["loadgen_cpu"])  # type: ignore[arg-type]
            for system, per in results.runs.items()
            for runs in per.values()
            for r in runs
            if r.get("loadgen_cpu") is not None and system != CEILING
        ),
        default=0.0,
    )
    fanout_note = ""
    busy = results.median("archmesh", "fanout", "loadgen_cpu") or 0.0
    if busy >= 0.8 and (results.median("archmesh", "fanout", "server_cpu") or 1.0) < 0.8:
        fanout_note = (
            " ArchMesh's fan-out figure is a lower bound: the load generator used"
            f" {busy:.2f} of its core there while the gateway's core had time to spare."
        )
    ceiling = results.median(CEILING, "fanout", "rate")
    ceiling_cpu = results.median(CEILING, "fanout", "loadgen_cpu")
    doc = template.format(
        date=meta["date"],
        machine=meta["machine"],
        versions="\n".join(f"- {k}: {v}" for k, v in meta["versions"].items()),
        rounds=rounds,
        minutes=f"{minutes:.1f}",
        table=table(results, systems),
        targets=targets(results),
        loadgen_cpu=f"{loadgen:.2f}",
        ceiling=fmt(ceiling),
        fanout_note=fanout_note,
        ceiling_cpu=fmt(ceiling_cpu),
        capacity=capacity_table(results),
        storm=storm_table(results),
        storm3=storm3_table(results),
        notifier_cluster=notifier_cluster_table(results),
        topics=topics_table(results),
        history=(BENCH / "history.md").read_text().strip(),
        raw=json.dumps(results.runs, indent=1),
    )
    (REPO / "docs" / "benchmarks.md").write_text(doc)
    log("wrote docs/benchmarks.md")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    alone = (STORM3, *NOTIFIER_ONCE)
    parser.add_argument("--scenarios", default=",".join((*SCENARIOS, *ONCE, *alone)))
    parser.add_argument("--capacity", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--storm", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--storm3", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--notifier-cluster", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--notifier-count", type=int, default=20000, help="notifier-cluster")
    parser.add_argument("--topics", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--topic-subscribers", type=int, default=100_000, help="topics")
    parser.add_argument("--no-write", action="store_true", help="print, leave the doc alone")
    parser.add_argument(
        "--archmesh-tree",
        type=Path,
        help="run the gateway from another checkout (e.g. `git worktree add` of an older "
        "commit) to measure a change; implies --no-write",
    )
    parser.add_argument("--report", type=Path, help="only write the doc from a saved results file")
    parser.add_argument("extra", nargs="*", help="passed to the load generator, e.g. --clients 10")
    opts = parser.parse_args()
    if opts.report is not None:
        saved = json.loads(opts.report.read_text())
        write_doc(Results(saved["runs"]), saved["meta"])
        return 0
    if opts.archmesh_tree is not None:
        global ARCHMESH_TREE
        ARCHMESH_TREE = opts.archmesh_tree.resolve()
        opts.no_write = True
    systems = [s for s in opts.systems.split(",") if s]
    asked = opts.scenarios.split(",")
    scenarios = [s for s in asked if s and s not in (*ONCE, *alone)]
    storm3 = STORM3 in asked and opts.storm3 and "archmesh" in systems
    once = [s for s in asked if s in ONCE and getattr(opts, s)]
    notifier_once = [
        s
        for s in NOTIFIER_ONCE
        if s in asked and getattr(opts, s.replace("-", "_")) and "archmesh" in systems
    ]
    if os.cpu_count() is None or os.cpu_count() < 2:  # type: ignore[operator]
        raise SystemExit("needs 2 cores: the server on one, the load generator on the other")
    started = time.monotonic()
    if scenarios or once or storm3:  # the notifier's own scenarios need no peer
        install_peers()
    found = versions()  # before the run: the commit that was measured
    results = Results()
    with redis_server() as (redis_url, redis_pid):
        for round_no in range(1, opts.rounds + 1):
            # Rotate the order so a noisy moment of the shared machine does not hit one system.
            order = systems[round_no - 1 :] + systems[: round_no - 1]
            for scenario in scenarios:
                # The notifier is ArchMesh's alone; the ceiling is measured on fan-out only.
                if scenario == "notifier":
                    runs = ["archmesh"] if "archmesh" in systems else []
                else:
                    runs = order + ([CEILING] if scenario == "fanout" else [])
                for system in runs:
                    result = run_scenario(system, scenario, redis_url, redis_pid, opts.extra)
                    results.add(system, scenario, result)
                    log(f"round {round_no} {system} {scenario}: {json.dumps(result)}")
        for scenario in once:
            for system in [s for s in ONCE_SYSTEMS if s in systems]:
                result = run_scenario(system, scenario, redis_url, redis_pid, opts.extra)
                results.add(system, scenario, result)
                log(f"{system} {scenario}: {json.dumps(result)}")
    if storm3:  # its own Redis, in its cluster
        result = run_scenario("archmesh", STORM3, "", 0, opts.extra)
        results.add("archmesh", STORM3, result)
        log(f"archmesh {STORM3}: {json.dumps(result)}")
    for scenario in notifier_once:  # each on its own Redis
        if scenario == NOTIFIER_CLUSTER:
            result = run_notifier_cluster(opts.notifier_count)
        else:
            result = run_topics(opts.topic_subscribers)
        results.add("archmesh", scenario, result)
        log(f"archmesh {scenario}: {json.dumps(result)}")
    minutes = (time.monotonic() - started) / 60
    meta = {
        "systems": systems,
        "rounds": opts.rounds,
        "minutes": round(minutes, 1),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "versions": found,
    }
    saved = {"meta": meta, "runs": results.runs}
    (PEERS / "results.json").write_text(json.dumps(saved, indent=1))
    print(table(results, systems))
    print(capacity_table(results))
    print(storm_table(results))
    print(storm3_table(results))
    print(notifier_cluster_table(results))
    print(topics_table(results))
    print(targets(results))
    log(f"done in {minutes:.1f} min; raw results in .bench/results.json")
    if not opts.no_write:
        write_doc(results, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
