"""The notifier's read-decide-write steps, each one Lua script in one slot, raced on a real
Redis and on the real 3-master Cluster: a delivery's record against the user's erasure (the
erasure's cancel wins, a message that went out is still recorded `sent`, an erased address is
never written back), a record retried after its reply was lost, two providers' reports on one
delivery, concurrent preference saves, subscribes against the topic limit and against the
user's erasure, and Twilio's status callback against the storing of the SMS's sid. Each race
runs many times at once, in both orders, so a lost update fails it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from archmesh_client import topics
from archmesh_client.notifications import Medium
from archmesh_client.request_stream import Partitioning

from notifier import analytics, keys, status
from notifier.app import connect_store
from notifier.cancellation import Canceller
from notifier.delivery_record import DeliveryRecorder
from notifier.erasure import Erasure
from notifier.escalation import StepGate
from notifier.feedback import Applied, ProviderFeedback, event_hash
from notifier.feedback_report import Report, field_of
from notifier.intake import Entry
from notifier.ledger import Ledger, Outcome
from notifier.metrics import NotifierMetrics
from notifier.preferences import PreferenceStore
from notifier.schemas import ChannelDelivery, DeliveryState, Preferences, PreferencesPatch
from notifier.topics import TooManyTopics, TopicStore, UserErased
from tests.servers import RedisCluster, RedisServer

pytestmark = pytest.mark.redis

NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)
RACES = 24


@pytest.fixture(params=["redis", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """The notifier's client and key layout on one Redis (untagged) or the Cluster (tagged
    partitions, as the notifier runs there)."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url, layout = server.url, Partitioning()
    else:
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        url, layout = cluster.url, Partitioning.of(0, cluster=True)
    before = keys.layout()
    keys.use(layout)
    redis = connect_store(url)
    # One call first, as the notifier's start makes: redis-py 8.1's Cluster client, fresh,
    # fails a few of many first calls at once (AttributeError while it learns the slots).
    await redis.get("nt:warm")
    try:
        yield redis
    finally:
        await redis.aclose()
        keys.use(before)


def clock() -> datetime:
    return NOW


