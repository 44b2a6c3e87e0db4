"""JWT verification (algorithms pinned by configuration) and development token minting."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from shared.settings import Settings


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

    def verify(self, token: object) -> Claims:
        if not isinstance(token, str) or not token or len(token) > 8192:
            raise InvalidToken("token must be a non-empty string")
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
