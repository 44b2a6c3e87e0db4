"""`GET /sse`: a node's channels over Server-Sent Events, for clients that cannot open a
WebSocket (proxies that refuse `Upgrade`, locked-down networks).

One stream is one `Member` of the hub and membership, like a WebSocket connection: fan-out hands
it the same publication and pre-encoded frame, and it builds its SSE text (the frame's JSON as
`data`, its positions as `id`) from them without awaiting anything. Its own writer task drains a
byte-bounded queue to the response; a client that cannot keep up is ended (slow consumer).

Every event that moves a position carries an `id` holding the position of EVERY channel of the
stream (gateway.sse_position): the browser's EventSource sends the last one back as
`Last-Event-ID` when it reconnects (to any node), and each channel is recovered from there with
the same history read as a WebSocket `subscribe` with `since`: no gap, no duplicate. A position
that cannot be recovered is told by the channel's `subscribed` event (`recovered: false`).

The stream is read-only: channels come from the query (`channel=`, repeated), the user's own
`user:` channel always included; changing them means opening a new stream with the last id.
A session the token's claims do not allow needs a subscription token (gateway.authorization),
sent in `X-Subscription-Token` headers or `subscription_token=` (never logged): that channel
is held until the token's `exp`, then ended by an `unsubscribed` event (`token_expired`) while
the stream stays open, as on a WebSocket; a fresh token means reopening the stream with it.

Channels under ARCHMESH_JOIN_LEAVE announce a stream's subscribing and leaving like a
WebSocket's, and deliver `join`/`leave` to it as named events (`event: join`), so that an
`EventSource.onmessage` reader sees only what moves a position."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
from archmesh_client.channels import InvalidChannel, user_channel, validate_channel
from starlette.types import Receive, Scope, Send

from gateway.authorization import claims_allow, subscription_grant
from gateway.catchup import Catchup, recover
from gateway.context import ConnectionContext
from gateway.expiry import Expiry
from gateway.grants import SubscriptionGrants
from gateway.hub import Hub
from gateway.open_files import NODE_FULL
from gateway.protocol import (
    CLOSE_REASONS,
    CloseCode,
    Outgoing,
    Since,
    UnsubscribeReason,
    disconnect_frame,
    encode,
    publication_frame,
)
from gateway.sse_position import Positions, decode_positions
from shared.broker import BrokerError, BrokerPublication
from shared.logging import get_logger
from shared.tokens import Claims, InvalidToken

log = get_logger(__name__)

# How long the last events of an ended stream may take to be written before it is cut.
CLOSE_GRACE = 2.0
# How long a browser waits before reconnecting an ended stream (the SSE `retry` field, ms).
RETRY_MS = 1000
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event through as it is written
]
# Tasks ending a subscription whose token expired (the shared timer cannot await): kept here
# so that they are not collected while they run.
_ENDINGS: set[asyncio.Task[None]] = set()


class Refusal(Exception):
    """The stream cannot open: an HTTP status and the services' JSON error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SseStream:
    """One SSE client: a `Member` (hub, membership, presence) and `Controlled` (control API)."""

    def __init__(self, ctx: ConnectionContext, claims: Claims) -> None:
        self.client_id = uuid.uuid4().hex
        self.claims: Claims | None = claims
        self.user_id: str | None = claims.user_id
        self._ctx = ctx
        self._positions = Positions()
        self._catchups: dict[str, Catchup] = {}  # channels whose history is being read
        self._queue: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._close_code: CloseCode | None = None
        self._expiry: Expiry | None = None
        self._grants: SubscriptionGrants | None = None  # made for a subscription token
        self._writer: asyncio.Task[None] | None = None

    # -- Member ---------------------------------------------------------------------------

    def deliver(self, pub: BrokerPublication, frame: Outgoing) -> None:
        catchup = self._catchups.get(pub.channel)
        if catchup is not None:
            if catchup.held is not None:
                catchup.held.append((pub, frame))
                return
            if catchup.covers(pub):
                return  # history sent it already (the read overtook pub/sub)
            if pub.offset is not None:
                del self._catchups[pub.channel]
        self._publication(pub, frame.text, fanned_out=True)

    def push(self, frame: Outgoing) -> None:
        """A frame the hub sends by itself: the one that moves a position is an unasked
        `subscribed` (history lost: the channel now stands elsewhere), rare enough to parse."""
        if frame.text.startswith('{"type":"subscribed"'):
            told = orjson.loads(frame.text)
            channel, offset, epoch = told.get("channel"), told.get("offset"), told.get("epoch")
            if channel in self._ctx.membership.channels(self) and isinstance(offset, int):
                self._catchups.pop(channel, None)
                self._positions.move(channel, offset, str(epoch))
                self._event(frame.text, self._positions.event_id())
                return
        self._event(frame.text, None)

    def close(self, code: CloseCode) -> None:
        """End the stream, telling why (a `disconnect` event); a slow consumer loses its queue.
        EventSource reconnects by itself after the end: to another node when this one drains."""
        if self._close_code is not None:
            return
        if code is CloseCode.SLOW_CONSUMER:
            self._queue.clear()
            self._queued = 0
        self._event(disconnect_frame(code), None)
        self._close_code = code
        self._ctx.metrics.disconnects.labels(code=str(int(code))).inc()
        self._wake.set()
        asyncio.get_running_loop().call_later(CLOSE_GRACE, self._cut)

    # -- Controlled -----------------------------------------------------------------------

    async def subscribe_by_server(self, channel: str) -> None:
        admitted = self._ctx.admission.admitted
        if self._close_code is not None or channel in self._ctx.membership.channels(self):
            return
        if not admitted(self):
            return  # gone: its clean-up ran already
        try:
            await self._subscribe(channel, None)
        except BrokerError as exc:
            log.info("server_subscribe_failed", channel=channel, reason=str(exc))
        if not admitted(self):  # it went while this ran: leave for it
            await self._leave(channel)

    async def unsubscribe_by_server(self, channel: str, reason: str) -> None:
        if self._close_code is not None or channel not in self._ctx.membership.channels(self):
            return
        if self._grants is not None:
            self._grants.drop(channel)
        self._catchups.pop(channel, None)
        self._positions.drop(channel)
        self._event(
            encode({"type": "unsubscribed", "channel": channel, "reason": str(reason)}), None
        )
        await self._leave(channel)

    # -- events ---------------------------------------------------------------------------

    def _publication(self, pub: BrokerPublication, text: str, *, fanned_out: bool = False) -> None:
        """`fanned_out`: the hub's fan-out counted it (deliveries, bytes) already."""
        if pub.signal:  # a join/leave event: named, no position (its frame says which kind)
            kind = "join" if text.startswith('{"type":"join"') else "leave"
            self._event(text, None, counted=fanned_out, name=kind)
            return
        if pub.offset is not None:
            self._positions.move(pub.channel, pub.offset, pub.epoch or "")
        self._event(text, self._positions.event_id(), counted=fanned_out)

    def _event(
        self,
        data: str,
        event_id: str | None,
        *,
        raw: bool = False,
        counted: bool = False,
        name: str | None = None,
    ) -> None:
        """Queue one event: `data` (one line of JSON), its `id` and its `event` name (None: a
        plain message); `raw`: a field as is."""
        if self._close_code is not None:
            return
        if raw:
            chunk = f"{data}\n\n".encode()
        else:
            head = f"id: {event_id}\n" if event_id is not None else ""
            if name is not None:
                head = f"event: {name}\n{head}"
            chunk = f"{head}data: {data}\n\n".encode()
        self._queued += len(chunk)
        if not counted:
            self._ctx.stats.bytes_out += len(chunk)
        if self._queued > self._ctx.settings.client_queue_bytes:
            self.close(CloseCode.SLOW_CONSUMER)
            return
        self._queue.append(chunk)
        self._wake.set()

    # -- lifecycle ------------------------------------------------------------------------

    async def open(
        self, channels: list[str], since: dict[str, Since], grants: dict[str, float]
    ) -> None:
        """Join every channel, each recovered from its position in `since` (the
        Last-Event-ID's), if it has one there; those in `grants` held until then (a
        subscription token's `exp`)."""
        claims = self.claims
        assert claims is not None
        self._expiry = self._ctx.expiries.add(claims.expires_at, self._expired)
        if grants:
            self._grants = SubscriptionGrants(self._ctx.expiries)
            for channel, until in grants.items():
                self._grants.grant(channel, until, self._grant_due)
        connected = {
            "type": "connected",
            "client_id": self.client_id,
            "user_id": self.user_id,
            "node": self._ctx.node,
            "expires_at": int(claims.expires_at),
            "transport": "sse",
        }
        self._event(f"retry: {RETRY_MS}", None, raw=True)
        self._event(encode(connected), None)
        # Until its history is read, a channel stands where the client said: an id sent
        # meanwhile (another channel's publication) must not lose that position.
        for channel in channels:
            given = since.get(channel)
            if given is not None:
                self._positions.move(channel, given.offset, given.epoch)
        # Side by side, as a WebSocket connect's (Connection._subscribe_all): each waits on
        # Redis (presence, history), and the waits of one turn leave together, so a stream of
        # ten channels reconnecting in a storm costs the round trips of one, not ten.
        outcomes = await asyncio.gather(
            *(self._subscribe(c, since.get(c)) for c in dict.fromkeys(channels)),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # the first failure, once every channel is settled

    async def _subscribe(self, channel: str, since: Since | None) -> None:
        """`subscribed` (with `recovered` when there was a position), what was missed since,
        then what arrived meanwhile: in offset order, each once."""
        if self._close_code is not None:
            return
        catchup = self._catchups[channel] = Catchup()
        catchup.hold()
        try:
            history = await self._ctx.join(self, channel, since)
        except BrokerError:
            self._catchups.pop(channel, None)
            await self._leave(channel)
            raise
        position = history.position
        reply: dict[str, Any] = {"type": "subscribed", "channel": channel}
        _, missed = recover(reply, since, history, self._ctx.metrics)
        if missed:
            self._event(encode(reply), None)  # each missed publication moves the position
            for pub in missed:
                self._publication(pub, publication_frame(pub))
        self._positions.move(channel, position.offset, position.epoch)
        if not missed:
            self._event(encode(reply), self._positions.event_id())
        released, reached = catchup.release(position)
        for pub, frame in released:
            self._publication(pub, frame.text, fanned_out=True)
        if reached and self._catchups.get(channel) is catchup:
            del self._catchups[channel]

    async def _leave(self, channel: str) -> None:
        await self._ctx.leave(self, channel)

    def _expired(self) -> None:
        self.close(CloseCode.TOKEN_EXPIRED)

    def _grant_due(self, channel: str) -> None:
        """On the shared timer: leaving is async, so a short task ends the subscription."""
        task = asyncio.ensure_future(self._grant_expired(channel))
        _ENDINGS.add(task)
        task.add_done_callback(_ENDINGS.discard)

    async def _grant_expired(self, channel: str) -> None:
        grants = self._grants
        if grants is None or not grants.take_due(channel):
            return
        if self.claims is not None and claims_allow(self.claims, channel):
            return  # the token's claims hold it still
        try:
            await self.unsubscribe_by_server(channel, UnsubscribeReason.TOKEN_EXPIRED)
        except Exception:
            log.exception("subscription_end_failed", client_id=self.client_id, channel=channel)
            self.close(CloseCode.SERVER_ERROR)

    def start_writer(self, send: Send, receive: Receive) -> asyncio.Task[None]:
        self._writer = asyncio.ensure_future(self._write(send, receive))
        return self._writer

    def _cut(self) -> None:
        """CLOSE_GRACE after `close`: a response that still takes no bytes is abandoned."""
        if self._writer is not None and not self._writer.done():
            self._writer.cancel()

    async def _write(self, send: Send, receive: Receive) -> None:
        """Write queued events (and a `: ping` comment when idle) until the stream ends: the
        client left, or `close` was called."""
        gone = asyncio.ensure_future(_disconnected(receive))
        interval = self._ctx.settings.sse_ping_interval
        try:
            while not gone.done():
                if not self._queue:
                    if self._close_code is not None:
                        break
                    self._wake.clear()
                    waker = asyncio.ensure_future(self._wake.wait())
                    done, _ = await asyncio.wait(
                        (waker, gone), timeout=interval, return_when=asyncio.FIRST_COMPLETED
                    )
                    waker.cancel()
                    if not done:
                        await self._send(send, b": ping\n\n")
                    continue
                body = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                await self._send(send, body)
        finally:
            gone.cancel()

    async def _send(self, send: Send, body: bytes) -> None:
        await send({"type": "http.response.body", "body": body, "more_body": True})

    async def leave_all(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._grants is not None:
            self._grants.clear()
        self._ctx.admission.left(self)
        for channel in list(self._ctx.membership.channels(self)):
            await self._leave(channel)


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class SseEndpoint:
    """The ASGI handler of `GET /sse` (served raw by gateway.app, like `/ws`)."""

    def __init__(
        self,
        ctx: ConnectionContext,
        hub: Hub,
        draining: Callable[[], bool],
        room: Callable[[], bool] = lambda: True,
    ) -> None:
        """`room()`: whether the node may take another client socket (gateway/open_files.py)."""
        self._ctx = ctx
        self._hub = hub
        self._draining = draining
        self._room = room
        self._open = ctx.metrics.transport_connections.labels(transport="sse")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["method"] != "GET":
                raise Refusal(405, "method_not_allowed", "GET /sse opens an event stream")
            if self._draining():
                raise Refusal(503, "draining", "this node is shutting down; retry another")
            if not self._room():
                raise Refusal(503, "node_full", NODE_FULL)
            stream, channels, since, grants = await self._accept(scope)
        except Refusal as refusal:
            await _refuse(send, refusal)
            return
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        self._hub.add(stream)
        self._open.inc()
        log.info("sse_connected", client_id=stream.client_id, user_id=stream.user_id)
        opening = asyncio.ensure_future(self._open_stream(stream, channels, since, grants))
        writer = stream.start_writer(send, receive)
        try:
            await asyncio.wait({writer})
            cut = writer.cancelled()  # it would not take the last events in time
            if not cut and writer.exception() is not None:
                cut = True  # the client went (the server's send raised)
        finally:
            writer.cancel()
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
            await stream.leave_all()
            self._hub.remove(stream)
            self._open.dec()
            log.info("sse_disconnected", client_id=stream.client_id, user_id=stream.user_id)
        if not cut:
            with contextlib.suppress(Exception):  # the response may be gone with its client
                await asyncio.wait_for(
                    send({"type": "http.response.body", "body": b"", "more_body": False}),
                    CLOSE_GRACE,
                )

    async def _open_stream(
        self,
        stream: SseStream,
        channels: list[str],
        since: dict[str, Since],
        grants: dict[str, float],
    ) -> None:
        try:
            await stream.open(channels, since, grants)
        except BrokerError as exc:
            log.info("sse_open_failed", client_id=stream.client_id, reason=str(exc))
            stream.close(CloseCode.SERVER_ERROR)

    async def _accept(
        self, scope: Scope
    ) -> tuple[SseStream, list[str], dict[str, Since], dict[str, float]]:
        """Token, subscription tokens, channels and positions from the request (never logged:
        the query may hold tokens), checked like a WebSocket's connect and subscribes."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        scheme, _, value = headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
        token = token or next(iter(query.get("token", ())), None)
        if not token:
            raise Refusal(401, "invalid_token", "send a token: Authorization: Bearer or ?token=")
        try:
            claims = self._ctx.verifier.verify(token)
            channels = [user_channel(claims.user_id)]
        except (InvalidToken, InvalidChannel) as exc:
            raise Refusal(401, "invalid_token", f"token refused: {exc}") from None
        grants = await self._grants(claims, _subscription_tokens(scope, query))
        for name in [*query.get("channel", ()), *grants]:
            try:
                channel = validate_channel(name)
            except InvalidChannel as exc:
                raise Refusal(400, "invalid_channel", str(exc)) from None
            if channel not in grants and not claims_allow(claims, channel):
                raise Refusal(403, "forbidden", f"not allowed to use {channel}")
            if channel not in channels:
                channels.append(channel)
        limit = self._ctx.settings.max_subscriptions
        if len(channels) > limit:
            raise Refusal(400, "too_many_subscriptions", f"at most {limit} channels per stream")
        last = headers.get("last-event-id") or next(iter(query.get("last_event_id", ())), "")
        since = decode_positions(last) or {}
        stream = SseStream(self._ctx, claims)
        refusal = await self._ctx.admission.admit(stream, claims)
        if refusal is CloseCode.CONNECTION_LIMIT:
            raise Refusal(429, "connection_limit", "too many connections for this user")
        if refusal is not None:
            raise Refusal(403, CLOSE_REASONS[refusal], "token refused")
        return stream, channels, since, grants

    async def _grants(self, claims: Claims, tokens: list[str]) -> dict[str, float]:
        """channel -> until when its subscription token grants it. A token that does not
        grant this user a session (invalid, expired, another user's) or is revoked refuses
        the stream, as it refuses a WebSocket `subscribe`."""
        grants: dict[str, float] = {}
        for sub_token in tokens:
            try:
                channel = self._ctx.verifier.verify(sub_token).channel or ""
            except InvalidToken as exc:
                raise Refusal(403, "forbidden", f"subscription token refused: {exc}") from None
            until = subscription_grant(claims, channel, sub_token, self._ctx.verifier)
            if until is None:
                raise Refusal(403, "forbidden", "subscription token grants no session to you")
            if not await self._ctx.admission.grant_allowed(sub_token):
                raise Refusal(403, "forbidden", f"subscription token for {channel} is revoked")
            grants[channel] = max(until, grants.get(channel, until))
        return grants


def _subscription_tokens(scope: Scope, query: dict[str, list[str]]) -> list[str]:
    """Every `X-Subscription-Token` header (repeated, or comma-separated: a JWT has no comma)
    and `subscription_token=` query parameter."""
    tokens = list(query.get("subscription_token", ()))
    for key, value in scope["headers"]:
        if key.lower() == b"x-subscription-token":
            tokens.extend(t.strip() for t in value.decode("latin-1").split(",") if t.strip())
    return tokens


async def _refuse(send: Send, refusal: Refusal) -> None:
    body = orjson.dumps({"error": {"code": refusal.code, "message": str(refusal)}})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
