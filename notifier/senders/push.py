"""Web Push (pywebpush's asyncio API) with VAPID, encrypted with aes128gcm."""

from __future__ import annotations

import asyncio
import base64
import binascii
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import WebPushException, webpush_async

from notifier.senders.base import DeliveryError, SubscriptionGone, quote_remote
from notifier.settings import NotifierSettings

URGENCIES = ("very-low", "low", "normal", "high")
# RFC 8291: one aes128gcm record of 4096 bytes holds at most 3993 bytes of plaintext.
MAX_PAYLOAD_BYTES = 3993


@dataclass(frozen=True)
class PushTarget:
    endpoint: str
    p256dh: str
    auth: str


def load_vapid_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key from PEM (SEC1 or PKCS#8) or from its base64url raw 32 bytes."""
    text = text.strip().replace("\\n", "\n")
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = _b64url_decode(text)
            if len(raw) == 32:
                key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
            else:
                key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError, binascii.Error):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        # Deliberately no detail: the parser's message could quote the key material.
        raise ValueError("the VAPID private key is neither a PEM nor a base64url P-256 key")
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key browsers pass to `pushManager.subscribe()` (base64url, uncompressed)."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(point).rstrip(b"=").decode()


class PushSender:
    """Sends to push services over one pooled aiohttp session; call `aclose()` at shutdown."""

    def __init__(
        self,
        *,
        vapid_key: ec.EllipticCurvePrivateKey,
        subject: str,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._vapid = Vapid(private_key=vapid_key)
        self._subject = subject
        self._timeout = timeout
        self._ssl_context = ssl_context
        self._session: aiohttp.ClientSession | None = None
        self.application_server_key = application_server_key(vapid_key)

    @classmethod
    def from_settings(cls, s: NotifierSettings) -> PushSender | None:
        if s.vapid_private_key is None or not s.vapid_private_key.get_secret_value().strip():
            return None
        return cls(
            vapid_key=load_vapid_key(s.vapid_private_key.get_secret_value()),
            subject=s.vapid_subject,
            timeout=s.push_timeout,
        )

    async def send(
        self, target: PushTarget, payload: dict[str, Any], *, ttl: int, urgency: str
    ) -> None:
        data = self._check(target, payload, ttl, urgency)
        keys = {"p256dh": target.p256dh, "auth": target.auth}
        subscription = {"endpoint": target.endpoint, "keys": keys}
        try:
            async with asyncio.timeout(self._timeout):
                await webpush_async(
                    subscription,
                    data=data,
                    vapid_private_key=self._vapid,
                    # pywebpush writes aud/exp into this dict: a fresh one per call.
                    vapid_claims={"sub": self._subject},
                    ttl=ttl,
                    headers={"Urgency": urgency},
                    timeout=self._timeout,
                    aiohttp_session=self._client(),
                )
        except WebPushException as exc:
            raise self._refused(exc, target.endpoint) from None
        except TimeoutError:
            raise DeliveryError("push service timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"push service unreachable: {type(exc).__name__}") from exc

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context or True)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    @staticmethod
    def _check(target: PushTarget, payload: dict[str, Any], ttl: int, urgency: str) -> str:
        url = urlsplit(target.endpoint)
        if url.scheme != "https" or not url.hostname:
            raise DeliveryError("push endpoint must be an https URL", permanent=True)
        if urgency not in URGENCIES:
            raise DeliveryError(f"invalid push urgency {urgency!r}", permanent=True)
        if ttl < 0:
            raise DeliveryError("push TTL must not be negative", permanent=True)
        try:
            public = _b64url_decode(target.p256dh)
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public)
            if len(_b64url_decode(target.auth)) != 16:
                raise ValueError("auth secret must be 16 bytes")
        except (ValueError, binascii.Error):
            raise DeliveryError("invalid push subscription keys", permanent=True) from None
        data = orjson.dumps(payload).decode()
        if len(data.encode()) > MAX_PAYLOAD_BYTES:
            raise DeliveryError(
                f"push payload is {len(data.encode())} bytes, over {MAX_PAYLOAD_BYTES}",
                permanent=True,
            )
        return data

    def _refused(self, exc: WebPushException, endpoint: str) -> DeliveryError:
        status = getattr(exc.response, "status", None)
        body = exc.message.partition("Response body:")[2]
        detail = quote_remote(body, ()) if body.strip() else ""
        reason = f"push service answered {status}" + (f": {detail}" if detail else "")
        if status in (404, 410):
            return SubscriptionGone(reason, endpoint=endpoint)
        transient = status is None or status == 429 or status >= 500
        return DeliveryError(reason, permanent=not transient)


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
