"""The page's HTTP side without a browser: `/` and the dev-only endpoints' answers to good and
bad input (their 404 outside dev mode is in test_page.py)."""

from __future__ import annotations

import json

import httpx
import jwt
import pytest

from tests.browser.processes import DevProcess
from tests.servers import JWT_SECRET

pytestmark = pytest.mark.slow


def post(server: DevProcess, path: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{server.http}{path}",
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **headers},
        timeout=5,
    )


def test_index_is_the_page_with_its_mode_and_a_strict_policy(dev: DevProcess) -> None:
    response = httpx.get(f"{dev.http}/", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<script type="application/json" id="archmesh-config">{"dev":true,' in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src" not in policy  # default-src 'self': no inline script runs
    assert response.headers["referrer-policy"] == "no-referrer"
    assert httpx.get(f"{dev.http}/static/app.js", timeout=5).status_code == 200


def test_dev_token_mints_connection_and_subscription_tokens(dev: DevProcess) -> None:
    response = post(dev, "/api/dev/token", {"user_id": "alice", "sessions": ["s1", "s2", "s1"]})
    assert response.status_code == 200, response.text
    body = response.json()
    claims = jwt.decode(body["token"], JWT_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["sessions"]) == ("alice", ["s1", "s2"])
    assert body["user_id"] == "alice"
    assert claims["exp"] == pytest.approx(body["expires_at"], abs=2)

    response = post(dev, "/api/dev/token", {"user_id": "alice", "channel": "session:s9"})
    claims = jwt.decode(response.json()["token"], JWT_SECRET, algorithms=["HS256"])
    assert claims["channel"] == "session:s9"
    assert "sessions" not in claims


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"user_id": "has space"}, 422, "validation_error", "user_id"),
        ({}, 422, "validation_error", "user_id"),
        ({"user_id": "a", "sessions": "s1"}, 422, "validation_error", "sessions"),
        ({"user_id": "a", "sessions": ["ok", "{bad}"]}, 422, "validation_error", "sessions"),
        (
            {"user_id": "a", "sessions": [f"s{i}" for i in range(51)]},
            422,
            "validation_error",
            "sessions",
        ),
        ({"user_id": "a", "channel": "nope"}, 422, "validation_error", "channel"),
        ([1, 2], 422, "bad_request", None),
        (b"{not json", 400, "bad_json", None),
        (b"x" * 9000, 413, "too_large", None),
    ],
)
def test_dev_token_refuses_bad_input(
    dev: DevProcess, body: object, status: int, code: str, field: str | None
) -> None:
    response = post(dev, "/api/dev/token", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if field:
        assert error["fields"][0]["loc"] == [field]


def test_dev_endpoints_want_json_so_a_cross_site_form_cannot_use_them(dev: DevProcess) -> None:
    for path in ("/api/dev/token", "/api/dev/simulate"):
        response = httpx.post(
            f"{dev.http}{path}",
            content=b'{"user_id": "alice", "session_id": "s1"}',
            headers={"Content-Type": "text/plain"},
        )
        assert response.status_code == 415
        assert response.json()["error"]["code"] == "unsupported_media_type"


def test_simulate_validates_then_answers_with_the_stages(dev: DevProcess) -> None:
    bad = post(dev, "/api/dev/simulate", {"session_id": "s 1"})
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"][0]["loc"] == ["session_id"]
    slow = post(dev, "/api/dev/simulate", {"session_id": "s1", "interval": 60})
    assert slow.status_code == 422
    ok = post(dev, "/api/dev/simulate", {"session_id": "sim-http", "interval": 0.01})
    assert ok.status_code == 202, ok.text
    body = ok.json()
    assert body["channel"] == "session:sim-http"
    assert body["stages"][-1] == "done"
    assert "architecture_review" in body["stages"]
    assert body["owner_notified"] is False  # no user_id given
