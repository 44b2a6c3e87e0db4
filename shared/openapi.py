"""The OpenAPI 3.1 document of a process's HTTP API, generated from its routes.

Each handler declares its operation where it is defined, with `@operation(...)`: a summary, the
pydantic model that validates its body, the model that builds its response, the error statuses
it answers with and who may call it. `document()` walks the app's routes (mounted routers
included) and turns those declarations into the document that `openapi_route()` serves at
`GET /openapi.json`, so the document is made of the models the API runs on and cannot drift
from them.

What a document leaves out, by rule: a mount that is not a router (static files), a route whose
endpoint is marked `@page` (an HTML page for people, not an API) and WebSocket routes. Every
other route must declare its operation: `undocumented()` names those that do not (the test in
tests/test_openapi.py fails on them), and the document skips them rather than failing a running
server.

Errors follow shared/http_errors.py: every 4xx/5xx answer is `ErrorBody`. A body adds 400
(`bad_json`), 413 and 422; the API key adds 401 and 503 (`api_disabled`), so declarations list
only the statuses their own handler adds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router, WebSocketRoute

from shared import __version__

API_KEY = "apiKey"
USER_TOKEN = "userToken"
SECURITY_SCHEMES: Mapping[str, Any] = {
    API_KEY: {
        "type": "http",
        "scheme": "bearer",
        "description": "The service API key (ARCHMESH_API_KEY): `Authorization: Bearer <key>`.",
    },
    USER_TOKEN: {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A user's signed token (the one the gateway accepts); it opens only "
        "that user's resources.",
    },
}
_MARK = "__openapi__"
_PAGE = "__openapi_page__"

Refs = Mapping[tuple[Any, JsonSchemaMode], Any]  # (model, mode) -> its $ref
Handler = Callable[[Request], Awaitable[Response]]
F = TypeVar("F", bound=Callable[..., Any])


class ErrorDetail(BaseModel):
    """A refusal's `error` object (shared/http_errors.py `ApiError.body()`); some codes add
    fields (`fields` for validation errors, for instance)."""

    model_config = ConfigDict(extra="allow")
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer of the product's HTTP APIs."""

    error: ErrorDetail


@dataclass(frozen=True)
class Param:
    """A query parameter. Handlers read these by hand (they answer `ApiError`s of their own),
    so each is declared beside its handler."""

    name: str
    description: str
    type: Literal["string", "integer", "boolean"] = "string"
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """What one method of one path takes and answers. `response` is None for an empty answer
    (`status` 204) or a non-JSON one (`media_type`); `same_body` lists other statuses that
    answer with the response model (readiness answers 503 with its usual body)."""

    summary: str
    description: str | None = None
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    media_type: str = "application/json"
    errors: tuple[int, ...] = ()
    auth: tuple[str, ...] = (API_KEY,)
    query: tuple[Param, ...] = ()
    path: Mapping[str, str] = field(default_factory=dict)  # path parameter descriptions
    same_body: tuple[int, ...] = ()
    tag: str | None = None


def operation(summary: str, **details: Any) -> Callable[[F], F]:
    """Declare a handler's operation (the `Operation` fields). A bound method exposes what its
    function declares, so handlers that are methods are declared like functions."""
    declared = Operation(summary, **details)

    def mark(handler: F) -> F:
        setattr(handler, _MARK, declared)
        return handler

    return mark


def page(handler: F) -> F:
    """Mark an endpoint as a page for people (HTML): left out of the API document."""
    setattr(handler, _PAGE, True)
    return handler


def method_route(path: str, **handlers: Handler) -> Route:
    """One route per path, its handler chosen by method: a wrong method is then a 405 whose
    `Allow` names every method the path takes (a route per method would name only its own).
    Each handler's declared operation documents its method."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    setattr(endpoint, _MARK, {m: getattr(h, _MARK, None) for m, h in handlers.items()})
    return Route(path, endpoint, methods=list(handlers))


@dataclass(frozen=True)
class Served:
    """One method of one path an app serves, with the route that serves it."""

    path: str
    method: str
    route: BaseRoute
    operation: Operation | None


def served(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[Served]:
    """Every (path, method) the routes answer, walking mounted routers, minus what the
    module's rule leaves out (static files, pages, WebSockets)."""
    for route in routes:
        if isinstance(route, Mount):
            if isinstance(route.app, Router) or route.routes:
                yield from served(route.routes, prefix + route.path)
            continue  # a mounted app that is not a router: static files
        if isinstance(route, WebSocketRoute) or not isinstance(route, Route):
            continue
        if getattr(route.endpoint, _PAGE, False):
            continue
        declared = getattr(route.endpoint, _MARK, None)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            op = declared.get(method) if isinstance(declared, Mapping) else declared
            yield Served(prefix + route.path, method, route, op)


