"""What users may and may not switch off, in which language they are told, and how they leave:
critical types, one-click unsubscribe (RFC 8058), template locales and erasure.

A real Redis, the aiosmtpd peer (which sees the unsubscribe headers), the movable clock, and
the notifier's API served by uvicorn on a real socket."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
import pytest
import redis
import uvicorn
from archmesh_client.notifications import Medium, NotificationRequest

from notifier.erasure import REASON
from notifier.planner import plan
from notifier.schemas import DeliveryState, Preferences
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import ReceivedEmail, SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.notifier_stack import Stack, notifier_stack
from tests.servers import API_KEY, RedisServer

pytestmark = pytest.mark.redis

PUBLIC_URL = "https://notify.archmesh.test"
SETTINGS = {
    "notifier_critical_types": "security_alert,workflow_failed",
    "notifier_public_url": PUBLIC_URL,
    "notifier_unsubscribe_secret": "u" * 40,
    "notifier_unsubscribe_ttl": 3600,
}
QUIET = {"start": "22:00", "end": "07:00"}
NIGHT = datetime(2026, 1, 15, 22, 30, tzinfo=UTC)  # 23:30 in Paris


def person(email: str, **extra: Any) -> dict[str, Any]:
    return {
        "timezone": "Europe/Paris",
        "contacts": {"email": email},
        "channels": {"default": {"in_app": True, "email": True, "push": True, "sms": True}},
        **extra,
    }


@pytest.fixture
async def stack(
    redis_server: RedisServer, smtp: SmtpServer, push: PushEndpoint, twilio: TwilioApi
) -> AsyncIterator[Stack]:
    """The notifier stack, its API reached over HTTP on a loopback socket."""
    smtp.clear()
    async with notifier_stack(redis_server.url, smtp, push, twilio, **SETTINGS) as s:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(s.notifier.app, lifespan="off", log_config=None, access_log=False)
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert not task.done(), "uvicorn stopped"
            await asyncio.sleep(0.01)
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        headers = {"Authorization": f"Bearer {API_KEY}"}
        try:
            async with httpx.AsyncClient(base_url=base, headers=headers, timeout=10) as http:
                yield dataclasses.replace(s, http=http)
        finally:
            server.should_exit = True
            await task
            sock.close()


async def mail(smtp: SmtpServer, subject: str) -> ReceivedEmail:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [m for m in smtp.messages if m.message["Subject"] == subject]
        if found:
            [message] = found
            return message
        await asyncio.sleep(0.02)
    raise TimeoutError(f"no email {subject!r}")


async def preferences(stack: Stack, user: str) -> dict[str, Any]:
    reply = await stack.http.get(f"/api/users/{user}/preferences")
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


# -- critical types ---------------------------------------------------------------------------


def test_the_planner_lets_a_critical_type_past_switches_and_quiet_hours() -> None:
    prefs = Preferences.model_validate(
        person("ada@example.com", quiet_hours=QUIET, channels={"default": {"email": False}})
    )
    request = NotificationRequest(user_id="ada", type="security_alert", title="Sign-in")
    email_only = frozenset({Medium.EMAIL})
    quiet = plan(request, prefs, None, NIGHT, email_only)
    assert quiet.deliveries[Medium.EMAIL].status is DeliveryState.SUPPRESSED
    loud = plan(request, prefs, None, NIGHT, email_only, critical=True)
    assert loud.deliveries[Medium.EMAIL].status is DeliveryState.PENDING
    assert loud.due[Medium.EMAIL] == NIGHT


async def test_critical_types_cannot_be_switched_off(stack: Stack) -> None:
    await stack.put_preferences("ada", **person("ada@example.com"))
    off = person("ada@example.com", channels={"security_alert": {"in_app": True, "sms": False}})
    reply = await stack.http.put("/api/users/ada/preferences", json=off)
    assert reply.status_code == 422
    error = reply.json()["error"]
    assert error["code"] == "critical_type"
    assert "security_alert" in error["message"]
    [field] = error["fields"]  # the page shows each field's loc and msg
    assert field["loc"] == ["channels", "security_alert", "sms"]
    assert "cannot be switched off" in field["msg"]
    patch = {"channels": {"workflow_failed": {"email": False}}}
    reply = await stack.http.patch("/api/users/ada/preferences", json=patch)
    assert (reply.status_code, reply.json()["error"]["code"]) == (422, "critical_type")
    saved = await preferences(stack, "ada")
    assert set(saved["channels"]) == {"default"}  # neither refusal changed anything
    on = {"channels": {"security_alert": {"email": True}, "digest": {"email": False}}}
    assert (await stack.http.patch("/api/users/ada/preferences", json=on)).status_code == 200


async def test_critical_types_pass_quiet_hours_and_carry_no_unsubscribe_link(
    stack: Stack,
) -> None:
    stack.clock.set(NIGHT)
    await stack.put_preferences("ada", **person("ada@example.com", quiet_hours=QUIET))
    calm = await stack.send(user_id="ada", type="digest", title="Calm", channels=["email"])
    alert = await stack.send(
        user_id="ada", type="security_alert", title="Alert", channels=["email"]
    )
    await stack.states(calm, email="held")
    await stack.states(alert, email="sent")
    message = (await mail(stack.smtp, "Alert")).message
    assert message["List-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] is None
    stack.clock.set(datetime(2026, 1, 16, 6, 0, 1, tzinfo=UTC))  # 07:00:01 in Paris
    await stack.states(calm, email="sent")
    assert (await mail(stack.smtp, "Calm")).message["List-Unsubscribe-Post"] is not None


# -- one-click unsubscribe --------------------------------------------------------------------


def unsubscribe_path(message: ReceivedEmail) -> str:
    header = str(message.message["List-Unsubscribe"])
    assert header.startswith(f"<{PUBLIC_URL}/api/unsubscribe?token=")
    assert header.endswith(">")
    url = urlsplit(header[1:-1])
    return f"{url.path}?{url.query}"


ONE_CLICK = {"Content-Type": "application/x-www-form-urlencoded"}


async def test_one_click_unsubscribe_switches_that_types_email_off(stack: Stack) -> None:
    await stack.put_preferences("uma", **person("uma@example.com"))
    first = await stack.send(user_id="uma", type="digest", title="Digest 1", channels=["email"])
    await stack.states(first, email="sent")
    message = await mail(stack.smtp, "Digest 1")
    assert message.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    link = unsubscribe_path(message)
    anonymous = httpx.AsyncClient(base_url=str(stack.http.base_url), timeout=10)
    async with anonymous:
        page = await anonymous.get(link)  # what a mail scanner does: nothing changes
        assert page.status_code == 200
        assert 'method="post"' in page.text
        assert 'name="List-Unsubscribe" value="One-Click"' in page.text
        assert "digest" in page.text
        assert "digest" not in (await preferences(stack, "uma"))["channels"]
        empty = await anonymous.post(link, content=b"", headers=ONE_CLICK)
        assert (empty.status_code, empty.json()["error"]["code"]) == (400, "bad_request")
        done = await anonymous.post(link, content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
        assert done.status_code == 200
        assert done.json() == {"unsubscribed": True, "type": "digest", "medium": "email"}
        # A second click, as multipart (also allowed by RFC 8058), from a browser that asks
        # for HTML (the page's button): it says so, and changes nothing more.
        again = await anonymous.post(
            link, files={"List-Unsubscribe": (None, "One-Click")}, headers={"Accept": "text/html"}
        )
        assert again.status_code == 200
        assert "no more emails" in again.text
    assert (await preferences(stack, "uma"))["channels"]["digest"] == {"email": False}
    later = await stack.send(
        user_id="uma", type="digest", title="Digest 2", channels=["in_app", "email"]
    )
    other = await stack.send(user_id="uma", type="mention", title="Mention", channels=["email"])
    status = await stack.states(later, in_app="sent", email="suppressed")
    assert status["email"]["last_error"] == "disabled in the user's preferences"
    await stack.states(other, email="sent")
    await mail(stack.smtp, "Mention")
    assert [m for m in stack.smtp.messages if m.message["Subject"] == "Digest 2"] == []
    # The link of an erased user answers 200 and does not bring a record back.
    assert (await stack.http.delete("/api/users/uma")).status_code == 204
    gone = await stack.http.post(link, content=b"List-Unsubscribe=One-Click", headers=ONE_CLICK)
    assert gone.status_code == 200
    assert await stack.notifier.preferences.get("uma") is None


async def test_forged_and_expired_unsubscribe_links_change_nothing(stack: Stack) -> None:
    await stack.put_preferences("uma", **person("uma@example.com"))
    nid = await stack.send(user_id="uma", type="mention", title="Hi", channels=["email"])
    await stack.states(nid, email="sent")
    link = unsubscribe_path(await mail(stack.smtp, "Hi"))
    token = link.split("token=")[1]
    payload, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    forged = [
        f"/api/unsubscribe?token={payload}.{flipped}",  # signature altered
        f"/api/unsubscribe?token={payload[:-2]}.{signature}",  # payload altered
        "/api/unsubscribe?token=nonsense",
        "/api/unsubscribe",
    ]
    body = b"List-Unsubscribe=One-Click"
    for path in forged:
        reply = await stack.http.post(path, content=body, headers=ONE_CLICK)
        assert (reply.status_code, reply.json()["error"]["code"]) == (400, "invalid_link"), path
    stack.clock.advance(seconds=SETTINGS["notifier_unsubscribe_ttl"] + 1)  # type: ignore[operator]
    expired = await stack.http.post(link, content=body, headers=ONE_CLICK)
    assert expired.status_code == 400
    assert expired.json()["error"] == {
        "code": "invalid_link",
        "message": "the unsubscribe link has expired",
    }
    assert (await stack.http.get(link)).status_code == 400
    assert "mention" not in (await preferences(stack, "uma"))["channels"]


# -- locales ------------------------------------------------------------------------------------

WELCOME = {
    "channels": {
        "in_app": {"title": "Welcome, {{ name }}"},
        "email": {"subject": "Welcome, {{ name }}", "text": "Hello {{ name }}"},
    },
    "locales": {
        "PT": {
            "in_app": {"title": "Bem-vindo, {{ name }}"},
            "email": {"subject": "Bem-vindo, {{ name }}", "text": "Olá {{ name }}"},
        },
        "fr": {"in_app": {"title": "Bienvenue, {{ name }}"}},
    },
}


async def test_templates_follow_the_locale_chain_and_unknown_locales_fall_back(
    stack: Stack,
) -> None:
    reply = await stack.http.put("/api/templates/welcome", json=WELCOME)
    assert reply.status_code == 200, reply.text
    saved = (await stack.http.get("/api/templates/welcome")).json()
    assert sorted(saved["locales"]) == ["fr", "pt"]  # tags kept in their canonical case
    await stack.put_preferences("pia", **person("pia@example.com", locale="pt-br"))
    assert (await preferences(stack, "pia"))["locale"] == "pt-BR"
    await stack.put_preferences("kai", **person("kai@example.com", locale="tlh-Latn"))
    await stack.put_preferences("flo", **person("flo@example.com", locale="fr-CA"))
    for user in ("pia", "kai", "flo"):
        nid = await stack.send(
            user_id=user, type="welcome", template="welcome", data={"name": user.title()}
        )
        await stack.states(nid, in_app="sent", email="sent")
    assert (await mail(stack.smtp, "Bem-vindo, Pia")).message.get_content().strip() == "Olá Pia"
    await mail(stack.smtp, "Welcome, Kai")  # no Klingon variant: the default
    await mail(stack.smtp, "Welcome, Flo")  # `fr` has in_app only: email falls back
    titles = {}
    for user in ("pia", "kai", "flo"):
        inbox = (await stack.http.get(f"/api/users/{user}/inbox")).json()
        titles[user] = inbox["items"][0]["title"]
    assert titles == {"pia": "Bem-vindo, Pia", "kai": "Welcome, Kai", "flo": "Bienvenue, Flo"}
    # The request's locale wins over the user's.
    nid = await stack.send(
        user_id="pia",
        type="welcome",
        template="welcome",
        data={"name": "Pia"},
        locale="en-GB",
        channels=["email"],
    )
    await stack.states(nid, email="sent")
    await mail(stack.smtp, "Welcome, Pia")
    bad = await stack.http.patch("/api/users/pia/preferences", json={"locale": "portuguese!"})
    assert (bad.status_code, bad.json()["error"]["fields"][0]["loc"]) == (422, ["locale"])
    bad = await stack.http.post(
        "/api/notifications", json={"user_id": "pia", "type": "x", "title": "t", "locale": "-"}
    )
    assert bad.status_code == 422
    broken = {**WELCOME, "locales": {"de": {"in_app": {"title": "{{ name"}}}}
    reply = await stack.http.put("/api/templates/welcome", json=broken)
    assert reply.json()["error"]["code"] == "invalid_template"
    assert reply.json()["error"]["message"].startswith("locales.de.in_app.title")


# -- erasure ----------------------------------------------------------------------------------


def dump(client: redis.Redis) -> dict[str, str]:
    """Every key in Redis and a text form of its whole value."""
    out = {}
    for key in client.scan_iter(count=1000):
        read = {
            "string": client.get,
            "hash": client.hgetall,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "set": client.smembers,
            "list": lambda k: client.lrange(k, 0, -1),
            "stream": client.xrange,
        }
        value: Any = read[client.type(key)](key)  # type: ignore[operator]
        out[key] = repr(value)
    return out


async def test_erasure_leaves_nothing_of_the_user_but_analytics_counts(stack: Stack) -> None:
    email, phone = "eve@example.com", "+14155550177"
    sub = stack.push.new_subscription()
    contacts = {"email": email, "phone": phone, "push_subscriptions": [sub.as_dict()]}
    await stack.put_preferences("eve", **person(email, contacts=contacts, quiet_hours=QUIET))
    await stack.put_preferences("bob", **person("bob@example.com"))
    assert (await stack.http.put("/api/sessions/s9", json={"owner_id": "eve"})).status_code == 200
    stack.smtp.refuse(email, text=f"5.1.1 <{email}> no such user")
    stack.clock.set(datetime(2026, 1, 15, 12, 0, tzinfo=UTC))
    refused = await stack.send(user_id="eve", type="mention", title="R", channels=["email"])
    failed = await stack.states(refused, email="failed")
    assert email in failed["email"]["last_error"]
    pushed = await stack.send(user_id="eve", type="mention", title="P", channels=["in_app", "push"])
    await stack.states(pushed, in_app="sent", push="sent")
    stack.clock.set(NIGHT)
    held = await stack.send(user_id="eve", type="mention", title="H", channels=["email", "sms"])
    await stack.states(held, email="held", sms="held")
    kept = await stack.send(user_id="bob", type="mention", title="B", channels=["in_app"])
    await stack.states(kept, in_app="sent")

    client = redis.Redis.from_url(stack.notifier.settings.redis_url, decode_responses=True)
    try:
        before = dump(client)
        assert any("eve" in k for k in before)
        reply = await stack.http.delete("/api/users/eve")
        assert (reply.status_code, reply.content) == (204, b"")
        after = dump(client)
        again = await stack.http.delete("/api/users/eve")
        assert (again.status_code, again.content) == (204, b"")
        assert dump(client) == after  # idempotent: the second erasure finds nothing to do
        assert client.zrange("nt:due", 0, -1) == []  # nothing left to send to her
    finally:
        client.close()
    traces = ("eve", email, phone, sub.endpoint)
    for key, value in after.items():
        for trace in traces:
            assert trace not in key, key
            assert trace not in value, (key, trace)
    assert [k for k in after if k.startswith("nt:stats:")]  # analytics counts are kept
    assert "nt:prefs:bob" in after  # only she was erased
    assert "nt:inbox:bob" in after
    status = await stack.status(held)
    assert status["user_id"] == ""
    for medium in ("email", "sms"):
        assert status["deliveries"][medium]["status"] == "cancelled"
        assert status["deliveries"][medium]["last_error"] == REASON
    failed = (await stack.status(refused))["deliveries"]["email"]
    assert failed["status"] == "failed"
    assert "***" in failed["last_error"]
    refused_again = await stack.http.delete("/api/users/eve", headers={"Authorization": ""})
    assert refused_again.status_code == 401


@pytest.fixture
def silent_mail_port() -> Iterator[socket.socket]:
    """A listener that accepts and never greets: a send to it hangs until its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        yield listener


