"""encode/broadcaster (Redis backend) behind a Starlette WebSocket endpoint: a peer.
`/ws?channel=NAME` subscribes to one channel, says `ready`, then forwards every message."""

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from broadcaster import Broadcast
from broadcaster._base import Subscriber
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

broadcast = Broadcast(os.environ["REDIS_URL"])


async def endpoint(websocket: WebSocket) -> None:
    """As in broadcaster's own example: one task forwards, the endpoint reads until the
    client leaves (a forwarder alone would wait forever on a quiet channel)."""
    await websocket.accept()
    channel = websocket.query_params["channel"]
    async with broadcast.subscribe(channel) as subscriber:
        await websocket.send_text("ready")
        forward = asyncio.create_task(_forward(websocket, subscriber))
        try:
            while (await websocket.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            forward.cancel()


async def _forward(websocket: WebSocket, subscriber: Subscriber) -> None:
    async for event in subscriber:  # type: ignore[union-attr]
        await websocket.send_text(event.message)


@asynccontextmanager
async def lifespan(_: Starlette) -> AsyncIterator[None]:
    await broadcast.connect()
    # Two races in broadcaster 0.3.1, worked around here so that it can be measured at all:
    # - its Redis listener starts on the first SUBSCRIBE, before that command completes, finds
    #   nothing subscribed and stops until another *channel* is subscribed;
    # - clients subscribing to a new channel at the same time each overwrite the channel's
    #   subscriber set, so all but the last one never receive anything.
    # Standing subscriptions, one after the other, to a keep-alive channel and to the fan-out
    # channel avoid both.
    async with broadcast.subscribe("bench:keepalive"), broadcast.subscribe("bench"):
        yield
    await broadcast.disconnect()


app = Starlette(routes=[WebSocketRoute("/ws", endpoint)], lifespan=lifespan)