def undocumented(routes: Iterable[BaseRoute]) -> list[str]:
    """`METHOD /path` of every served route that declares no operation."""
    return [f"{s.method} {s.path}" for s in served(routes) if s.operation is None]


def document(
    title: str,
    routes: Iterable[BaseRoute],
    *,
    description: str = "",
    extra: Mapping[str, Mapping[str, Operation]] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`; `extra` adds paths an app serves outside its
    router (the gateway's `/sse`), as {path: {method: operation}}."""
    found = [(s.path, s.method, s.operation) for s in served(routes) if s.operation]
    for path, methods in (extra or {}).items():
        found += [(path, method, op) for method, op in methods.items()]
    models: dict[tuple[type[BaseModel], JsonSchemaMode], None] = {
        (ErrorBody, "serialization"): None
    }
    for _, _, op in found:
        assert op is not None
        if op.body is not None:
            models[(op.body, "validation")] = None
        if op.response is not None:
            models[(op.response, "serialization")] = None
    refs, defs = models_json_schema(list(models), ref_template="#/components/schemas/{model}")
    error_ref = refs[(ErrorBody, "serialization")]
    paths: dict[str, dict[str, Any]] = {}
    for path, method, op in found:
        assert op is not None
        paths.setdefault(path, {})[method.lower()] = _operation(path, method, op, refs, error_ref)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__, "description": description},
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": dict(SECURITY_SCHEMES),
        },
    }


def _operation(
    path: str,
    method: str,
    op: Operation,
    refs: Refs,
    error_ref: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "summary": op.summary,
        "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_')}".replace("{", "")
        .replace("}", "")
        .replace("-", "_")
        .replace(".", "_"),
    }
    if op.description:
        spec["description"] = op.description
    if op.tag:
        spec["tags"] = [op.tag]
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            **({"description": op.path[name]} if name in op.path else {}),
        }
        for name in _path_names(path)
    ]
    params += [
        {
            "name": q.name,
            "in": "query",
            "required": q.required,
            "description": q.description,
            "schema": {"type": q.type},
        }
        for q in op.query
    ]
    if params:
        spec["parameters"] = params
    if op.body is not None:
        schema = refs[(op.body, "validation")]
        spec["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
    spec["security"] = [{scheme: []} for scheme in op.auth]  # [] = no credential needed
    responses: dict[str, Any] = {}
    for status in (op.status, *op.same_body):
        responses[str(status)] = _answer(status, op, refs)
    errors = set(op.errors)
    if op.body is not None:
        errors |= {400, 413, 422}
    if API_KEY in op.auth:
        errors |= {401, 503}
    elif op.auth:
        errors |= {401}
    for status in sorted(errors - set(op.same_body)):
        responses[str(status)] = {
            "description": HTTPStatus(status).phrase,
            "content": {"application/json": {"schema": error_ref}},
        }
    spec["responses"] = responses
    return spec


def _answer(status: int, op: Operation, refs: Refs) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": HTTPStatus(status).phrase}
    if op.response is not None:
        schema = refs[(op.response, "serialization")]
        answer["content"] = {op.media_type: {"schema": schema}}
    elif status != 204:
        json = op.media_type == "application/json"
        answer["content"] = {op.media_type: {"schema": {"type": "object" if json else "string"}}}
    return answer


def _path_names(path: str) -> list[str]:
    return [part[1:-1].split(":")[0] for part in path.split("/") if part.startswith("{")]


def openapi_route(
    title: str,
    routes: Callable[[], Iterable[BaseRoute]],
    *,
    description: str = "",
    extra: Mapping[str, Mapping[str, Operation]] | None = None,
) -> Route:
    """`GET /openapi.json`: the document of the routes `routes()` returns when first asked
    (the app's own list, this route included), built once."""
    built: list[bytes] = []

    @operation("This OpenAPI document", auth=(), tag="operations")
    async def openapi(_: Request) -> Response:
        if not built:
            spec = document(title, routes(), description=description, extra=extra)
            built.append(orjson.dumps(spec))
        return Response(built[0], media_type="application/json")

    return Route("/openapi.json", openapi, methods=["GET"])
