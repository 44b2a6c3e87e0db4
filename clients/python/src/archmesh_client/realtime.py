"""Python asyncio client SDK for the ArchMesh Realtime gateway's WebSocket protocol.

    async with RealtimeClient("ws://127.0.0.1:8000/ws", token=get_token) as client:
        await client.subscribe("session:s1")
        async for item in client.publications():
            if isinstance(item, RecoveryFailed):
                ...  # messages were missed on item.channel: reload its state from the backend
            else:
                print(item.channel, item.offset, item.data)

The client reconnects on its own (capped exponential backoff with full jitter) after any
disconnect the gateway marks as retryable and after network failures, calling the token
provider again each time; it resubscribes every channel from the last offset it saw and
drops publications it already delivered. A close with code 4500-4999 is final: the iterator
then raises `ClientClosed`. Only depends on the `websockets` package.

A subscription that a subscription token granted ends at that token's `exp`. Given a
`subscription_token` callback, the client asks it for a fresh token ahead of expiry (at a random
point in the last 10-30% of the token's life) and sends `sub_refresh`; if the gateway ended the
subscription anyway (`token_expired`), it asks once more and resubscribes from the last offset
seen, so nothing is lost while access continues.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Final

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from archmesh_client.backoff import backoff_delay
from archmesh_client.token_life import renew_delay, token_expiry

__all__ = [
    "ClientClosed",
    "Connected",
    "ConnectionLost",
    "Item",
    "Joined",
    "Left",
    "Position",
    "Publication",
    "RealtimeClient",
    "RealtimeError",
    "RecoveryFailed",
    "RequestError",
    "State",
    "StateChange",
    "Subscribed",
    "SubscriptionTokenProvider",
    "TokenProvider",
    "TokenSource",
    "Unsubscribed",
    "backoff_delay",
    "should_reconnect",
]

log = logging.getLogger(__name__)

TokenProvider = Callable[[], str | Awaitable[str]]
"""Called on every (re)connect; may be a plain or an async function."""
TokenSource = str | TokenProvider
SubscriptionTokenProvider = Callable[[str], str | Awaitable[str]]
"""Called with a channel for a fresh subscription token for it; may be a plain or an async
function."""

# WebSocket close codes after which reconnecting cannot help (besides 4500-4999).
_FINAL_WS_CODES: Final = frozenset({1002, 1003, 1007, 1008, 1009, 1010})
# Items of one connect frame (the gateway's limit); more subscriptions go as separate frames.
_CONNECT_SUBSCRIBE_LIMIT: Final = 100


def should_reconnect(code: int | None) -> bool:
    """Whether a close with `code` (None: connection lost) calls for a reconnect.

    4500-4999 never do (bad_request, invalid_token, forbidden, ...); neither do the WebSocket
    codes that mean the client itself is broken (1002, 1003, 1007-1010). Everything else,
    4000-4499, 1001, 1006, 1011, 1012 and any network loss included, does.
    """
    if code is None:
        return True
    if 4500 <= code <= 4999:
        return False
    return code not in _FINAL_WS_CODES


# -- values handed to the caller ------------------------------------------------------


class State(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StateChange:
    """Passed to `on_state`. While reconnecting, `attempt` (from 1) and the `delay` in
    seconds before that attempt; `code`/`reason` say why the previous connection ended."""

    state: State
    attempt: int = 0
    delay: float | None = None
    code: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Position:
    """Where a channel's stream stands: last offset seen, in this epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Publication:
    """One message. `offset`/`epoch` are None for messages sent with a bare Redis PUBLISH."""

    channel: str
    data: dict[str, Any]
    offset: int | None = None
    epoch: str | None = None


@dataclass(frozen=True, slots=True)
class RecoveryFailed:
    """Yielded by `publications()` when a resubscription could not replay what was missed
    (`reason`: epoch_changed, history_trimmed or unknown_position). Delivery goes on live
    from `offset`/`epoch`; the caller should reload the channel's state another way."""

    channel: str
    reason: str
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The gateway's `subscribed` reply. `recovered` is None when no position was sent."""

    channel: str
    offset: int
    epoch: str
    recovered: bool | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """Passed to `on_unsubscribed` when the gateway ended a subscription by itself and the
    client does not resume it: `reason` is `revoked` (a `refresh` brought claims without the
    channel) or `token_expired` (its subscription token expired and no fresh one came)."""

    channel: str
    reason: str


