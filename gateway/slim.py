"""What uvicorn's websockets-sansio protocol and the websockets parser keep per socket for its
whole life without needing it, released once the socket is set up. On a node that holds tens
of thousands of idle sockets this is most of what a socket costs beyond the kernel's buffers:

- the upgrade request and its response (headers: about 3 KiB), and the ASGI scope;
- an `asyncio.Queue` for incoming messages and an `asyncio.Event` for write flow control:
  four `collections.deque`s of about 760 bytes each, although at most a couple of messages
  are ever queued (uvicorn stops reading while one is) and nothing waits on the event unless
  the socket is closing while its transport is paused. `Inbox` and `Flag` do the same jobs,
  allocating only while something is queued or waiting;
- the parser's generator frames, which keep the upgrade request and the last frame received
  (with a connect frame, the client's token) in local variables: the parser is restarted
  between frames, where it holds nothing.

These are private internals of uvicorn and websockets: the suite runs on the versions it
installs (uvicorn 0.54, websockets 17), and pyproject.toml pins the ranges around them. Every
step checks that what it replaces is what it expects, and leaves it alone otherwise (the
fallback, tested in tests/test_socket_slimming.py): the socket then costs more, and works the
same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.protocol import OPEN, Protocol
from websockets.streams import StreamReader


class Inbox:
    """`asyncio.Queue`'s part that uvicorn uses (`put_nowait`, `get`, `empty`), for one
    reader. `get()` returns a future (uvicorn awaits it) instead of being a coroutine."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[Any] | None = None

    def put_nowait(self, item: Any) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(item)  # nothing is queued while the reader waits
        else:
            self._items.append(item)

    def get(self) -> asyncio.Future[Any]:
        future = asyncio.get_running_loop().create_future()
        if self._items:
            future.set_result(self._items.pop(0))
        else:
            self._waiter = future
        return future

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class Flag:
    """`asyncio.Event`, with its waiters' list made only while someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self, value: bool) -> None:
        self._set = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


_NO_HEADERS = Headers()
_PARSE = getattr(Protocol.parse, "__code__", None)
_AT_EOF = getattr(StreamReader.at_eof, "__code__", None)


def accepted(protocol: object) -> bool:
    """The app accepted the socket and read what it needed of the handshake: release the
    handshake and put the light queue and flag in place. False (nothing done) when `protocol`
    is not the uvicorn protocol this was written for."""
    if not isinstance(protocol, WebSocketsSansIOProtocol):
        return False
    queue, writable = getattr(protocol, "queue", None), getattr(protocol, "writable", None)
    if isinstance(queue, asyncio.Queue) and isinstance(writable, asyncio.Event):
        inbox = Inbox()
        while not queue.empty():
            inbox.put_nowait(queue.get_nowait())
        protocol.queue = inbox  # type: ignore[assignment]
        protocol.writable = Flag(writable.is_set())  # type: ignore[assignment]
    if isinstance(getattr(protocol, "request", None), Request):
        protocol.request = Request(protocol.request.path, _NO_HEADERS)
    if isinstance(getattr(protocol, "response", None), Response):
        protocol.response = Response(101, "Switching Protocols", _NO_HEADERS)
    scope = getattr(protocol, "scope", None)
    if isinstance(scope, dict):
        scope.clear()  # nothing reads it once the socket is open
    return True


def settled(protocol: object) -> bool:
    """Restart the socket's frame parser if it sits between frames (nothing of the next one
    read yet): the new one holds no request and no frame. Whether it was restarted."""
    conn = getattr(protocol, "conn", None)
    if not isinstance(conn, Protocol) or _AT_EOF is None or _PARSE is None:
        return False
    if conn.state is not OPEN or conn.parser_exc is not None or conn.reader.buffer:
        return False
    parser = conn.parser
    if not isinstance(parser, Generator):
        return False
    inner: Any = parser
    while True:  # ServerProtocol.parse -> Protocol.parse -> StreamReader.at_eof
        nested = getattr(inner, "gi_yieldfrom", None)
        if nested is None:
            break
        if inner is not parser and getattr(inner, "gi_code", None) is not _PARSE:
            return False
        inner = nested
    if getattr(inner, "gi_code", None) is not _AT_EOF:
        return False
    fresh = Protocol.parse(conn)
    next(fresh)  # runs to the same place: waiting for the next frame's first byte
    conn.parser = fresh
    conn.reader.buffer = bytearray()  # the old one kept the handshake's capacity
    return True
