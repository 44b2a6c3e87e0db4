"""JWT verification (algorithms pinned by configuration) and development token minting."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson

from shared.settings import Settings

_HMAC: dict[str, Callable[..., Any]] = {
    "HS256": hashlib.sha256,
    "HS384": hashlib.sha384,
    "HS512": hashlib.sha512,
}
_PLAIN_HEADER = frozenset({"alg", "typ", "kid"})


class InvalidToken(ValueError):
    """The token is malformed, forged, expired or lacks a required claim."""


@dataclass(frozen=True, slots=True)
class Claims:
    user_id: str
    expires_at: float
    sessions: frozenset[str]
    channel: str | None = None
    token_id: str | None = None  # `jti`: what a token revocation names
    issued_at: float | None = None  # `iat`: what a user's revocation cut-off is compared with


def _load_key(value: str) -> str:
    """A PEM key given inline, or the path of a file that holds it."""
    if value.lstrip().startswith("-----BEGIN"):
        return value.replace("\\n", "\n")
    return Path(value).read_text()


class TokenVerifier:
    """Verifies connection and subscription tokens. Never accepts `none`, and picks the key
    by algorithm family so that an RS256 public key can never be used as an HMAC secret."""

    def __init__(self, settings: Settings) -> None:
        self._algorithms = list(settings.jwt_algorithms)
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        public = settings.jwt_public_key
        self._public = _load_key(public.get_secret_value()) if public else None
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway = settings.jwt_leeway
        # With one family of algorithms, one key serves them all, and PyJWT refuses any other
        # algorithm: the token is parsed once (connect rate), not once for its header first.
        symmetric = {a.startswith("HS") for a in self._algorithms}
        self._key = (
            (self._secret if symmetric == {True} else self._public) if len(symmetric) == 1 else None
        )
        # The common case (a shared secret, no audience or issuer to match) is checked without
        # PyJWT when the token is plain: PyJWT's parsing costs about 40 µs of a connect's CPU,
        # most of it per character in Python. Anything else, and every token this check does
        # not accept, goes to PyJWT, whose answer stands (and whose errors the client gets).
        self._hmac_key = (
            self._secret.encode()
            if self._secret is not None
            and symmetric == {True}
            and self._audience is None
            and self._issuer is None
            else None
        )

    def verify(self, token: object) -> Claims:
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise InvalidToken("token must be a non-empty string")
        if self._hmac_key is not None:
            plain = self._plain_claims(token, self._hmac_key)
            if plain is not None:
                return _claims(plain)
        key, algorithms = self._key, self._algorithms
        if key is None:  # both families configured: the header's algorithm picks the key
            try:
                header = jwt.get_unverified_header(token)
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"malformed token: {exc}") from exc
            algorithm = header.get("alg")
            if algorithm not in self._algorithms:
                raise InvalidToken(f"algorithm {algorithm!r} is not accepted")
            key = self._secret if str(algorithm).startswith("HS") else self._public
            if key is None:
                raise InvalidToken(f"no key configured for {algorithm}")
            algorithms = [algorithm]
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.InvalidAlgorithmError as exc:
            raise InvalidToken(f"algorithm {_algorithm(token)!r} is not accepted") from exc
        except jwt.InvalidSignatureError as exc:
            raise InvalidToken(str(exc)) from exc
        except jwt.DecodeError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        return _claims(claims)

    def _plain_claims(self, token: str, key: bytes) -> dict[str, Any] | None:
        """The claims of a plain HMAC token that PyJWT would accept too: canonical base64url
        segments (no padding), a header of `alg` (allowed), `typ` and `kid` strings only, a
        valid signature, and `exp`, `sub` and numeric time claims within the leeway. None for
        anything else: PyJWT decides then."""
        parts = token.split(".")
        if len(parts) != 3 or "=" in token:
            return None
        header_b64, payload_b64, signature_b64 = parts
        header = _json_segment(header_b64)
        if not isinstance(header, dict) or not header.keys() <= _PLAIN_HEADER:
            return None
        algorithm = header.get("alg")
        if algorithm not in self._algorithms or algorithm not in _HMAC:
            return None
        if any(not isinstance(value, str) for value in header.values()):
            return None
        signature = _segment(signature_b64)
        if signature is None:
            return None
        signed = token[: len(header_b64) + 1 + len(payload_b64)].encode()
        expected = hmac.digest(key, signed, _HMAC[algorithm])
        if not hmac.compare_digest(expected, signature):
            return None
        claims = _json_segment(payload_b64)
        if not isinstance(claims, dict) or claims.get("sub") is None:
            return None
        now, leeway = time.time(), self._leeway
        times = [claims.get(name) for name in ("exp", "iat", "nbf")]
        if any(value is not None and not _number(value) for value in times):
            return None
        exp, iat, nbf = times
        if exp is None or int(exp) <= now - leeway:
            return None
        if (iat is not None and int(iat) > now + leeway) or (
            nbf is not None and int(nbf) > now + leeway
        ):
            return None
        return claims


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _segment(text: str) -> bytes | None:
    """A base64url segment without padding, decoded; None unless it is canonical (what it
    decodes to encodes back to it), as PyJWT requires."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != text.encode():
        return None
    return raw


def _json_segment(text: str) -> object:
    raw = _segment(text)
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


_NO_SESSIONS: frozenset[str] = frozenset()


def _algorithm(token: str) -> object:
    """The algorithm a refused token names, for the message."""
    try:
        return jwt.get_unverified_header(token).get("alg")
    except jwt.PyJWTError:
        return None


def _claims(claims: dict[str, Any]) -> Claims:
    sub, sessions, channel = claims.get("sub"), claims.get("sessions", []), claims.get("channel")
    if not isinstance(sub, str) or not sub:
        raise InvalidToken("claim 'sub' must be a non-empty string")
    if not isinstance(sessions, list) or not all(isinstance(s, str) for s in sessions):
        raise InvalidToken("claim 'sessions' must be a list of strings")
    if channel is not None and not isinstance(channel, str):
        raise InvalidToken("claim 'channel' must be a string")
    jti, iat = claims.get("jti"), claims.get("iat")  # PyJWT checked that `iat` is a number
    if jti is not None and not isinstance(jti, str):
        raise InvalidToken("claim 'jti' must be a string")
    issued_at = None if iat is None else float(iat)
    grants = frozenset(sessions) if sessions else _NO_SESSIONS  # one empty set per node
    return Claims(sub, float(claims["exp"]), grants, channel, jti, issued_at)


def issue_token(
    secret: str,
    user_id: str,
    *,
    sessions: list[str] | None = None,
    channel: str | None = None,
    ttl: float = 3600,
    audience: str | None = None,
    issuer: str | None = None,
    jti: str | None = None,
) -> str:
    """An HS256 token, as a backend would mint for its users (or `archmesh-rt token`)."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + int(ttl)}
    if sessions:
        claims["sessions"] = sessions
    if channel:
        claims["channel"] = channel
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    if jti:
        claims["jti"] = jti
    return jwt.encode(claims, secret, algorithm="HS256")