@dataclass(frozen=True, slots=True)
class Connected:
    client_id: str
    user_id: str
    node: str
    expires_at: int


@dataclass(frozen=True, slots=True)
class Joined:
    """Yielded by `publications()` when a connection (this one too, after its `subscribed`)
    subscribed to `channel`, on a channel the gateway announces joins on
    (ARCHMESH_JOIN_LEAVE). Live only: never replayed after a reconnect."""

    channel: str
    user_id: str
    client_id: str


@dataclass(frozen=True, slots=True)
class Left:
    """Yielded by `publications()` when a connection left `channel` (unsubscribed, lost it or
    disconnected), on a channel with join/leave events."""

    channel: str
    user_id: str
    client_id: str


Item = Publication | RecoveryFailed | Joined | Left


class RealtimeError(Exception):
    """Base class of this module's errors."""


class RequestError(RealtimeError):
    """The gateway answered a request with an `error` frame; `code` is its error code
    (forbidden, invalid_channel, not_subscribed, invalid_token, rate_limited, ...)."""

    def __init__(self, code: str, message: str, request: str, channel: str | None = None) -> None:
        super().__init__(f"{request} refused: {code}: {message}")
        self.code = code
        self.message = message
        self.request = request
        self.channel = channel


class ConnectionLost(RealtimeError):
    """The connection dropped before the reply came; the request may be retried."""


