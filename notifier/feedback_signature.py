"""The email events webhook's signature: `X-ArchMesh-Signature: t=<unix seconds>,v1=<hex>`.

`v1` is the lower-case hex HMAC-SHA256, keyed with ARCHMESH_NOTIFIER_EMAIL_EVENTS_SECRET, of
`<t>.<raw body>`; several `v1` may be given (a sender rotating its key signs with both) and one
must match, compared in constant time. One algorithm, named by the header's version and never
chosen by it: nothing a forger sends changes how a request is checked. The timestamp is
signed, so a request captured in transit cannot be replayed after the tolerance, and within it
the route refuses a signature it has already taken (notifier/providers_email.py)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

HEADER = "X-ArchMesh-Signature"
MAX_HEADER = 1024


class SignatureError(ValueError):
    """The request is not signed with our key; the reason is safe to show."""


class StaleSignature(ValueError):
    """Signed, but its timestamp is outside the tolerance."""


@dataclass(frozen=True, slots=True)
class Signed:
    timestamp: int
    signature: str  # the matching v1: what a replay would carry again


def _parse(header: str) -> tuple[int, list[str]]:
    if not header or len(header) > MAX_HEADER:
        raise SignatureError(f"missing or oversized {HEADER} header")
    timestamp: int | None = None
    signatures = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit() and timestamp is None:
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value.strip().lower())
    if timestamp is None or not signatures:
        raise SignatureError(f"{HEADER} must be t=<unix seconds>,v1=<hex HMAC-SHA256>")
    return timestamp, signatures


def verify(secret: bytes, header: str, body: bytes, now: float, tolerance: float) -> Signed:
    """The matching signature, or SignatureError (forged, malformed) or StaleSignature."""
    timestamp, signatures = _parse(header)
    expected = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    matching = [s for s in signatures if hmac.compare_digest(expected.encode(), s.encode())]
    if not matching:
        raise SignatureError("the signature does not match the body and timestamp")
    if abs(now - timestamp) > tolerance:
        raise StaleSignature(f"the signature's timestamp is more than {tolerance:g} s from now")
    return Signed(timestamp, matching[0])
