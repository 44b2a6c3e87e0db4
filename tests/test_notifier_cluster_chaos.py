"""The notifier on a 3-master Redis Cluster whose topology changes under load: a partition's
slot migrated to another master, and a master SIGKILLed and restarted from its AOF, while a
producer keeps queueing and two notifier processes consume. Each request is counted where
users see it (its status, its user's inbox, the mail server), so a loss or a duplicate fails.
Then two moves stopped half way (`Migration`): a cancel by key, and a digest window whose keys
moved ahead of the rest of its partition.

The cluster is this module's own (`RedisCluster(appendonly=True)`): the session's shared one is
never resharded or killed."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import signal
import time
from collections.abc import Iterator

import orjson
import pytest
import redis
from archmesh_client.notifier import NotifierClient
from archmesh_client.request_stream import Partitioning

from tests.fakes.smtp import SmtpServer
from tests.servers import NotifierProcess, RedisCluster, redis_server_version, until

pytestmark = pytest.mark.slow

LAYOUT = Partitioning.of(0, cluster=True)  # the notifiers' default on a Cluster: 8
USERS = [f"c{n}" for n in range(48)]  # every partition, six users each on average
MAILED = USERS[::4]  # these users also get every request by email


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    version = redis_server_version()
    if version and version < (7,):
        pytest.skip(f"Redis Cluster sharded pub/sub needs redis-server >= 7, found {version}")
    instance = RedisCluster(3, appendonly=True)
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture
def notifiers(cluster: RedisCluster, smtp: SmtpServer) -> Iterator[list[NotifierProcess]]:
    cluster.flushall()
    smtp.clear()
    env = {
        "ARCHMESH_SMTP_HOST": smtp.host,
        "ARCHMESH_SMTP_PORT": str(smtp.port),
        "ARCHMESH_SMTP_SECURITY": "none",
        "ARCHMESH_EMAIL_FROM": "ArchMesh <notify@archmesh.test>",
        # Longer than the master's outage (~5 s): a job's lease must outlast it, or a sent
        # email whose record waits for the master is claimed and sent again (see the report).
        "ARCHMESH_NOTIFIER_CLAIM_IDLE": "8",
        # the cancel test's type: an email that waits a minute for the in-app item to be read
        "ARCHMESH_NOTIFIER_ESCALATION": "esc=in_app;email@unread:60s",
        # the digest test's type: its third event closes the window (or 30 s do)
        "ARCHMESH_NOTIFIER_DIGESTS": "dig=window:30s;max:3",
    }
    started = [NotifierProcess(cluster.url, **env).start() for _ in range(2)]
    for user in MAILED:
        reply = started[0].request(
            "PUT", f"/api/users/{user}/preferences", json={"contacts": {"email": f"{user}@x.test"}}
        )
        assert reply.status_code < 300, reply.text
    yield started
    for notifier in started:
        notifier.stop(signal.SIGKILL)


@dataclasses.dataclass
class Producer:
    """Queues one request at a time through the Python client, round robin over the users,
    until stopped; counts what it got an id for and what failed (and how)."""

    client: NotifierClient
    prefix: str
    sent: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (id, user)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    errors: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    longest: float = 0.0  # seconds: the longest one call to `send` took (reported)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            user = USERS[n % len(USERS)]
            nid = f"{self.prefix}{n}"
            channels = ["in_app", "email"] if user in MAILED else ["in_app"]
            item = {"id": nid, "user_id": user, "type": "load", "title": nid, "channels": channels}
            began = time.monotonic()
            try:
                await self.client.send(item)
            except (redis.RedisError, OSError) as exc:
                self.failed.append((nid, user))
                self.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.02)  # pacing a producer that is refused, not a wait
            else:
                self.sent.append((nid, user))
            finally:
                self.longest = max(self.longest, time.monotonic() - began)
            n += 1
            await asyncio.sleep(0.002)  # a steady load, not a flood the 2 cores cannot serve

    async def until_sent(self, count: int, timeout: float) -> None:
        await until(lambda: len(self.sent) >= count, timeout, f"{count} requests queued")


def inbox_ids(notifier: NotifierProcess, user: str) -> list[str]:
    ids: list[str] = []
    cursor = ""
    while True:
        query = f"?limit=500&cursor={cursor}" if cursor else "?limit=500"
        reply = notifier.request("GET", f"/api/users/{user}/inbox{query}")
        assert reply.status_code == 200, reply.text
        page = reply.json()
        ids += [item["id"] for item in page["items"]]
        if not page.get("next_cursor"):
            return ids
        cursor = page["next_cursor"]


def settled(raw: redis.RedisCluster) -> bool:
    """Nothing queued, pending or due in any partition."""
    for partition in range(LAYOUT.partitions):
        prefix = LAYOUT.prefix(partition)
        if raw.zcard(prefix + "due") or raw.xlen(prefix + "requests"):
            return False
    return True


def in_app_statuses(cluster: RedisCluster, sent: list[tuple[str, str]]) -> dict[str, int]:
    """How many of the notifications' in-app deliveries are in each state (read from their
    status hashes, in each user's partition)."""
    raw = cluster.client()
    try:
        pipe = raw.pipeline()
        for nid, user in sent:
            pipe.hget(LAYOUT.prefix(LAYOUT.of_user(user)) + "n:" + nid, "ch:in_app")
        states = [
            orjson.loads(raw_status)["status"] if raw_status else None
            for raw_status in pipe.execute()
        ]
    finally:
        raw.close()
    return dict(collections.Counter(str(state) for state in states))


