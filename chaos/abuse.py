"""Hostile input against a running cluster, through nginx: forged and stolen tokens, foreign
origins, oversized frames and bodies, missing and wrong API keys, template sandbox escapes,
connection and message floods, and (chaos.fuzz) generated frames and API bodies.

Each attack is a function that raises AssertionError with the first thing that went wrong and
returns how many hostile inputs it sent; `hostile_input()` runs them all as table rows, and
tests/test_abuse.py runs the quick ones in `make test`."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import json
import os
import struct
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.sync.client import ClientConnection, connect

from chaos import fuzz
from chaos.cluster import running
from chaos.load import percentile
from chaos.table import Row
from deploy.local_cluster import REPO, LocalCluster, cli_commands

AUDIENCE = "archmesh"
APP_ORIGIN = "https://app.archmesh.example"


@dataclass
class Target:
    """A cluster that trusts HS256 (its secret) and RS256 (`trusted`'s public key), requires
    `aud` = AUDIENCE and allows APP_ORIGIN."""

    cluster: LocalCluster
    trusted: rsa.RSAPrivateKey

    @property
    def public_pem(self) -> bytes:
        return self.trusted.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, user: str, sessions: list[str] | None = None, **claims: Any) -> str:
        now = int(time.time())
        body = {"sub": user, "iat": now, "exp": now + 600, "aud": AUDIENCE, **claims}
        if sessions:
            body["sessions"] = sessions
        return jwt.encode(
            {k: v for k, v in body.items() if v is not None},
            self.cluster.jwt_secret,
            algorithm="HS256",
        )

    @property
    def notifier(self) -> bool:
        return self.cluster.notifier is not None


def attack_cluster(**options: Any) -> tuple[LocalCluster, rsa.RSAPrivateKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    env = {
        "ARCHMESH_JWT_PUBLIC_KEY": pem.decode(),
        "ARCHMESH_JWT_ALGORITHMS": "HS256,RS256",
        "ARCHMESH_JWT_AUDIENCE": AUDIENCE,
        "ARCHMESH_ALLOWED_ORIGINS": APP_ORIGIN,
        "ARCHMESH_CONNECT_TIMEOUT": "2",
        **options.pop("env", {}),
    }
    return LocalCluster(1, env=env, **options), key


# -- tokens an attacker can make ---------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def hmac_token(key: bytes, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """HS256 by hand: pyjwt rightly refuses a PEM key as an HMAC secret, attackers do not."""
    signing = f"{_segment(header or {'alg': 'HS256', 'typ': 'JWT'})}.{_segment(claims)}"
    signature = hmac.new(key, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{_b64(signature)}"


def forged_tokens(target: Target) -> dict[str, str]:
    """Connection tokens that must all be refused, by name."""
    now = int(time.time())
    claims = {"sub": "mallory", "iat": now, "exp": now + 600, "aud": AUDIENCE}
    attacker_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_ec = ec.generate_private_key(ec.SECP256R1())
    valid = target.token("mallory")
    head, _, signature = valid.split(".")
    return {
        "alg none": f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(claims)}.",
        "alg None": f"{_segment({'alg': 'None'})}.{_segment(claims)}.",
        "HS256 with a wrong secret": jwt.encode(claims, "w" * 40, algorithm="HS256"),
        "HS256 keyed with the RS256 public key": hmac_token(target.public_pem, claims),
        "RS256 signed by another key": jwt.encode(claims, attacker_rsa, algorithm="RS256"),
        "ES256 (not accepted here)": jwt.encode(claims, attacker_ec, algorithm="ES256"),
        "expired": target.token("mallory", exp=now - 60),
        "not valid yet (nbf)": target.token("mallory", nbf=now + 3600),
        "wrong audience": target.token("mallory", aud="someone-else"),
        "no audience": target.token("mallory", aud=None),
        "no exp": target.token("mallory", exp=None),
        "no sub": target.token("", sub=None),
        "payload swapped (sub admin)": f"{head}.{_segment({**claims, 'sub': 'admin'})}.{signature}",
        "empty HMAC key + kid header": hmac_token(
            b"", claims, {"alg": "HS256", "kid": "../../../dev/null"}
        ),
        "not a JWT": "not.a.jwt",
    }


# -- WebSocket helpers ----------------------------------------------------------------------


def _ws(target: Target, origin: str | None = None) -> Any:
    return connect(target.cluster.ws_url, origin=origin, open_timeout=10)  # type: ignore[arg-type]


def _recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return frame


def _connected(ws: ClientConnection, token: str) -> dict[str, Any]:
    ws.send(json.dumps({"type": "connect", "token": token, "id": 1}))
    return _recv(ws)


def _request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    ws.send(json.dumps({**frame, "id": 9}))
    return _recv(ws)


def _close_code(ws: ClientConnection) -> int | None:
    """The close code the server sends next; None if a frame comes instead."""
    try:
        ws.recv(timeout=10)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    return None


def _refusal(target: Target, origin: str) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a refused handshake; (101, {}) if let in."""
    try:
        with _ws(target, origin):
            return 101, {}
    except InvalidStatus as exc:
        return exc.response.status_code, json.loads(exc.response.body or b"{}")


def jwt_attacks(target: Target) -> int:
    """Forged connection tokens close with 4501; stolen channels and forged subscription
    tokens get `forbidden`; a refresh to another user gets `invalid_token`."""
    sent = 0
    for name, token in forged_tokens(target).items():
        with _ws(target) as ws:
            sent += 1
            frame = _connected(ws, token)
            assert frame.get("code") == 4501, f"{name}: answered {frame}"
            code = _close_code(ws)
            assert code == 4501, f"{name}: close code {code} (None: the socket stayed open)"
    now = int(time.time())
    secret = target.cluster.jwt_secret

    def grant(**claims: Any) -> str:
        body = {"sub": "alice", "channel": "session:secret", "exp": now + 600, "aud": AUDIENCE}
        return jwt.encode({**body, **claims}, secret, algorithm="HS256")

    stolen: dict[str, dict[str, Any]] = {
        "another user's channel": {"type": "subscribe", "channel": "user:bob"},
        "a session not granted": {"type": "subscribe", "channel": "session:secret"},
        "forged subscription token": {
            "type": "subscribe",
            "channel": "session:secret",
            "token": jwt.encode(
                {"sub": "alice", "channel": "session:secret", "exp": now + 600, "aud": AUDIENCE},
                "f" * 40,
                algorithm="HS256",
            ),
        },
        "subscription token of another user": {
            "type": "subscribe",
            "channel": "session:secret",
            "token": grant(sub="bob"),
        },
        "subscription token for another channel": {
            "type": "subscribe",
            "channel": "session:secret",
            "token": grant(channel="session:other"),
        },
        "expired subscription token": {
            "type": "subscribe",
            "channel": "session:secret",
            "token": grant(exp=now - 60),
        },
        "presence of another user's channel": {"type": "presence", "channel": "user:bob"},
    }
    with _ws(target) as ws:
        assert _connected(ws, target.token("alice", ["mine"]))["type"] == "connected"
        for name, frame in stolen.items():
            sent += 1
            reply = _request(ws, frame)
            assert (reply["type"], reply.get("code")) == ("error", "forbidden"), (name, reply)
        for name, token in {
            "refresh as another user": target.token("bob"),
            "refresh with an expired token": target.token("alice", exp=now - 60),
        }.items():
            sent += 1
            reply = _request(ws, {"type": "refresh", "token": token})
            assert reply.get("code") == "invalid_token", (name, reply)
        # Positive controls: the same paths work with honest credentials.
        allowed = _request(ws, {"type": "subscribe", "channel": "session:secret", "token": grant()})
        assert allowed["type"] == "subscribed", allowed
    with _ws(target) as ws:
        honest = jwt.encode(
            {"sub": "rsa-user", "exp": now + 600, "aud": AUDIENCE}, target.trusted, "RS256"
        )
        assert _connected(ws, honest)["type"] == "connected"
    return sent


def origin_attacks(target: Target) -> int:
    """A page from another origin cannot open a socket: 403 with the JSON error."""
    sent = 0
    for origin in ("https://evil.example", "null", "https://app.archmesh.example.evil.example"):
        sent += 1
        status, body = _refusal(target, origin)
        assert status == 403, (origin, status)
        assert body["error"]["code"] == "origin_forbidden", body
    with _ws(target, APP_ORIGIN) as ws:  # control: the allowed origin gets in
        assert _connected(ws, target.token("alice"))["type"] == "connected"
    return sent


def _declared_frame(length: int) -> bytes:
    """The header of a masked text frame that announces `length` payload bytes, with none of
    them: a node must refuse the frame on its header alone."""
    return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + os.urandom(4)


def _close_code_after(ws: ClientConnection, send: Callable[[], object]) -> int | None:
    """The close code the server answers `send` with: from the ConnectionClosed that the send
    itself raises when the server closed while the client was still writing, or else from the
    next receive. None if a frame came instead, or if a reset beat the close frame."""
    try:
        send()
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    return _close_code(ws)


def _oversized_frame_codes(target: Target, url: str) -> tuple[int | None, int | None]:
    """Close codes for a frame past ARCHMESH_WS_MAX_BYTES sent whole, then one announced by its
    header alone, each on a fresh connected socket at `url`."""
    too_big = 1024 * 1024 + 1
    codes: list[int | None] = []
    for send in (
        lambda ws: ws.send("x" * too_big),
        lambda ws: ws.socket.sendall(_declared_frame(too_big)),
    ):
        with connect(url, open_timeout=10) as ws:
            assert _connected(ws, target.token("alice"))["type"] == "connected"
            codes.append(_close_code_after(ws, functools.partial(send, ws)))
            assert ws.protocol.state is State.CLOSED, f"{url}: a 1 MiB frame left the socket open"
    return codes[0], codes[1]


def oversize_attacks(target: Target) -> int:
    """Frames above ARCHMESH_WS_MAX_BYTES close the socket with 1009, whether they come whole
    or only their header arrived, straight to a node or through nginx; frames above
    ARCHMESH_MAX_FRAME_BYTES get `frame_too_large` (the socket lives on); big HTTP bodies get
    413 JSON.

    A whole 1 MiB frame races the client's own write against the node's close: the node
    refuses the frame on its header and closes with the rest still unread, so the kernel may
    reset the connection and the close frame can be lost on the way (nginx, or the client's
    socket closed by its failed write). That case must close the socket, with 1009 if any
    code arrives; the header-only frame leaves nothing unread, so its 1009 always arrives."""
    with _ws(target) as ws:
        assert _connected(ws, target.token("alice"))["type"] == "connected"
        ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
        assert _recv(ws)["code"] == "frame_too_large"
        assert _request(ws, {"type": "ping"})["type"] == "pong"
    node = target.cluster.gateways[0].url.replace("http:", "ws:") + "/ws"
    for url in (target.cluster.ws_url, node):
        whole, announced = _oversized_frame_codes(target, url)
        assert whole in (1009, None), f"{url}: a 1 MiB frame closed with {whole}"
        assert announced == 1009, f"{url}: a 1 MiB frame header closed with {announced}"
    headers = {"Authorization": f"Bearer {target.cluster.api_key}"}
    with httpx.Client(base_url=target.cluster.url, headers=headers, timeout=30) as http:
        for size in (70_000, 9 * 1024 * 1024):
            body = json.dumps({"channel": "broadcast", "data": {"type": "t", "pad": "x" * size}})
            reply = http.post("/api/publish", content=body)
            assert reply.status_code == 413, (size, reply.status_code)
            assert reply.json()["error"]["code"] == "too_large", reply.text
    return 7


def api_key_attacks(target: Target) -> int:
    """No key, a wrong key or a malformed header: 401 JSON. A user token opens only that
    user's notifier resources."""
    sent = 0
    url = target.cluster.url
    event = {"channel": "broadcast", "data": {"type": "t"}}
    for auth in (None, "Bearer wrong-key", "Bearer", "Basic YWRtaW46YWRtaW4=", "Token x"):
        headers = {"Authorization": auth} if auth is not None else {}
        sent += 1
        reply = httpx.post(f"{url}/api/publish", json=event, headers=headers, timeout=10)
        assert reply.status_code == 401, (auth, reply.status_code)
        assert reply.json()["error"]["code"] == "unauthorized", reply.text
        if target.notifier:
            sent += 1
            note = {"user_id": "alice", "type": "t", "title": "x"}
            reply = httpx.post(f"{url}/api/notifications", json=note, headers=headers, timeout=10)
            assert reply.status_code == 401, (auth, reply.status_code, reply.text)
    if target.notifier:
        alice = {"Authorization": f"Bearer {target.token('alice')}"}
        sent += 2
        reply = httpx.get(f"{url}/api/users/bob/inbox", headers=alice, timeout=10)
        assert (reply.status_code, reply.json()["error"]["code"]) == (403, "forbidden")
        reply = httpx.put(f"{url}/api/templates/mine", json={}, headers=alice, timeout=10)
        assert reply.status_code in (401, 403), reply.status_code
        own = httpx.get(f"{url}/api/users/alice/inbox", headers=alice, timeout=10)
        assert own.status_code == 200, own.text  # control
    return sent


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__.os.popen('echo PWNED').read() }}",
    "{{ lipsum.__globals__['os'].popen('echo PWNED').read() }}",
    "{{ self._TemplateReference__context }}",
    "{{ config.items() }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ request.application.__globals__ }}",
    "{{ data.__class__.__init__.__globals__ }}",
    "{{ ().__class__.__bases__[0].__subclasses__()[59]()._module.__builtins__ }}",
    "{{ namespace.__init__.__globals__.os.environ }}",
    "{{ [].pop.__self__ }}{{ (1).__class__ }}",
    "{{ 'x' * 100000000 }}",
    "{% set x = [].append %}{{ x.__self__.__class__ }}",
    "{{ data|attr('__class__') }}",
]
_LEAKS = ("<class", "PWNED", "__globals__", "builtins", "subclasses", "os.environ", "<module")