def _answer_as_smtp(connection: socket.socket) -> None:
    """Be the mail server the erasure did not stop: greet late, then accept the message."""
    reader = connection.makefile("rb")
    connection.sendall(b"220 late.test ESMTP\r\n")
    for line in reader:
        verb = line[:4].upper()
        if verb == b"DATA":
            connection.sendall(b"354 go on\r\n")
            for body in reader:
                if body == b".\r\n":
                    break
            connection.sendall(b"250 queued\r\n")
        elif verb == b"QUIT":
            connection.sendall(b"221 bye\r\n")
            return
        else:
            connection.sendall(b"250 ok\r\n")


@pytest.mark.parametrize("attempt", ["times_out", "goes_out"])
async def test_a_send_in_flight_when_the_user_is_erased_is_not_written_back_or_retried(
    redis_server: RedisServer,
    silent_mail_port: socket.socket,
    push: PushEndpoint,
    twilio: TwilioApi,
    attempt: str,
) -> None:
    """The erasure lands while the email is being handed to a mail server, which then times
    out (a temporary failure, normally retried) or takes it: the address (the step's job) is
    never written back, nothing is scheduled again, and the status tells the truth: still
    `cancelled`, or `sent` when it did go out."""
    address = SimpleNamespace(host="127.0.0.1", port=silent_mail_port.getsockname()[1])
    silent = cast(SmtpServer, address)  # the stack reads only the mail server's host and port
    email = "gone@example.com"
    async with notifier_stack(redis_server.url, silent, push, twilio, **SETTINGS) as stack:
        await stack.put_preferences("gone", **person(email))
        nid = await stack.send(user_id="gone", type="mention", title="G", channels=["email"])
        connection, _ = await asyncio.to_thread(silent_mail_port.accept)  # the send is in flight
        with connection:
            assert (await stack.http.delete("/api/users/gone")).status_code == 204
            connection.settimeout(10)
            if attempt == "goes_out":
                await asyncio.to_thread(_answer_as_smtp, connection)
                expected = ("sent", None)
            else:
                assert await asyncio.to_thread(connection.recv, 1) == b""  # the sender gave up
                expected = ("cancelled", REASON)
        await stack.states(nid, email=expected[0])
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            deadline = time.monotonic() + 1  # a write-back would come within milliseconds
            while time.monotonic() < deadline:
                stored = client.hgetall(f"nt:n:{nid}")
                assert all(email not in value for value in stored.values()), stored
                assert "job:email" not in stored
                assert client.zscore("nt:due", f"{nid}|email") is None
                await asyncio.sleep(0.05)
        finally:
            client.close()
        status = (await stack.status(nid))["deliveries"]["email"]
        assert (status["status"], status["last_error"]) == expected