def mailed_ids(smtp: SmtpServer) -> list[str]:
    return [str(m.message["Subject"]) for m in smtp.messages]


async def check_exactly_once(
    producer: Producer, notifiers: list[NotifierProcess], cluster: RedisCluster, smtp: SmtpServer
) -> dict[str, int]:
    """Every request the producer got an id for processed once; a request whose queueing
    failed may or may not have been queued (the reply can be lost), but never twice."""
    a, b = notifiers
    raw = cluster.client()
    try:
        await until(lambda: settled(raw), 60, "every partition drained")
    finally:
        raw.close()
    sent = {nid for nid, _ in producer.sent}
    unsure = {nid for nid, _ in producer.failed}
    expected_mail = {nid for nid, user in producer.sent if user in MAILED}
    await until(lambda: expected_mail <= set(mailed_ids(smtp)), 30, "every email")

    inboxes: dict[str, list[str]] = {}
    for n, user in enumerate(USERS):  # any replica answers for any partition
        inboxes[user] = await asyncio.to_thread(inbox_ids, notifiers[n % 2], user)
    duplicates = lost = stray = 0
    for user, ids in inboxes.items():
        duplicates += len(ids) - len(set(ids))
        mine = {nid for nid, u in producer.sent if u == user}
        maybe = {nid for nid, u in producer.failed if u == user}
        lost += len(mine - set(ids))
        stray += len(set(ids) - mine - maybe)
    mails = collections.Counter(mailed_ids(smtp))
    mail_duplicates = sum(count - 1 for count in mails.values())
    assert (duplicates, lost, stray, mail_duplicates) == (0, 0, 0, 0)
    assert set(mails) <= expected_mail | unsure
    assert await asyncio.to_thread(in_app_statuses, cluster, producer.sent) == {"sent": len(sent)}
    for nid in list(sent)[:: max(1, len(sent) // 20)]:  # and through the API, sampled
        reply = await asyncio.to_thread(b.request, "GET", f"/api/notifications/{nid}")
        assert reply.status_code == 200, (nid, reply.text)
        assert reply.json()["deliveries"]["in_app"]["status"] == "sent", reply.json()
    dead = await asyncio.to_thread(a.request, "GET", "/api/ops/dead-letters")
    assert dead.json()["items"] == []
    return {
        "sent": len(sent),
        "failed": len(unsure),
        "mails": len(mails),
        "processed": sum(len(ids) for ids in inboxes.values()),
    }


def keys_in_slot(cluster: RedisCluster, key: str) -> int:
    raw = cluster.client()
    try:
        node = raw.get_node_from_key(key)
        slot = raw.keyslot(key)
        return int(raw.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot, target_nodes=node))
    finally:
        raw.close()


@dataclasses.dataclass
class Migration:
    """One slot's move to the next master, step by step as `redis-cli --cluster reshard` does
    it: `begin` (IMPORTING on the target, MIGRATING on the source), `move` keys (MIGRATE),
    `finish` (SETSLOT NODE on every master)."""

    cluster: RedisCluster
    key: str  # any key of the slot

    def __post_init__(self) -> None:
        self.nodes = [self.cluster.node(i) for i in range(len(self.cluster.ports))]
        self.slot = int(self.nodes[0].execute_command("CLUSTER", "KEYSLOT", self.key))
        self.ids = [n.execute_command("CLUSTER", "MYID").decode() for n in self.nodes]
        self.src = next(
            i
            for i, n in enumerate(self.nodes)
            if any(
                s[0] <= self.slot <= s[1] and s[2][1] == self.cluster.ports[i]
                for s in n.execute_command("CLUSTER", "SLOTS")
            )
        )
        self.dst = (self.src + 1) % len(self.nodes)

    def begin(self) -> None:
        self.nodes[self.dst].execute_command(
            "CLUSTER", "SETSLOT", self.slot, "IMPORTING", self.ids[self.src]
        )
        self.nodes[self.src].execute_command(
            "CLUSTER", "SETSLOT", self.slot, "MIGRATING", self.ids[self.dst]
        )

    def move(self, *names: str | bytes) -> None:
        self.nodes[self.src].execute_command(
            "MIGRATE", "127.0.0.1", self.cluster.ports[self.dst], "", 0, 5000, "KEYS", *names
        )

    def move_all(self, batch: int = 5) -> int:
        moved = 0
        while names := self.nodes[self.src].execute_command(
            "CLUSTER", "GETKEYSINSLOT", self.slot, batch
        ):
            self.move(*names)
            moved += len(names)
            time.sleep(0.01)  # batches spread over the load, as a reshard of a busy slot is
        return moved

    def finish(self) -> None:
        others = (i for i in range(len(self.nodes)) if i not in (self.src, self.dst))
        target = self.ids[self.dst]
        for i in [self.dst, self.src, *others]:
            self.nodes[i].execute_command("CLUSTER", "SETSLOT", self.slot, "NODE", target)

    def close(self) -> None:
        for n in self.nodes:
            n.close()


def migrate_slot(cluster: RedisCluster, key: str) -> tuple[int, int, int]:
    """Move `key`'s slot to another master. Returns (slot, keys moved, target's index)."""
    migration = Migration(cluster, key)
    try:
        migration.begin()
        moved = migration.move_all()
        migration.finish()
        return migration.slot, moved, migration.dst
    finally:
        migration.close()


async def test_a_slot_migration_under_load_loses_nothing(
    notifiers: list[NotifierProcess], cluster: RedisCluster, smtp: SmtpServer
) -> None:
    busiest = collections.Counter(LAYOUT.of_user(u) for u in USERS).most_common(1)[0][0]
    async with NotifierClient(cluster.url) as client:
        producer = Producer(client, "m")
        task = asyncio.create_task(producer.run())
        try:
            await producer.until_sent(150, 20)
            await until(lambda: keys_in_slot(cluster, LAYOUT.stream(busiest)) >= 40, 20, "keys")
            began = time.monotonic()
            slot, moved, target = await asyncio.to_thread(
                migrate_slot, cluster, LAYOUT.stream(busiest)
            )
            took = time.monotonic() - began
            after = len(producer.sent)
            await producer.until_sent(after + 150, 20)  # and more on the slot's new master
        finally:
            producer.stop.set()
            await task
    raw = cluster.client()
    try:
        assert raw.get_node_from_key(LAYOUT.stream(busiest)).port == cluster.ports[target]
    finally:
        raw.close()
    figures = await check_exactly_once(producer, notifiers, cluster, smtp)
    assert moved >= 40  # the partition's keys moved, its users' inboxes among them
    assert figures["failed"] == 0, (producer.errors, figures)  # the client follows ASK/MOVED
    print(f"\nmigration: slot {slot}, {moved} keys in {took:.2f}s; longest send ", end="")
    print(f"{producer.longest:.2f}s; {figures}")


async def test_a_master_restart_with_aof_under_load_loses_nothing(
    notifiers: list[NotifierProcess], cluster: RedisCluster, smtp: SmtpServer
) -> None:
    victim = 1
    async with NotifierClient(cluster.url) as client:
        producer = Producer(client, "r")
        task = asyncio.create_task(producer.run())
        try:
            await producer.until_sent(150, 20)
            began = time.monotonic()
            before = len(producer.sent)
            cluster.stop(victim, signal.SIGKILL)
            await until(lambda: producer.failed, 20, "the producer refused while a master is down")
            await asyncio.to_thread(cluster.start, victim)  # rejoins with its slots and its AOF
            took = time.monotonic() - began
            after = len(producer.sent)  # `after - before` were queued while it was down
            await producer.until_sent(after + 150, 30)
        finally:
            producer.stop.set()
            await task
    figures = await check_exactly_once(producer, notifiers, cluster, smtp)
    assert all(n.proc is not None and n.proc.poll() is None for n in notifiers)  # both carried on
    print(f"\nrestart: master down/up in {took:.2f}s, {after - before} queued meanwhile; ", end="")
    print(f"producer saw {dict(producer.errors)}, longest send {producer.longest:.2f}s; {figures}")


async def test_a_cancel_while_its_slot_migrates_is_all_or_nothing(
    notifiers: list[NotifierProcess], cluster: RedisCluster
) -> None:
    """A cancel by key whose partition is half moved (its due set on the new master, the
    notifications and the key's index still on the old) either waits and fails whole, or
    cancels every step: it never answers `cancelled: 0` while the steps go on (the script
    once declared the due set alone, and on the new master found no index there)."""
    a, b = notifiers
    user = MAILED[1]
    partition = LAYOUT.of_user(user)
    ids = [f"k{n}" for n in range(5)]
    for nid in ids:
        request = {"id": nid, "user_id": user, "type": "esc", "title": nid, "cancel_key": "kx"}
        assert a.request("POST", "/api/notifications", json=request).status_code == 202

    def waiting() -> bool:
        found = [b.request("GET", f"/api/notifications/{nid}").json() for nid in ids]
        states = [f.get("deliveries", {}).get("email", {}).get("status") for f in found]
        return states == ["waiting"] * len(ids)

    await until(waiting, 20, "every email step waiting")
    migration = Migration(cluster, LAYOUT.stream(partition))
    try:
        migration.begin()
        migration.move(LAYOUT.prefix(partition) + "due")  # the rest stays on the old master
        during = await asyncio.to_thread(
            a.request, "POST", "/api/notifications/cancel", json={"cancel_key": "kx"}
        )
        migration.move_all()
        migration.finish()
    finally:
        migration.close()
    if during.status_code == 200:
        assert during.json()["cancelled"] == len(ids), during.json()
        cancelled = len(ids)
    else:  # it could not run whole while the keys were split: a retry-later error, no change
        assert during.status_code == 503, during.text
        assert during.json()["error"] == {
            "code": "unavailable",
            "message": "the store is moving data between its nodes; retry shortly",
        }
        assert waiting()
        again = a.request("POST", "/api/notifications/cancel", json={"cancel_key": "kx"})
        assert again.status_code == 200, again.text
        cancelled = again.json()["cancelled"]
    assert cancelled == len(ids)
    for nid in ids:
        deliveries = b.request("GET", f"/api/notifications/{nid}").json()["deliveries"]
        assert deliveries["email"]["status"] == "cancelled", (nid, deliveries)
    raw = cluster.client()
    try:
        assert raw.zscore(LAYOUT.prefix(partition) + "due", f"{ids[0]}|email") is None
    finally:
        raw.close()
    print(f"\ncancel while its slot was half moved: {during.status_code} {during.text}")


async def test_an_inbox_read_while_its_slot_is_half_moved_is_503_then_whole(
    notifiers: list[NotifierProcess], cluster: RedisCluster
) -> None:
    """The inbox's reads are MULTI transactions over the user's keys: while a slot's keys are
    split between two masters, redis-py follows ASK/MOVED for a few seconds and then raises
    them (an `AskError`): a retry-later 503, not a 500 (or, as redis-py's redirections fall,
    the whole answer); and the inbox is whole once moved."""
    a, b = notifiers
    user = USERS[5]
    ids = [f"ib{n}" for n in range(3)]
    for nid in ids:
        request = {"id": nid, "user_id": user, "type": "note", "title": nid, "channels": ["in_app"]}
        assert a.request("POST", "/api/notifications", json=request).status_code == 202
    inbox = f"/api/users/{user}/inbox"

    def listed() -> list[str]:
        reply = b.request("GET", inbox)
        return [item["id"] for item in reply.json()["items"]] if reply.status_code == 200 else []

    await until(lambda: sorted(listed()) == ids, 20, "three items in the inbox")
    order = LAYOUT.prefix(LAYOUT.of_user(user)) + f"inbox:{user}"  # notifier/keys.py
    migration = Migration(cluster, order)
    try:
        migration.begin()
        migration.move(order)  # the order on the new master, the items and marks on the old
        during = await asyncio.to_thread(b.request, "GET", inbox)
        item = await asyncio.to_thread(b.request, "GET", f"{inbox}/{ids[0]}")
        migration.move_all()
        migration.finish()
    finally:
        migration.close()
    # Whole, or a retry-later error: never a 500, never part of the inbox.
    if during.status_code == 200:
        assert sorted(i["id"] for i in during.json()["items"]) == ids, during.text
    else:
        assert during.status_code == 503, during.text
        assert during.json()["error"]["code"] == "unavailable"
    if item.status_code == 200:
        assert item.json()["id"] == ids[0], item.text
    else:
        assert item.status_code == 503, item.text
        assert item.json()["error"]["code"] == "unavailable"
    print(f"\ninbox reads while half moved: {during.status_code}, {item.status_code}")
    assert sorted(listed()) == ids
    unread = b.request("GET", inbox).json()["unread"]
    assert unread == len(ids)


async def test_a_digest_window_whose_slot_migrates_sends_one_email(
    notifiers: list[NotifierProcess], cluster: RedisCluster, smtp: SmtpServer
) -> None:
    """Events of one open digest window, the window's keys moved to the new master before
    the rest of its partition: the scripts that collect an event declare its notification's
    new keys, which are on neither master while the slot moves, so Redis runs them only
    after the move, on the master that holds the whole window: one email with every event."""
    a, b = notifiers
    user = MAILED[2]
    partition = LAYOUT.of_user(user)
    ids = [f"dg{n}" for n in range(3)]

    def state(nid: str) -> str | None:
        reply = b.request("GET", f"/api/notifications/{nid}")
        if reply.status_code != 200:
            return None
        return str(reply.json()["deliveries"].get("email", {}).get("status"))

    first = {"id": ids[0], "user_id": user, "type": "dig", "title": ids[0]}
    assert a.request("POST", "/api/notifications", json=first).status_code == 202
    await until(lambda: state(ids[0]) == "digested", 10, "the first event collected")
    migration = Migration(cluster, LAYOUT.stream(partition))
    try:
        migration.begin()
        names = migration.nodes[migration.src].execute_command(
            "CLUSTER", "GETKEYSINSLOT", migration.slot, 10_000
        )
        window = [n for n in names if b":dg:" in n or b":dgw:" in n]
        assert len(window) >= 3, names  # its pointer, hash, events and their data
        migration.move(*window)
        for nid in ids[1:]:
            event = {"id": nid, "user_id": user, "type": "dig", "title": nid}
            assert b.request("POST", "/api/notifications", json=event).status_code == 202
        await asyncio.sleep(1.0)  # the notifiers try to collect them meanwhile
        waited = [state(nid) for nid in ids[1:]]
        migration.move_all()
        migration.finish()
    finally:
        migration.close()
    assert waited == [None, None]  # not recorded while the window and the rest were apart
    # Refused, not failed: tried again in place, collected as soon as the move ends (not a
    # claim-idle, 8 s here, later when their entries would be reclaimed).
    await until(lambda: all(state(nid) == "digested" for nid in ids), 5, "all collected")
    mails = await until(
        lambda: [m for m in smtp.messages if f"{user}@x.test" in m.rcpt_tos], 20, "the digest"
    )
    await asyncio.sleep(0.5)  # a second digest, had the window been split, would come now
    mails = [m for m in smtp.messages if f"{user}@x.test" in m.rcpt_tos]
    assert [str(m.message["Subject"]) for m in mails] == [f"{ids[0]} and 2 more"], mails
