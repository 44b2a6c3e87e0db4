"""A whole ArchMesh Realtime deployment on loopback, without a container engine.

`make cluster` (python -m deploy.local_cluster) starts a private redis-server (AOF on),
N `archmesh-rt gateway` processes, an `archmesh-rt notifier` with a local SMTP catcher (when
the installed CLI has that command), and a real nginx rendered from deploy/nginx.conf; it
prints the URLs and stops everything on Ctrl-C or SIGTERM. The chaos suite and the tests
drive the same `LocalCluster` from Python (kill, restart and stop single parts).

Every child runs in its own session, so a terminal's Ctrl-C reaches only the launcher, which
then stops them in order (gateways drain first). Launched from the command line, children
also get SIGTERM from the kernel if the launcher itself dies (no orphans even on SIGKILL)."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

import redis

from deploy import nginx
from deploy.ports import free_port, port_free

REPO = Path(__file__).resolve().parent.parent
_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    """A part did not start, or a tool it needs is missing."""


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """Status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310 (loopback)
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, urllib.error.URLError):
        return None


def _die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGTERM to this child when the launcher thread dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Service:
    """One child process of the cluster, restartable on the same port."""

    name: str
    argv: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    health_path: str | None = "/healthz"
    proc: subprocess.Popen[bytes] | None = None
    die_with_parent: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> None:
        if self.running:
            return
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 (fixed argv, no shell)
                self.argv,
                env={**os.environ, **self.env},
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise ClusterError(f"{self.name} exited with {self.proc.returncode}:\n{tail}")
        if self.health_path is None:
            return True
        node = self.env.get("ARCHMESH_NODE_ID")
        if node is None:
            return http_status(self.url + self.health_path) == 200
        # Ours, not a process that took the port first (ours then fails to bind and exits).
        try:
            with urllib.request.urlopen(self.url + self.health_path, timeout=1.0) as reply:  # noqa: S310 (loopback)
                return bool(json.loads(reply.read()).get("node") == node)
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def ready(self) -> bool:
        return http_status(f"{self.url}/readyz") == 200

    def wait_healthy(self, timeout: float = 30.0) -> None:
        wait_until(self.healthy, timeout, f"{self.name} on port {self.port}")

    def send_signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        """Signal, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.proc = None
        return proc.returncode


def cli_commands() -> set[str]:
    """Subcommands of the installed `archmesh-rt` (the notifier joins when it exists)."""
    from archmesh_realtime.cli import build_parser

    parser = build_parser()
    for action in parser._actions:  # argparse exposes subcommands only this way
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()


class LocalCluster:
    """redis-server + N gateways + optional notifier + nginx, all on 127.0.0.1.

    Ports default to free ones (choose `redis_port` to put a proxy in front of Redis). `env`
    goes to every gateway and notifier, `gateway_env[i]` to gateway i only (e.g. its own
    ARCHMESH_REDIS_URL through a proxy), `notifier_env` to the notifier. Without
    ARCHMESH_SMTP_HOST in `notifier_env`, the notifier gets a local
    SMTP catcher (aiosmtpd) whose messages land in the working directory's smtp.log."""

    def __init__(
        self,
        gateways: int = 3,
        *,
        notifier: bool | None = None,
        port: int = 0,
        gateway_ports: list[int] | None = None,
        notifier_port: int = 0,
        redis_port: int = 0,
        jwt_secret: str | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        gateway_env: Mapping[int, Mapping[str, str]] | None = None,
        notifier_env: Mapping[str, str] | None = None,
        appendfsync: str = "everysec",
        die_with_parent: bool = False,
        keep_workdir: bool = False,
        nginx_workers: int = 1,
    ) -> None:
        from shared.settings import DEV_API_KEY, DEV_JWT_SECRET

        if gateways < 1:
            raise ValueError("a cluster needs at least one gateway")
        if notifier is None:
            notifier = "notifier" in cli_commands()
        elif notifier and "notifier" not in cli_commands():
            raise ClusterError("this archmesh-rt has no `notifier` command yet")
        redis_binary = shutil.which("redis-server")
        if redis_binary is None:
            raise ClusterError("redis-server is not installed (apt-get install redis-server)")
        nginx.nginx_binary()  # fail before creating anything
        self.workdir = Path(tempfile.mkdtemp(prefix="archmesh-local-cluster-"))
        self.workdir.chmod(0o755)  # nginx workers (another user when run as root) read it
        self.keep_workdir = keep_workdir

        self.jwt_secret = jwt_secret or DEV_JWT_SECRET
        self.api_key = api_key or DEV_API_KEY
        self._die = die_with_parent
        self._stopped = False
        ports = list(gateway_ports or [])
        ports += [free_port() for _ in range(gateways - len(ports))]
        self.redis = self._redis_service(redis_binary, redis_port or free_port(), appendfsync)
        common = {
            "ARCHMESH_REDIS_URL": self.redis_url,
            "ARCHMESH_JWT_SECRET": self.jwt_secret,
            "ARCHMESH_API_KEY": self.api_key,
            "ARCHMESH_HOST": "127.0.0.1",
            "ARCHMESH_LOG_FORMAT": "json",
            **(env or {}),
        }
        per_node = gateway_env or {}
        self.gateways = [
            self._service(
                f"gateway{i + 1}",
                ["gateway"],
                p,
                {
                    **common,
                    "ARCHMESH_PORT": str(p),
                    "ARCHMESH_NODE_ID": f"gw{i + 1}",
                    **per_node.get(i, {}),
                },
            )
            for i, p in enumerate(ports)
        ]
        self.smtp: Service | None = None
        self.notifier: Service | None = None
        if notifier:
            extra = dict(notifier_env or {})
            if "ARCHMESH_SMTP_HOST" not in extra:
                self.smtp = self._smtp_service()
                extra |= {
                    "ARCHMESH_SMTP_HOST": "127.0.0.1",
                    "ARCHMESH_SMTP_PORT": str(self.smtp.port),
                    "ARCHMESH_SMTP_SECURITY": "none",
                }
            nport = notifier_port or free_port()
            self.notifier = self._service(
                "notifier",
                ["notifier"],
                nport,
                {
                    **common,
                    "ARCHMESH_NOTIFIER_HOST": "127.0.0.1",
                    "ARCHMESH_NOTIFIER_PORT": str(nport),
                    "ARCHMESH_NODE_ID": "notifier1",
                    **extra,
                },
            )
        self.port = port or free_port()
        self._nginx_workers = nginx_workers
        self.nginx = self._nginx_service()

    # -- building the parts -------------------------------------------------------------

    def _redis_service(self, binary: str, port: int, appendfsync: str) -> Service:
        data = self.workdir / "redis"
        data.mkdir()
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data)]
        argv += ["--appendonly", "yes", "--appendfsync", appendfsync, "--save", ""]
        service = Service("redis", argv, port, self.workdir / "redis.log", health_path=None)
        service.die_with_parent = self._die
        return service

    def _service(self, name: str, command: list[str], port: int, env: dict[str, str]) -> Service:
        argv = [sys.executable, "-m", "archmesh_realtime", *command]
        log = self.workdir / f"{name}.log"
        return Service(name, argv, port, log, env, die_with_parent=self._die)

    def _smtp_service(self) -> Service:
        port = free_port()
        argv = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"]
        log = self.workdir / "smtp.log"
        return Service("smtp", argv, port, log, health_path=None, die_with_parent=self._die)

    def _nginx_service(self) -> Service:
        notifier_ports = [self.notifier.port] if self.notifier else []
        conf = self.workdir / "nginx.conf"
        gateway_ports = [g.port for g in self.gateways]
        conf.write_text(
            nginx.render(
                self.port, gateway_ports, notifier_ports, self.workdir, workers=self._nginx_workers
            )
        )
        argv = nginx.command(conf, self.workdir)
        out = self.workdir / "nginx.out"
        return Service("nginx", argv, self.port, out, die_with_parent=self._die)

    # -- addresses ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The balancer: the one address clients and backends use."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def token(
        self,
        user: str,
        sessions: list[str] | None = None,
        ttl: float = 3600,
        audience: str | None = None,
    ) -> str:
        from shared.tokens import issue_token

        return issue_token(self.jwt_secret, user, sessions=sessions, ttl=ttl, audience=audience)

    # -- whole-cluster lifecycle ----------------------------------------------------------

    def start(self, timeout: float = 60.0) -> LocalCluster:
        try:
            nginx.check(self.workdir / "nginx.conf", self.workdir)
            self.start_redis()
            for part in [*self.gateways, self.notifier, self.smtp]:
                if part is not None:
                    part.spawn()
            for gateway in self.gateways:
                gateway.wait_healthy(timeout)
                wait_until(gateway.ready, timeout, f"{gateway.name} ready")
            if self.smtp is not None:
                wait_until(lambda: _listening(self.smtp), timeout, "the SMTP catcher")
            if self.notifier is not None:
                self.notifier.wait_healthy(timeout)
            self.nginx.spawn()
            self.nginx.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Gateways and notifier drain in parallel, then nginx, the catcher and Redis stop."""
        if self._stopped:
            return
        self._stopped = True
        apps = [s for s in [*self.gateways, self.notifier] if s is not None]
        for app in apps:
            app.send_signal(signal.SIGTERM)
        for app in apps:
            app.stop(timeout=60)
        self.nginx.stop(signal.SIGQUIT, timeout=10)
        if self.smtp is not None:
            self.smtp.stop()
        self.redis.stop()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- single parts (the chaos suite's levers) ------------------------------------------

    def kill_gateway(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` and wait for the process to end."""
        self.gateways[index].stop(sig, timeout=60)

    def start_gateway(self, index: int, timeout: float = 30.0) -> None:
        gateway = self.gateways[index]
        gateway.spawn()
        gateway.wait_healthy(timeout)
        wait_until(gateway.ready, timeout, f"{gateway.name} ready")

    def restart_gateway(self, index: int, sig: int = signal.SIGTERM) -> None:
        """Stop (SIGTERM drains) and start again on the same port, ready."""
        self.kill_gateway(index, sig)
        self.start_gateway(index)

    def kill_notifier(self, sig: int = signal.SIGKILL) -> None:
        if self.notifier is None:
            raise ClusterError("this cluster has no notifier")
        self.notifier.stop(sig, timeout=60)

    def start_notifier(self, timeout: float = 30.0) -> None:
        if self.notifier is None:
            raise ClusterError("this cluster has no notifier")
        self.notifier.spawn()
        self.notifier.wait_healthy(timeout)

    def stop_redis(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM lets Redis write its AOF; SIGKILL keeps only what was fsynced."""
        self.redis.stop(sig)

    def start_redis(self, timeout: float = 20.0) -> None:
        self.redis.spawn()
        wait_until(lambda: _redis_ping(self.redis), timeout, "redis-server")


def _listening(service: Service | None) -> bool:
    if service is None or not service.running:
        return False
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", service.port)) == 0


def _redis_ping(service: Service) -> bool:
    """Our redis-server answers: not another one that took its port first."""
    if not service.running:
        raise ClusterError(f"redis-server exited:\n{service.log.read_text(errors='replace')}")
    try:
        with redis.Redis(port=service.port, socket_timeout=0.5) as client:
            return int(client.info("server")["process_id"]) == service.pid
    except redis.RedisError:
        return False


# -- command line -----------------------------------------------------------------------


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="make cluster",
        description="Run N gateways, a notifier and nginx against a private Redis on loopback.",
    )
    parser.add_argument("--gateways", type=int, default=3, help="gateway processes (default 3)")
    parser.add_argument("--port", type=int, default=8080, help="nginx port (default 8080)")
    parser.add_argument(
        "--gateway-port", type=int, default=8001, help="first gateway port (default 8001)"
    )
    parser.add_argument("--notifier-port", type=int, default=8100, help="default 8100")
    parser.add_argument("--no-notifier", action="store_true", help="gateways only")
    parser.add_argument("--keep-logs", action="store_true", help="keep the log directory")
    return parser.parse_args(argv)


def _banner(cluster: LocalCluster) -> str:
    token = cluster.token("dev-user", ["demo"])
    lines = [
        "",
        f"ArchMesh Realtime local cluster: {len(cluster.gateways)} gateways behind nginx",
        "",
        f"  Balancer   {cluster.url}   WebSocket {cluster.ws_url}",
    ]
    for gateway in cluster.gateways:
        lines.append(f"  {gateway.name:<10} {gateway.url}   (pid {gateway.pid})")
    if cluster.notifier is not None:
        lines.append(f"  notifier   {cluster.notifier.url}   (pid {cluster.notifier.pid})")
    if cluster.smtp is not None:
        lines.append(f"  SMTP       127.0.0.1:{cluster.smtp.port}   (mail in smtp.log)")
    lines += [
        f"  Redis      {cluster.redis_url}   (AOF on)",
        f"  Logs       {cluster.workdir}",
        "",
        "  Token (dev-user, may watch session:demo, 1 h):",
        f"    {token}",
        "  Publish:",
        f"    curl -s -X POST {cluster.url}/api/publish -H 'Authorization: Bearer "
        f"{cluster.api_key}' -H 'Content-Type: application/json' \\",
        '      -d \'{"channel":"session:demo","data":{"type":"workflow_update",'
        '"session_id":"demo","stage":"design","progress":0.5}}\'',
        "",
        "  Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    gateway_ports = [args.gateway_port + i for i in range(args.gateways)]
    wanted = [args.port, *gateway_ports] + ([] if args.no_notifier else [args.notifier_port])
    busy = [p for p in wanted if not port_free(p)]
    if busy:
        print(f"make cluster: ports in use: {busy} (see --help)", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(sig: int, _: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster = LocalCluster(
            args.gateways,
            notifier=False if args.no_notifier else None,
            port=args.port,
            gateway_ports=gateway_ports,
            notifier_port=args.notifier_port,
            jwt_secret=os.environ.get("ARCHMESH_JWT_SECRET"),
            api_key=os.environ.get("ARCHMESH_API_KEY"),
            die_with_parent=True,
            keep_workdir=args.keep_logs,
        )
    except (ClusterError, nginx.NginxError) as exc:
        print(f"make cluster: {exc}", file=sys.stderr)
        return 1
    try:
        cluster.start()
        print(_banner(cluster), flush=True)
        while not stop.wait(1.0):
            dead = [
                s.name
                for s in [*cluster.gateways, cluster.notifier, cluster.nginx]
                if s is not None and not s.running
            ]
            if dead:
                print(f"make cluster: {', '.join(dead)} exited; stopping", file=sys.stderr)
                return 1
        return 0
    except (ClusterError, nginx.NginxError) as exc:
        print(f"make cluster: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping: gateways drain, then nginx and Redis stop", flush=True)
        with contextlib.suppress(Exception):
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
