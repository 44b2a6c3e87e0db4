"""How the gateway's and the notifier's HTTP APIs refuse a request, in one place.

A handler refuses by raising `ApiError` (status, code, message, extra fields), however deep in
the call it is; code that needs an error's code (a batch reporting each item) reads the
exception. `ERROR_HANDLERS`, installed on every Starlette app of the product, renders every
error as `{"error": {"code", "message", ...}}`: an `ApiError`, Starlette's own `HTTPException`
(an unknown path is 404 `not_found`, a wrong method 405 `method_not_allowed` with `Allow`), a
`BrokerError`, a Redis connection or timeout error or a Cluster's own retry-later errors,
including a redirection (ASK, MOVED) still answered when redis-py's retries ran out while a slot
migrates (503 `unavailable`: the store cannot be reached, the client may retry; logged as a
warning without a traceback), and any other exception: 500 `internal_error`, its traceback
logged and its text kept out of the answer. Starlette re-raises after that 500 answer has
gone out, so the server (uvicorn) also records it and closes that one connection."""

from __future__ import annotations

import re
from collections.abc import Mapping
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

from redis.exceptions import AskError, ClusterDownError, ClusterError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ExceptionHandler

from shared.broker import BrokerError
from shared.logging import get_logger

log = get_logger(__name__)


class ApiError(Exception):
    """A refusal with its HTTP status and the `error` object the client gets."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The `error` object, as a response or one batch item's result carries it."""
        return {"code": self.code, "message": self.message, **self.extra}


def unavailable(exc: BrokerError) -> ApiError:
    """Redis (the broker) cannot be reached: the caller may retry."""
    return ApiError(503, "unavailable", str(exc))


# Codes of Starlette's own refusals; any other status gets its reason phrase in snake case.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def _http_code(status: int) -> str:
    if status in _HTTP_CODES:
        return _HTTP_CODES[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "http_error"
    return re.sub(r"[^a-z]+", "_", phrase.lower()).strip("_")


def _render(error: ApiError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error.body()}, status_code=error.status, headers=headers)


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _render(exc)


async def _broker_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, BrokerError)
    return _render(unavailable(exc))


# A Cluster between two slot maps (a slot migrating, a master failing over), and a read in
# MULTI while its slot's keys are split between two masters (MovedError is an AskError: the
# move outlasted redis-py's retries). Any other ResponseError is a 500.
_MOVING: tuple[type[Exception], ...] = (ClusterError, ClusterDownError, TryAgainError, AskError)


async def _store_unreachable(request: Request, exc: Exception) -> Response:
    # The exception's text names the Redis address, kept out of the answer like a crash's text.
    log.warning(
        "http_store_unavailable",
        method=request.method,
        path=request.url.path,
        error=type(exc).__name__,
    )
    message = "the store cannot be reached; retry later"
    if isinstance(exc, _MOVING):
        message = "the store is moving data between its nodes; retry shortly"
    return _render(ApiError(503, "unavailable", message))


async def _http_exception(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in {204, 304}:  # no body allowed
        return Response(status_code=exc.status_code, headers=exc.headers)
    error = ApiError(exc.status_code, _http_code(exc.status_code), exc.detail)
    return _render(error, exc.headers)  # keeps `Allow` on a 405


async def _unexpected(request: Request, exc: Exception) -> Response:
    # The path, never the query string or headers: either may carry a token or the API key.
    log.error("http_internal_error", method=request.method, path=request.url.path, exc_info=exc)
    error = ApiError(500, "internal_error", "unexpected server error (logged on the server)")
    return _render(error)


ERROR_HANDLERS: Mapping[Any, ExceptionHandler] = MappingProxyType(
    {
        ApiError: _api_error,
        BrokerError: _broker_error,
        RedisConnectionError: _store_unreachable,
        RedisTimeoutError: _store_unreachable,
        **dict.fromkeys(_MOVING, _store_unreachable),
        HTTPException: _http_exception,
        Exception: _unexpected,
    }
)
