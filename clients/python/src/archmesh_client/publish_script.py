"""The publish script (publish.lua) and how to call it: the one copy of both.

The script appends an event to a channel's history and fans it out in one atomic step. The
backend publisher (`archmesh_client.publisher`) and the gateway's Redis broker load it from
here, so whatever publishes, the history and the live stream agree.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from archmesh_client.channels import history_key, meta_key
from archmesh_client.retention import Retention
from archmesh_client.stream import StreamPosition

SOURCE = resources.files(__package__).joinpath("publish.lua").read_text()


def keys_and_args(
    channel: str, data: str, retention: Retention, *, sharded: bool
) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV of one publish; `sharded` fans out with SPUBLISH (Redis Cluster)."""
    keys = [meta_key(channel), history_key(channel)]
    args: list[str | int] = [
        data,
        retention.size,
        int(retention.ttl * 1000),
        "1" if sharded else "0",
    ]
    return keys, args


def position(reply: Any) -> StreamPosition:
    """The script's reply `{offset, epoch}` (as redis-py returns it: int, bytes)."""
    offset, epoch = reply
    return StreamPosition(int(offset), epoch.decode())
