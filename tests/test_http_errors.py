"""Every error of both HTTP APIs is the documented `{"error": {"code", "message", ...}}`: an
unknown path, a wrong method (with `Allow`), an `ApiError` from deep in a handler, and a crash
(500 `internal_error`, logged with its traceback, its text kept from the client), and a
store outage (503 `unavailable`). Against a
gateway and a notifier process as ops run them, and the shared handlers in process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from redis.exceptions import AskError, MovedError, ResponseError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from shared.http_errors import ERROR_HANDLERS, ApiError
from tests.servers import API_KEY, GatewayProcess, NotifierProcess, RedisServer


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    """The `error` object of a JSON error answer with this status."""
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/json"
    error: dict[str, Any] = reply.json()["error"]
    assert isinstance(error["message"], str)
    return error


def allowed(reply: httpx.Response) -> set[str]:
    return {method.strip() for method in reply.headers["allow"].split(",")}


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayProcess]:
    node = GatewayProcess().start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def notifier(shared_redis: RedisServer) -> Iterator[NotifierProcess]:
    process = NotifierProcess(shared_redis.url).start()
    yield process
    process.stop(signal.SIGKILL)


def test_a_notifier_whose_redis_is_down_answers_503_unavailable() -> None:
    redis_server = RedisServer()
    redis_server.start()
    process = NotifierProcess(redis_server.url).start()
    try:
        assert process.request("GET", "/api/analytics").status_code == 200
        redis_server.stop()
        error = error_of(process.request("GET", "/api/analytics"), 503)
        assert error["code"] == "unavailable"
        assert str(redis_server.port) not in error["message"]
    finally:
        process.stop(signal.SIGKILL)
        redis_server.cleanup()


def test_gateway_unknown_path_and_wrong_method_are_json(gateway: GatewayProcess) -> None:
    assert error_of(httpx.get(f"{gateway.http}/no/such/path"), 404)["code"] == "not_found"
    assert error_of(httpx.get(f"{gateway.http}/static/nosuch.js"), 404)["code"] == "not_found"
    wrong = httpx.get(f"{gateway.http}/api/publish")
    assert error_of(wrong, 405)["code"] == "method_not_allowed"
    assert allowed(wrong) == {"POST"}
    wrong = httpx.post(f"{gateway.http}/healthz")
    assert error_of(wrong, 405)["code"] == "method_not_allowed"
    assert allowed(wrong) == {"GET", "HEAD"}


def test_gateway_refusal_from_deep_in_the_publisher(gateway: GatewayProcess) -> None:
    reply = gateway.publish("nochannel", {"type": "x"})
    assert error_of(reply, 422)["code"] == "invalid_channel"
    batch = httpx.post(
        f"{gateway.http}/api/publish/batch",
        json=[{"channel": "nochannel", "data": {"type": "x"}}, {"channel": "broadcast"}],
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert batch.status_code == 200
    assert [r["error"]["code"] for r in batch.json()["results"]] == ["invalid_channel", "bad_data"]


@pytest.mark.redis
def test_notifier_unknown_path_and_wrong_method_are_json(notifier: NotifierProcess) -> None:
    assert error_of(notifier.request("GET", "/api/nosuch"), 404)["code"] == "not_found"
    wrong = notifier.request("DELETE", "/api/users/ada/preferences")
    assert error_of(wrong, 405)["code"] == "method_not_allowed"
    # Every method the path takes, not only those of the first route that matched it.
    assert allowed(wrong) == {"GET", "HEAD", "PUT", "PATCH"}
    wrong = notifier.request("GET", "/api/notifications")
    assert error_of(wrong, 405)["code"] == "method_not_allowed"
    assert allowed(wrong) == {"POST"}
    head = notifier.request("HEAD", "/api/users/ada/inbox")
    assert (head.status_code, head.content) == (200, b"")


@pytest.mark.redis
def test_notifier_refusals_from_deep_in_a_handler(notifier: NotifierProcess) -> None:
    bad_id = notifier.request("GET", "/api/users/no%20spaces/inbox")
    assert error_of(bad_id, 422)["code"] == "validation_error"
    missing = error_of(notifier.request("GET", "/api/notifications/nosuch"), 404)
    assert missing == {"code": "not_found", "message": "no such notification (or it expired)"}
    invalid = error_of(notifier.request("PUT", "/api/users/ada/preferences", json=[]), 422)
    assert invalid["code"] == "validation_error"
    assert invalid["fields"], "the extra fields of the ApiError are in the answer"
    stranger = httpx.get(
        f"{notifier.http}/api/users/ada/inbox", headers={"Authorization": "Bearer not-a-jwt"}
    )
    assert error_of(stranger, 401)["code"] == "invalid_token"


# -- the shared handlers on an app of the test's own -----------------------------------------


def _conflict(depth: int) -> None:
    if depth:
        _conflict(depth - 1)
    raise ApiError(409, "conflict", "already there", holder="ada")


async def deep(_: Request) -> Response:
    _conflict(5)
    return Response()


async def crash(_: Request) -> Response:
    raise RuntimeError("s3cr3t internals")


async def teapot(_: Request) -> Response:
    raise HTTPException(status_code=429)


async def moving(request: Request) -> Response:
    # What redis-py raises from a MULTI whose slot is still migrating after its retries.
    if request.query_params.get("kind") == "moved":
        raise MovedError("9171 127.0.0.1:7001")
    raise AskError("9171 127.0.0.1:7001")


async def wrong_type(_: Request) -> Response:
    raise ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")


APP = Starlette(
    routes=[
        Route("/deep", deep),
        Route("/crash", crash),
        Route("/teapot", teapot),
        Route("/moving", moving),
        Route("/wrong-type", wrong_type),
    ],
    exception_handlers=ERROR_HANDLERS,
)


async def request(path: str) -> httpx.Response:
    # Starlette re-raises a crash after answering it, for the server to see: a server keeps
    # going, and so does this client.
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.get(path)


async def test_an_api_error_from_deep_in_a_handler_keeps_its_status_code_and_fields() -> None:
    error = error_of(await request("/deep"), 409)
    assert error == {"code": "conflict", "message": "already there", "holder": "ada"}


async def test_other_http_exceptions_get_a_code_from_their_status() -> None:
    assert error_of(await request("/teapot"), 429)["code"] == "too_many_requests"


async def test_a_crash_is_a_500_json_without_its_text_and_is_logged() -> None:
    with capture_logs() as logs:
        reply = await request("/crash?token=s3cr3t-token")
    assert error_of(reply, 500)["code"] == "internal_error"
    assert "s3cr3t" not in reply.text
    [entry] = [e for e in logs if e["event"] == "http_internal_error"]
    assert (entry["log_level"], entry["method"], entry["path"]) == ("error", "GET", "/crash")
    assert isinstance(entry["exc_info"], RuntimeError)
    assert "s3cr3t-token" not in repr(entry)


@pytest.mark.parametrize("kind", ["ask", "moved"])
async def test_a_redirection_that_outlasts_the_clients_retries_is_503(kind: str) -> None:
    """A slot still migrating when redis-py gave up: retry later, not a crash; the address in
    the error stays out of the answer."""
    reply = await request(f"/moving?kind={kind}")
    error = error_of(reply, 503)
    assert error == {
        "code": "unavailable",
        "message": "the store is moving data between its nodes; retry shortly",
    }
    assert "127.0.0.1" not in reply.text


async def test_other_redis_errors_are_still_500() -> None:
    assert error_of(await request("/wrong-type"), 500)["code"] == "internal_error"
