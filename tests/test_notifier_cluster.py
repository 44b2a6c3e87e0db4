"""The notifier on a real 3-master Redis Cluster: notifier processes sharing the partitions
with a gateway, every feature end to end, and replicas that join and die while workflow
sessions are being watched. Each notification is counted where users see it (the mail
server, the inbox), so a duplicate or a loss fails the test."""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from archmesh_client.notifier import NotifierClient
from archmesh_client.request_stream import Partitioning

from tests import wsclient
from tests.fakes.smtp import SmtpServer
from tests.servers import (
    API_KEY,
    REPO,
    GatewayProcess,
    NotifierProcess,
    RedisCluster,
    RedisServer,
    until,
)

pytestmark = pytest.mark.slow

CLAIM_IDLE = 2.0  # seconds: the partitions' lease, and the claim time of pending work
LAYOUT = Partitioning.of(0, cluster=True)  # the notifiers' default on a Cluster: 8
EVENTS_SECRET = b"e" * 40  # the email provider's webhook secret


def notifier_env(smtp: SmtpServer) -> dict[str, str]:
    return {
        "ARCHMESH_SMTP_HOST": smtp.host,
        "ARCHMESH_SMTP_PORT": str(smtp.port),
        "ARCHMESH_SMTP_SECURITY": "none",
        "ARCHMESH_EMAIL_FROM": "ArchMesh <notify@archmesh.test>",
        "ARCHMESH_NOTIFIER_CLAIM_IDLE": str(CLAIM_IDLE),
        "ARCHMESH_NOTIFIER_ESCALATION": "esc=in_app;email@unread:1s",
        "ARCHMESH_NOTIFIER_DIGESTS": "dig=window:1s",
        "ARCHMESH_NOTIFIER_THROTTLES": "thr=1/1h",
        "ARCHMESH_NOTIFIER_EMAIL_EVENTS_SECRET": EVENTS_SECRET.decode(),
    }


@pytest.fixture(scope="module")
def stack(
    shared_cluster: RedisCluster, smtp: SmtpServer
) -> Iterator[tuple[GatewayProcess, list[NotifierProcess]]]:
    shared_cluster.flushall()
    env = notifier_env(smtp)
    gateway = GatewayProcess(shared_cluster.url).start()
    notifiers = [NotifierProcess(shared_cluster.url, **env).start() for _ in range(2)]
    yield gateway, notifiers
    for notifier in notifiers:
        notifier.stop(signal.SIGKILL)
    gateway.stop()


def call(notifier: NotifierProcess, method: str, path: str, **kwargs: Any) -> Any:
    reply = notifier.request(method, path, **kwargs)
    assert reply.status_code < 300, (method, path, reply.status_code, reply.text)
    return reply.json() if reply.content else None


def status(notifier: NotifierProcess, notification_id: str) -> dict[str, Any]:
    reply = notifier.request("GET", f"/api/notifications/{notification_id}")
    return dict(reply.json()) if reply.status_code == 200 else {}


def delivered(notifier: NotifierProcess, notification_id: str, **states: str) -> bool:
    deliveries = status(notifier, notification_id).get("deliveries", {})
    return all(deliveries.get(m, {}).get("status") == s for m, s in states.items())


def call_status(notifier: NotifierProcess, notification_id: str) -> int:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{notifier.http}/api/notifications/{notification_id}"
    return httpx.get(url, headers=headers, timeout=10).status_code


