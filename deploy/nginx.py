"""Render deploy/nginx.conf for loopback ports and a private directory, and check it.

The production file is the single source of truth for routing, headers, timeouts and retries;
only its addresses and paths change here, each replacement required to match exactly once so
that an edit to nginx.conf that breaks the rendering fails loudly instead of running stale."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

NGINX_CONF = Path(__file__).resolve().parent / "nginx.conf"


class NginxError(RuntimeError):
    """nginx is missing, or the rendered configuration does not pass `nginx -t`."""


def nginx_binary() -> str:
    binary = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if binary is None:
        raise NginxError("nginx is not installed (apt-get install nginx; .ci/run does this)")
    return binary


def _upstream(name: str, ports: Sequence[int]) -> tuple[str, Callable[[re.Match[str]], str]]:
    """Replace the servers of `upstream name {...}` by loopback ports, keeping the first
    server's parameters (max_fails, fail_timeout, ...)."""

    def servers(match: re.Match[str]) -> str:
        params = match.group(2)
        lines = "".join(f"        server 127.0.0.1:{port}{params};\n" for port in ports)
        return match.group(1) + lines

    return (
        rf"(upstream {name} \{{\n)\s*server \S+?((?: [^;\n]*)?);\n(?:\s*server [^\n]+\n)*",
        servers,
    )


def render(
    listen_port: int,
    gateway_ports: Sequence[int],
    notifier_ports: Sequence[int],
    directory: Path,
    source: str | None = None,
    workers: int = 1,
) -> str:
    """nginx.conf for a local cluster: listen on 127.0.0.1:`listen_port`, proxy to the given
    loopback ports, keep pid, logs and temp files in `directory`. With no notifier, the
    notifier routes go to the gateways (which answer 404).

    A worker holds at most `worker_connections` connections (two per proxied socket) and no
    more than its process's open-files limit: more sockets need more `workers`, and then the
    listening socket is `reuseport` so that the kernel spreads the connections evenly over
    them (otherwise the worker that wakes first takes most of a burst)."""
    if workers < 1:
        raise ValueError("at least one nginx worker is needed")
    if not gateway_ports:
        raise ValueError("at least one gateway port is needed")
    text = NGINX_CONF.read_text() if source is None else source
    notifiers = notifier_ports or gateway_ports
    replacements: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
        (r"worker_processes [^;]+;", f"worker_processes {workers};"),
        (r"\npid [^;]+;", f"\npid {directory}/nginx.pid;"),
        (r"\nerror_log [^;]+;", f"\nerror_log {directory}/error.log warn;"),
        (r"access_log /dev/stdout ", f"access_log {directory}/access.log "),  # format kept
        (r"listen \d+;", f"listen 127.0.0.1:{listen_port}{' reuseport' if workers > 1 else ''};"),
        _upstream("archmesh_gateways", gateway_ports),
        _upstream("archmesh_gateways_ws", gateway_ports),
        _upstream("archmesh_notifiers", notifiers),
    ]
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        replacements.append((rf"{kind}_temp_path [^;]+;", f"{kind}_temp_path {directory}/{kind};"))
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, replacement, text)
        if count != 1:
            raise NginxError(f"deploy/nginx.conf: expected one match of {pattern!r}, got {count}")
    return text


def command(conf: Path, directory: Path) -> list[str]:
    """nginx in the foreground with `directory` as its prefix (no root paths touched)."""
    return [
        nginx_binary(),
        "-p",
        str(directory),
        "-e",
        str(directory / "error.log"),
        "-c",
        str(conf),
        "-g",
        "daemon off;",
    ]


def check(conf: Path, directory: Path) -> str:
    """Run `nginx -t` on `conf`; return its report, raise NginxError when it fails."""
    result = subprocess.run(  # noqa: S603 (fixed argv, no shell)
        [*command(conf, directory), "-t"], capture_output=True, text=True, timeout=30, check=False
    )
    report = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise NginxError(f"nginx -t failed:\n{report}")
    return report
