"""Inbox events published by the same Redis script that changes the counts they carry.

A count read in one step and published in another can be overtaken: two clients marking at
once may publish their counts in the opposite order, and the last event a page sees is then
stale for good. So the scripts that change an inbox (the ledger's commit, the marks) also
publish, through the gateway's own publish script prepended as a Lua function: the event
lands in the user channel's history with the next offset and reaches the gateways as any
other publication would.

That needs the notifier's store and its broker on one Redis server (`ARCHMESH_REDIS_URL`).
`archmesh-rt dev` without Redis keeps its store in-process and its broker in memory: there
an event is published right after its change (marks one at a time under a lock), so a new
item and a mark in the same instant may publish their counts out of order, until the next
change; a development server's compromise, documented."""

from __future__ import annotations

from dataclasses import dataclass

from archmesh_client import publish_script
from archmesh_client.channels import history_key, meta_key, user_channel
from archmesh_client.retention import HistoryPolicy


def with_publish(source: str) -> str:
    """`source` with `publish(KEYS, ARGV)` defined before it: publish.lua as a function (its
    parameters shadow the script's own KEYS and ARGV; its error replies come back as the
    function's value, a table with `err`)."""
    return f"local function publish(KEYS, ARGV)\n{publish_script.SOURCE}\nend\n{source}"


@dataclass(frozen=True, slots=True)
class LiveChannels:
    """Where and how long a user channel's events are kept (the gateways' history policy)."""

    policy: HistoryPolicy

    def keys(self, user_id: str) -> list[str]:
        channel = user_channel(user_id)
        return [meta_key(channel), history_key(channel)]

    def publication(self, user_id: str) -> dict[str, str | int]:
        """Where a commit publishes the user's event: {meta, history, size, ttl (ms)}."""
        channel = user_channel(user_id)
        kept = self.policy.for_channel(channel)
        return {
            "meta": meta_key(channel),
            "history": history_key(channel),
            "size": kept.size,
            "ttl": int(kept.ttl * 1000),
        }

    def retention(self, user_id: str) -> tuple[int, int]:
        """History size and lifetime (ms) of the user's channel."""
        kept = self.policy.for_channel(user_channel(user_id))
        return kept.size, int(kept.ttl * 1000)
