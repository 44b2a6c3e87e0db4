"""Real servers for tests: a private redis-server and gateway node processes on free ports."""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import httpx
import redis

from deploy.ports import free_port

REPO = Path(__file__).resolve().parent.parent
API_KEY = "test-api-key"
JWT_SECRET = "test-jwt-secret-0123456789abcdef"


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail loudly after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`wait_until` for async tests: `check` (blocking calls allowed: it runs in a thread)
    polled until it returns something truthy, which is returned; TimeoutError after
    `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := await asyncio.to_thread(check):
            return value
        await asyncio.sleep(0.05)
    raise TimeoutError(what)


class RedisServer:
    """A private redis-server; `stop()` and `start()` keep its port, for outage tests."""

    def __init__(self, *, appendonly: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (.ci/run installs it with apt-get)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="archmesh-redis-")
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self.dir,
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--logfile",
            os.path.join(self.dir, "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._ping, what=f"redis-server on {self.port}")

    def _ping(self) -> bool:
        return _answers_as(self.proc, self.port, "redis-server")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers_as(proc: subprocess.Popen[bytes] | None, port: int, what: str) -> bool:
    """The redis-server `proc` answers on `port`: not another one that took the port first
    (then `proc` exits, failing to bind, and this says so instead of testing the wrong server)."""
    if proc is None or proc.poll() is not None:
        code = None if proc is None else proc.returncode
        raise RuntimeError(f"{what} on {port} exited ({code}) before it answered")
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as client:
            return int(client.info("server")["process_id"]) == proc.pid
    except redis.RedisError:
        return False


class ServiceProcess:
    """An `archmesh-rt <command>` process on a free port, as ops run it; `stop()` waits."""

    command = ""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        self.port = port
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.open_files: int | None = None  # the process's open-files limit (soft and hard)
        prefix = f"archmesh-{self.command}-"
        self.log = Path(tempfile.mkstemp(prefix=prefix, suffix=".log")[1])

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        cmd = [sys.executable, "-m", "archmesh_realtime", self.command]
        limit = self.open_files

        def limited() -> None:  # in the child, before it runs
            assert limit is not None
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=log,
                preexec_fn=None if limit is None else limited,
            )
        wait_until(self._healthy, timeout=20, what=f"{self.command} on {self.port}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            code, log = self.proc.returncode, self.log.read_text()
            raise RuntimeError(f"{self.command} exited {code}:\n{log}")
        try:
            reply = httpx.get(f"{self.http}/healthz", timeout=0.5)
        except httpx.HTTPError:
            return False
        # Ours, not another process that took the port first (ours then fails to bind).
        return reply.status_code == 200 and reply.json().get("node") == self.env["ARCHMESH_NODE_ID"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code, self.proc = self.proc.returncode, None
        return code


class GatewayProcess(ServiceProcess):
    """`archmesh-rt gateway` in its own process, as ops run it."""

    command = "gateway"

    def __init__(self, redis_url: str = "", port: int | None = None, **env: str) -> None:
        port = port or free_port()
        super().__init__(
            port,
            {
                **os.environ,
                "ARCHMESH_REDIS_URL": redis_url,
                "ARCHMESH_JWT_SECRET": JWT_SECRET,
                "ARCHMESH_API_KEY": API_KEY,
                "ARCHMESH_PORT": str(port),
                "ARCHMESH_NODE_ID": f"node-{port}",
                "ARCHMESH_LOG_FORMAT": "json",
                "ARCHMESH_DRAIN_SECONDS": "0.2",
                **env,
            },
        )

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.http}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def publish(self, channel: str, data: Mapping[str, object]) -> httpx.Response:
        return httpx.post(
            f"{self.http}/api/publish",
            json={"channel": channel, "data": data},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=5,
        )

    def metric(self, name: str, labels: str = "") -> float:
        """A sample's value from /metrics (0 when absent)."""
        text = httpx.get(f"{self.http}/metrics", timeout=5).text
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return 0.0


def redis_server_version() -> tuple[int, ...]:
    """The installed redis-server's version, e.g. (7, 0, 15); () when there is none."""
    binary = shutil.which("redis-server")
    if binary is None:
        return ()
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    version = next((w[2:] for w in out.split() if w.startswith("v=")), "")
    return tuple(int(part) for part in version.split(".") if part.isdigit())


class RedisCluster:
    """A private Redis Cluster of `masters` nodes (no replicas) on free loopback ports.

    Each node keeps its directory (and nodes.conf) across `stop(i)`/`start(i)`, so a restarted
    node rejoins the cluster with its slots, like a crashed master coming back.
    """

    def __init__(self, masters: int = 3, *, appendonly: bool = False) -> None:
        binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if binary is None or cli is None:
            raise RuntimeError("redis-server/redis-cli are not installed")
        self.binary, self.cli = binary, cli
        self.ports = [free_port() for _ in range(masters)]
        self.bus_ports = [free_port() for _ in range(masters)]
        self.root = tempfile.mkdtemp(prefix="archmesh-cluster-")
        self.appendonly = appendonly
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * masters

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def _dir(self, index: int) -> str:
        path = os.path.join(self.root, str(index))
        os.makedirs(path, exist_ok=True)
        return path

    def start(self, index: int | None = None) -> None:
        """Start every node and create the cluster, or restart node `index` alone."""
        for i in range(len(self.ports)) if index is None else [index]:
            self._spawn(i)
            wait_until(functools.partial(self._ping, i), what=f"cluster node {self.ports[i]}")
        if index is None:
            hosts = [f"127.0.0.1:{port}" for port in self.ports]
            create = [self.cli, "--cluster", "create", *hosts, "--cluster-replicas", "0"]
            done = subprocess.run([*create, "--cluster-yes"], capture_output=True, timeout=30)
            if done.returncode:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout!r}")
        wait_until(self.healthy, timeout=30, interval=0.05, what="cluster_state:ok on every node")

    def _spawn(self, index: int) -> None:
        directory = self._dir(index)
        args = [
            self.binary,
            "--port",
            str(self.ports[index]),
            "--cluster-port",
            str(self.bus_ports[index]),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--dir",
            directory,
            "--logfile",
            os.path.join(directory, "redis.log"),
        ]
        self.procs[index] = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def _ping(self, index: int) -> bool:
        return _answers_as(self.procs[index], self.ports[index], "cluster node")

    def healthy(self) -> bool:
        """Every node is up, says cluster_state:ok and knows every master."""
        try:
            for port in self.ports:
                client = redis.Redis(port=port, socket_timeout=0.5)
                info = client.execute_command("CLUSTER", "INFO").decode()
                masters = client.execute_command("CLUSTER", "NODES").decode().count("master")
                client.close()
                if "cluster_state:ok" not in info or masters != len(self.ports):
                    return False
        except redis.RedisError:
            return False
        return True

    def node(self, index: int) -> redis.Redis:
        return redis.Redis(port=self.ports[index])

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def flushall(self) -> None:
        for index in range(len(self.ports)):
            with self.node(index) as client:
                client.flushall()

    def stop(self, index: int | None = None, sig: int = signal.SIGKILL) -> None:
        for i in range(len(self.ports)) if index is None else [index]:
            proc = self.procs[i]
            if proc is not None and proc.poll() is None:
                proc.send_signal(sig)
                proc.wait(timeout=10)
            self.procs[i] = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class NotifierProcess(ServiceProcess):
    """`archmesh-rt notifier` in its own process, as ops run it."""

    command = "notifier"

    def __init__(self, redis_url: str, **env: str) -> None:
        port = free_port()
        super().__init__(
            port,
            {
                **os.environ,
                "ARCHMESH_REDIS_URL": redis_url,
                "ARCHMESH_JWT_SECRET": JWT_SECRET,
                "ARCHMESH_API_KEY": API_KEY,
                "ARCHMESH_NOTIFIER_PORT": str(port),
                "ARCHMESH_NODE_ID": f"notifier-{port}",
                "ARCHMESH_LOG_FORMAT": "json",
                **env,
            },
        )

    def request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        return httpx.request(method, f"{self.http}{path}", headers=headers, timeout=10, **kwargs)  # type: ignore[arg-type]
