"""Floods, run in a process of their own (python -m chaos.flood KIND URL N [TOKEN]) so that
the flooder's CPU does not slow down the well-behaved client whose latency is measured.
Prints what the server answered as one JSON object."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

FLOOD_ADDRESS = "127.0.0.2"  # floods come from here; well-behaved clients from 127.0.0.1


async def handshakes(url: str, total: int) -> dict[str, int]:
    """`total` WebSocket handshakes from FLOOD_ADDRESS as fast as possible, none of which
    ever sends `connect`; counts answers and how the accepted sockets end."""
    outcomes: Counter[str] = Counter()
    sockets: list[ClientConnection] = []
    gate = asyncio.Semaphore(200)

    async def one() -> None:
        async with gate:
            try:
                ws = await connect(url, open_timeout=10, local_addr=(FLOOD_ADDRESS, 0))
                sockets.append(ws)
                outcomes["101"] += 1
            except InvalidStatus as exc:
                outcomes[str(exc.response.status_code)] += 1
            except (OSError, TimeoutError) as exc:
                outcomes[type(exc).__name__] += 1

    await asyncio.gather(*(one() for _ in range(total)))
    closed = await asyncio.gather(*(_close_code(ws) for ws in sockets))
    for code in closed:
        outcomes[f"closed {code}"] += 1
    return dict(outcomes)


async def _close_code(ws: ClientConnection) -> int | None:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 15)
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None
    except TimeoutError:
        return None
    finally:
        await ws.close()


async def frames(url: str, total: int, token: str) -> dict[str, int]:
    """One connected socket sends `total` pings without reading, then reads the answers."""
    outcomes: Counter[str] = Counter()
    async with connect(url, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "connect", "token": token}))
        await ws.recv()
        try:
            for n in range(total):
                await ws.send(json.dumps({"type": "ping", "id": n}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                outcomes[frame.get("code") or frame["type"]] += 1
        except ConnectionClosed as exc:
            outcomes[f"close {exc.rcvd.code if exc.rcvd else None}"] += 1
    return dict(outcomes)


def main(argv: list[str]) -> int:
    kind, url, total = argv[0], argv[1], int(argv[2])
    if kind == "handshakes":
        result = asyncio.run(handshakes(url, total))
    else:
        result = asyncio.run(frames(url, total, argv[3]))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