async def seed(
    redis: aioredis.Redis, user: str, address: str, medium: Medium = Medium.EMAIL
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """One notification of `user`'s with its `medium` step pending and due, as commit.lua
    leaves it, and the user's saved address: (partition, meta, job)."""
    partition = keys.of_user(user)
    nid = f"n-{user}"
    meta = {"id": nid, "user_id": user, "type": "mention", "created_at": NOW.isoformat()}
    pending = ChannelDelivery(status=DeliveryState.PENDING, updated_at=NOW)
    job = {"targets": [address], "content": {"subject": "s", "text": "t"}}
    fields = status.fields_of(meta, {medium: pending}, {medium: job})
    await redis.hset(keys.notification(nid, partition), mapping=fields)
    ms = int(NOW.timestamp() * 1000)
    await redis.zadd(keys.user_notifications(user), {nid: ms})
    await redis.zadd(keys.due(partition), {f"{nid}|{medium.value}": ms})
    contacts = {"email": address} if medium is Medium.EMAIL else {"phone": address}
    prefs = Preferences.model_validate({"contacts": contacts})
    await redis.set(keys.preferences(user), prefs.model_dump_json())
    return partition, meta, job


async def in_both_orders(steps: list[tuple[Any, Any]], *, errors: bool = False) -> list[list[Any]]:
    """Run each pair at once, every other one started in the other order; each pair's results
    in the order given (`errors`: exceptions among them instead of raised)."""
    pairs = [list(pair) if i % 2 else list(reversed(pair)) for i, pair in enumerate(steps)]
    done = await asyncio.gather(*(asyncio.gather(*p, return_exceptions=errors) for p in pairs))
    return [list(r) if i % 2 else list(reversed(r)) for i, r in enumerate(done)]


@pytest.mark.parametrize(("outcome", "left"), [("retrying", "cancelled"), ("sent", "sent")])
async def test_an_erasure_racing_a_deliverys_record_wins_and_the_address_never_comes_back(
    store: aioredis.Redis, outcome: str, left: str
) -> None:
    recorder, erasure = DeliveryRecorder(store), Erasure(store, clock)
    users = [f"er-{outcome}-{i}" for i in range(RACES)]
    seeded = {user: await seed(store, user, f"{user}@example.com") for user in users}

    async def record(user: str) -> bool:
        partition, meta, job = seeded[user]
        retrying = outcome == "retrying"
        delivery = ChannelDelivery(
            status=DeliveryState(outcome),
            attempts=1,
            updated_at=NOW,
            last_error="timed out" if retrying else None,
            next_attempt_at=NOW + timedelta(seconds=30) if retrying else None,
        )
        work = {**job, "targets": job["targets"] if retrying else []}
        member = f"{meta['id']}|email"
        return await recorder.record(
            partition, member, meta, Medium.EMAIL, delivery, NOW, work=work
        )

    await in_both_orders([(record(user), erasure.erase(user)) for user in users])
    for user in users:
        partition, meta, _ = seeded[user]
        stored = await store.hgetall(keys.notification(meta["id"], partition))
        assert "job:email" not in stored, stored
        assert all(f"{user}@example.com" not in value for value in stored.values()), stored
        assert await store.zscore(keys.due(partition), f"{meta['id']}|email") is None
        assert ChannelDelivery.model_validate_json(stored["ch:email"]).status == left


async def test_a_record_retried_after_its_reply_was_lost_is_written_once(
    store: aioredis.Redis,
) -> None:
    recorder = DeliveryRecorder(store)
    partition, meta, job = await seed(store, "again", "again@example.com")
    delivery = ChannelDelivery(status=DeliveryState.SENT, attempts=1, updated_at=NOW)
    work = {**job, "targets": []}
    for _ in range(2):  # the first reply lost: the same record again
        assert await recorder.record(
            partition, f"{meta['id']}|email", meta, Medium.EMAIL, delivery, NOW, work=work
        )
    assert await store.llen(keys.timeline(meta["id"], partition)) == 1
    counts = await store.hgetall(keys.stats(analytics.hour_of(NOW), partition))
    assert counts == {analytics.field("mention", "email", "sent"): "1"}
    assert await store.zscore(keys.due(partition), f"{meta['id']}|email") is None


async def test_two_reports_racing_on_one_delivery_keep_the_higher_and_count_each_once(
    store: aioredis.Redis,
) -> None:
    """`delivered` and `failed` for the same email at once: `failed` (the higher rank) is kept
    whatever the order, and each is counted only if it was recorded."""
    metrics = NotifierMetrics()
    feedback = ProviderFeedback(store, 3600, metrics, clock, track_sms=False)
    seeded = [await seed(store, f"fb-{i}", f"fb-{i}@example.com") for i in range(RACES)]

    async def report(nid: str, state: DeliveryState) -> Applied:
        said = Report(status=state, provider_status=state.value, at=NOW)
        return await feedback.apply(event_hash("t", nid, state), nid, Medium.EMAIL, said)

    results = await in_both_orders(
        [
            (report(m["id"], DeliveryState.DELIVERED), report(m["id"], DeliveryState.FAILED))
            for _, m, _ in seeded
        ]
    )
    delivered = 0
    for (partition, meta, _), pair in zip(seeded, results, strict=True):
        # Started in either order; `failed` is recorded in every one.
        assert Applied.RECORDED in pair
        delivered += sum(1 for r in pair if r is Applied.RECORDED) - 1
        kept = await store.hget(keys.notification(meta["id"], partition), field_of(Medium.EMAIL))
        assert kept is not None
        assert Report.model_validate_json(kept).status is DeliveryState.FAILED
    counts: dict[str, int] = {}
    for partition in {p for p, _, _ in seeded}:
        stats = await store.hgetall(keys.stats(analytics.hour_of(NOW), partition))
        for name, value in stats.items():
            counts[name] = counts.get(name, 0) + int(value)
    assert counts.get(analytics.field("mention", "email", "failed")) == RACES
    assert counts.get(analytics.field("mention", "email", "delivered"), 0) == delivered

    def sample(state: str) -> float:
        value = metrics.registry.get_sample_value(
            "archmesh_notifier_deliveries_total", {"channel": "email", "status": state}
        )
        return value or 0.0

    assert (sample("failed"), sample("delivered")) == (RACES, delivered)
    # Each event once: again, every one is a duplicate.
    again = [await report(m["id"], DeliveryState.FAILED) for _, m, _ in seeded]
    assert set(again) == {Applied.DUPLICATE}


async def test_concurrent_preference_changes_are_all_kept(store: aioredis.Redis) -> None:
    preferences = PreferenceStore(store)
    patches = [
        PreferencesPatch.model_validate({"channels": {f"type{i}": {"email": False}}})
        for i in range(RACES)
    ]
    await asyncio.gather(*(preferences.patch("many", patch) for patch in patches))
    saved = await preferences.get("many")
    assert saved is not None
    assert {f"type{i}" for i in range(RACES)} <= set(saved.channels)


async def test_an_sms_status_callback_is_applied_whether_it_comes_before_or_after_its_sid(
    store: aioredis.Redis,
) -> None:
    feedback = ProviderFeedback(store, 3600, NotifierMetrics(), clock, track_sms=True)
    delivered = Report(status=DeliveryState.DELIVERED, provider_status="delivered", at=NOW)

    def callback(sid: str) -> Any:
        return feedback.sms_status(sid, event_hash("twilio", sid, "delivered"), delivered)

    # Before: held, then applied when the sid is stored; Twilio's repeat is a duplicate.
    partition, meta, _ = await seed(store, "sms-first", "+15005550100", Medium.SMS)
    sid = "SM" + "0" * 32
    assert await callback(sid) is Applied.HELD
    assert await callback(sid) is Applied.HELD  # Twilio retrying: held twice, applied once
    await feedback.sms_sent(sid, meta["id"])
    kept = await store.hget(keys.notification(meta["id"], partition), field_of(Medium.SMS))
    assert kept is not None
    assert Report.model_validate_json(kept).status is DeliveryState.DELIVERED
    assert not await store.exists(keys.sms_early(sid))
    assert await callback(sid) is Applied.DUPLICATE

    # At once, in both orders: never lost.
    seeded = [await seed(store, f"sms-{i}", f"+1500555{i:04d}", Medium.SMS) for i in range(RACES)]
    sids = [f"SM{i:032x}" for i in range(1, RACES + 1)]
    results = await in_both_orders(
        [
            (feedback.sms_sent(sid, m["id"]), callback(sid))
            for sid, (_, m, _) in zip(sids, seeded, strict=True)
        ]
    )
    outcomes = {r for pair in results for r in pair if r is not None}
    assert outcomes <= {Applied.HELD, Applied.RECORDED}
    for sid, (partition, meta, _) in zip(sids, seeded, strict=True):
        kept = await store.hget(keys.notification(meta["id"], partition), field_of(Medium.SMS))
        assert kept is not None, sid
        assert Report.model_validate_json(kept).status is DeliveryState.DELIVERED
        assert not await store.exists(keys.sms_early(sid))


async def test_an_erasure_declares_and_removes_the_users_digest_window_and_throttle_log(
    store: aioredis.Redis,
) -> None:
    """What erase.lua finds through a notification's hash (its throttle log, its open digest
    window and the window's pointer) is declared to it, so it runs on a Cluster, and goes."""
    partition, meta, _ = await seed(store, "dg-user", "dg@example.com")
    window, events, data = keys.digest("dg-1", partition)
    pointer = keys.digest_open("dg-user|mention|", "dg-user")
    throttle = keys.throttle("dg-user|mention", "dg-user")
    await store.hset(
        keys.notification(meta["id"], partition),
        mapping={"th": throttle, "dg": orjson.dumps({"events": events, "data": data}).decode()},
    )
    await store.hset(window, mapping={"id": "dg-1", "pointer": pointer, "closes": 1})
    await store.zadd(events, {meta["id"]: 1})
    await store.hset(data, meta["id"], '{"title": "dg@example.com"}')
    await store.set(pointer, "dg-1")
    await store.zadd(throttle, {meta["id"]: 1})
    await store.zadd(keys.due(partition), {f"{keys.DIGEST_JOB}dg-1": 1})
    assert await Erasure(store, clock).erase("dg-user") == 1
    for key in (window, events, data, pointer, throttle, keys.preferences("dg-user")):
        assert not await store.exists(key), key
    assert await store.zrange(keys.due(partition), 0, -1) == []
    stored = await store.hgetall(keys.notification(meta["id"], partition))
    assert {"th", "dg", "job:email"}.isdisjoint(stored)


async def test_subscribes_at_once_never_pass_the_users_topic_limit(store: aioredis.Redis) -> None:
    topic_store = TopicStore(store)
    replies = await asyncio.gather(
        *(topic_store.subscribe("busy", f"project:{i}", 5) for i in range(RACES)),
        return_exceptions=True,
    )
    taken = [f"project:{i}" for i, r in enumerate(replies) if r is True]
    assert len(taken) == 5
    assert all(isinstance(r, TooManyTopics) for r in replies if r is not True), replies
    assert sorted(await topic_store.of_user("busy")) == sorted(taken)
    for topic in taken:
        assert await store.zscore(keys.topic_subscribers(topic), "busy") == 0
    # At the limit, a topic followed already is still taken (idempotent).
    assert await topic_store.subscribe("busy", taken[0], 5) is False


@pytest.mark.parametrize("path", ["api", "backend"])
async def test_a_subscribe_racing_the_users_erasure_leaves_no_subscription(
    store: aioredis.Redis, path: str
) -> None:
    """Through the notifier's API (with its limit) and straight from a backend's
    NotifierClient (archmesh_client.topics.subscribe, no limit): the same guard."""
    topic_store, erasure = TopicStore(store), Erasure(store, clock)
    users = [f"gone-{path}-{i}" for i in range(RACES)]

    def subscribe(user: str) -> Awaitable[bool]:
        if path == "api":
            return topic_store.subscribe(user, "release-train", 100)
        return topics.subscribe(store, user, "release-train")

    results = await in_both_orders(
        [(subscribe(user), erasure.erase(user)) for user in users],
        errors=True,
    )
    for user, pair in zip(users, results, strict=True):
        subscribed, cancelled = pair
        assert cancelled == 0, pair
        assert subscribed is True or isinstance(subscribed, UserErased), pair
        assert await store.zscore(keys.topic_subscribers("release-train"), user) is None
        assert not await store.exists(keys.user_topics(user))
    # Until the mark expires, a new subscribe of the erased user is refused.
    with pytest.raises(UserErased):
        await subscribe(users[0])


async def test_an_erasure_whose_keys_changed_after_it_read_them_reads_them_again(
    store: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notification (with its digest window) committed between the erasure's reads of the
    user's keys and its script: the script, finding a key it was not given, writes nothing
    and the erasure reads again; the late notification is erased with the rest."""
    erasure = Erasure(store, clock)
    await seed(store, "late", "late@example.com")
    read = erasure._keys_of
    calls = []

    async def then_commit(body: dict[str, Any]) -> list[str]:
        found = await read(body)
        calls.append(found)
        if len(calls) == 1:  # one more notification, after the reads
            partition = keys.of_user("late")
            nid = "n-late-2"
            window, events, data = keys.digest("dg-late", partition)
            pending = ChannelDelivery(status=DeliveryState.PENDING, updated_at=NOW)
            fields = status.fields_of(
                {"id": nid, "user_id": "late", "type": "mention"},
                {Medium.EMAIL: pending},
                {Medium.EMAIL: {"targets": ["late@example.com"], "content": {}}},
            )
            fields["dg"] = orjson.dumps({"events": events, "data": data}).decode()
            await store.hset(keys.notification(nid, partition), mapping=fields)
            await store.zadd(keys.user_notifications("late"), {nid: 2})
            pointer = keys.digest_open("late|mention|", "late")
            await store.hset(window, mapping={"id": "dg-late", "pointer": pointer, "closes": 1})
            await store.set(pointer, "dg-late")
        return found

    monkeypatch.setattr(erasure, "_keys_of", then_commit)
    assert await erasure.erase("late") == 2
    assert len(calls) == 2
    partition = keys.of_user("late")
    window, _, _ = keys.digest("dg-late", partition)
    assert window not in calls[0]
    assert window in calls[1]
    assert not await store.exists(window)
    assert not await store.exists(keys.digest_open("late|mention|", "late"))
    for nid in ("n-late", "n-late-2"):
        stored = await store.hgetall(keys.notification(nid, partition))
        assert "job:email" not in stored
        assert ChannelDelivery.model_validate_json(stored["ch:email"]).status == "cancelled"


async def test_a_quiet_hours_hold_racing_a_cancel_leaves_the_step_cancelled(
    store: aioredis.Redis,
) -> None:
    """The escalation gate holds a step for quiet hours while a cancel (a read, a cancel_key)
    takes it: whatever the order, the step ends `cancelled` and its job is not due again (the
    hold was once a MULTI, which wrote `held` over the cancel and put the job back)."""
    gate = StepGate(store, PreferenceStore(store), Canceller(store), clock)
    canceller = Canceller(store)
    users = [f"qh-{i}" for i in range(RACES)]
    seeded = {user: await seed(store, user, f"{user}@example.com") for user in users}
    quiet = Preferences.model_validate(
        {
            "contacts": {"email": "qh@example.com"},
            "channels": {"default": {"in_app": True, "email": True}},
            "quiet_hours": {"start": "11:00", "end": "13:00"},  # NOW is 12:00 UTC
        }
    )
    for user in users:
        await store.set(keys.preferences(user), quiet.model_dump_json())

    async def hold(user: str) -> bool:
        partition, meta, job = seeded[user]
        step = f"{meta['id']}|email"
        return await gate.stopped(
            partition, step, {**meta, "priority": "normal"}, Medium.EMAIL, job
        )

    async def cancel(user: str) -> int:
        partition, meta, _ = seeded[user]
        return await canceller.steps(meta["id"], "cancelled by request", NOW, partition)

    results = await in_both_orders([(hold(user), cancel(user)) for user in users])
    assert all(stopped for stopped, _ in results)
    for user in users:
        partition, meta, _ = seeded[user]
        raw = await store.hget(keys.notification(meta["id"], partition), "ch:email")
        assert ChannelDelivery.model_validate_json(raw).status is DeliveryState.CANCELLED, raw
        assert await store.zscore(keys.due(partition), f"{meta['id']}|email") is None


async def test_a_users_notification_index_is_trimmed_when_its_lifetime_is_renewed(
    store: aioredis.Redis,
) -> None:
    """commit.lua renews the index's lifetime (and trims ids past the retention) only once
    it runs below the retention: between renewals a commit only adds; the index never lives
    less than the retention after the user's last notification, nor keeps ids for long past
    it (an erasure finds every live status through it)."""
    retention = 3600
    ledger = Ledger(store, retention=retention, inbox_size=10)
    user = "ix"
    partition = keys.of_user(user)
    index = keys.user_notifications(user)

    async def commit(nid: str, created: datetime) -> None:
        outcome = Outcome(partition=partition)
        fields = {"meta": orjson.dumps({"id": nid, "user_id": user}).decode()}
        outcome.record(Entry(f"0-{nid}", {}, partition), nid, fields, {}, None, (user, created))
        await ledger.commit(outcome)

    await commit("old", NOW - timedelta(hours=2))  # past the retention already
    await commit("a", NOW)
    assert await store.zrange(index, 0, -1) == ["old", "a"]  # one renewal: "old" was new then
    assert retention < await store.ttl(index) <= retention * 9 // 8
    await commit("b", NOW)  # lifetime above the retention: only added
    assert await store.zrange(index, 0, -1) == ["old", "a", "b"]
    await store.expire(index, retention - 10)  # as it stands an eighth of the retention later
    await commit("c", NOW)  # renewed, and trimmed of what the retention has passed
    assert await store.zrange(index, 0, -1) == ["a", "b", "c"]
    assert retention < await store.ttl(index) <= retention * 9 // 8