def template_attacks(target: Target) -> tuple[int, str]:
    """Template sources that try to leave the Jinja sandbox are refused when saved or fail
    to render; whatever renders carries nothing from the process."""
    if not target.notifier:
        return 0, "no notifier"
    outcomes: Counter[str] = Counter()
    key = {"Authorization": f"Bearer {target.cluster.api_key}"}
    leaks = (*_LEAKS, target.cluster.jwt_secret, target.cluster.api_key)
    with httpx.Client(base_url=target.cluster.url, headers=key, timeout=15) as http:
        http.put("/api/users/tmpl-victim/preferences", json={}).raise_for_status()
        for index, source in enumerate(ESCAPES):
            name = f"escape-{index}"
            body = {"channels": {"in_app": {"title": source, "body": "b"}}}
            saved = http.put(f"/api/templates/{name}", json=body)
            if saved.status_code == 422:
                assert saved.json()["error"]["code"] == "invalid_template"
                outcomes["refused when saved"] += 1
                continue
            assert saved.status_code == 200, (source, saved.status_code, saved.text)
            note = {"user_id": "tmpl-victim", "type": "t", "template": name, "channels": ["in_app"]}
            queued = http.post("/api/notifications", json=note)
            assert queued.status_code == 202, queued.text
            status = _settled(http, queued.json()["id"])
            if status == "failed":
                outcomes["refused at render"] += 1
                continue
            inbox = http.get("/api/users/tmpl-victim/inbox", params={"limit": 500}).json()
            rendered = [i for i in inbox["items"] if i["id"] == queued.json()["id"]]
            text = json.dumps(rendered)
            assert not any(leak in text for leak in leaks), (source, text[:300])
            outcomes["rendered harmlessly"] += 1
    return len(ESCAPES), ", ".join(f"{count} {what}" for what, count in outcomes.items())


