"""What gateway/slim.py releases per socket must not change what the socket does: the light
queue and flag behave as asyncio's, a parser restarted after connect parses on, and a parser
caught in the middle of a frame is left alone (and that frame still arrives)."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time

import pytest

from gateway import slim
from tests.servers import GatewayProcess, RedisServer
from tests.wsclient import RawSocketClient, token


async def test_inbox_keeps_order_and_wakes_its_reader() -> None:
    inbox = slim.Inbox()
    inbox.put_nowait(1)
    inbox.put_nowait(2)
    assert await inbox.get() == 1
    assert inbox.qsize() == 1
    assert not inbox.empty()
    assert await inbox.get() == 2
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait(3)
    inbox.put_nowait(4)
    assert await waiting == 3
    assert inbox.get_nowait() == 4
    assert inbox.empty()
    cancelled = inbox.get()
    cancelled.cancel()  # its reader went away: the next item waits for the next reader
    inbox.put_nowait(5)
    assert await inbox.get() == 5


async def test_flag_wakes_its_waiters_when_set() -> None:
    flag = slim.Flag(True)
    assert await flag.wait()
    flag.clear()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True]


def test_what_is_not_uvicorns_protocol_is_left_alone() -> None:
    assert not slim.accepted(object())
    assert not slim.settled(object())


def frame(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_until(client: RawSocketClient, marker: bytes, timeout: float = 10.0) -> bytes:
    received = b""
    deadline = time.monotonic() + timeout
    while marker not in received:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {marker!r} in {received!r}")
        try:
            chunk = client.sock.recv(65536)
        except TimeoutError:
            continue
        assert chunk, f"closed before {marker!r}: {received!r}"
        received += chunk
    return received


@pytest.fixture(scope="module")
def node(shared_redis: RedisServer) -> GatewayProcess:
    process = GatewayProcess(shared_redis.url).start()
    yield process
    process.stop()


def test_a_socket_reads_on_after_its_parser_is_restarted(node: GatewayProcess) -> None:
    client = RawSocketClient(node.port)
    try:
        client.sock.sendall(frame(json.dumps({"type": "connect", "token": token("slim1")})))
        read_until(client, b'"type":"connected"')
        for n in range(3):
            client.sock.sendall(frame(json.dumps({"type": "ping", "id": n})))
            read_until(client, f'"id":{n}'.encode())
        assert node.publish("user:slim1", {"type": "t", "n": 1}).status_code == 200
        read_until(client, b'"type":"publication"')
    finally:
        client.close()


def test_a_frame_split_around_the_connect_still_arrives(node: GatewayProcess) -> None:
    client = RawSocketClient(node.port)
    try:
        ping = frame(json.dumps({"type": "ping", "id": 7}))
        # The connect frame and the start of the next one in one write: the parser is inside
        # a frame when the connect is done, so it is not restarted there.
        connect = frame(json.dumps({"type": "connect", "token": token("slim2")}))
        client.sock.sendall(connect + ping[:4])
        read_until(client, b'"type":"connected"')
        client.sock.sendall(ping[4:])
        read_until(client, b'"type":"pong","id":7')
    finally:
        client.close()
