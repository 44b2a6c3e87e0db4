"""The node's follower of the control stream: it applies what backends ask of every node
(`archmesh_client.control_commands`) to this node's connections.

It is a member of the control channel like a client connection (`Hub.follow`), so the hub's
fan-out hands it every command once, in offset order, and the hub's gap repair reads back what
a Redis blip or partition lost. Commands are applied one after another by one task, in stream
order: a subscribe followed by an unsubscribe ends unsubscribed. If the stream's history itself
was lost (the hub says `history_lost`), revocations are still in the revocation store: every
connection is checked against it again."""

from __future__ import annotations

import asyncio
import contextlib

from archmesh_client.control_commands import (
    CONTROL_CHANNEL,
    ControlCommand,
    Disconnect,
    RevokeToken,
    RevokeUser,
    Subscribe,
    Unsubscribe,
    parse_command,
)
from archmesh_client.revocations import is_revoked

from gateway.admission import Admission
from gateway.hub import Hub
from gateway.protocol import CloseCode, Outgoing
from gateway.user_connections import UserConnections
from shared.broker import BrokerError, BrokerPublication
from shared.logging import get_logger

log = get_logger(__name__)

_SWEEP = None  # queued when the stream's history was lost: re-check every connection


class ControlFollower:
    client_id = "control"  # a Member of the control channel, never a client
    user_id: str | None = None

    def __init__(self, hub: Hub, users: UserConnections, admission: Admission) -> None:
        self._hub = hub
        self._users = users
        self._admission = admission
        self._queue: asyncio.Queue[ControlCommand | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.following = False  # the node is not ready before: it would miss commands

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="control follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        await self._hub.follow(CONTROL_CHANNEL, self)
        self.following = True
        log.info("control_stream_followed")
        while True:
            command = await self._queue.get()
            try:
                await self._apply(command)
            except Exception:
                log.exception("control_command_failed", command=repr(command))

    # -- as a member of the control channel -----------------------------------------------

    def deliver(self, pub: BrokerPublication, frame: Outgoing) -> None:
        try:
            command = parse_command(pub.data)
        except ValueError:
            log.warning("invalid_control_command", offset=pub.offset, data=pub.data[:200])
            return
        self._queue.put_nowait(command)

    def push(self, frame: Outgoing) -> None:
        """The hub tells members when a gap could not be repaired (history lost)."""
        log.warning("control_history_lost")
        self._queue.put_nowait(_SWEEP)

    def close(self, code: CloseCode) -> None:
        """Nothing to close: the follower is no client."""

    # -- applying commands ----------------------------------------------------------------

    async def _apply(self, command: ControlCommand | None) -> None:
        if command is None:
            await self._sweep()
        elif isinstance(command, Disconnect):
            code = CloseCode.DISCONNECTED if command.reconnect else CloseCode.TERMINATED
            for conn in self._users.of(command.user):
                conn.close(code)
        elif isinstance(command, Unsubscribe):
            for conn in self._users.of(command.user):
                await conn.unsubscribe_by_server(command.channel, command.reason)
        elif isinstance(command, Subscribe):
            for conn in self._users.of(command.user):
                await conn.subscribe_by_server(command.channel)
        elif isinstance(command, RevokeToken):
            for conn in self._users:
                if conn.claims is not None and conn.claims.token_id == command.jti:
                    conn.close(CloseCode.TOKEN_REVOKED)
        elif isinstance(command, RevokeUser):
            for conn in self._users.of(command.user):
                claims = conn.claims
                if claims is not None and is_revoked(claims.issued_at, command.before):
                    conn.close(CloseCode.TOKEN_REVOKED)

    async def _sweep(self) -> None:
        closed = 0
        for conn in self._users:
            claims = conn.claims
            if claims is None or conn not in self._users:
                continue
            try:
                revoked = await self._admission.revoked(claims)
            except BrokerError as exc:
                log.warning("revocation_sweep_failed", error=str(exc))
                return
            if revoked:
                conn.close(CloseCode.TOKEN_REVOKED)
                closed += 1
        log.info("revocation_sweep_done", closed=closed)
