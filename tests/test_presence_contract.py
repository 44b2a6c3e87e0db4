"""One presence contract, three stores: in memory, on one Redis and on a 3-master Redis Cluster
(each channel's keys in its own slot) they behave the same."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared.broker import BrokerError, Liveness
from shared.presence import PresenceEntry, PresenceStats, PresenceStore, create_presence
from tests.servers import RedisServer


@pytest.fixture
async def store(backend_url: str) -> AsyncIterator[PresenceStore]:
    instance = create_presence(backend_url)
    yield instance
    await instance.close()


async def test_join_leave_and_expiry(store: PresenceStore) -> None:
    await store.join("session:p", PresenceEntry("c1", "u1", "n1"), ttl=30)
    await store.join("session:p", PresenceEntry("c2", "u2", "n2"), ttl=0.2)
    assert {e.client_id for e in await store.members("session:p")} == {"c1", "c2"}
    await asyncio.sleep(0.3)  # c2's ttl passes: its node died and stopped refreshing
    assert await store.members("session:p") == [PresenceEntry("c1", "u1", "n1")]
    await store.leave("session:p", "c1")
    assert await store.members("session:p") == []


async def test_refresh_keeps_an_entry(store: PresenceStore) -> None:
    entry = PresenceEntry("c1", "u1", "n1")
    await store.join("session:r", entry, ttl=0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        await store.join("session:r", entry, ttl=0.3)  # what a live node does every ttl/3
    assert await store.members("session:r") == [entry]


async def test_channels_are_independent(store: PresenceStore) -> None:
    # On the cluster, these two channels' keys live in different slots.
    await store.join("session:p1", PresenceEntry("c1", "u1", "n1"), ttl=30)
    await store.join("session:p2", PresenceEntry("c2", "u2", "n1"), ttl=30)
    assert await store.members("session:p1") == [PresenceEntry("c1", "u1", "n1")]
    await store.leave("session:p1", "c1")
    await store.leave("session:p1", "c-never-joined")  # leaving twice is harmless
    assert await store.members("session:p1") == []
    assert [e.client_id for e in await store.members("session:p2")] == ["c2"]


async def test_leave_many_across_channels_in_one_call(store: PresenceStore) -> None:
    # On the cluster these channels' keys live in different slots (one pipeline per node).
    channels = [f"session:m{i}" for i in range(6)]
    for channel in channels:
        await store.refresh(
            {channel: [PresenceEntry("c1", "u1", "n1"), PresenceEntry("c2", "u2", "n1")]}, 30
        )
    await store.leave_many([(c, "c1") for c in channels] + [("session:m0", "c-never")])
    for channel in channels:
        assert await store.members(channel) == [PresenceEntry("c2", "u2", "n1")]
        assert await store.stats(channel) == PresenceStats(1, 1)
    await store.leave_many([])


async def test_unreachable_redis_is_a_broker_error(redis_server: RedisServer) -> None:
    # A port nothing listens on: refused at once, reported as the broker's outage.
    unreachable = redis_server.url.replace(f":{redis_server.port}", ":1")
    store = create_presence(unreachable, Liveness(interval=0.2, timeout=1.0))
    try:
        with pytest.raises(BrokerError, match="presence failed"):
            await store.members("session:x")
    finally:
        await store.close()


def test_unknown_scheme_fails_loudly() -> None:
    with pytest.raises(ValueError, match="unknown broker URL scheme"):
        create_presence("kafka://localhost")


async def test_batch_refresh_enters_and_keeps_every_entry(store: PresenceStore) -> None:
    # On the cluster these channels' keys spread over the masters: one pipeline reaches them all.
    channels = {
        f"session:b{i}": [PresenceEntry(f"c{i}-{j}", f"u{j}", "n1") for j in range(3)]
        for i in range(6)
    }
    await store.refresh(channels, ttl=0.4)
    for _ in range(3):
        await asyncio.sleep(0.2)
        await store.refresh(channels, ttl=0.4)  # what a live node does every ttl/3
    for channel, entries in channels.items():
        assert sorted(await store.members(channel), key=lambda e: e.client_id) == entries
    await store.refresh({}, ttl=0.4)  # a node with nothing tracked: nothing to do
    await asyncio.sleep(0.5)  # no more refreshes: the node died
    for channel in channels:
        assert await store.members(channel) == []


async def test_a_refresh_larger_than_a_chunk_enters_each_entry_once(store: PresenceStore) -> None:
    # 2,500 clients of 1,000 users on one channel and a few on others: the Redis stores send
    # them in parts (CHUNK entries a call and a pipeline); each entry and user counts once.
    big = [PresenceEntry(f"c{j}", f"u{j % 1000}", "n1") for j in range(2500)]
    small = {f"session:k{i}": [PresenceEntry(f"k{i}", "u1", "n1")] for i in range(3)}
    for _ in range(2):  # entered, then refreshed
        await store.refresh({"session:big": big, **small}, ttl=30)
    assert await store.stats("session:big") == PresenceStats(2500, 1000)
    assert sorted(await store.members("session:big"), key=lambda e: int(e.client_id[1:])) == big
    for channel, entries in small.items():
        assert await store.members(channel) == entries


async def test_batch_refresh_is_a_script_call_per_channel_and_chunk(
    redis_server: RedisServer,
) -> None:
    # Not one per subscription: 4 channels x 50 connections cost 4 EVALSHA in one pipeline;
    # a channel of 2,500 costs 3 (CHUNK entries a call).
    store = create_presence(redis_server.url)
    admin = redis_server.client()
    try:
        channels = {
            f"session:m{i}": [PresenceEntry(f"c{i}-{j}", f"u{j}", "n1") for j in range(50)]
            for i in range(4)
        }
        await store.join("session:warm", PresenceEntry("c0", "u0", "n1"), ttl=30)  # loads it
        admin.config_resetstat()
        await store.refresh(channels, ttl=30)
        stats = admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 4
        assert len(await store.members("session:m3")) == 50
        big = [PresenceEntry(f"b{j}", f"u{j}", "n1") for j in range(2500)]
        admin.config_resetstat()
        await store.refresh({"session:big": big}, ttl=30)
        assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == 3
    finally:
        await store.close()


async def test_batch_refresh_survives_a_flushed_script_cache(redis_server: RedisServer) -> None:
    store = create_presence(redis_server.url)
    try:
        redis_server.client().script_flush()  # as after a restart or a failover
        await store.refresh({"session:f": [PresenceEntry("c1", "u1", "n1")]}, ttl=30)
        assert await store.members("session:f") == [PresenceEntry("c1", "u1", "n1")]
    finally:
        await store.close()


async def test_stats_count_live_connections_and_distinct_users(store: PresenceStore) -> None:
    assert await store.stats("session:s") == PresenceStats(0, 0)
    await store.join("session:s", PresenceEntry("c1", "u1", "n1"), ttl=30)
    await store.join("session:s", PresenceEntry("c2", "u1", "n2"), ttl=30)  # u1 twice
    await store.join("session:s", PresenceEntry("c2", "u1", "n2"), ttl=30)  # a refresh
    await store.refresh({"session:s": [PresenceEntry("c3", "u2", "n1")]}, ttl=30)
    await store.join("session:s", PresenceEntry("c4", "u3", "n3"), ttl=0.2)  # n3 dies
    assert await store.stats("session:s") == PresenceStats(4, 3)
    await asyncio.sleep(0.3)
    assert await store.stats("session:s") == PresenceStats(3, 2)  # expired: not counted
    await store.leave("session:s", "c1")
    assert await store.stats("session:s") == PresenceStats(2, 2)  # u1 still has c2
    await store.leave("session:s", "c2")
    await store.leave("session:s", "c2")  # leaving twice does not count twice
    assert await store.stats("session:s") == PresenceStats(1, 1)
    await store.join("session:s", PresenceEntry("c4", "u3", "n3"), ttl=30)  # back, after expiry
    assert await store.stats("session:s") == PresenceStats(2, 2)
    await store.members("session:s")  # listing drops expired entries too, counted once
    assert await store.stats("session:s") == PresenceStats(2, 2)


async def test_stats_of_many_clients_is_one_cheap_call(redis_server: RedisServer) -> None:
    store = create_presence(redis_server.url)
    admin = redis_server.client()
    try:
        entries = [PresenceEntry(f"c{j}", f"u{j % 2500}", "n1") for j in range(10_000)]
        await store.refresh({"session:big": entries}, ttl=30)
        await store.stats("session:big")  # the script is loaded (a first call may reload it)
        admin.config_resetstat()
        assert await store.stats("session:big") == PresenceStats(10_000, 2500)
        stats = admin.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 1
        # Counted, not listed: the script read no entry (nothing had expired) and listed
        # nothing, it only counted. Structure, not a time: speed is for the benchmarks.
        assert {"cmdstat_zcard", "cmdstat_hlen"} <= set(stats)
        listing = {"cmdstat_zrange", "cmdstat_hgetall", "cmdstat_hkeys", "cmdstat_hget"}
        assert listing.isdisjoint(stats), sorted(stats)
    finally:
        await store.close()
