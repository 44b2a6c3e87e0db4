"""One client: a reader that handles frames in order, and a bounded write queue drained by one
writer task. A client that cannot keep up is closed; it never delays anyone else."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import orjson
import structlog
from archmesh_client.channels import (
    SESSION_PREFIX,
    InvalidChannel,
    user_channel,
    validate_channel,
)
from pydantic import ValidationError
from starlette.types import Message, Receive, Send

from gateway.authorization import claims_allow, subscription_grant
from gateway.catchup import Catchup, recover
from gateway.context import ConnectionContext
from gateway.expiry import Expiry
from gateway.grants import SubscriptionGrants
from gateway.history import history_page, page_fields
from gateway.protocol import (
    CLIENT_FRAME,
    CLOSE_REASONS,
    FRAME_TYPES,
    CloseCode,
    ConnectFrame,
    ErrorCode,
    HistoryFrame,
    InitialSubscription,
    Outgoing,
    PingFrame,
    PresenceFrame,
    PresenceStatsFrame,
    RefreshFrame,
    Since,
    SubRefreshFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    UnsubscribeReason,
    disconnect_frame,
    encode,
    error_frame,
    publication_frame,
)
from gateway.ratelimit import TokenBucket
from shared.broker import BrokerError, BrokerPublication, History, StreamPosition
from shared.logging import get_logger
from shared.tokens import Claims, InvalidToken

log = get_logger(__name__)
# The stdlib logger structlog writes this module's lines to (shared/logging.py): its level says
# whether an info line would be written at all.
_LEVEL = logging.getLogger(__name__)

# How long a close frame may wait for a socket that does not drain before it is aborted.
CLOSE_GRACE = 2.0
# Tasks that end a subscription whose token expired, referenced until they finish.
_ENDINGS: set[asyncio.Task[None]] = set()


class FrameError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Connection:
    # Slots: thousands of these live on a node, and a per-instance dict costs more than them.
    __slots__ = (
        "_bucket",
        "_catchups",
        "_close_code",
        "_closer",
        "_ctx",
        "_deadline",
        "_grants",
        "_outbox",
        "_peer_code",
        "_refused",
        "claims",
        "client_id",
        "user_id",
    )

    def __init__(self, send: Send, ctx: ConnectionContext) -> None:
        self.client_id = uuid.uuid4().hex
        self.user_id: str | None = None
        self.claims: Claims | None = None
        self._ctx = ctx
        self._outbox = ctx.open_outbox(send)
        # channel -> its catch-up while history is read, or after it while live delivery lags
        # what history sent (see `_held`); empty otherwise, which keeps `deliver` fast.
        self._catchups: dict[str, Catchup] = {}
        self._close_code: CloseCode | None = None
        self._closer: asyncio.Task[None] | None = None
        self._deadline: Expiry | None = None  # connect timeout, then the token's expiry
        self._grants: SubscriptionGrants | None = None  # made on the first subscription token
        self._refused = 0
        self._peer_code: int | None = None  # the close code the client (or uvicorn) gave
        settings = ctx.settings
        self._bucket = TokenBucket(settings.rate_limit_per_second, settings.rate_limit_burst)

    @property
    def _log(self) -> structlog.stdlib.BoundLogger:
        """Bound when something is logged (connect, disconnect, failures), not kept per socket."""
        bound = log.bind(client_id=self.client_id, node=self._ctx.node)
        return bound if self.user_id is None else bound.bind(user_id=self.user_id)

    def _info(self, event: str, **fields: Any) -> None:
        """An info line of every connect and disconnect: nothing bound or processed (structlog
        runs its processors before the level is checked) where info is not logged."""
        if _LEVEL.isEnabledFor(logging.INFO):
            self._log.info(event, **fields)

    # -- outbound -----------------------------------------------------------------------

    def deliver(self, pub: BrokerPublication, frame: Outgoing) -> None:
        """Hub fan-out entry point. The common case is a falsy check and a push."""
        if self._catchups and self._held(pub, frame):
            return
        self._enqueue(frame)

    def _held(self, pub: BrokerPublication, frame: Outgoing) -> bool:
        catchup = self._catchups.get(pub.channel)
        if catchup is None:
            return False
        held = catchup.held
        if held is not None:
            held.append((pub, frame))  # sent in order once the history read is done
            return True
        if pub.offset is None:
            return False
        # The history read can overtake pub/sub (two Redis connections): a live message the
        # client already got from history may still be on its way. Drop those until the live
        # stream passes the position history reached.
        if catchup.covers(pub):
            return True
        del self._catchups[pub.channel]
        return False

    def push(self, frame: Outgoing) -> None:
        """A frame the hub's fan-out did not count: a reply, an error, a history replay."""
        self._ctx.stats.bytes_out += len(frame.wire)
        self._enqueue(frame)

    def _enqueue(self, frame: Outgoing) -> None:
        if self._close_code is None and not self._outbox.push(frame):
            self.close(CloseCode.SLOW_CONSUMER)

    def close(self, code: CloseCode) -> None:
        """Tell the client why, then close. An orderly close sends what is queued first; a slow
        consumer loses its queue. A socket that will not drain in time is aborted."""
        if self._close_code is not None:
            return
        self._close_code = code
        self._ctx.metrics.disconnects.labels(code=str(int(code))).inc()
        if code is CloseCode.SLOW_CONSUMER:
            self._outbox.discard()
        self._closer = asyncio.create_task(self._finish(code), name="close")

    async def _finish(self, code: CloseCode) -> None:
        last = Outgoing(disconnect_frame(code))
        try:
            await asyncio.wait_for(
                self._outbox.close(last, int(code), CLOSE_REASONS[code]), CLOSE_GRACE
            )
        except TimeoutError:
            self._outbox.abort()

    def reply(self, frame: dict[str, Any]) -> None:
        self.push(Outgoing(encode(frame)))

    def error(self, code: ErrorCode, message: str, request_id: int | None = None) -> None:
        self._ctx.metrics.errors.labels(code=code.value).inc()
        self.push(Outgoing(error_frame(code, message, request_id)))

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, receive: Receive, header_token: str | None) -> None:
        deadline = time.time() + self._ctx.settings.connect_timeout
        self._deadline = self._ctx.expiries.add(deadline, self._connect_timeout)
        try:
            if header_token is not None:
                await self._on_connect(ConnectFrame(type="connect", token=header_token))
            # The read loop, inline: one coroutine frame less on every idle socket. The message
            # is not kept in a local while the next one is awaited (it may hold a token).
            while await self._received(await receive()):
                pass
        finally:
            self._outbox.stop()
            if self._deadline is not None:
                self._deadline.cancel()
            if self._grants is not None:
                self._grants.clear()
            self._ctx.admission.left(self)
            for channel in list(self._ctx.membership.channels(self)):
                await self._leave(channel)
            code = int(self._close_code) if self._close_code is not None else self._peer_code
            self._info("client_disconnected", user_id=self.user_id, code=code)

    async def _received(self, message: Message) -> bool:
        """Handle one ASGI message; False once the socket is gone."""
        if message["type"] == "websocket.disconnect":
            self._peer_code = message.get("code")
            return False
        if self._close_code is None:
            await self._on_message(message)
        return True

    def _connect_timeout(self) -> None:
        if self.user_id is None:
            self.close(CloseCode.CONNECT_TIMEOUT)

    async def _on_message(self, message: Message) -> None:
        self._ctx.stats.frames_in += 1
        text = message.get("text")
        if text is None:
            self.error(ErrorCode.BAD_FRAME, "binary frames are not supported; send JSON text")
            return
        settings = self._ctx.settings
        if not self._bucket.allow():
            self._refused += 1
            if self._refused >= settings.rate_limit_close_after:
                self.close(CloseCode.RATE_LIMITED)
            else:
                self.error(ErrorCode.RATE_LIMITED, "too many frames; slow down")
            return
        limit = settings.max_frame_bytes
        if len(text) > limit or (len(text) * 4 > limit and len(text.encode()) > limit):
            self.error(ErrorCode.FRAME_TOO_LARGE, f"frames are limited to {limit} bytes")
            return
        request_id: int | None = None
        try:
            raw = orjson.loads(text)
            if not isinstance(raw, dict):
                raise FrameError(ErrorCode.BAD_FRAME, "a frame must be a JSON object")
            request_id = _request_id(raw)
            await self._dispatch(raw)
        except orjson.JSONDecodeError:
            self.error(ErrorCode.BAD_JSON, "frame is not valid JSON")
        except FrameError as exc:
            self.error(exc.code, str(exc), request_id)
        except Exception:
            # A bug must cost this one client its connection, never the node.
            self._log.exception("frame_handler_failed")
            self.close(CloseCode.SERVER_ERROR)

    async def _dispatch(self, raw: dict[str, Any]) -> None:
        kind = raw.get("type")
        if not isinstance(kind, str) or kind not in FRAME_TYPES:  # a list is unhashable
            raise FrameError(
                ErrorCode.BAD_FRAME, f"unknown frame type; expected {sorted(FRAME_TYPES)}"
            )
        try:
            frame = CLIENT_FRAME.validate_python(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"][1:]) or "frame"
            raise FrameError(ErrorCode.BAD_FRAME, f"{where}: {first['msg']}") from None
        if isinstance(frame, ConnectFrame):
            await self._on_connect(frame)
            return
        if self.user_id is None:
            raise FrameError(ErrorCode.NOT_CONNECTED, "send a connect frame first")
        if isinstance(frame, SubscribeFrame):
            if frame.since is None:
                await self._on_subscribe(frame)
            else:  # a recovery: history reads and a backlog to write, in turn in a storm
                async with self._ctx.handshakes:
                    await self._on_subscribe(frame)
        elif isinstance(frame, UnsubscribeFrame):
            await self._on_unsubscribe(frame)
        elif isinstance(frame, PingFrame):
            self.reply(_with_id({"type": "pong"}, frame.id))
        elif isinstance(frame, RefreshFrame):
            await self._on_refresh(frame)
        elif isinstance(frame, SubRefreshFrame):
            await self._on_sub_refresh(frame)
        elif isinstance(frame, PresenceFrame):
            await self._on_presence(frame)
        elif isinstance(frame, PresenceStatsFrame):
            await self._on_presence_stats(frame)
        elif isinstance(frame, HistoryFrame):
            await self._on_history(frame)

    # -- handlers -----------------------------------------------------------------------

    async def _on_connect(self, frame: ConnectFrame) -> None:
        if self.user_id is not None:
            raise FrameError(ErrorCode.ALREADY_CONNECTED, "this connection is already connected")
        try:
            claims = self._ctx.verifier.verify(frame.token)
            own = user_channel(claims.user_id)
        except (InvalidToken, InvalidChannel) as exc:
            self._info("connect_refused", reason=str(exc))
            self.close(CloseCode.INVALID_TOKEN)
            return
        self.claims, self.user_id = claims, claims.user_id
        # The replies to a connect (`connected`, one `subscribed` per channel asked for, what
        # was missed) leave in one write at its end: one system call per handshake, not many.
        self._outbox.cork()
        try:
            async with self._ctx.handshakes:  # a reconnect storm takes its turn (context.py)
                await self._connect(frame, claims, own)
        finally:
            self._outbox.uncork()
        self._outbox.settled()

    async def _connect(self, frame: ConnectFrame, claims: Claims, own: str) -> None:
        refusal = await self._ctx.admission.admit(self, claims)  # revoked, or over the limit
        if refusal is not None:
            self._info("connect_refused", reason=CLOSE_REASONS[refusal])
            self.close(refusal)
            return
        self._schedule_expiry(claims.expires_at)
        reply = {
            "type": "connected",
            "client_id": self.client_id,
            "user_id": self.user_id,
            "node": self._ctx.node,
            "expires_at": int(claims.expires_at),
        }
        # The own channel is followed like a subscribe with `since`: `connected` carries its
        # position (and `recovered`), what was missed follows it.
        catchup = self._catchups[own] = Catchup()
        catchup.hold()
        try:
            history = await self._join(own, frame.since)
            await self._recover(own, history, frame.since, catchup, _with_id(reply, frame.id))
        except BrokerError as exc:
            # Redis cannot say where the own channel stands right now: connect without its
            # position (live messages flow once the link is back), rather than refuse.
            self._log.warning("own_position_unavailable", error=str(exc))
            held, catchup.held = catchup.held or [], None
            self._catchups.pop(own, None)
            self.reply(_with_id(reply, frame.id))
            for _, live in held:
                self._enqueue(live)
        finally:
            if catchup.held is not None:  # the history read never finished
                self._catchups.pop(own, None)
        self._info("client_connected")
        await self._subscribe_all(frame.subscribe)

    async def _subscribe_all(self, items: list[InitialSubscription | str]) -> None:
        """A connect's subscriptions side by side, not one after the other: each waits on Redis
        (its presence entry, its history read), and the waits of one turn leave together
        (`TurnBatch`), so a connect with ten channels costs the round trips of one, not ten, of
        a loop that a reconnect storm keeps busy. The limit and the registrations are decided
        in order (before each one's first wait); a channel named twice is subscribed again
        afterwards, as a later `subscribe` frame would be."""
        subs = [
            SubscribeFrame(type="subscribe", channel=i) if isinstance(i, str) else i for i in items
        ]
        named: set[str] = set()
        first: list[SubscribeFrame] = []
        again: list[SubscribeFrame] = []
        for sub in subs:
            (again if sub.channel in named else first).append(sub)
            named.add(sub.channel)
        outcomes = await asyncio.gather(*map(self._subscribe_one, first), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome  # a bug: the connection ends (after the others finished)
        for sub in again:
            await self._subscribe_one(sub)

    async def _subscribe_one(self, sub: SubscribeFrame) -> None:
        try:
            await self._on_subscribe(sub)
        except FrameError as exc:
            self.error(exc.code, str(exc), sub.id)

    async def _on_subscribe(self, frame: SubscribeFrame) -> None:
        channel, until = self._authorized(frame.channel, frame.token)
        if frame.token is not None and not await self._ctx.admission.grant_allowed(frame.token):
            raise FrameError(ErrorCode.FORBIDDEN, f"subscription token for {channel} is revoked")
        await self._subscribe(channel, frame, until)

    async def subscribe_by_server(self, channel: str) -> None:
        """A backend subscribed this connection (control API): an unasked `subscribed`, then
        the channel's publications. Nothing when it already is subscribed or is closing."""
        admitted = self._ctx.admission.admitted
        if self._close_code is not None or channel in self._ctx.membership.channels(self):
            return
        if not admitted(self):
            return  # gone: its clean-up ran already
        try:
            await self._subscribe(channel, SubscribeFrame(type="subscribe", channel=channel), None)
        except FrameError as exc:
            self._log.info("server_subscribe_failed", channel=channel, reason=str(exc))
        if not admitted(self):  # it went while this ran (not in its reader): leave for it
            await self._leave(channel)

    async def unsubscribe_by_server(self, channel: str, reason: str) -> None:
        """A backend took `channel` away (control API): an unasked `unsubscribed` with why."""
        if self._close_code is not None or channel not in self._ctx.membership.channels(self):
            return
        await self._end(channel, reason)

    async def _subscribe(self, channel: str, frame: SubscribeFrame, until: float | None) -> None:
        channels = self._ctx.membership.channels(self)
        limit = self._ctx.settings.max_subscriptions
        if channel in channels:
            # Resubscribing is how a client asks to recover: treat it as a fresh subscribe.
            await self._leave(channel)
        elif len(channels) >= limit:
            raise FrameError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS, f"at most {limit} subscriptions per connection"
            )
        # Before any await: a grant's expiry that fires meanwhile sees the new grant (or none).
        self._set_grant(channel, until)
        catchup = self._catchups[channel] = Catchup()
        catchup.hold()
        try:
            history = await self._join(channel, frame.since)
            reply = _with_id({"type": "subscribed", "channel": channel}, frame.id)
            latest = self._wants_latest(channel, frame)
            await self._recover(channel, history, frame.since, catchup, reply, latest)
        except BrokerError as exc:
            self._set_grant(channel, None)
            await self._leave(channel)
            raise FrameError(ErrorCode.UNAVAILABLE, f"broker unavailable: {exc}") from None
        finally:
            if catchup.held is not None:  # the history read never finished
                self._catchups.pop(channel, None)

    async def _join(self, channel: str, since: Since | None) -> History:
        """Join `channel`: its position and, with `since`, what was missed (context.py)."""
        return await self._ctx.join(self, channel, since)

    async def _leave(self, channel: str) -> None:
        await self._ctx.leave(self, channel)

    async def _recover(
        self,
        channel: str,
        history: History,
        since: Since | None,
        catchup: Catchup,
        reply: dict[str, Any],
        latest: bool = False,
    ) -> None:
        """Send `reply` (`subscribed`, or `connected` for the own channel) with the channel's
        position, then what was missed since `since` (`history`, read when it joined; or, with
        `latest`, the latest publication), then what arrived meanwhile; in offset order, each
        once."""
        position = history.position
        recovered, missed = recover(reply, since, history, self._ctx.metrics)
        if not recovered and latest:
            # A recovered client has the latest already (it was missed, or it was its `since`).
            missed = await self._latest(channel, position)
            if missed:
                reply["latest"] = True  # the publication at `offset` follows: not a duplicate
        self.reply(reply)
        # Recovered or not, the client now stands at `position` (it was told so).
        for pub in missed:
            self.push(Outgoing(publication_frame(pub)))
        released, live_reached = catchup.release(position)
        for _, live in released:
            self._enqueue(live)  # counted by the hub's fan-out already
        if (live_reached or self._ctx.live_passed(channel, position)) and self._catchups.get(
            channel
        ) is catchup:
            # Only while live delivery lags what was sent; otherwise the fast path stays clear
            # (and an idle socket keeps no catch-up per channel).
            del self._catchups[channel]

    def _wants_latest(self, channel: str, frame: SubscribeFrame) -> bool:
        if frame.latest is not None:
            return frame.latest
        return channel.startswith(tuple(self._ctx.settings.latest_on_subscribe))

    async def _latest(self, channel: str, position: StreamPosition) -> list[BrokerPublication]:
        """The publication at `position` (the channel's latest), if history still has it. Live
        ones after it are held by the subscribe's catch-up meanwhile."""
        if position.offset == 0:
            return []
        tail = await self._ctx.history(channel, position.offset - 1, 1)
        return [
            pub
            for pub in tail.publications
            if pub.offset == position.offset and pub.epoch == position.epoch
        ]

    async def _on_unsubscribe(self, frame: UnsubscribeFrame) -> None:
        if frame.channel not in self._ctx.membership.channels(self):
            raise FrameError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {frame.channel}")
        self._set_grant(frame.channel, None)
        await self._leave(frame.channel)
        self._catchups.pop(frame.channel, None)
        self.reply(_with_id({"type": "unsubscribed", "channel": frame.channel}, frame.id))

    async def _on_refresh(self, frame: RefreshFrame) -> None:
        try:
            claims = self._ctx.verifier.verify(frame.token)
        except InvalidToken as exc:
            raise FrameError(ErrorCode.INVALID_TOKEN, f"refresh refused: {exc}") from None
        if claims.user_id != self.user_id:
            raise FrameError(ErrorCode.INVALID_TOKEN, "refresh token is for another user")
        if not await self._ctx.admission.renewal_allowed(self, claims):
            raise FrameError(ErrorCode.INVALID_TOKEN, "refresh refused: the token is revoked")
        self.claims = claims
        self._schedule_expiry(claims.expires_at)
        # The new claims are the connection's only standing access: a session they no longer
        # allow, and no subscription token holds, ends now.
        grants = self._grants
        for channel in [
            c
            for c in self._ctx.membership.channels(self)
            if c.startswith(SESSION_PREFIX)
            and not claims_allow(claims, c)
            and not (grants is not None and grants.holds(c))
        ]:
            await self._end(channel, UnsubscribeReason.REVOKED)
        self.reply(_with_id({"type": "refreshed", "expires_at": int(claims.expires_at)}, frame.id))

    async def _on_sub_refresh(self, frame: SubRefreshFrame) -> None:
        channel = frame.channel
        if channel not in self._ctx.membership.channels(self):
            raise FrameError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel}")
        if self._grants is None or not self._grants.holds(channel):
            raise FrameError(
                ErrorCode.NO_SUBSCRIPTION_TOKEN,
                f"{channel} is not held by a subscription token: there is nothing to refresh",
            )
        try:
            grant = self._ctx.verifier.verify(frame.token)
        except InvalidToken as exc:
            raise FrameError(ErrorCode.INVALID_TOKEN, f"sub_refresh refused: {exc}") from None
        if grant.user_id != self.user_id:
            raise FrameError(ErrorCode.INVALID_TOKEN, "subscription token is for another user")
        if grant.channel != channel:
            raise FrameError(ErrorCode.INVALID_TOKEN, f"subscription token is not for {channel}")
        if not await self._ctx.admission.grant_allowed(frame.token):
            raise FrameError(ErrorCode.INVALID_TOKEN, "sub_refresh refused: the token is revoked")
        if channel not in self._ctx.membership.channels(self):  # it ended during that check
            raise FrameError(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {channel}")
        self._set_grant(channel, grant.expires_at)
        reply = {"type": "sub_refreshed", "channel": channel, "expires_at": int(grant.expires_at)}
        self.reply(_with_id(reply, frame.id))

    async def _on_presence(self, frame: PresenceFrame) -> None:
        channel = self._presence_channel(frame.channel)
        try:
            entries = await self._ctx.presence.members(channel)
        except BrokerError as exc:
            raise FrameError(ErrorCode.UNAVAILABLE, f"broker unavailable: {exc}") from None
        clients = [{"client_id": e.client_id, "user_id": e.user_id} for e in entries]
        self.reply(_with_id({"type": "presence", "channel": channel, "clients": clients}, frame.id))

    async def _on_presence_stats(self, frame: PresenceStatsFrame) -> None:
        channel = self._presence_channel(frame.channel)
        try:
            stats = await self._ctx.presence.stats(channel)
        except BrokerError as exc:
            raise FrameError(ErrorCode.UNAVAILABLE, f"broker unavailable: {exc}") from None
        reply = {
            "type": "presence_stats",
            "channel": channel,
            "connections": stats.connections,
            "users": stats.users,
        }
        self.reply(_with_id(reply, frame.id))

    def _presence_channel(self, name: str) -> str:
        """`name` validated, allowed to this connection (as for a subscribe) and tracked."""
        channel, _ = self._authorized(name, None)
        if not self._ctx.presence.tracks(channel):
            raise FrameError(ErrorCode.FORBIDDEN, f"presence is not tracked for {channel}")
        return channel

    async def _on_history(self, frame: HistoryFrame) -> None:
        channel, _ = self._authorized(frame.channel, frame.token)
        if frame.token is not None and not await self._ctx.admission.grant_allowed(frame.token):
            raise FrameError(ErrorCode.FORBIDDEN, f"subscription token for {channel} is revoked")
        since = frame.since
        try:
            page = await history_page(
                self._ctx.history,
                channel,
                frame.limit,
                StreamPosition(since.offset, since.epoch) if since else None,
                frame.reverse,
                self._ctx.settings.history_max_limit,
            )
        except BrokerError as exc:
            raise FrameError(ErrorCode.UNAVAILABLE, f"broker unavailable: {exc}") from None
        self.reply(_with_id({"type": "history", **page_fields(channel, page)}, frame.id))

    def _authorized(self, name: str, token: str | None) -> tuple[str, float | None]:
        """The validated channel, and until when a subscription token grants it (None: no
        valid token; the connection's claims allow it)."""
        try:
            channel = validate_channel(name)
        except InvalidChannel as exc:
            raise FrameError(ErrorCode.INVALID_CHANNEL, str(exc)) from None
        claims = self.claims
        assert claims is not None
        until = None
        if token is not None:
            until = subscription_grant(claims, channel, token, self._ctx.verifier)
        if until is None and not claims_allow(claims, channel):
            raise FrameError(ErrorCode.FORBIDDEN, f"not allowed to use {channel}")
        return channel, until

    # -- subscription grants --------------------------------------------------------------

    def _set_grant(self, channel: str, until: float | None) -> None:
        """Hold `channel` by a subscription token until `until`, or (None) by claims only."""
        grants = self._grants
        if until is None:
            if grants is not None:
                grants.drop(channel)
            return
        if grants is None:
            grants = self._grants = SubscriptionGrants(self._ctx.expiries)
        grants.grant(channel, until, self._grant_due)

    def _grant_due(self, channel: str) -> None:
        """On the shared timer: leaving is async, so a short task ends the subscription."""
        task = asyncio.create_task(self._grant_expired(channel), name="grant-expired")
        _ENDINGS.add(task)
        task.add_done_callback(_ENDINGS.discard)

    async def _grant_expired(self, channel: str) -> None:
        grants = self._grants
        if self._close_code is not None or grants is None or not grants.take_due(channel):
            return  # closed, unsubscribed, resubscribed or refreshed meanwhile
        if self.claims is not None and claims_allow(self.claims, channel):
            return  # the connection's claims hold it still
        try:
            await self._end(channel, UnsubscribeReason.TOKEN_EXPIRED)
        except Exception:
            self._log.exception("subscription_end_failed", channel=channel)
            self.close(CloseCode.SERVER_ERROR)

    async def _end(self, channel: str, reason: str) -> None:
        """End a subscription the client did not ask to end, and tell it why. The client is
        told before the first await, so the notice precedes any later reply about `channel`;
        leaving stops deliveries before its first await too."""
        self._set_grant(channel, None)
        self._catchups.pop(channel, None)
        self.reply({"type": "unsubscribed", "channel": channel, "reason": str(reason)})
        await self._leave(channel)

    def _schedule_expiry(self, expires_at: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._ctx.expiries.add(expires_at, self._token_expired)

    def _token_expired(self) -> None:
        self.close(CloseCode.TOKEN_EXPIRED)


def _request_id(raw: dict[str, Any]) -> int | None:
    value = raw.get("id")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _with_id(frame: dict[str, Any], request_id: int | None) -> dict[str, Any]:
    if request_id is not None:
        frame["id"] = request_id
    return frame
