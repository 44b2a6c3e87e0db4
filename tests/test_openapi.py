"""`GET /openapi.json` of a gateway, a notifier and `archmesh-rt dev` (real processes): each is
a valid OpenAPI 3.1 document, documents every route its app serves, and every operation it
documents exists (a bodyless, credential-less probe answers neither 404 nor 405, with a status
the document lists and, for errors, the documented error body).

Which routes a document leaves out, by rule (the same rule shared/openapi.py states): the
WebSocket endpoint `/ws` (docs/protocol.md is its reference), static files (the `/static`
mount) and the pages for people (`PAGES`, checked to answer HTML). Every other route of
`app.routes`, mounted routers included, plus `/sse` (served before the router) must be in it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import fakeredis
import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from archmesh_realtime.dev import development_node
from deploy.ports import free_port
from gateway.api_models import HistoryPage
from gateway.app import Gateway
from notifier.app import Notifier
from notifier.settings import NotifierSettings
from shared.openapi import ErrorBody, operation, undocumented
from shared.settings import Settings
from tests.servers import API_KEY, GatewayProcess, NotifierProcess, RedisServer, ServiceProcess

PAGES = {"GET /", "GET /admin"}  # HTML for people (the page, the console), not an API
RAW = {"GET /sse"}  # served by the gateway before its router
# The notifier with every optional route on (unsubscribe links, the providers' webhooks).
NOTIFIER_ENV = {
    "ARCHMESH_NOTIFIER_PUBLIC_URL": "https://notify.archmesh.test",
    "ARCHMESH_NOTIFIER_UNSUBSCRIBE_SECRET": "u" * 40,
    "ARCHMESH_NOTIFIER_EMAIL_EVENTS_SECRET": "e" * 40,
    "ARCHMESH_TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
    "ARCHMESH_TWILIO_AUTH_TOKEN": "t" * 32,
    "ARCHMESH_TWILIO_FROM": "+15005550006",
}


class DevProcess(ServiceProcess):
    """`archmesh-rt dev` (gateway + notifier in one process, embedded store)."""

    command = "dev"

    def __init__(self) -> None:
        port = free_port()
        env = {**os.environ, "ARCHMESH_PORT": str(port), "ARCHMESH_NODE_ID": f"dev-{port}"}
        env.pop("ARCHMESH_REDIS_URL", None)
        super().__init__(port, env)


@pytest.fixture(scope="module")
def processes(shared_redis: RedisServer) -> Iterator[dict[str, ServiceProcess]]:
    started: dict[str, ServiceProcess] = {}
    try:
        started["gateway"] = GatewayProcess().start()
        started["notifier"] = NotifierProcess(shared_redis.url, **NOTIFIER_ENV).start()
        started["dev"] = DevProcess().start()
        yield started
    finally:
        for process in started.values():
            process.stop()


def in_process_routes(kind: str) -> list[BaseRoute]:
    """The routes of the app each process serves, composed the same way in this process."""
    if kind == "gateway":
        return list(Gateway(Settings(redis_url="memory://"))._http.routes)
    settings = NotifierSettings(redis_url="memory://")
    if kind == "notifier":
        optional = {name.removeprefix("ARCHMESH_").lower(): v for name, v in NOTIFIER_ENV.items()}
        on = NotifierSettings.model_validate({"redis_url": "memory://", **optional})
        return list(Notifier(on, redis=fakeredis.FakeAsyncRedis()).app.routes)
    return list(development_node(settings)._http.routes)


def served(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[str]:
    """`METHOD /path` of every route, walking mounted routers, minus the rule's exclusions."""
    for route in routes:
        if isinstance(route, Mount):
            if isinstance(route.app, StaticFiles):
                continue
            yield from served(route.routes, prefix + route.path)
        elif isinstance(route, WebSocketRoute):
            continue
        else:
            assert isinstance(route, Route), f"a route of an unknown kind: {route!r}"
            for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
                if f"{method} {prefix}{route.path}" not in PAGES:
                    yield f"{method} {prefix}{route.path}"


def operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": op
        for path, methods in spec["paths"].items()
        for method, op in methods.items()
    }


@pytest.fixture(scope="module")
def documents(processes: dict[str, ServiceProcess]) -> dict[str, dict[str, Any]]:
    found = {}
    for kind, process in processes.items():
        reply = httpx.get(f"{process.http}/openapi.json", timeout=10)
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"] == "application/json"
        found[kind] = reply.json()
    return found


@pytest.mark.parametrize("kind", ["gateway", "notifier", "dev"])
def test_each_document_is_valid_openapi_3_1(kind: str, documents: dict[str, Any]) -> None:
    spec = documents[kind]
    validate(spec)  # raises OpenAPIValidationError, naming the offending part
    assert spec["openapi"] == "3.1.0"
    assert set(spec["components"]["securitySchemes"]) == {"apiKey", "userToken"}


@pytest.mark.parametrize("kind", ["gateway", "notifier", "dev"])
def test_every_route_the_app_serves_is_documented(kind: str, documents: dict[str, Any]) -> None:
    routes = in_process_routes(kind)
    expected = set(served(routes)) | (RAW if kind != "notifier" else set())
    documented = set(operations(documents[kind]))
    missing = sorted(expected - documented)
    assert not missing, (
        f"{kind}: served but not in /openapi.json: {missing}; declare each handler's operation "
        "with @operation(...) from shared/openapi.py (or mark an HTML page with @page)"
    )
    assert not undocumented(routes)
    assert not documented - expected, f"{kind}: documented but not served: {documented - expected}"


@pytest.mark.parametrize("kind", ["gateway", "notifier", "dev"])
def test_every_documented_operation_answers(
    kind: str, documents: dict[str, Any], processes: dict[str, ServiceProcess]
) -> None:
    """A probe without body or credential: never 404/405, a documented status, and an error
    answer is the documented error body."""
    base = processes[kind].http
    for key, op in operations(documents[kind]).items():
        method, path = key.split(" ", 1)
        url = base + path.replace("{", "").replace("}", "")  # every path parameter: its name
        if path == "/sse":
            reply = httpx.get(url, timeout=5)  # no token: refused before the stream opens
        else:
            reply = httpx.request(method, url, timeout=5)
        assert reply.status_code not in (404, 405), f"{kind} {key}: {reply.status_code}"
        assert str(reply.status_code) in op["responses"], f"{kind} {key}: {reply.status_code}"
        if reply.status_code >= 400:
            ErrorBody.model_validate(reply.json())


def test_pages_left_out_answer_html(processes: dict[str, ServiceProcess]) -> None:
    for page in PAGES:
        method, path = page.split(" ", 1)
        reply = httpx.request(method, processes["gateway"].http + path, timeout=5)
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/html")


def test_history_answers_match_their_model(processes: dict[str, ServiceProcess]) -> None:
    """The history page is built without its model (its data stays raw JSON text)."""
    gateway = processes["gateway"]
    assert isinstance(gateway, GatewayProcess)
    assert gateway.publish("session:openapi", {"type": "t", "n": 1}).status_code == 200
    reply = httpx.get(
        f"{gateway.http}/api/channels/session:openapi/history",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=5,
    )
    page = HistoryPage.model_validate(reply.json())
    assert [p.data for p in page.publications] == [{"type": "t", "n": 1}]


def test_a_route_without_an_operation_is_named() -> None:
    async def handler(_: Any) -> Any:
        raise AssertionError("never called")

    @operation("Declared")
    async def declared(_: Any) -> Any:
        raise AssertionError("never called")

    routes = [
        Route("/a", declared, methods=["GET"]),
        Mount("/m", routes=[Route("/b", handler, methods=["POST", "PUT"])]),
    ]
    assert undocumented(routes) == ["POST /m/b", "PUT /m/b"]
