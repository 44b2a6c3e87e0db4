"""A thin test helper over the `websockets` client: JSON frames with timeouts."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from shared.tokens import issue_token
from tests.servers import JWT_SECRET


def token(user: str, sessions: list[str] | None = None, ttl: float = 3600, **kw: Any) -> str:
    return issue_token(JWT_SECRET, user, sessions=sessions, ttl=ttl, **kw)


OPENED: list[ClientConnection] = []  # closed by the autouse fixture after each test


async def open_ws(url: str, **kw: Any) -> ClientConnection:
    ws = await websockets.connect(url, open_timeout=5, **kw)
    OPENED.append(ws)
    return ws


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next frame of type `kind`, failing on any other frame first."""
    frame = await recv(ws, timeout)
    assert frame["type"] == kind, frame
    return frame


async def connect(url: str, user: str, sessions: list[str] | None = None) -> ClientConnection:
    ws = await open_ws(url)
    await send(ws, {"type": "connect", "token": token(user, sessions), "id": 1})
    reply = await recv_type(ws, "connected")
    assert reply["user_id"] == user
    return ws


async def subscribe(ws: ClientConnection, channel: str, **extra: Any) -> dict[str, Any]:
    await send(ws, {"type": "subscribe", "channel": channel, "id": 7, **extra})
    return await recv(ws)


async def assert_silent(ws: ClientConnection, within: float = 0.3) -> None:
    """Nothing arrives within `within` seconds (used after a positive control arrived)."""
    try:
        frame = await asyncio.wait_for(ws.recv(), within)
    except TimeoutError:
        return
    raise AssertionError(f"unexpected frame {frame!r}")


class RawSocketClient:
    """A WebSocket client on a bare socket that reads only when told to: a slow or dead peer."""

    def __init__(self, port: int, rcvbuf: int = 4096) -> None:
        import base64
        import os
        import socket

        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(5)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)
        assert response.startswith(b"HTTP/1.1 101"), response

    def send_text(self, text: str) -> None:
        import os
        import struct

        payload = text.encode()
        mask = os.urandom(4)
        header = bytes([0x81])
        if len(payload) < 126:
            header += bytes([0x80 | len(payload)])
        else:
            header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def read_until_closed(self, timeout: float = 10.0) -> bytes:
        """Everything the server still sends, until it closes the TCP connection."""
        import time

        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return received
            except TimeoutError:
                continue
            if not chunk:
                return received
            received += chunk
        raise TimeoutError("server did not close the connection")

    def close(self) -> None:
        self.sock.close()
