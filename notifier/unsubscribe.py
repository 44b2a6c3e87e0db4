"""One-click unsubscribe links (RFC 8058): a signed, expiring token per user and type.

The token is `<payload>.<signature>`, both base64url: the payload is the JSON
`{"u": user, "t": type, "m": "email", "e": expiry}` and the signature HMAC-SHA256 over it with
a key of its own (`ARCHMESH_NOTIFIER_UNSUBSCRIBE_SECRET`), compared in constant time. One
algorithm, no header to choose it: nothing a forger sends can change how it is checked. A
token is a capability (it switches that user's email of that type off without a login), so
it is never logged; the HTTP server's access log is off."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import orjson
from archmesh_client.notifications import ID_PATTERN, TYPE_PATTERN, Medium
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from notifier.settings import NotifierSettings

PATH = "/api/unsubscribe"
ONE_CLICK = "List-Unsubscribe=One-Click"
MAX_TOKEN = 1024


class InvalidLink(ValueError):
    """Forged, tampered with, malformed or expired; the reason is safe to show."""


class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    u: str = Field(pattern=ID_PATTERN)
    t: str = Field(pattern=TYPE_PATTERN)
    m: Medium
    e: int


@dataclass(frozen=True, slots=True)
class Unsubscription:
    """What a valid link switches off."""

    user_id: str
    type: str
    medium: Medium


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class UnsubscribeLinks:
    def __init__(
        self,
        secret: bytes,
        base_url: str,
        ttl: float,
        critical: frozenset[str],
        clock: Callable[[], datetime],
    ) -> None:
        self._key = secret
        self._url = base_url.rstrip("/") + PATH
        self._ttl = int(ttl)
        self._critical = critical
        self._clock = clock

    @classmethod
    def from_settings(
        cls, s: NotifierSettings, clock: Callable[[], datetime]
    ) -> UnsubscribeLinks | None:
        """None unless both the public URL and the secret are set (then emails carry no
        List-Unsubscribe; the notifier warns at start-up)."""
        if not s.notifier_public_url or s.notifier_unsubscribe_secret is None:
            return None
        secret = s.notifier_unsubscribe_secret.get_secret_value().encode()
        critical = frozenset(s.notifier_critical_types)
        return cls(secret, s.notifier_public_url, s.notifier_unsubscribe_ttl, critical, clock)

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest())

    def token(self, user_id: str, kind: str) -> str:
        expiry = int(self._clock().timestamp()) + self._ttl
        body = {"u": user_id, "t": kind, "m": Medium.EMAIL.value, "e": expiry}
        payload = _b64(orjson.dumps(body))
        return f"{payload}.{self._sign(payload)}"

    def email_headers(self, user_id: str, kind: str) -> dict[str, str]:
        """The RFC 8058 headers of one email; none for a critical type (no opting out)."""
        if kind in self._critical:
            return {}
        link = f"{self._url}?token={quote(self.token(user_id, kind), safe='')}"
        return {"List-Unsubscribe": f"<{link}>", "List-Unsubscribe-Post": ONE_CLICK}

    def verify(self, token: str) -> Unsubscription:
        if len(token) > MAX_TOKEN or token.count(".") != 1:
            raise InvalidLink("malformed unsubscribe token")
        payload, signature = token.split(".")
        if not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            raise InvalidLink("the unsubscribe token's signature does not match")
        try:
            claims = _Payload.model_validate_json(_unb64(payload))
        except (ValueError, ValidationError):
            raise InvalidLink("malformed unsubscribe token") from None
        if claims.e <= self._clock().timestamp():
            raise InvalidLink("the unsubscribe link has expired")
        return Unsubscription(claims.u, claims.t, claims.m)
