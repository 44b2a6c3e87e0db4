"""Token verification under attack, settings validation, and the CLI's error handling."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError

from shared.settings import Settings
from shared.tokens import InvalidToken, TokenVerifier, issue_token
from tests.servers import REPO

SECRET = "s" * 64
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PUBLIC = (
    RSA_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_PUBLIC = (
    EC_KEY.public_key()
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    .decode()
)


def claims(**extra: object) -> dict[str, object]:
    # Built at collection time: valid (and a future `nbf` still ahead) for as long as a slow
    # suite takes to reach the test; a 10-minute margin once ran out before it did.
    return {"sub": "alice", "exp": int(time.time()) + 86400, **extra}


def verifier(**settings: object) -> TokenVerifier:
    return TokenVerifier(Settings(**settings))  # type: ignore[arg-type]


def test_hs256_roundtrip_with_sessions() -> None:
    got = verifier(jwt_secret=SECRET).verify(issue_token(SECRET, "alice", sessions=["s1", "s2"]))
    assert got.user_id == "alice"
    assert got.sessions == frozenset({"s1", "s2"})
    assert got.channel is None


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (jwt.encode(claims(), key=None, algorithm="none"), "not accepted"),
        (jwt.encode(claims(), "x" * 40, algorithm="HS256"), "Signature"),
        (jwt.encode(claims(exp=int(time.time()) - 60), SECRET, algorithm="HS256"), "expired"),
        (jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256"), "exp"),
        (jwt.encode({"exp": int(time.time()) + 86400}, SECRET, algorithm="HS256"), "sub"),
        (jwt.encode(claims(sub=""), SECRET, algorithm="HS256"), "sub"),
        (jwt.encode(claims(nbf=int(time.time()) + 86400), SECRET, algorithm="HS256"), "not yet"),
        (jwt.encode(claims(sessions="s1"), SECRET, algorithm="HS256"), "sessions"),
        (jwt.encode(claims(), SECRET, algorithm="HS512"), "not accepted"),
        ("a.b.c", "malformed"),
        ("", "non-empty"),
    ],
)
def test_hs256_attacks_are_refused(token: str, message: str) -> None:
    with pytest.raises(InvalidToken, match=message):
        verifier(jwt_secret=SECRET).verify(token)


def test_audience_and_issuer_are_enforced() -> None:
    v = verifier(jwt_secret=SECRET, jwt_audience="archmesh", jwt_issuer="https://id.example")
    good = jwt.encode(claims(aud="archmesh", iss="https://id.example"), SECRET, algorithm="HS256")
    assert v.verify(good).user_id == "alice"
    for bad in (
        claims(aud="other", iss="https://id.example"),
        claims(iss="https://id.example"),
        claims(aud="archmesh", iss="https://evil.example"),
    ):
        with pytest.raises(InvalidToken):
            v.verify(jwt.encode(bad, SECRET, algorithm="HS256"))


def test_rs256_and_es256_with_public_keys() -> None:
    rs = verifier(jwt_public_key=RSA_PUBLIC, jwt_algorithms="RS256")
    assert rs.verify(jwt.encode(claims(), RSA_KEY, algorithm="RS256")).user_id == "alice"
    es = verifier(jwt_public_key=EC_PUBLIC, jwt_algorithms="ES256")
    assert es.verify(jwt.encode(claims(), EC_KEY, algorithm="ES256")).user_id == "alice"
    with pytest.raises(InvalidToken, match="not accepted"):
        rs.verify(jwt.encode(claims(), EC_KEY, algorithm="ES256"))


def test_hs_rs_key_confusion_is_refused() -> None:
    # The classic attack: sign HS256 with the server's *public* key as the HMAC secret.
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64(json.dumps(claims()).encode())
    signature = hmac.new(RSA_PUBLIC.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    forged = f"{header}.{payload}.{b64(signature.digest())}"
    with pytest.raises(InvalidToken, match="not accepted"):
        verifier(jwt_public_key=RSA_PUBLIC, jwt_algorithms="RS256").verify(forged)
    both = verifier(jwt_secret=SECRET, jwt_public_key=RSA_PUBLIC)
    with pytest.raises(InvalidToken, match="Signature"):
        both.verify(forged)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"jwt_secret": "short"}, "at least 32 bytes"),
        ({"jwt_algorithms": "none"}, "unsupported"),
        ({"jwt_algorithms": "HS256"}, "JWT_SECRET is unset"),
        ({"jwt_secret": SECRET, "jwt_algorithms": "RS256"}, "PUBLIC_KEY"),
        ({"redis_url": "kafka://x"}, "must start with"),
        ({"history_overrides": "user:=abc"}, "prefix=size/ttl"),
        ({"port": 70000}, "less than or equal"),
    ],
)
def test_bad_settings_are_refused(env: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**env)  # type: ignore[arg-type]


def test_lists_come_from_comma_separated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARCHMESH_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("ARCHMESH_PRESENCE_PREFIXES", "session:,broadcast")
    settings = Settings()
    assert settings.allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.presence_prefixes == ["session:", "broadcast"]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ARCHMESH_")}
    return subprocess.run(
        [sys.executable, "-m", "archmesh_realtime", *args],
        env={**clean, **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_reports_configuration_errors_in_one_line() -> None:
    bad_port = run_cli("gateway", ARCHMESH_PORT="eighty", ARCHMESH_JWT_SECRET=SECRET)
    assert bad_port.returncode == 2
    assert bad_port.stderr.startswith("archmesh-rt: configuration error: ARCHMESH_PORT:")
    assert "Traceback" not in bad_port.stderr
    assert bad_port.stderr.count("\n") == 1
    no_key = run_cli("gateway")
    assert no_key.returncode == 2
    assert "ARCHMESH_JWT_SECRET or ARCHMESH_JWT_PUBLIC_KEY" in no_key.stderr


def test_cli_token_is_verifiable() -> None:
    result = run_cli(
        "token", "--user", "u1", "--sessions", "s1,s2", "--ttl", "120", ARCHMESH_JWT_SECRET=SECRET
    )
    assert result.returncode == 0, result.stderr
    claims_ = verifier(jwt_secret=SECRET).verify(result.stdout.strip())
    assert claims_.user_id == "u1"
    assert claims_.sessions == frozenset({"s1", "s2"})
    assert 100 < claims_.expires_at - time.time() <= 120


def test_cli_help_explains_each_command() -> None:
    for command in ("gateway", "dev", "token"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "usage: archmesh-rt " + command in result.stdout