def signed(body: bytes) -> dict[str, str]:
    """Signed as docs/notifier.md tells a provider's adapter to sign its events."""
    stamp = int(time.time())
    digest = hmac.new(EVENTS_SECRET, f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-ArchMesh-Signature": f"t={stamp},v1={digest}", "Content-Type": "application/json"}


def mails_to(smtp: SmtpServer, address: str) -> list[Any]:
    return [m for m in smtp.messages if address in str(m.message["To"])]


def save_contacts(notifier: NotifierProcess, users: list[str]) -> None:
    for user in users:
        call(notifier, "PUT", f"/api/users/{user}/preferences", json=contacts(user))


def settled(raw: Any) -> bool:
    """No job due and no request queued or pending in any partition."""
    for partition in range(LAYOUT.partitions):
        prefix = LAYOUT.prefix(partition)
        if raw.zcard(prefix + "due") or raw.xlen(prefix + "requests"):
            return False
    return not raw.xlen("nt:requests")


def contacts(user: str) -> dict[str, Any]:
    return {"contacts": {"email": f"{user}@example.com"}}


async def test_every_feature_works_on_a_cluster_with_two_replicas(
    stack: tuple[GatewayProcess, list[NotifierProcess]],
    shared_cluster: RedisCluster,
    smtp: SmtpServer,
) -> None:
    gateway, (a, b) = stack
    users = [f"u{n}" for n in range(40)]
    assert {LAYOUT.of_user(user) for user in users} == set(range(LAYOUT.partitions))
    await asyncio.to_thread(save_contacts, a, users)
    ws = await wsclient.connect(gateway.ws, "u0")
    await wsclient.subscribe(ws, "user:u0")

    # 200 requests over every partition, from the Python client, plus two queued by a producer
    # that does not know the layout (the untagged stream, moved to their partitions).
    total = 200
    async with NotifierClient(shared_cluster.url) as client:
        batch = [
            {
                "id": f"p{n}",
                "user_id": users[n % len(users)],
                "type": "plain",
                "title": f"plain {n}",
                "channels": ["in_app", "email"],
            }
            for n in range(total)
        ]
        assert (await client.send_batch(batch)).successful == total
    raw = shared_cluster.client()
    masters = {raw.get_node_from_key(LAYOUT.stream(p)).name for p in range(LAYOUT.partitions)}
    assert len(masters) == 3  # the partitions spread over every master
    home = LAYOUT.prefix(LAYOUT.of_user("u3"))
    raw.xadd(home + "requests", {"request": '{"user_id": "u3", "type": "plain"}'})  # no title
    for n in range(2):
        request = f'{{"id": "old{n}", "user_id": "u{n + 1}", "type": "plain", "title": "old {n}"}}'
        raw.xadd("nt:requests", {"request": request})

    await until(lambda: len(smtp.messages) >= total + 2, 30, "every plain email")
    ids = [*(f"p{n}" for n in range(total)), "old0", "old1"]
    for nid in ids:  # any replica answers for any partition
        assert delivered(b if nid.endswith("0") else a, nid, in_app="sent")
    # Live through the gateway: u0's five items, in order, with the store's counts.
    events = [(await wsclient.recv_type(ws, "publication", timeout=10))["data"] for _ in range(5)]
    assert [e["id"] for e in events] == [f"p{n}" for n in range(0, total, 40)]
    assert [e["unread"] for e in events] == [1, 2, 3, 4, 5]

    # An invalid request is dead-lettered in its partition, with the reason.
    [(_, dead)] = await until(lambda: raw.xrange(home + "dead"), 10, "the dead letter")
    assert dead[b"reason"].startswith(b"invalid request")

    # Inbox marks, published on the user's channel.
    assert call(b, "POST", "/api/users/u0/inbox/p0/read") == {"unseen": 4, "unread": 4}
    marked = await wsclient.recv_type(ws, "publication", timeout=10)
    assert marked["data"] == {"type": "inbox", "unseen": 4, "unread": 4}

    # Escalation: read in time cancels the email step; unread escalates to email.
    for nid, user in (("e1", "u1"), ("e2", "u2")):
        call(
            a,
            "POST",
            "/api/notifications",
            json={"id": nid, "user_id": user, "type": "esc", "title": nid},
        )
    await until(lambda: a.request("GET", "/api/users/u1/inbox/e1").status_code == 200, 10, "e1")
    call(b, "POST", "/api/users/u1/inbox/e1/read")
    # Cancel by key: a waiting step never goes.
    cancel_me = {"id": "c1", "user_id": "u4", "type": "esc", "title": "c1", "cancel_key": "k1"}
    call(b, "POST", "/api/notifications", json=cancel_me)
    await until(lambda: delivered(a, "c1", email="waiting"), 10, "c1 waiting")
    assert call(a, "POST", "/api/notifications/cancel", json={"cancel_key": "k1"})["cancelled"] == 1
    # A digest: three events in one email.
    for k in range(3):
        event = {"id": f"d{k}", "user_id": "u3", "type": "dig", "title": f"digest {k}"}
        call(a if k % 2 else b, "POST", "/api/notifications", json=event)

    await until(lambda: delivered(b, "e2", email="sent"), 15, "e2 escalated")
    await until(lambda: delivered(a, "e1", email="cancelled"), 15, "e1 cancelled")
    await until(lambda: delivered(a, "c1", email="cancelled"), 15, "c1 cancelled")
    await until(
        lambda: any("and 2 more" in str(m.message["Subject"]) for m in smtp.messages), 15, "digest"
    )
    [digest] = [m for m in mails_to(smtp, "u3@") if "and 2 more" in str(m.message["Subject"])]

    # A template (read beside the partition's script) and a throttle (in the user's slot).
    template = {"channels": {"email": {"subject": "Hello {{ name }}", "text": "t"}}}
    call(b, "PUT", "/api/templates/hello", json=template)
    templated = {"id": "t1", "user_id": "u6", "type": "hello", "template": "hello"}
    call(a, "POST", "/api/notifications", json={**templated, "data": {"name": "Ada"}})
    for nid in ("th1", "th2"):
        call(
            b,
            "POST",
            "/api/notifications",
            json={"id": nid, "user_id": "u7", "type": "thr", "title": nid},
        )
    await until(
        lambda: (
            mails_to(smtp, "u6@")
            and "Hello Ada" in str(mails_to(smtp, "u6@")[-1].message["Subject"])
        ),
        15,
        "templated",
    )
    await until(lambda: delivered(a, "th2", email="suppressed"), 15, "throttled")
    assert delivered(a, "th1", email="sent")

    # The operations API sees every partition: queues, the dead letter (discarded once, by
    # its partition), and a timeline found wherever its notification lives.
    queue = call(a, "GET", "/api/ops/queue")
    assert [q["partition"] for q in queue["partitions"]] == list(range(LAYOUT.partitions))
    [letter] = call(b, "GET", "/api/ops/dead-letters")["items"]
    assert letter["partition"] == LAYOUT.of_user(letter["request"]["user_id"])
    where = f"partition={letter['partition']}"
    assert call(a, "DELETE", f"/api/ops/dead-letters/{letter['id']}?{where}")["discarded"]
    assert call(b, "GET", "/api/ops/dead-letters")["items"] == []
    steps = call(b, "GET", "/api/ops/notifications/e1/timeline")["events"]
    assert ("email", "cancelled") in [(e["medium"], e["status"]) for e in steps]

    # A topic fanned out across partitions, each subscriber once; a provider's hard bounce
    # recorded beside its notification's status (one slot) and the address suppressed.
    fans = ["u8", "u9", "u10"]
    save_contacts(a, fans)
    for fan in fans:
        call(b, "PUT", f"/api/users/{fan}/topics/proj:1")
    call(
        a,
        "POST",
        "/api/notifications",
        json={"id": "tp1", "topic": "proj:1", "type": "news", "title": "news", "exclude": ["u10"]},
    )
    for fan in ("u8", "u9"):
        await until(lambda f=fan: delivered(b, f"tp1|{f}", email="sent"), 15, f"topic to {fan}")
    assert call_status(a, "tp1|u10") == 404
    bounce = [
        {
            "id": "b1",
            "type": "bounce",
            "bounce_type": "hard",
            "email": "u8@example.com",
            "notification_id": "tp1|u8",
            "timestamp": time.time(),
        }
    ]
    body = json.dumps(bounce).encode()
    reply = httpx.post(
        f"{b.http}/api/providers/email/events", content=body, headers=signed(body), timeout=10
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["results"][0]["outcome"] == "recorded"
    assert status(a, "tp1|u8")["deliveries"]["email"]["status"] == "bounced"

    # Erasure: the user's inbox and preferences go, the statuses stay without the user.
    call(b, "DELETE", "/api/users/u5")
    assert call(a, "GET", "/api/users/u5/inbox")["items"] == []
    assert status(a, "p5")["user_id"] == ""

    # Analytics: every partition's counts summed.
    buckets = call(a, "GET", "/api/analytics?type=plain&channel=email")["buckets"]
    assert sum(x["count"] for x in buckets if x["status"] == "sent") == total + 2

    # Exactly once where users see it: once nothing is due or queued anywhere (so no send is
    # on its way), each email arrived once.
    await until(lambda: settled(raw), 15, "every partition settled")
    sent = collections.Counter(
        (str(m.message["To"]), str(m.message["Subject"])) for m in smtp.messages
    )
    assert [s for s, count in sent.items() if count > 1] == []
    assert len(mails_to(smtp, "u1@")) == total // 40 + 1  # the plain ones and old0, not e1
    assert digest is not None


def metric(notifier: NotifierProcess, name: str) -> float:
    for line in httpx.get(f"{notifier.http}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in the scrape")


def leases(raw: Any) -> list[str | None]:
    """Which replica holds each partition (None: nobody, right now)."""
    values = [raw.get(LAYOUT.prefix(p) + "lease") for p in range(LAYOUT.partitions)]
    return [None if v is None else v.decode() for v in values]


async def test_replicas_that_join_and_die_hand_partitions_and_sessions_over(
    stack: tuple[GatewayProcess, list[NotifierProcess]],
    shared_cluster: RedisCluster,
    smtp: SmtpServer,
) -> None:
    gateway, notifiers = stack
    a, b = notifiers[:2]
    raw = shared_cluster.client()
    sessions = {f"s{n}": f"w{n}" for n in range(16)}  # session -> owner
    every = set(range(LAYOUT.partitions))
    assert {LAYOUT.of_user(s) for s in sessions} == {LAYOUT.of_user(w) for w in sessions.values()}
    assert {LAYOUT.of_user(s) for s in sessions} == every  # sessions in every shard
    await asyncio.to_thread(save_contacts, a, list(sessions.values()))
    for session, owner in sessions.items():
        call(b, "PUT", f"/api/sessions/{session}", json={"owner_id": owner})
    both = {a.env["ARCHMESH_NODE_ID"], b.env["ARCHMESH_NODE_ID"]}
    await until(lambda: set(leases(raw)) == both, 10, "the two replicas share the partitions")
    held = [metric(n, "archmesh_notifier_partitions_held") for n in (a, b)]
    assert sum(held) == LAYOUT.partitions
    assert min(held) > 0

    published: list[str] = []  # the notification id each event must become, once
    stop = asyncio.Event()

    def publish_round(round_no: int) -> None:
        for session in sessions:
            update = {
                "type": "workflow_update",
                "session_id": session,
                "stage": f"{session}-{round_no}",
                "status": "review_required",
                "progress": 0.5,
            }
            reply = gateway.publish(f"session:{session}", update)
            assert reply.status_code == 200, reply.text
            at = reply.json()
            published.append(f"wf.{session}.{at['epoch']}.{at['offset']}")

    async def pump() -> None:
        """Events on every session all along, while replicas come and go."""
        round_no = 0
        while not stop.is_set():
            await asyncio.to_thread(publish_round, round_no)
            round_no += 1
            await asyncio.sleep(0.1)

    pumping = asyncio.create_task(pump())
    try:
        # A third replica joins: it takes its share, the others give theirs up.
        c = await asyncio.to_thread(NotifierProcess(shared_cluster.url, **notifier_env(smtp)).start)
        notifiers.append(c)
        c_id = c.env["ARCHMESH_NODE_ID"]
        await until(lambda: leases(raw).count(c_id) >= 2, 15, "the new replica's share")
        # One dies: its partitions (streams and sessions) are taken over after its lease.
        a_id = a.env["ARCHMESH_NODE_ID"]
        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        await until(
            lambda: a_id not in leases(raw) and None not in leases(raw),
            3 * CLAIM_IDLE,
            "the dead replica's partitions taken over",
        )
        takeover = time.monotonic() - killed
        rounds_after = len(published)
        await until(lambda: len(published) >= rounds_after + 3 * len(sessions), 15, "more events")
    finally:
        stop.set()
        await pumping

    def arrived() -> bool:
        return sum(
            1 for m in smtp.messages if "review required" in str(m.message["Subject"])
        ) >= len(published)

    await until(arrived, 30, "an email for every workflow event")
    await until(lambda: settled(raw), 15, "every partition settled")
    reviews = [m for m in smtp.messages if "review required" in str(m.message["Subject"])]
    subjects = collections.Counter(str(m.message["Subject"]) for m in reviews)
    # A replica SIGKILLed after the mail server took a message and before it recorded that
    # leaves the job to the next holder, which sends it again: the one window no store can
    # close (docs/notifier.md). The resend carries the same Message-ID, so it is that window,
    # never a second notification: every distinct message is one event's, once.
    by_id = collections.Counter(str(m.message["Message-ID"]) for m in reviews)
    resent = sum(by_id.values()) - len(by_id)
    survivor = notifiers[1]
    missing = [nid for nid in published if not delivered(survivor, nid, in_app="sent")]
    print(
        f"workflow events {len(published)}, emails {sum(subjects.values())},"
        f" duplicates {sum(subjects.values()) - len(subjects)} (resent by the kill {resent}),"
        f" missing {len(missing)};"
        f" partitions taken over {takeover:.2f} s after the SIGKILL (lease {CLAIM_IDLE} s)"
    )
    assert missing == []
    assert len(subjects) == len(published) == len(by_id)  # one message per event...
    assert sum(subjects.values()) - len(subjects) == resent <= 1  # ...resent only by the kill
    for owner in sessions.values():  # and each inbox holds its events once
        inbox = call(survivor, "GET", f"/api/users/{owner}/inbox?limit=1")
        expected = sum(1 for nid in published if nid.startswith(f"wf.s{owner[1:]}."))
        assert inbox["unread"] == expected
    # A replica that stops (SIGTERM) gives its partitions back as it exits, not a lease later.
    assert c.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once shut down
    assert c_id not in leases(raw)
    assert "notifier_worker_stopped" in c.log.read_text()


async def test_partitions_on_one_redis_keep_the_atomic_live_events(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    """Partitioned on one server: the commit still publishes the in-app event in its own step
    (store and broker share the server), and every partition is read."""
    layout = Partitioning.of(4, cluster=False)
    notifier = NotifierProcess(redis_server.url, ARCHMESH_NOTIFIER_PARTITIONS="4").start()
    try:
        gateways.append(GatewayProcess(redis_server.url).start())
        ws = await wsclient.connect(gateways[0].ws, "v0")
        await wsclient.subscribe(ws, "user:v0")
        users = [f"v{n}" for n in range(12)]
        assert {layout.of_user(user) for user in users} == set(range(4))
        requests = [
            {"id": f"q{n}", "user_id": users[n % 12], "type": "t", "title": f"q{n}"}
            for n in range(48)
        ]
        async with NotifierClient(redis_server.url, partitions=4) as client:
            assert (await client.send_batch(requests)).successful == 48
        for n in range(48):
            await until(lambda n=n: delivered(notifier, f"q{n}", in_app="sent"), 10, f"q{n}")
        events = [
            (await wsclient.recv_type(ws, "publication", timeout=10))["data"] for _ in range(4)
        ]
        assert [(e["id"], e["unread"]) for e in events] == [
            ("q0", 1),
            ("q12", 2),
            ("q24", 3),
            ("q36", 4),
        ]
        raw = redis_server.client()
        assert raw.xlen("nt:requests") == 0  # nothing queued on the untagged names
        assert all(raw.exists(layout.stream(p)) for p in range(4))
        # Another count on the same data would look for users in other partitions: refused.
        other = NotifierProcess(redis_server.url, ARCHMESH_NOTIFIER_PARTITIONS="2")
        with pytest.raises(RuntimeError, match="exited"):
            other.start()
        assert "notifier_partitions_mismatch" in other.log.read_text()
    finally:
        notifier.stop()


def test_the_documented_partition_tags_are_the_ones_used() -> None:
    """docs/notifier.md lists the tags of 8 partitions for producers in other languages."""
    docs = (REPO / "docs" / "notifier.md").read_text()
    tags = [LAYOUT.prefix(k).removeprefix("nt:{").removesuffix("}:") for k in range(8)]
    assert ", ".join(f"`{tag}`" for tag in tags) in docs.replace("\n", " ")
    assert LAYOUT.stream(0) == f"nt:{{{tags[0]}}}:requests"