class ClientClosed(RealtimeError):
    """The client stopped for good: `close()` was called (code None), the gateway closed with
    a code that forbids reconnecting (4500-4999), or `max_attempts` was used up."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}): {reason}" if code else reason)
        self.code = code
        self.reason = reason


# -- internals ------------------------------------------------------------------------


@dataclass(slots=True)
class _Subscription:
    channel: str
    token: TokenSource | None = None
    since: Position | None = None  # explicit starting point asked by the caller, used once
    latest: bool | None = None  # ask for the latest publication (None: the gateway's default)
    waiters: list[asyncio.Future[Subscribed]] = field(default_factory=list)
    sent_token: str | None = None  # the subscription token the gateway holds it by
    renewal: asyncio.TimerHandle | None = None  # when to send `sub_refresh`

    def stop_renewal(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
            self.renewal = None


@dataclass(frozen=True, slots=True)
class _Ended:
    code: int | None
    reason: str
    reconnect: bool
    connected: bool


class _Final(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


async def _resolve(source: TokenSource) -> str:
    if isinstance(source, str):
        return source
    return _checked(await _awaited(source()))


async def _awaited(value: str | Awaitable[str]) -> str:
    return value if isinstance(value, str) else await value


def _checked(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise RealtimeError("token provider must return a non-empty string")
    return value


def _as_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class RealtimeClient:
    """One logical connection to a gateway, kept alive across disconnects.

    `token` is a JWT or a (sync or async) function returning one, called on every connect.
    Backoff: before reconnect attempt n (from 0) the client sleeps a uniform random time in
    [0, min(backoff_cap, backoff_base * 2**n)] seconds; `max_attempts` None means forever.
    `on_state` gets every `StateChange`; `on_error` gets `RequestError`s that no request is
    waiting for (an error frame without id, or a resubscription the gateway refused).
    `subscription_token(channel)` (sync or async) returns a fresh subscription token for a
    channel subscribed with one: called ahead of the token's expiry, and once more if the
    gateway ended the subscription at expiry. `on_unsubscribed` gets an `Unsubscribed` when
    the gateway ended a subscription that the client does not resume.
    """

    def __init__(
        self,
        url: str,
        token: TokenSource,
        *,
        backoff_base: float = 0.5,
        backoff_cap: float = 20.0,
        max_attempts: int | None = None,
        request_timeout: float = 10.0,
        open_timeout: float = 10.0,
        on_state: Callable[[StateChange], None] | None = None,
        on_error: Callable[[RequestError], None] | None = None,
        connect_options: Mapping[str, Any] | None = None,
        subscription_token: SubscriptionTokenProvider | None = None,
        on_unsubscribed: Callable[[Unsubscribed], None] | None = None,
    ) -> None:
        if backoff_base < 0 or backoff_cap < 0:
            raise ValueError("backoff_base and backoff_cap must be >= 0")
        self.url = url
        self._token = token
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_attempts = max_attempts
        self.request_timeout = request_timeout
        self._open_timeout = open_timeout
        self._on_state = on_state
        self._on_error = on_error
        self._connect_options = dict(connect_options or {})
        self._subscription_token = subscription_token
        self._on_unsubscribed = on_unsubscribed
        self._renewals: set[asyncio.Task[None]] = set()  # referenced until they finish

        self._state = State.CLOSED
        self._attempt = 0
        self._info: Connected | None = None
        self._ws: ClientConnection | None = None
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[Connected] | None = None
        self._closing = False
        self._closed: ClientClosed | None = None
        self._failure: ClientClosed | None = None  # set when not closed by close()
        self._wake = asyncio.Event()
        self._connected_event = asyncio.Event()
        self._ids = itertools.count(1)
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()

        self._subs: dict[str, _Subscription] = {}
        self._positions: dict[str, Position] = {}
        # Per connection: request id -> future; subscribe id -> channel; channels whose
        # subscribe is in flight (their publications are dropped until the reply, which
        # replays them from history) with the position sent.
        self._pending: dict[int, tuple[asyncio.Future[dict[str, Any]], str]] = {}
        self._sub_requests: dict[int, str] = {}
        self._awaiting: dict[str, Position | None] = {}
        self._connect_id: int | None = None
        self._own_since: Position | None = None  # the own channel's `since` in the connect sent
        self._disconnect: tuple[int | None, str, bool] | None = None

    # -- public API ---------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def attempt(self) -> int:
        """Reconnect attempts since the last successful connect."""
        return self._attempt

    @property
    def info(self) -> Connected | None:
        """The last `connected` reply (client_id, user_id, node, expires_at)."""
        return self._info

    @property
    def channels(self) -> list[str]:
        return list(self._subs)

    def position(self, channel: str) -> Position | None:
        """Last offset and epoch seen on `channel` (persist it to resume after a restart)."""
        return self._positions.get(channel)

    async def connect(self) -> Connected:
        """Connect and wait for the gateway's `connected` reply. Network failures are
        retried with backoff; raises `ClientClosed` if the gateway refuses for good (e.g.
        invalid token, 4501) or `max_attempts` runs out."""
        if self._runner is not None or self._closed is not None:
            raise RealtimeError("connect() may be called once per client")
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._runner = asyncio.create_task(self._run(), name="archmesh-realtime-client")
        try:
            return await asyncio.shield(self._first)
        except asyncio.CancelledError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close for good; `publications()` then ends without error."""
        self._closing = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client closed")
        if self._runner is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        else:
            self._finish(None)

    async def __aenter__(self) -> RealtimeClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publications(self) -> AsyncIterator[Item]:
        """Publications (deduplicated, in order per channel), `RecoveryFailed` notices, and
        `Joined`/`Left` on channels with join/leave events.
        Ends after `close()`; raises `ClientClosed` when the gateway closed for good."""
        while True:
            item = await self._queue.get()
            if item is None:
                self._queue.put_nowait(None)  # let any other iterator end too
                if self._failure is not None:
                    raise self._failure
                return
            yield item

    def __aiter__(self) -> AsyncIterator[Item]:
        return self.publications()

    async def subscribe(
        self,
        channel: str,
        token: TokenSource | None = None,
        *,
        since: Position | None = None,
        latest: bool | None = None,
    ) -> Subscribed:
        """Subscribe (kept across reconnects). `token`: a subscription JWT (or provider) for a
        session the connection token does not grant. `since`: replay from a stored position.
        `latest`: the channel's latest publication arrives right after subscribing (and after a
        reconnect that could not recover); None leaves it to ARCHMESH_LATEST_ON_SUBSCRIBE.
        Raises `RequestError` (code forbidden, invalid_channel, ...) if refused."""
        self._check_usable()
        sub = self._subs.get(channel)
        if sub is None:
            sub = self._subs[channel] = _Subscription(channel)
        if token is not None:
            sub.token = token
        sub.since = since
        sub.latest = latest
        waiter: asyncio.Future[Subscribed] = asyncio.get_running_loop().create_future()
        sub.waiters.append(waiter)
        try:
            async with asyncio.timeout(self.request_timeout):
                ws = self._ws
                if ws is not None and self._state is State.CONNECTED:
                    try:
                        item = await self._subscribe_item(sub)
                    except Exception:
                        self._drop_subscription(sub)
                        raise
                    with contextlib.suppress(ConnectionClosed):  # resent on reconnect
                        await ws.send(json.dumps(item))
                # else: sent with the next connect frame
                return await waiter
        finally:
            if waiter in sub.waiters:
                sub.waiters.remove(waiter)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving `channel` (no error if it was not subscribed)."""
        sub = self._subs.pop(channel, None)
        self._positions.pop(channel, None)
        if sub is not None:
            sub.stop_renewal()
            for waiter in sub.waiters:
                if not waiter.done():
                    waiter.set_exception(RealtimeError(f"unsubscribed from {channel}"))
        if self._ws is None or self._state is not State.CONNECTED:
            return
        try:
            await self._request({"type": "unsubscribe", "channel": channel})
        except RequestError as exc:
            if exc.code != "not_subscribed":
                raise
        except ConnectionLost:
            pass  # not resubscribed on reconnect anyway

    async def ping(self) -> dict[str, Any]:
        """Round trip to the gateway; returns the `pong` frame."""
        return await self._request({"type": "ping"})

    async def refresh(self, token: str | None = None) -> dict[str, Any]:
        """Extend the connection with a new token (default: from the token provider).
        Returns the `refreshed` frame (with the new `expires_at`)."""
        if token is None:
            if isinstance(self._token, str):
                raise ValueError("refresh() needs a token when the client has no provider")
            token = await _resolve(self._token)
        reply = await self._request({"type": "refresh", "token": token})
        if isinstance(self._token, str):
            self._token = token  # reconnects use the newest token
        return reply

    async def presence(self, channel: str) -> list[dict[str, Any]]:
        """Who is subscribed to `channel`: [{"client_id": .., "user_id": ..}, ...]."""
        reply = await self._request({"type": "presence", "channel": channel})
        clients = reply.get("clients")
        return list(clients) if isinstance(clients, list) else []

    async def presence_stats(self, channel: str) -> dict[str, Any]:
        """How many connections and distinct users are subscribed to `channel`, without the
        list: the `presence_stats` reply, {"connections": N, "users": M, ...}."""
        return await self._request({"type": "presence_stats", "channel": channel})

    async def history(
        self,
        channel: str,
        limit: int,
        since: Position | None = None,
        reverse: bool = False,
        token: str | None = None,
    ) -> dict[str, Any]:
        """A page of `channel`'s history without subscribing: the `history` frame, with
        `publications` [{offset, epoch, data}], oldest first (newest first with `reverse`), and
        the channel's `offset` and `epoch`. `token`: a subscription token for the channel."""
        frame: dict[str, Any] = {"type": "history", "channel": channel, "limit": limit}
        if since is not None:
            frame["since"] = {"offset": since.offset, "epoch": since.epoch}
        if reverse:
            frame["reverse"] = True
        if token is not None:
            frame["token"] = token
        return await self._request(frame)

    # -- requests -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed is not None:
            raise self._closed
        if self._runner is None:
            raise RealtimeError("call connect() first")

    async def _request(self, frame: dict[str, Any]) -> dict[str, Any]:
        self._check_usable()
        request_id = next(self._ids)
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.request_timeout):
                while self._ws is None or self._state is not State.CONNECTED:
                    await self._connected_event.wait()
                    self._check_usable()
                ws = self._ws
                self._pending[request_id] = (waiter, str(frame["type"]))
                try:
                    await ws.send(json.dumps({**frame, "id": request_id}))
                except ConnectionClosed as exc:
                    raise ConnectionLost(f"connection lost sending {frame['type']}") from exc
                return await waiter
        finally:
            self._pending.pop(request_id, None)

    async def _subscribe_item(self, sub: _Subscription) -> dict[str, Any]:
        request_id = next(self._ids)
        item: dict[str, Any] = {"type": "subscribe", "channel": sub.channel, "id": request_id}
        since = sub.since or self._positions.get(sub.channel)
        if since is not None:
            item["since"] = {"offset": since.offset, "epoch": since.epoch}
        if sub.latest is not None:
            item["latest"] = sub.latest
        if sub.token is not None:
            token = await _resolve(sub.token)
            expires = token_expiry(token)
            if expires is not None and expires <= time.time() + 1 and self._subscription_token:
                token = await self._fresh_subscription_token(sub)  # stale after a long outage
            item["token"] = sub.sent_token = token
        self._sub_requests[request_id] = sub.channel
        self._awaiting[sub.channel] = since
        return item

    async def _resubscribe_item(self, sub: _Subscription) -> dict[str, Any] | None:
        """A subscribe item for a (re)connect; a failing token provider drops the channel."""
        try:
            return await self._subscribe_item(sub)
        except Exception as exc:
            error = RequestError("token_error", repr(exc), "subscribe", sub.channel)
            if not self._drop_subscription(sub, error):
                self._report(error)
            return None

    def _drop_subscription(self, sub: _Subscription, error: Exception | None = None) -> bool:
        """Forget `sub`; fail its waiters with `error`. Whether any waiter was told."""
        sub.stop_renewal()
        if self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
        told = False
        if error is not None:
            for waiter in sub.waiters:
                if not waiter.done():
                    waiter.set_exception(error)
                    told = True
        return told

    # -- connection loop ------------------------------------------------------------------

    def _set_state(self, change: StateChange) -> None:
        self._state = change.state
        log.debug("archmesh client state %s", change)
        if self._on_state is not None:
            try:
                self._on_state(change)
            except Exception:
                log.exception("on_state callback failed")

    async def _run(self) -> None:
        final: ClientClosed | None = None
        try:
            self._set_state(StateChange(State.CONNECTING))
            while not self._closing:
                ended = await self._session()
                if self._closing:
                    break
                if not ended.reconnect:
                    final = ClientClosed(ended.code, ended.reason)
                    break
                if self.max_attempts is not None and self._attempt >= self.max_attempts:
                    final = ClientClosed(
                        ended.code,
                        f"gave up after {self._attempt} reconnect attempts: {ended.reason}",
                    )
                    break
                delay = backoff_delay(self._attempt, self.backoff_base, self.backoff_cap)
                self._attempt += 1
                self._set_state(
                    StateChange(State.RECONNECTING, self._attempt, delay, ended.code, ended.reason)
                )
                self._wake.clear()
                if not self._closing:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), delay)
        except Exception as exc:  # a bug here must not leave callers hanging
            log.exception("archmesh client loop failed")
            final = ClientClosed(None, f"client error: {exc!r}")
        finally:
            self._finish(final)

    async def _session(self) -> _Ended:
        """One connection from open to close."""
        try:
            token = await _resolve(self._token)
        except Exception as exc:
            log.warning("token provider failed: %r", exc)
            return _Ended(None, f"token provider failed: {exc!r}", True, False)
        try:
            ws = await ws_connect(
                self.url, open_timeout=self._open_timeout, **self._connect_options
            )
        except InvalidURI as exc:
            return _Ended(None, str(exc), False, False)
        except InvalidStatus as exc:
            status = exc.response.status_code
            retry = status >= 500 or status in (408, 429)
            return _Ended(None, f"handshake refused with HTTP {status}", retry, False)
        except (OSError, TimeoutError, WebSocketException) as exc:
            return _Ended(None, f"cannot connect: {exc!r}", True, False)

        self._ws = ws
        self._disconnect = None
        connected = False
        try:
            if self._closing:
                await ws.close(1000, "client closed")
            subs = list(self._subs.values())
            items = []
            for sub in subs[:_CONNECT_SUBSCRIBE_LIMIT]:
                item = await self._resubscribe_item(sub)
                if item is not None:
                    items.append(item)
            own = self._own_channel()
            self._connect_id = next(self._ids)
            frame: dict[str, Any] = {"type": "connect", "token": token, "id": self._connect_id}
            # Recover the user channel too: the gateway joins it from this position.
            self._own_since = self._positions.get(own) if own and own not in self._subs else None
            if self._own_since is not None:
                since = self._own_since
                frame["since"] = {"offset": since.offset, "epoch": since.epoch}
            if items:
                frame["subscribe"] = items
            await ws.send(json.dumps(frame))
            async for message in ws:
                if not isinstance(message, str):
                    continue
                try:
                    parsed = json.loads(message)
                except ValueError:
                    log.warning("ignoring a frame that is not JSON")
                    continue
                if not isinstance(parsed, dict):
                    continue
                if parsed.get("type") == "connected" and not connected:
                    connected = True
                    await self._on_connected(ws, parsed, subs[_CONNECT_SUBSCRIBE_LIMIT:])
                else:
                    self._on_frame(parsed)
        except ConnectionClosed:
            pass
        except _Final as exc:
            with contextlib.suppress(Exception):
                await ws.close(1000, "client gave up")
            return _Ended(exc.code, exc.reason, False, connected)
        finally:
            self._ws = None
            self._connection_lost()
        if self._disconnect is not None:
            code, reason, reconnect = self._disconnect
            return _Ended(code, reason, reconnect and should_reconnect(code), connected)
        code = ws.close_code
        reason = ws.close_reason or "connection lost"
        return _Ended(code, reason, should_reconnect(code), connected)

    async def _on_connected(
        self, ws: ClientConnection, frame: dict[str, Any], extra: list[_Subscription]
    ) -> None:
        info = Connected(
            client_id=str(frame.get("client_id", "")),
            user_id=str(frame.get("user_id", "")),
            node=str(frame.get("node", "")),
            expires_at=_as_int(frame.get("expires_at")) or 0,
        )
        previous = self._own_channel()
        self._info = info
        self._attempt = 0
        own = self._own_channel()
        if previous is not None and previous != own:
            self._positions.pop(previous, None)
        if own is not None and own not in self._subs:
            self._own_position(own, frame, self._own_since if previous == own else None)
        self._set_state(StateChange(State.CONNECTED))
        self._connected_event.set()
        if self._first is not None and not self._first.done():
            self._first.set_result(info)
        for sub in extra:
            item = await self._resubscribe_item(sub)
            if item is not None:
                await ws.send(json.dumps(item))

    def _own_position(self, own: str, frame: dict[str, Any], sent: Position | None) -> None:
        """`connected` holds the own channel's position (and `recovered` for the `since` sent):
        its missed publications follow it, deduplicated from `sent`, like a subscribe's."""
        offset, epoch = _as_int(frame.get("offset")), frame.get("epoch")
        if offset is None or not isinstance(epoch, str):
            return  # an older gateway: the own channel starts at its first publication
        recovered = frame.get("recovered")
        if recovered is True and sent is not None:
            self._positions[own] = sent
            return
        self._positions[own] = Position(offset, epoch)
        if recovered is False and sent is not None:
            reason = frame.get("reason")
            reason = reason if isinstance(reason, str) else "unknown"
            self._queue.put_nowait(RecoveryFailed(own, reason, offset, epoch))

    def _own_channel(self) -> str | None:
        return f"user:{self._info.user_id}" if self._info is not None else None

    def _connection_lost(self) -> None:
        for sub in self._subs.values():
            sub.stop_renewal()  # the resubscription on reconnect sends a token again
        self._connected_event.clear()
        self._awaiting.clear()
        self._sub_requests.clear()
        self._connect_id = None
        for waiter, _ in self._pending.values():
            if not waiter.done():
                waiter.set_exception(ConnectionLost("connection lost before the reply"))
        self._pending.clear()

    def _finish(self, final: ClientClosed | None) -> None:
        if self._closed is not None:
            return
        self._closed = final or ClientClosed(None, "client closed")
        self._failure = final
        self._ws = None
        self._connection_lost()
        self._connected_event.set()  # wake requests waiting for a connection: they raise
        for sub in self._subs.values():
            for waiter in sub.waiters:
                if not waiter.done():
                    waiter.set_exception(self._closed)
        if self._first is not None and not self._first.done():
            self._first.set_exception(self._closed)
            self._first.exception()  # retrieved: connect() may have been cancelled
        code = final.code if final else None
        self._set_state(StateChange(State.CLOSED, code=code, reason=self._closed.reason))
        self._queue.put_nowait(None)

    # -- inbound frames -------------------------------------------------------------------

    def _on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "publication":
            self._on_publication(frame)
            return
        request_id = _as_int(frame.get("id"))
        if kind == "subscribed":
            self._on_subscribed(frame, request_id)
        elif kind == "unsubscribed" and request_id is None:
            self._on_ended(frame)
        elif kind in ("join", "leave"):
            self._on_join_leave(frame)
        elif kind == "error":
            self._on_error_frame(frame, request_id)
        elif kind == "disconnect":
            code = _as_int(frame.get("code"))
            reason = str(frame.get("reason", ""))
            self._disconnect = (code, reason, bool(frame.get("reconnect", True)))
        elif request_id is not None:
            pending = self._pending.get(request_id)
            if pending is not None and not pending[0].done():
                pending[0].set_result(frame)

    def _on_publication(self, frame: dict[str, Any]) -> None:
        channel = frame.get("channel")
        data = frame.get("data")
        if not isinstance(channel, str) or not isinstance(data, dict):
            return
        if channel in self._awaiting:
            return  # the pending subscribe replays it from history in order
        if channel not in self._subs and channel != self._own_channel():
            return  # unsubscribed meanwhile
        offset, epoch = _as_int(frame.get("offset")), frame.get("epoch")
        if offset is not None and isinstance(epoch, str):
            known = self._positions.get(channel)
            if known is not None and known.epoch == epoch and offset <= known.offset:
                log.debug("dropping duplicate %s offset %d", channel, offset)
                return
            self._positions[channel] = Position(offset, epoch)
            self._queue.put_nowait(Publication(channel, data, offset, epoch))
        else:
            self._queue.put_nowait(Publication(channel, data))

    def _on_join_leave(self, frame: dict[str, Any]) -> None:
        channel, user_id, client_id = (frame.get(k) for k in ("channel", "user_id", "client_id"))
        if not (isinstance(channel, str) and isinstance(user_id, str)):
            return
        if not isinstance(client_id, str) or channel not in self._subs:
            return  # malformed, or unsubscribed meanwhile
        event = Joined if frame["type"] == "join" else Left
        self._queue.put_nowait(event(channel, user_id, client_id))

    def _on_subscribed(self, frame: dict[str, Any], request_id: int | None) -> None:
        channel = str(frame.get("channel", ""))
        if request_id is not None:
            self._sub_requests.pop(request_id, None)
        sent = self._awaiting.pop(channel, None)
        offset, epoch = _as_int(frame.get("offset")), frame.get("epoch")
        if offset is None or not isinstance(epoch, str):
            return
        own = self._own_channel()
        unasked = request_id is None and sent is None and "reason" not in frame
        if unasked and channel not in self._subs and channel != own:
            # A backend subscribed this connection (control API): adopt it like one of ours, so
            # its publications arrive and a reconnect resubscribes it from the last offset seen.
            # (An unasked `subscribed` with a reason, history_lost, never adds a channel.)
            self._subs[channel] = _Subscription(channel)
        if channel not in self._subs and channel != own:
            return  # unsubscribed meanwhile
        recovered = frame.get("recovered")
        reason = frame.get("reason")
        reply = Subscribed(
            channel,
            offset,
            epoch,
            recovered if isinstance(recovered, bool) else None,
            reason if isinstance(reason, str) else None,
        )
        if recovered is True and sent is not None:
            # The reply holds the stream head; the missed messages follow it, so dedupe
            # from the position sent (or a later one already seen in that epoch).
            known = self._positions.get(channel)
            if known is None or known.epoch != sent.epoch or known.offset < sent.offset:
                self._positions[channel] = sent
        else:
            # With `latest: true` the publication at `offset` follows: it must not look seen.
            head = offset - 1 if frame.get("latest") is True and offset > 0 else offset
            self._positions[channel] = Position(head, epoch)
            if recovered is False:
                self._queue.put_nowait(
                    RecoveryFailed(channel, reply.reason or "unknown", offset, epoch)
                )
        sub = self._subs.get(channel)
        if sub is not None:
            sub.since = None
            self._schedule_renewal(sub)
            for waiter in sub.waiters:
                if not waiter.done():
                    waiter.set_result(reply)

    def _on_error_frame(self, frame: dict[str, Any], request_id: int | None) -> None:
        code = str(frame.get("code", "unknown"))
        message = str(frame.get("message", ""))
        if request_id is not None and request_id == self._connect_id:
            raise _Final(None, f"connect refused: {code}: {message}")
        channel = self._sub_requests.pop(request_id, None) if request_id is not None else None
        if channel is not None:
            self._awaiting.pop(channel, None)
            error = RequestError(code, message, "subscribe", channel)
            sub = self._subs.pop(channel, None)
            if sub is None:
                self._positions.pop(channel, None)
                return
            waiting = [w for w in sub.waiters if not w.done()]
            for waiter in waiting:
                waiter.set_exception(error)
            if not waiting:
                self._report(error)  # a resubscription after a reconnect was refused
            return
        pending = self._pending.get(request_id) if request_id is not None else None
        if pending is not None and not pending[0].done():
            pending[0].set_exception(RequestError(code, message, pending[1]))
            return
        self._report(RequestError(code, message, "frame"))

    # -- subscription tokens --------------------------------------------------------------

    async def _fresh_subscription_token(self, sub: _Subscription) -> str:
        assert self._subscription_token is not None
        token = _checked(await _awaited(self._subscription_token(sub.channel)))
        if sub.token is None or isinstance(sub.token, str):
            sub.token = token  # a resubscription after a reconnect uses the newest one
        return token

    def _schedule_renewal(self, sub: _Subscription) -> None:
        sub.stop_renewal()
        if self._subscription_token is None or sub.sent_token is None:
            return
        delay = renew_delay(sub.sent_token)
        if delay is not None:
            loop = asyncio.get_running_loop()
            sub.renewal = loop.call_later(delay, self._renewal_due, sub)

    def _renewal_due(self, sub: _Subscription) -> None:
        sub.renewal = None
        self._spawn(self._renew(sub))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._renewals.add(task)
        task.add_done_callback(self._renewals.discard)

    async def _renew(self, sub: _Subscription) -> None:
        """Ahead of expiry: a fresh token, sent as `sub_refresh`. A failure is reported; the
        gateway then ends the subscription at expiry, and `_on_ended` asks once more."""
        if self._subs.get(sub.channel) is not sub:
            return
        try:
            token = await self._fresh_subscription_token(sub)
        except Exception as exc:
            self._report(RequestError("token_error", repr(exc), "sub_refresh", sub.channel))
            return
        try:
            await self._request({"type": "sub_refresh", "channel": sub.channel, "token": token})
        except (ConnectionLost, ClientClosed):
            return  # a reconnect resubscribes with a token; a closed client needs none
        except RequestError as exc:
            if exc.code != "not_subscribed":  # it expired meanwhile: `_on_ended` resumes it
                self._report(RequestError(exc.code, exc.message, "sub_refresh", sub.channel))
            return
        except TimeoutError:
            self._report(RequestError("timeout", "no sub_refresh reply", "sub_refresh"))
            return
        if self._subs.get(sub.channel) is sub:
            sub.sent_token = token
            self._schedule_renewal(sub)

    def _on_ended(self, frame: dict[str, Any]) -> None:
        """An unasked `unsubscribed`: the gateway ended a subscription."""
        channel, reason = str(frame.get("channel", "")), str(frame.get("reason", ""))
        sub = self._subs.get(channel)
        if sub is None:
            return
        sub.stop_renewal()
        if reason == "token_expired" and self._subscription_token is not None:
            self._spawn(self._resume(sub))
            return
        self._drop_subscription(sub)
        self._positions.pop(channel, None)
        self._tell_unsubscribed(Unsubscribed(channel, reason))

    async def _resume(self, sub: _Subscription) -> None:
        """After `token_expired`: ask once more, and resubscribe from the last offset seen."""
        try:
            if self._subs.get(sub.channel) is not sub:
                return
            await self._fresh_subscription_token(sub)
            if self._subs.get(sub.channel) is not sub:
                return  # unsubscribed meanwhile
            ws = self._ws
            if ws is None or self._state is not State.CONNECTED:
                return  # the reconnect resubscribes with the fresh token
            item = await self._subscribe_item(sub)
            with contextlib.suppress(ConnectionClosed):  # resent on reconnect
                await ws.send(json.dumps(item))
        except Exception as exc:
            self._drop_subscription(sub)
            self._positions.pop(sub.channel, None)
            self._report(RequestError("token_error", repr(exc), "subscribe", sub.channel))
            self._tell_unsubscribed(Unsubscribed(sub.channel, "token_expired"))

    def _tell_unsubscribed(self, event: Unsubscribed) -> None:
        log.info("archmesh gateway ended %s: %s", event.channel, event.reason)
        if self._on_unsubscribed is not None:
            try:
                self._on_unsubscribed(event)
            except Exception:
                log.exception("on_unsubscribed callback failed")

    def _report(self, error: RequestError) -> None:
        log.warning("archmesh gateway error: %s", error)
        if self._on_error is not None:
            try:
                self._on_error(error)
            except Exception:
                log.exception("on_error callback failed")
