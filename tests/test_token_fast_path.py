"""The verifier's own check of plain HMAC tokens (shared/tokens.py) accepts exactly what PyJWT
accepts, with the same claims: over tokens built to sit on every edge it looks at (padding,
non-canonical base64, header fields, algorithms, time claims of every type around the leeway)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import pytest

from shared.settings import Settings
from shared.tokens import InvalidToken, TokenVerifier

SECRET = "k" * 48
LEEWAY = 5.0
NOW = int(time.time())


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: Any, payload: Any, *, key: str = SECRET, alg: str = "HS256") -> str:
    """A token signed over exactly these JSON texts (or raw segments, given as str)."""
    head = header if isinstance(header, str) else b64(json.dumps(header).encode())
    body = payload if isinstance(payload, str) else b64(json.dumps(payload).encode())
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), digest).digest()
    return f"{head}.{body}.{b64(signature)}"


def sign(payload: dict[str, Any], **header: Any) -> str:
    return forge({"alg": "HS256", "typ": "JWT", **header}, payload)


BASE = {"sub": "alice", "exp": NOW + 600}
TOKENS = {
    "plain": sign(BASE),
    "hs512 not allowed": forge({"alg": "HS512"}, BASE, alg="HS512"),
    "alg none": forge({"alg": "none"}, BASE),
    "alg missing": forge({"typ": "JWT"}, BASE),
    "kid": sign(BASE, kid="k1"),
    "kid not a string": sign(BASE, kid=7),
    "crit": sign(BASE, crit=["exp"]),
    "b64 false": sign(BASE, b64=False),
    "header not an object": forge(["HS256"], BASE),
    "payload not an object": sign([1, 2]),  # type: ignore[arg-type]
    "wrong key": forge({"alg": "HS256"}, BASE, key="x" * 48),
    "padded signature": sign(BASE) + "=",
    "padded header": b64(b'{"alg":"HS256"}') + "=.x.y",
    "non-canonical payload": forge({"alg": "HS256"}, b64(json.dumps(BASE).encode())[:-1] + "_"),
    "junk in payload": forge({"alg": "HS256"}, "!!" + b64(json.dumps(BASE).encode())),
    "four segments": sign(BASE) + ".x",
    "no sub": sign({"exp": NOW + 600}),
    "sub null": sign({"sub": None, "exp": NOW + 600}),
    "sub a number": sign({"sub": 5, "exp": NOW + 600}),
    "no exp": sign({"sub": "alice"}),
    "exp a string": sign({"sub": "alice", "exp": str(NOW + 600)}),
    "exp a bool": sign({"sub": "alice", "exp": True}),
    "exp a float": sign({"sub": "alice", "exp": NOW + 600.5}),
    "expired": sign({"sub": "alice", "exp": NOW - 60}),
    "expired within the leeway": sign({"sub": "alice", "exp": NOW - 2}),
    "iat in the future": sign({**BASE, "iat": NOW + 60}),
    "iat within the leeway": sign({**BASE, "iat": NOW + 2}),
    "iat a string": sign({**BASE, "iat": "yesterday"}),
    "nbf in the future": sign({**BASE, "nbf": NOW + 60}),
    "nbf past": sign({**BASE, "nbf": NOW - 60}),
    "jti a number": sign({**BASE, "jti": 5}),
    "sessions": sign({**BASE, "sessions": ["s1"], "jti": "j1", "iat": NOW}),
    "sessions not a list": sign({**BASE, "sessions": "s1"}),
    "aud ignored when unset": sign({**BASE, "aud": "elsewhere"}),
    "NaN exp": forge({"alg": "HS256"}, b64(b'{"sub":"alice","exp":NaN}')),
}


def reference(token: str) -> dict[str, Any] | None:
    """PyJWT's answer under the same settings (None: refused)."""
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            SECRET,
            algorithms=["HS256"],
            leeway=LEEWAY,
            options={"require": ["exp", "sub"], "verify_aud": False},
        )
    except jwt.PyJWTError:
        return None
    return claims


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_the_fast_check_agrees_with_pyjwt(name: str) -> None:
    verifier = TokenVerifier(Settings(jwt_secret=SECRET, jwt_leeway=LEEWAY))  # type: ignore[call-arg]
    token = TOKENS[name]
    expected = reference(token)
    try:
        got = verifier.verify(token)
    except InvalidToken:
        got = None
    if expected is None:
        # PyJWT refuses it; so may the verifier's own claim checks (e.g. `sessions`).
        assert got is None, name
        return
    if got is None:  # refused by the verifier's claim rules, on what PyJWT returned
        with pytest.raises(InvalidToken):
            verifier.verify(token)
        assert not isinstance(expected.get("sessions", []), list) or not isinstance(
            expected.get("jti", ""), str
        ), name
        return
    assert got.user_id == expected["sub"]
    assert got.expires_at == float(expected["exp"])
    assert got.token_id == expected.get("jti")
    assert got.issued_at == (None if "iat" not in expected else float(expected["iat"]))
