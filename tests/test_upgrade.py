"""The plain WebSocket upgrade takes gateway/upgrade.py's short path, anything else uvicorn's own
(websockets parses and answers it): both answer as RFC 6455 says, refusals keep their status and
body, and a socket opened either way works the same. Raw sockets, so every byte is seen."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
from collections.abc import Iterator

import pytest
import uvicorn

from deploy.ports import free_port
from gateway.app import Gateway
from gateway.server import uvicorn_config
from gateway.upgrade import UpgradeProtocol
from shared.settings import Settings
from tests.servers import JWT_SECRET, GatewayProcess
from tests.wsclient import token

# RFC 6455 section 1.3's example: this key must be answered with this accept value.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


OPENED: list[socket.socket] = []


@pytest.fixture(scope="module")
def node() -> Iterator[GatewayProcess]:
    gateway = GatewayProcess().start()
    yield gateway
    gateway.stop()


@pytest.fixture(autouse=True)
def closed_after() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def request(port: int, *extra: str, **fields: str) -> list[str]:
    """A handshake request's lines: the plain one, with `fields` replacing its values."""
    plain = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": SAMPLE_KEY,
        "Sec-WebSocket-Version": "13",
    }
    plain.update({name.replace("_", "-"): value for name, value in fields.items()})
    lines = ["GET /ws HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    return lines + [f"{name}: {value}" for name, value in plain.items()] + list(extra)


class Answer:
    def __init__(self, sock: socket.socket, head: bytes, rest: bytes) -> None:
        self.sock = sock
        status, *lines = head.decode("latin-1").split("\r\n")
        self.status = int(status.split(" ")[1])
        self.status_line = status
        self.headers: dict[str, list[str]] = {}
        for line in lines:
            name, _, value = line.partition(": ")
            self.headers.setdefault(name.lower(), []).append(value)
        self.rest = rest

    def body(self) -> bytes:
        length = int(self.headers["content-length"][0])
        while len(self.rest) < length:
            self.rest += self.sock.recv(4096)
        return self.rest[:length]

    def send(self, frame: dict[str, object]) -> None:
        payload = json.dumps(frame).encode()
        mask = os.urandom(4)
        assert len(payload) < 65536
        size = bytes([0x80 | len(payload)]) if len(payload) < 126 else b"\xfe"
        if len(payload) >= 126:
            size += struct.pack("!H", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(b"\x81" + size + mask + masked)

    def _read(self, count: int) -> bytes:
        while len(self.rest) < count:
            chunk = self.sock.recv(65536)
            assert chunk, "closed"
            self.rest += chunk
        data, self.rest = self.rest[:count], self.rest[count:]
        return data

    def receive(self) -> dict[str, object]:
        """The next text frame (unmasked, as a server sends), as JSON."""
        first, second = self._read(2)
        assert first == 0x81, hex(first)
        size = second & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", self._read(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", self._read(8))
        frame: dict[str, object] = json.loads(self._read(size))
        return frame


def handshake(port: int, lines: list[str]) -> Answer:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    OPENED.append(sock)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(4096)
        assert chunk, f"closed after {received!r}"
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return Answer(sock, head, rest)


def assert_works(answer: Answer, user: str) -> None:
    answer.send({"type": "connect", "token": token(user), "id": 1})
    connected = answer.receive()
    assert (connected["type"], connected["user_id"], connected["id"]) == ("connected", user, 1)
    answer.send({"type": "ping", "id": 2})
    assert answer.receive() == {"type": "pong", "id": 2}


def test_a_plain_upgrade_is_answered_on_the_short_path_and_works(node: GatewayProcess) -> None:
    answer = handshake(node.port, request(node.port, Connection="keep-alive, Upgrade"))
    assert answer.status_line == "HTTP/1.1 101 Switching Protocols"
    assert answer.headers["sec-websocket-accept"] == [SAMPLE_ACCEPT]
    assert answer.headers["upgrade"] == ["websocket"]
    assert answer.headers["connection"] == ["Upgrade"]
    assert answer.headers["server"] == ["uvicorn"]
    assert "date" in answer.headers
    assert "sec-websocket-extensions" not in answer.headers
    assert_works(answer, "upgrade-plain")


def test_the_short_path_passes_the_headers_to_the_gateway(node: GatewayProcess) -> None:
    """The token in `Authorization` (the scope's headers, as bytes) connects at once; an offered
    subprotocol is not taken (the gateway accepts none)."""
    bearer = f"Authorization: Bearer {token('upgrade-header')}"
    answer = handshake(node.port, request(node.port, bearer, "Sec-WebSocket-Protocol: a, b"))
    assert answer.status == 101
    assert "sec-websocket-protocol" not in answer.headers
    connected = answer.receive()
    assert (connected["type"], connected["user_id"]) == ("connected", "upgrade-header")


def test_a_refusal_on_the_short_path_keeps_its_status_and_body(node: GatewayProcess) -> None:
    answer = handshake(node.port, request(node.port, "Origin: https://elsewhere.example"))
    assert answer.status == 403
    assert json.loads(answer.body())["error"]["code"] == "origin_forbidden"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"Sec-WebSocket-Key": "c2hvcnQ="}, b"invalid Sec-WebSocket-Key header"),  # 5 bytes
        ({"Sec-WebSocket-Version": "8"}, b"invalid Sec-WebSocket-Version header: 8"),
        ({"Connection": "Upgrade, @"}, b"invalid Connection header"),  # not a token
    ],
)
def test_what_the_short_path_does_not_take_websockets_answers(
    node: GatewayProcess, fields: dict[str, str], problem: bytes
) -> None:
    answer = handshake(node.port, request(node.port, **fields))
    assert answer.status == 400, answer.status_line
    assert problem in answer.body()