def _settled(http: httpx.Client, notification_id: str) -> str:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        reply = http.get(f"/api/notifications/{notification_id}")
        if reply.status_code == 200:
            state = reply.json()["deliveries"].get("in_app", {}).get("status")
            if state in ("sent", "failed", "suppressed"):
                return str(state)
        time.sleep(0.05)
    raise AssertionError(f"notification {notification_id} never settled")


# -- floods -----------------------------------------------------------------------------------


@dataclass
class Bystander:
    """A well-behaved client on the same node during a flood: its publication latencies."""

    latencies: list[float]
    expected: int

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


async def _with_bystander(
    target: Target, flood: Callable[[], Awaitable[dict[str, int]]], seconds: float = 4.0
) -> tuple[dict[str, int], Bystander]:
    """Run `flood` while a normal client receives 25 publications a second via the API."""
    latencies: list[float] = []
    async with aconnect(target.cluster.ws_url, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "connect", "token": target.token("calm", ["calm"])}))
        await ws.recv()
        await ws.send(json.dumps({"type": "subscribe", "channel": "session:calm", "id": 1}))
        await ws.recv()

        async def listen() -> None:
            async for message in ws:
                frame = json.loads(message)
                if frame.get("type") == "publication":
                    latencies.append(time.time() - frame["data"]["t"])

        async def publish() -> int:
            key = {"Authorization": f"Bearer {target.cluster.api_key}"}
            count = 0
            async with httpx.AsyncClient(base_url=target.cluster.url, headers=key) as http:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    event = {"type": "calm", "t": time.time()}
                    reply = await http.post(
                        "/api/publish", json={"channel": "session:calm", "data": event}
                    )
                    assert reply.status_code == 200, reply.text
                    count += 1
                    await asyncio.sleep(0.04)
            return count

        listener = asyncio.create_task(listen())
        result, published = await asyncio.gather(flood(), publish())
        deadline = time.monotonic() + 10
        while len(latencies) < published:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        listener.cancel()
    return result, Bystander(latencies, published)


