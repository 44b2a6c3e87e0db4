"""python-socketio with AsyncRedisManager on uvicorn: a peer. A client joins rooms with a `join`
event (a list of room names) and gets `joined` back once they are joined."""

import os

import socketio

manager = socketio.AsyncRedisManager(os.environ["REDIS_URL"])
sio = socketio.AsyncServer(
    async_mode="asgi", client_manager=manager, transports=["websocket"], cors_allowed_origins="*"
)


@sio.on("join")
async def join(sid: str, rooms: list[str]) -> None:
    for room in rooms:
        await sio.enter_room(sid, room)
    await sio.emit("joined", rooms, to=sid)


app = socketio.ASGIApp(sio)
