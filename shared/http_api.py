"""What the gateway's and the notifier's HTTP APIs share about requests: bounded JSON bodies and
API-key checks. They refuse with `ApiError` (shared/http_errors.py renders it)."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from pydantic import SecretStr
from starlette.requests import Request

from shared.http_errors import ApiError
from shared.tokens import InvalidToken


def bearer(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def is_api_key(given: str | None, key: SecretStr | None) -> bool:
    return (
        given is not None
        and key is not None
        and hmac.compare_digest(given.encode(), key.get_secret_value().encode())
    )


def require_api_key(request: Request, key: SecretStr | None) -> None:
    """The API key; or an operator's admin token, where the app accepts them
    (`app.state.admin_tokens`, shared/admin_auth.py): the console acts through these APIs."""
    given = bearer(request)
    if is_api_key(given, key) or _is_admin_token(request, given):
        return
    if key is None:
        raise ApiError(503, "api_disabled", "set ARCHMESH_API_KEY to enable this API")
    message = "missing or wrong API key (Authorization: Bearer <key>)"
    raise ApiError(401, "unauthorized", message)


def _is_admin_token(request: Request, given: str | None) -> bool:
    tokens = getattr(request.app.state, "admin_tokens", None) if "app" in request.scope else None
    if tokens is None or given is None or given.count(".") != 2:
        return False
    try:
        return bool(tokens.is_admin(given))
    except InvalidToken:
        return False


async def json_body(request: Request, limit: int) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"body exceeds {limit} bytes")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {exc}") from None