async def _flood(*args: str) -> dict[str, int]:
    """Run a chaos.flood in its own process; its answer counts."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chaos.flood", *args, stdout=asyncio.subprocess.PIPE, cwd=REPO
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"flood process exited {proc.returncode}"
    result: dict[str, int] = json.loads(out)
    return result


async def connection_flood(target: Target, total: int = 1500) -> tuple[int, str]:
    """Handshakes as fast as one address can make them: the balancer answers 429 past its
    rate, the accepted ones are closed when they never send `connect` (4006), and a client
    from another address keeps its latency."""
    outcomes, calm = await _with_bystander(
        target, lambda: _flood("handshakes", target.cluster.ws_url, str(total))
    )
    let_in = outcomes.get("101", 0)
    assert set(outcomes) <= {"101", "429", "closed 4006"}, outcomes
    assert outcomes.get("429", 0) > 0, f"no rate limit answered: {outcomes}"
    assert outcomes.get("closed 4006", 0) == let_in, outcomes
    assert len(calm.latencies) == calm.expected, (len(calm.latencies), calm.expected)
    assert calm.p99 < 0.5, f"bystander p99 {calm.p99:.3f} s"
    note = (
        f"{let_in} let in and closed by connect_timeout (4006), {outcomes.get('429', 0)} "
        f"answered 429; bystander p99 {calm.p99 * 1000:.0f} ms"
    )
    return total, note


async def message_flood(target: Target, frames: int = 5000) -> tuple[int, str]:
    """One socket sends frames as fast as it can: `rate_limited` errors, then close 4005; a
    client on the same node keeps its latency."""
    token = target.token("flood")
    outcomes, calm = await _with_bystander(
        target, lambda: _flood("frames", target.cluster.ws_url, str(frames), token)
    )
    assert outcomes.get("rate_limited", 0) > 0, outcomes
    assert outcomes.get("close 4005") == 1, outcomes
    assert len(calm.latencies) == calm.expected, (len(calm.latencies), calm.expected)
    assert calm.p99 < 0.5, f"bystander p99 {calm.p99:.3f} s"
    note = (
        f"{outcomes.get('pong', 0)} pongs, {outcomes['rate_limited']} rate_limited, then "
        f"close 4005; bystander p99 {calm.p99 * 1000:.0f} ms"
    )
    return frames, note


# -- the scenario -------------------------------------------------------------------------------

FUZZ_EXAMPLES = 10_000
FUZZ_ENV = {
    # Fuzzing is about what frames do, not about the rate limiter.
    "ARCHMESH_RATE_LIMIT_PER_SECOND": "1000000",
    "ARCHMESH_RATE_LIMIT_BURST": "1000000",
}


async def _sync_row(name: str, attack: Callable[[], int | tuple[int, str] | fuzz.Findings]) -> Row:
    try:
        result = await asyncio.to_thread(attack)
    except Exception as exc:
        return Row(name, passed=False, note=fuzz.first_violation(exc)[:300])
    if isinstance(result, fuzz.Findings):
        passed = result.violation is None
        return Row(name, published=result.inputs, passed=passed, note=result.note())
    sent, note = result if isinstance(result, tuple) else (result, "every answer as documented")
    return Row(name, published=sent, passed=True, note=note)


async def hostile_input(examples: int = FUZZ_EXAMPLES) -> list[Row]:
    rows: list[Row] = []
    notifier = "notifier" in cli_commands()
    cluster, key = attack_cluster(env=FUZZ_ENV)
    async with running(cluster):
        token = Target(cluster, key).token("fuzz-user")
        url, api, api_key = cluster.ws_url, cluster.url, cluster.api_key
        fuzzers: list[tuple[str, Callable[[], fuzz.Findings]]] = [
            (f"fuzz: client frames ({examples:,})", lambda: fuzz.fuzz_frames(url, token, examples)),
            (
                f"fuzz: frames before connect ({examples // 5:,})",
                lambda: fuzz.fuzz_frames(url, None, examples // 5),
            ),
            (
                f"fuzz: publish API bodies ({examples:,})",
                lambda: fuzz.fuzz_publish_api(api, api_key, examples),
            ),
            (
                f"fuzz: control API bodies ({examples:,})",
                lambda: fuzz.fuzz_control_api(api, api_key, examples),
            ),
        ]
        if notifier:
            fuzzers.append(
                (
                    f"fuzz: notifier API bodies ({examples:,})",
                    lambda: fuzz.fuzz_notifier_api(api, api_key, examples),
                )
            )
        for name, run_fuzzer in fuzzers:
            rows.append(await _sync_row(name, run_fuzzer))
        if not all(s.running for s in [*cluster.gateways, cluster.notifier] if s is not None):
            rows.append(Row("fuzz: processes alive afterwards", passed=False, note="one died"))
    cluster, key = attack_cluster()
    async with running(cluster):
        target = Target(cluster, key)
        attacks: list[tuple[str, Callable[[Target], int | tuple[int, str]]]] = [
            ("JWT attacks (forged, expired, confused, stolen)", jwt_attacks),
            ("foreign Origin", origin_attacks),
            ("oversized frames and bodies", oversize_attacks),
            ("API without / with a wrong key", api_key_attacks),
        ]
        if notifier:
            attacks.append(("template sandbox escapes", template_attacks))
        for name, attack in attacks:
            rows.append(await _sync_row(name, functools.partial(attack, target)))
        rows.append(await _async_row("connection flood (one address)", connection_flood(target)))
        rows.append(await _async_row("message flood (one socket)", message_flood(target)))
    return rows


async def _async_row(name: str, attack: Awaitable[tuple[int, str]]) -> Row:
    try:
        sent, note = await attack
    except Exception as exc:
        return Row(name, passed=False, note=fuzz.first_violation(exc)[:300])
    return Row(name, published=sent, passed=True, note=note)
