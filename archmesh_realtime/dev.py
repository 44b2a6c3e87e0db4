"""`archmesh-rt dev`: a gateway and a notifier in one process, for a first run.

They share one broker (in memory without ARCHMESH_REDIS_URL), so the notifier's in-app
messages reach the page live; without Redis the notifier's stores live in an embedded
in-memory Redis, which only this mode needs (the `embedded` extra, installed by `make run`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from archmesh_realtime.devtools import DevTools
from gateway.app import Gateway
from notifier.app import Notifier
from notifier.settings import NotifierSettings
from shared.broker import create_broker

if TYPE_CHECKING:
    import redis.asyncio as aioredis


class EmbeddedStoreMissing(RuntimeError):
    """Development mode without Redis, and without the package that emulates it."""


def embedded_store() -> aioredis.Redis:
    """An in-process Redis for the notifier's stores (fakeredis, with Lua)."""
    try:
        import fakeredis
    except ImportError:
        raise EmbeddedStoreMissing(
            "ARCHMESH_REDIS_URL is not set and the embedded store is not installed: "
            "pip install 'archmesh-realtime[embedded]' (make run does), or point "
            "ARCHMESH_REDIS_URL at a Redis server"
        ) from None
    store: aioredis.Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    return store


def development_node(settings: NotifierSettings) -> Gateway:
    """A gateway node that also hosts the notifier (its routes, its worker) and the page's
    development features."""
    broker = create_broker(
        settings.redis_url, settings.history_policy(), settings.broker_liveness()
    )
    embedded = not settings.redis_url or settings.redis_url.startswith("memory://")
    notifier = Notifier(settings, broker=broker, redis=embedded_store() if embedded else None)
    tools = DevTools(owners=notifier.workflows)
    return Gateway(
        settings,
        broker,
        dev=True,
        routes=[*tools.routes, *notifier.routes],
        lifespans=[notifier.lifespan],
    )
