"""A Web Push service stand-in: checks VAPID, decrypts aes128gcm, records what it got.

    with PushEndpoint() as push:                      # https on 127.0.0.1, test CA in ca_file
        sub = push.new_subscription()                 # sub.endpoint / sub.p256dh / sub.auth
        ... send to sub (trusting push.ca_file) ...
        [got] = push.wait_for(1)
        got.payload, got.ttl, got.urgency, got.claims
        push.answer(sub, 410)                         # every later push to sub gets 410

Real push services are https-only, and so is this one (the notifier refuses http endpoints).
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import http_ece
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.fakes.http import LoopbackHttpServer, Reply, Request

_VAPID = re.compile(r"^vapid\s+t=(?P<t>[^,\s]+)\s*,\s*k=(?P<k>[^,\s]+)\s*$", re.IGNORECASE)
_PATH = re.compile(r"^/push/(?P<id>[A-Za-z0-9_-]+)$")


@dataclass(frozen=True)
class FakeSubscription:
    """What a browser's PushSubscription gives the app, plus the browser's secrets."""

    id: str
    endpoint: str
    p256dh: str  # base64url uncompressed P-256 public key
    auth: str  # base64url 16-byte auth secret
    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape of `PushSubscription.toJSON()` (and of notifier preferences)."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


@dataclass(frozen=True)
class PushRequest:
    """One POST the endpoint answered. `payload` is the decrypted JSON (None if rejected)."""

    subscription_id: str
    status: int
    error: str | None
    payload: Any
    ttl: int | None
    urgency: str | None
    claims: dict[str, Any] | None  # the verified VAPID JWT claims
    vapid_public_key: str | None


class PushEndpoint(LoopbackHttpServer):
    def __init__(self) -> None:
        super().__init__(tls=True)
        self._lock = threading.Condition()
        self._subscriptions: dict[str, FakeSubscription] = {}
        self._answers: dict[str, tuple[int, bytes]] = {}
        self._delays: dict[str, float] = {}
        self._requests: list[PushRequest] = []

    # -- control --------------------------------------------------------------------------------

    def new_subscription(self) -> FakeSubscription:
        private_key = ec.generate_private_key(ec.SECP256R1())
        public = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        auth_secret = os.urandom(16)
        sub_id = uuid.uuid4().hex
        subscription = FakeSubscription(
            id=sub_id,
            endpoint=f"{self.origin}/push/{sub_id}",
            p256dh=_b64url(public),
            auth=_b64url(auth_secret),
            private_key=private_key,
            auth_secret=auth_secret,
        )
        with self._lock:
            self._subscriptions[sub_id] = subscription
        return subscription

    def answer(
        self, subscription: FakeSubscription | str, status: int | None, body: str = ""
    ) -> None:
        """Answer every later push to `subscription` with `status` (None: back to normal)."""
        sub_id = _id(subscription)
        with self._lock:
            if status is None:
                self._answers.pop(sub_id, None)
            else:
                self._answers[sub_id] = (status, body.encode())

    def delay(self, subscription: FakeSubscription | str, seconds: float) -> None:
        with self._lock:
            self._delays[_id(subscription)] = seconds

    # -- observation -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[PushRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def received(self) -> list[PushRequest]:
        """Pushes accepted (201) after VAPID and decryption checks passed."""
        with self._lock:
            return [r for r in self._requests if r.status == 201]

    def received_for(self, subscription: FakeSubscription | str) -> list[PushRequest]:
        sub_id = _id(subscription)
        return [r for r in self.received if r.subscription_id == sub_id]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[PushRequest]:
        """Block until `count` pushes were accepted (for senders in another thread/process)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(r.status == 201 for r in self._requests) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"timed out after {timeout}s waiting for {count} pushes")
                self._lock.wait(left)
            return [r for r in self._requests if r.status == 201]

    # -- serving (handler threads) ---------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        match = _PATH.match(request.path)
        if request.method != "POST" or match is None:
            return Reply(404)
        sub_id = match["id"]
        with self._lock:
            subscription = self._subscriptions.get(sub_id)
            answer = self._answers.get(sub_id)
            delay = self._delays.get(sub_id, 0.0)
        if delay:
            self.pause(delay)
        ttl_header = request.headers.get("ttl")
        record: dict[str, Any] = {
            "subscription_id": sub_id,
            "ttl": int(ttl_header) if ttl_header and ttl_header.isdigit() else None,
            "urgency": request.headers.get("urgency"),
            "payload": None,
            "claims": None,
            "vapid_public_key": None,
        }
        if subscription is None:
            return self._finish(record, 410, "unknown subscription")
        try:
            record["vapid_public_key"], record["claims"] = self._verify_vapid(request)
        except (ValueError, jwt.PyJWTError) as exc:
            return self._finish(record, 401, f"VAPID: {exc}")
        if record["ttl"] is None:
            return self._finish(record, 400, "missing or invalid TTL header")
        if answer is not None:
            return self._finish(record, answer[0], "told to", answer[1])
        try:
            record["payload"] = self._decrypt(request, subscription)
        except ValueError as exc:
            return self._finish(record, 400, f"decryption: {exc}")
        return self._finish(record, 201, None)

    def _finish(
        self, record: dict[str, Any], status: int, error: str | None, body: bytes = b""
    ) -> Reply:
        with self._lock:
            self._requests.append(PushRequest(status=status, error=error, **record))
            self._lock.notify_all()
        headers = {"Location": f"{self.origin}/message/{uuid.uuid4().hex}"} if status == 201 else {}
        return Reply(status, body or (error or "").encode(), headers)

    def _verify_vapid(self, request: Request) -> tuple[str, dict[str, Any]]:
        match = _VAPID.match(request.headers.get("authorization", ""))
        if match is None:
            raise ValueError("no 'vapid t=..., k=...' Authorization header")
        point = _b64url_decode(match["k"])
        public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        claims: dict[str, Any] = jwt.decode(
            match["t"],
            key=public_key,
            algorithms=["ES256"],
            audience=self.origin,
            options={"require": ["aud", "exp", "sub"]},
        )
        if claims["exp"] > time.time() + 86400:
            raise ValueError("exp more than 24 hours ahead")
        if not str(claims["sub"]).startswith(("mailto:", "https:")):
            raise ValueError("sub is neither mailto: nor https:")
        return match["k"], claims

    @staticmethod
    def _decrypt(request: Request, subscription: FakeSubscription) -> Any:
        if request.headers.get("content-encoding") != "aes128gcm":
            raise ValueError("Content-Encoding is not aes128gcm")
        try:
            plain = http_ece.decrypt(
                request.body,
                private_key=subscription.private_key,
                auth_secret=subscription.auth_secret,
                version="aes128gcm",
            )
        except Exception as exc:  # http_ece raises assorted errors on bad input
            raise ValueError(f"{type(exc).__name__}: {exc}") from exc
        return json.loads(plain)


def _id(subscription: FakeSubscription | str) -> str:
    return subscription if isinstance(subscription, str) else subscription.id


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
