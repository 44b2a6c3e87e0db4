"""The gateway node as one ASGI app: `/ws` handled raw (no middleware on the hot path), every
other path by Starlette; one lifespan that starts and stops the node's parts. This is where they
are put together: the hub (registration, fan-out) and membership, presence, control (the
control stream's follower, its API, admission at connect), and the context each connection
gets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from archmesh_client.control import ControlClient
from archmesh_client.publisher import Publisher
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from gateway.admin_api import AdminApi
from gateway.admin_figures import GatewayFigures
from gateway.admission import Admission
from gateway.api import PublishApi
from gateway.connection import Connection
from gateway.context import ConnectionContext
from gateway.control import ControlFollower
from gateway.control_api import ControlApi, NodeControlTransport
from gateway.expiry import Expiries
from gateway.handshake_gate import HandshakeGate
from gateway.history_api import HistoryApi
from gateway.hub import Hub
from gateway.join_leave import JoinLeave
from gateway.metrics import GatewayMetrics
from gateway.open_files import NODE_FULL, OpenFiles
from gateway.outbox import Flusher
from gateway.page import page_routes
from gateway.presence import PresenceTracker
from gateway.protocol import CloseCode
from gateway.sse import SseEndpoint
from gateway.user_connections import UserConnections
from shared.admin_auth import AdminTokens
from shared.announcements import Announcer, create_board
from shared.broker import Broker, create_broker
from shared.http_errors import ERROR_HANDLERS
from shared.http_ops import Readiness, ops_routes
from shared.logging import get_logger
from shared.openapi import USER_TOKEN, Operation, Param, openapi_route
from shared.presence import PresenceStore, create_presence
from shared.revocations import RevocationStore, create_revocations
from shared.settings import Settings
from shared.tokens import TokenVerifier

log = get_logger(__name__)

Lifespan = Callable[[], contextlib.AbstractAsyncContextManager[None]]
_TITLE = "ArchMesh Realtime gateway"
# `/sse` is served before the router (its query holds a token, kept out of every log), so its
# operation is declared here rather than on a route; `/ws` (WebSocket) is in docs/protocol.md.
SSE_OPERATION = {
    "/sse": {
        "GET": Operation(
            "Channels over Server-Sent Events (read-only; the user's own channel included)",
            description="Each event's data is a protocol frame (docs/protocol.md); its id holds "
            "every channel's position, sent back as Last-Event-ID to recover on reconnect.",
            media_type="text/event-stream",
            auth=(USER_TOKEN,),
            errors=(400, 403, 429, 503),
            query=(
                Param("token", "the user's token when no Authorization header can be sent"),
                Param("channel", "a channel to follow (repeat for several)"),
                Param("last_event_id", "the last event id, where Last-Event-ID cannot be sent"),
            ),
            tag="realtime",
        )
    }
}


class Gateway:
    """A node's parts, and itself the ASGI app that uvicorn serves."""

    def __init__(
        self,
        settings: Settings,
        broker: Broker | None = None,
        presence: PresenceStore | None = None,
        revocations: RevocationStore | None = None,
        *,
        dev: bool = False,
        routes: Sequence[BaseRoute] = (),
        lifespans: Sequence[Lifespan] = (),
    ) -> None:
        """`dev` enables the development-only endpoints; `routes` and `lifespans` let one process
        host more than a gateway (the notifier, in `archmesh-rt dev`)."""
        self.settings = settings
        self.dev = dev
        self._lifespans = tuple(lifespans)
        self.node = settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.metrics = GatewayMetrics()
        liveness = settings.broker_liveness()
        broker = broker or create_broker(settings.redis_url, settings.history_policy(), liveness)
        self.broker = broker
        self.metrics.count_reads(broker.history_reads)
        flusher = Flusher(self.metrics.fanout_seconds.observe)
        self.hub = Hub(broker, self.metrics, flusher)
        self.presence = PresenceTracker(
            presence or create_presence(settings.redis_url, liveness),
            self.hub.membership,
            self.node,
            tuple(settings.presence_prefixes),
            settings.presence_ttl,
        )
        self.expiries = Expiries()
        self.publisher = Publisher(broker, settings.max_publish_bytes, settings.idempotency_window)
        self.verifier = TokenVerifier(settings)
        self.revocations = revocations or create_revocations(settings.redis_url, liveness)
        users = UserConnections(settings.user_connection_limit)
        self.admission = Admission(self.revocations, users, self.verifier)
        self.control = ControlFollower(self.hub, users, self.admission)
        control = ControlClient(
            NodeControlTransport(broker, self.revocations), settings.max_token_lifetime
        )
        self.handshakes = HandshakeGate(
            settings.handshake_concurrency, settings.handshake_max_lag_ms / 1000
        )
        self.metrics.watch_handshakes(self.handshakes)
        self._context = ConnectionContext(
            node=self.node,
            settings=settings,
            verifier=self.verifier,
            metrics=self.metrics,
            stats=self.metrics.stats,
            flusher=flusher,
            expiries=self.expiries,
            membership=self.hub.membership,
            presence=self.presence,
            join_leave=JoinLeave(broker, tuple(settings.join_leave)),
            history=broker.history,
            admission=self.admission,
            live_passed=self.hub.passed,
            handshakes=self.handshakes,
        )
        self.draining = False
        self.open_files = OpenFiles(
            settings.fd_reserve, lambda: len(self.hub.connections), self.metrics
        )
        self._sse = SseEndpoint(
            self._context, self.hub, lambda: self.draining, self.open_files.room
        )
        self._websockets = self.metrics.transport_connections.labels(transport="websocket")
        board = create_board(settings.redis_url, liveness)
        figures = GatewayFigures(
            self.hub, self.metrics, broker, lambda: self.draining, settings.announce_top_channels
        )
        self.announcer = Announcer(
            board,
            self.node,
            "gateway",
            figures,
            interval=settings.announce_interval,
            ttl=settings.announce_ttl,
        )
        admin_tokens = AdminTokens(self.verifier)
        admin = AdminApi(self.node, board, self.presence, settings.api_key, admin_tokens)
        static = Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"))
        ops = ops_routes(self.node, self.readiness, self.metrics.registry)
        self._http = Starlette(
            routes=[
                *PublishApi(self.publisher, settings, self.metrics).routes,
                *HistoryApi(broker.history, settings).routes,
                *ControlApi(control, settings).routes,
                *page_routes(dev=dev, node=self.node),
                *admin.routes,
                *routes,
                *ops,
                openapi_route(_TITLE, lambda: self._http.routes, extra=SSE_OPERATION),
                static,
            ],
            lifespan=self._lifespan,
            exception_handlers=ERROR_HANDLERS,
        )
        self._http.state.gateway = self
        self.metrics.ready.set_function(lambda: float(self.ready))
        self._http.state.admin_tokens = admin_tokens  # the console acts through these APIs

    @asynccontextmanager
    async def _lifespan(self, _: Starlette) -> AsyncIterator[None]:
        await self.hub.start()
        self.presence.start()
        self.control.start()
        self.announcer.start()
        self.open_files.start()
        log.info(
            "gateway_started",
            node=self.node,
            broker=type(self.broker).__name__,
            open_files_limit=self.open_files.limit,
            socket_capacity=self.open_files.capacity,
        )
        try:
            async with contextlib.AsyncExitStack() as stack:
                for lifespan in self._lifespans:
                    await stack.enter_async_context(lifespan())
                yield
        finally:
            await self.open_files.stop()
            await self.announcer.stop()
            await self.control.stop()
            await self.admission.stop()
            await self.presence.stop()
            await self.handshakes.stop()
            self.expiries.stop()
            await self.hub.stop()
            await self.revocations.close()
            log.info("gateway_stopped", node=self.node)

    @property
    def ready(self) -> bool:
        """Ready while live delivery from the broker works, the control stream is followed
        (from then on no command is missed) and the node is not draining."""
        return self.broker.connected and self.control.following and not self.draining

    async def readiness(self) -> Readiness:
        broker, control = self.broker.connected, self.control.following
        details = {"broker": broker, "control": control, "draining": self.draining}
        return Readiness(self.ready, details)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            # The handshake's frame ends before the socket's life begins: on a node holding
            # thousands of idle sockets, every frame kept per socket counts.
            opened = await self._handshake(scope, receive, send)
            if opened is not None:
                conn, token = opened
                self.hub.add(conn)
                self._websockets.inc()
                try:
                    await conn.run(receive, token)
                finally:
                    self.hub.remove(conn)
                    self._websockets.dec()
        elif scope["type"] == "http" and scope["path"] == "/sse":
            await self._sse(scope, receive, send)  # its query holds a token: never logged
        else:
            await self._http(scope, receive, send)

    async def _handshake(
        self, scope: Scope, receive: Receive, send: Send
    ) -> tuple[Connection, str | None] | None:
        """Accept the socket and return its connection and any header token, or refuse it."""
        if (await receive())["type"] != "websocket.connect":
            return None
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.draining:
            await _reject(scope, send, 503, "draining", "this node is shutting down; retry another")
            return None
        if not self.open_files.room():
            await _reject(scope, send, 503, "node_full", NODE_FULL)
            return None
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, headers.get("host", "")):
            log.info("origin_refused", origin=origin)
            await _reject(scope, send, 403, "origin_forbidden", "Origin not allowed")
            return None
        await send({"type": "websocket.accept"})
        token = None
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value:
            token = value.strip()
        return Connection(send, self._context), token

    def _origin_allowed(self, origin: str, host: str) -> bool:
        allowed = self.settings.allowed_origins
        if "*" in allowed or origin in allowed:
            return True
        # With no list configured, only same-origin pages may connect.
        return not allowed and urlsplit(origin).netloc == host

    async def drain(self) -> None:
        """Stop taking clients, then ask the connected ones to reconnect elsewhere, spread over
        `drain_seconds` so that they do not all land on the other nodes at once."""
        self.draining = True
        self.announcer.poke()
        conns = list(self.hub.connections)
        log.info("drain_started", node=self.node, clients=len(conns))
        step = self.settings.drain_seconds / len(conns) if conns else 0.0
        for index, conn in enumerate(conns):
            conn.close(CloseCode.SHUTDOWN)
            if step and index < len(conns) - 1:
                await asyncio.sleep(step)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.hub.empty.wait(), 5.0)
        log.info("drain_finished", node=self.node, remaining=len(self.hub.connections))


async def _reject(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    """Refuse a handshake with an HTTP status and a JSON body where the server allows it."""
    if "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"error": {"code": code, "message": message}})
        headers: list[Any] = [(b"content-type", b"application/json")]
        await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


def create_app(settings: Settings | None = None, broker: Broker | None = None) -> Gateway:
    return Gateway(settings or Settings(), broker)
