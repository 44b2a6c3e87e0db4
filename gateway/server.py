"""Serve a gateway with uvicorn; the first SIGTERM/SIGINT drains before uvicorn stops.

uvicorn closes every WebSocket with 1012 before lifespan shutdown runs, so a drain that must
come first (not-ready, then spread-out reconnect requests) lives in the signal handling."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
from types import FrameType

import uvicorn

from gateway.app import Gateway
from gateway.open_files import raise_soft_limit
from gateway.upgrade import UpgradeProtocol
from shared.collector import tune_for_a_server
from shared.logging import get_logger

log = get_logger(__name__)


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if (
            self._loop is None
            or self._drain is not None
            or sig not in (signal.SIGTERM, signal.SIGINT)
        ):
            super().handle_exit(sig, frame)
            return
        log.info("signal_received", signal=signal.Signals(sig).name, action="drain")
        self._captured_signals.append(sig)
        self._loop.call_soon_threadsafe(self._start_drain)

    def _start_drain(self) -> None:
        self._drain = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._gateway.drain()
        finally:
            self.should_exit = True


def serve(gateway: Gateway) -> None:
    tune_for_a_server()
    raise_soft_limit()  # a node holds as many sockets as the hard limit allows
    _DrainingServer(uvicorn_config(gateway), gateway).run()


def uvicorn_config(gateway: Gateway, port: int | None = None) -> uvicorn.Config:
    """How a node is served (also what bench/conn_cost.py measures)."""
    settings = gateway.settings
    return uvicorn.Config(
        gateway,
        host=settings.host,
        port=settings.port if port is None else port,
        ws_max_size=settings.ws_max_bytes,
        ws_ping_interval=settings.ws_ping_interval,
        ws_ping_timeout=settings.ws_ping_timeout,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        # Named, not "auto": the fast paths are what the benchmarks measured, and the
        # gateway's direct frame writes need websockets-sansio (gateway/outbox.py), of which
        # UpgradeProtocol is a subclass.
        loop=_installed("uvloop", "asyncio"),
        http=_installed("httptools", "h11"),
        ws=UpgradeProtocol,  # websockets-sansio, with the plain upgrade parsed once
        # Nothing reads the client address or scheme; the middleware would stay on the call
        # stack of every socket for its whole life.
        proxy_headers=False,
        # A reconnect storm arrives within the SDKs' first backoff step: queued by the kernel,
        # not refused (uvicorn's default is 2048; the kernel caps it at net.core.somaxconn).
        backlog=settings.listen_backlog,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )


def _installed(fast: str, fallback: str) -> str:
    """uvicorn[standard] brings uvloop and httptools, except where they do not build."""
    return fast if importlib.util.find_spec(fast) is not None else fallback
