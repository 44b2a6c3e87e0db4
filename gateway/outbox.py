"""A client's outbound path, bounded in bytes. Two implementations, one interface:

- `TransportOutbox` writes finished WebSocket frames straight to the socket's transport. A
  publication's frame is built once per node (`Outgoing.wire`) and the same bytes go to every
  socket; a burst of frames for one socket in one event-loop turn leaves in one write (see
  `Flusher`). Used on
  uvicorn's `websockets-sansio` protocol without extensions (no per-message deflate), where a
  server frame is the same bytes for every socket.
- `AsgiOutbox` sends through ASGI `websocket.send`, one frame at a time from a writer task: the
  portable path (other servers, per-message deflate).

Both keep the same guarantees: frames leave in the order they were pushed; `push` never waits
for a socket; a socket whose unsent bytes would exceed the budget is refused (the connection
then closes it as a slow consumer) and never slows anyone else down.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from starlette.types import Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from gateway import slim
from gateway.protocol import Outgoing


class Outbox(Protocol):
    def push(self, frame: Outgoing) -> bool:
        """Queue `frame`; False if that would exceed the byte budget (nothing is queued)."""
        ...

    def discard(self) -> None:
        """Drop everything not yet written (a slow consumer's backlog)."""
        ...

    async def close(self, last: Outgoing, code: int, reason: str) -> None:
        """Send what is queued, then `last`, then the close frame. Later pushes are ignored."""
        ...

    def stop(self) -> None:
        """The connection is gone: release everything."""
        ...

    def abort(self) -> None:
        """Drop the socket at once (a peer that stopped reading never takes a close frame)."""
        ...

    def settled(self) -> None:
        """The client is connected and waits: release what setting up the socket needed."""
        ...

    def cork(self) -> None:
        """Hold frames (a handshake's replies) until `uncork`, to leave in one write."""
        ...

    def uncork(self) -> None:
        """Write what `cork` held, and write through again."""
        ...


class Flusher:
    """Decides when frames are written. The first publication of an event-loop turn (and any
    reply) is written to each socket at once, so the first sockets do not wait for the whole
    fan-out loop; frames queued after it in the same turn (a burst) are written once per
    socket at the end of the turn: a burst costs two writes per socket, not one per frame.

    `on_flush(seconds)` reports, once per turn that fanned out publications, how long the
    first of them waited from its arrival (`timed()`) until every write of the turn was done.
    """

    def __init__(self, on_flush: Callable[[float], None] | None = None) -> None:
        self._due: list[TransportOutbox] = []
        self._scheduled = False
        self._since: float | None = None
        self._on_flush = on_flush
        self.write_through = True  # until a publication was fanned out in this turn

    def fanned_out(self) -> None:
        """A publication went to every socket: queue the rest of this turn's frames."""
        self.write_through = False
        if not self._scheduled:
            self._schedule()

    def add(self, outbox: TransportOutbox) -> None:
        self._due.append(outbox)
        if not self._scheduled:
            self._schedule()

    def timed(self) -> None:
        """A publication arrived and is being fanned out."""
        if self._since is None:
            self._since = time.perf_counter()
            if not self._scheduled:
                self._schedule()

    def _schedule(self) -> None:
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        self.write_through = True
        due, self._due = self._due, []
        for outbox in due:
            outbox.flush()
        since, self._since = self._since, None
        if since is not None and self._on_flush is not None:
            self._on_flush(time.perf_counter() - since)


def open_outbox(send: Send, limit: int, flusher: Flusher) -> Outbox:
    """The direct path where the server allows it, else ASGI."""
    protocol = getattr(send, "__self__", None)
    if isinstance(protocol, WebSocketsSansIOProtocol):
        slim.accepted(protocol)
        if not protocol.conn.extensions:
            return TransportOutbox(protocol, send, limit, flusher)
    return AsgiOutbox(send, limit)


# A cork holds a handshake's few replies; past this many bytes they are written at once.
CORKED_BYTES = 16 * 1024

# Seconds a closed socket may take to write out what it holds before it is cut.
LINGER = 2.0


class TransportOutbox:
    __slots__ = (
        "_buffered",
        "_closing",
        "_corked",
        "_flusher",
        "_frames",
        "_limit",
        "_protocol",
        "_send",
        "_size",
        "_slack",
        "_transport",
    )

    def __init__(
        self, protocol: WebSocketsSansIOProtocol, send: Send, limit: int, flusher: Flusher
    ) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._send = send
        self._limit = limit
        self._flusher = flusher
        self._frames: list[bytes] = []
        self._size = 0
        self._buffered = 0  # the transport's unsent bytes, as of the last look
        # Bytes the transport holds up to its high-water mark are in flight, as on the ASGI
        # path (where `send` waits above it); only what is beyond counts against the budget.
        self._slack = self._transport.get_write_buffer_limits()[1]
        self._closing = False
        self._corked = False

    def push(self, frame: Outgoing) -> bool:
        if self._closing:
            return True
        wire = frame.wire
        size = len(wire)
        budget = self._limit + self._slack
        if self._buffered + self._size + size > budget:
            self._buffered = self._transport.get_write_buffer_size()  # it may have drained
            if self._buffered + self._size + size > budget:
                return False
        frames = self._frames
        if not frames and self._flusher.write_through and not self._corked:
            self._write(frames, wire)  # nothing queued before it: order holds
            return True
        frames.append(wire)
        self._size += size
        if self._corked:
            if self._size > CORKED_BYTES:
                self.flush()  # a recovery's backlog: to the kernel now, as without the cork
        elif len(frames) == 1:
            self._flusher.add(self)
        return True

    def cork(self) -> None:
        self._corked = True

    def uncork(self) -> None:
        self._corked = False
        self.flush()

    def flush(self) -> None:
        frames = self._frames
        if frames:
            self._write(frames, None)
            self.discard()

    def _write(self, frames: list[bytes], wire: bytes | None) -> None:
        """Write `wire`, or else all of `frames`, unless the socket is going (uvicorn then
        reports the disconnect to the reader)."""
        transport = self._transport
        try:
            if transport.is_closing() or self._protocol.close_sent:
                return
            if wire is not None:
                transport.write(wire)
            elif len(frames) == 1:
                transport.write(frames[0])
            else:
                transport.write(b"".join(frames))  # one buffer: uvloop copies item by item
            self._buffered = transport.get_write_buffer_size()
        except (OSError, RuntimeError):
            pass  # it died under us (the reader hears of it): never stop the other sockets

    def discard(self) -> None:
        self._frames.clear()  # reused: one list per socket, not one per flush
        self._size = 0

    async def close(self, last: Outgoing, code: int, reason: str) -> None:
        self._closing = True
        self._frames.append(last.wire)
        self.flush()
        # The transport closes its socket once its buffer is written out: a peer that stopped
        # reading never takes it, and its socket (a descriptor, the unsent bytes) would stay
        # until the ping timeout, or for good. Cut after LINGER unless it closed by then.
        asyncio.get_running_loop().call_later(LINGER, self._transport.abort)
        if self._protocol.close_sent or self._transport.is_closing():
            return  # uvicorn already closed it (e.g. no pong in time)
        # uvicorn writes the close frame and runs the closing handshake; it waits while the
        # transport is paused, which the caller bounds with a timeout.
        with contextlib.suppress(OSError):
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def stop(self) -> None:
        self._closing = True
        self.discard()

    def abort(self) -> None:
        self._transport.abort()

    def settled(self) -> None:
        slim.settled(self._protocol)


class AsgiOutbox:
    def __init__(self, send: Send, limit: int) -> None:
        self._send = send
        self._limit = limit
        self._queue: deque[str] = deque()
        self._size = 0
        self._wakeup = asyncio.Event()
        self._last: tuple[Outgoing, int, str] | None = None
        self._writer = asyncio.create_task(self._write_loop(), name="writer")

    def push(self, frame: Outgoing) -> bool:
        if self._last is not None:
            return True
        size = len(frame.text)
        if self._size + size > self._limit:
            return False
        self._queue.append(frame.text)
        self._size += size
        self._wakeup.set()
        return True

    async def _write_loop(self) -> None:
        with contextlib.suppress(OSError):  # the client went away; the reader sees it too
            await self._write_all()

    async def _write_all(self) -> None:
        queue, send = self._queue, self._send
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                text = queue.popleft()
                self._size -= len(text)
                await send({"type": "websocket.send", "text": text})
            if self._last is not None:
                last, code, reason = self._last
                await send({"type": "websocket.send", "text": last.text})
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return

    def discard(self) -> None:
        self._queue.clear()
        self._size = 0

    async def close(self, last: Outgoing, code: int, reason: str) -> None:
        self._last = (last, code, reason)
        self._wakeup.set()
        await self._writer

    def stop(self) -> None:
        self._writer.cancel()

    def abort(self) -> None:
        # uvicorn's send is a bound method of its protocol; aborting the transport is the
        # only way to drop a peer that stopped reading (a close frame would never leave).
        transport = getattr(getattr(self._send, "__self__", None), "transport", None)
        if transport is not None:
            transport.abort()

    def settled(self) -> None:
        slim.settled(getattr(self._send, "__self__", None))

    def cork(self) -> None:
        pass  # one frame per send on this path

    def uncork(self) -> None:
        pass