async def test_the_short_path_takes_the_plain_upgrade_and_leaves_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Which path opened each socket (a spy on the short path's decision, in a gateway served
    in this process): the plain request takes it, two `Connection` headers (valid, and
    answered the same way to the client) do not, and either socket works."""
    taken: list[bool] = []
    decide = UpgradeProtocol._upgrade

    def spy(protocol: UpgradeProtocol, data: bytes) -> bool:
        taken.append(decide(protocol, data))
        return taken[-1]

    monkeypatch.setattr(UpgradeProtocol, "_upgrade", spy)
    monkeypatch.setenv("ARCHMESH_JWT_SECRET", JWT_SECRET)
    monkeypatch.setenv("ARCHMESH_REDIS_URL", "")
    port = free_port()
    server = uvicorn.Server(uvicorn_config(Gateway(Settings()), port=port))
    serving = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        for user, extra in (("spy-plain", ()), ("spy-twice", ("Connection: Upgrade",))):
            answer = await asyncio.to_thread(handshake, port, request(port, *extra))
            assert answer.headers["sec-websocket-accept"] == [SAMPLE_ACCEPT]
            await asyncio.to_thread(assert_works, answer, user)
        assert taken == [True, False]
    finally:
        server.should_exit = True
        await serving


def test_a_request_websockets_cannot_parse_is_answered_and_closed() -> None:
    """A header line over 8 KiB, or over 128 headers: websockets' 431 reaches the client and
    the socket is closed (both used to stay open unanswered), and the node still shuts down
    cleanly (it failed on such a socket before)."""
    gateway = GatewayProcess().start()
    try:
        for extra in (["X-Long: " + "a" * 9000], [f"X-Header-{n}: v" for n in range(130)]):
            answer = handshake(gateway.port, request(gateway.port, *extra))
            assert answer.status == 431, answer.status_line
            assert b"Failed to open a WebSocket connection" in answer.body()
            while answer.sock.recv(4096):
                pass  # until the server closes it
        plain = handshake(gateway.port, request(gateway.port))
        assert_works(plain, "after-431")
    finally:
        code = gateway.stop()
    # Stopped by its SIGTERM as any node is (uvicorn raises it again once it has shut down),
    # not by a failure on the way.
    assert code == -signal.SIGTERM
    assert "Traceback" not in gateway.log.read_text()


def test_an_extension_to_negotiate_takes_uvicorns_path() -> None:
    gateway = GatewayProcess(ARCHMESH_WS_PER_MESSAGE_DEFLATE="true").start()
    try:
        offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"
        answer = handshake(gateway.port, request(gateway.port, offer))
        assert answer.status == 101
        (extension,) = answer.headers["sec-websocket-extensions"]
        assert extension.startswith("permessage-deflate")
    finally:
        gateway.stop()
