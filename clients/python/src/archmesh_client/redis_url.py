"""Redis Cluster URLs: `redis+cluster://[user:password@]host:port[,host:port...]`
(`rediss+cluster://` for TLS). The hosts are only the first contact; the cluster tells where
every slot lives. Every other URL is redis-py's own (`redis://`, `rediss://`, `unix://`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def parse(cls, url: str) -> ClusterAddress:
        scheme, sep, rest = url.partition("://")
        if not sep or scheme not in CLUSTER_SCHEMES:
            raise ValueError(f"a Redis Cluster URL starts with {' or '.join(CLUSTER_SCHEMES)}://")
        userinfo, _, hosts = rest.rpartition("@")
        hosts, _, path = hosts.partition("/")
        if path not in ("", "0") or "?" in hosts:
            raise ValueError("a Redis Cluster URL has no database (only 0) and no options")
        nodes = tuple(_host_port(item) for item in hosts.split(","))
        user, _, password = userinfo.partition(":")
        return cls(
            nodes,
            username=unquote(user) or None,
            password=unquote(password) or None,
            tls=scheme == "rediss+cluster",
        )

    def credentials(self) -> dict[str, Any]:
        return {"username": self.username, "password": self.password, "ssl": self.tls}


def _host_port(item: str) -> tuple[str, int]:
    host, sep, port = item.strip().rpartition(":")
    if not sep or not host or "]" in port:
        host, port = item.strip(), "6379"
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"Redis Cluster node {item!r}: expected host:port")
    return host, int(port)


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in CLUSTER_SCHEMES
