"""Loopback ports for the servers that the local cluster, the chaos suite and the tests start.

A port is picked before the server that will listen on it exists, so something else could take
it in between. Two things did: an outgoing connection (a test's own WebSocket or Redis client,
thousands of them in a suite) gets its local port from the kernel's ephemeral range, the very
range that binding port 0 picks from; and two picks in a row can hand out the same port twice.
Ports here come from below the ephemeral range, where the kernel never puts an outgoing
connection, and never twice in one process. The servers' start-up checks (is the process that
answers the one we started?) catch whatever is left."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_EPHEMERAL = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000  # below this: well-known and registered services (Redis 6379, ...)
_handed_out: set[int] = set()
_rng = random.Random()  # its own: the global one is Hypothesis's to watch in the tests


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default, and a safe bound elsewhere


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:`port` (tested as servers bind, with SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A free loopback port outside the ephemeral range, never the same one twice."""
    high = _ephemeral_start() - 1
    if high <= _LOWEST:  # an unusual range: fall back to the kernel's pick
        high = 0
    for _ in range(10_000):
        if high:
            port = _rng.randint(_LOWEST, high)
        else:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
        if port not in _handed_out and port_free(port):
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")
