"""A small threaded HTTP/1.1 server on a loopback port, plain or TLS, for test peers.

Subclasses implement `handle(request) -> Reply`; the server runs in background threads of the
test process (one per connection, keep-alive honoured) so in-process asyncio senders and
notifier subprocesses can both talk to it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from tests.fakes.tls import loopback_certificates


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class LoopbackHttpServer:
    """Serves `handle()` on 127.0.0.1:<free port>; `tls=True` uses the test CA (`ca_file`)."""

    def __init__(self, *, tls: bool = False) -> None:
        self.tls = tls
        self._certificates = loopback_certificates() if tls else None
        self.ca_file = self._certificates.ca_file if self._certificates else None
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def handle(self, request: Request) -> Reply:
        raise NotImplementedError

    def pause(self, seconds: float) -> None:
        """Sleep in a handler (for timeout tests) but wake up at once when the server stops."""
        self._stopping.wait(seconds)

    def start(self) -> Self:
        context = self._certificates.server_context() if self._certificates else None
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", 0), _Handler, owner=self, context=context)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"{type(self).__name__}:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        assert self._thread is not None
        self._thread.join(5)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections are closed by close_connections()

    def __init__(
        self, address: tuple[str, int], handler: Any, *, owner: LoopbackHttpServer, context: Any
    ) -> None:
        self.owner = owner
        self.context: ssl.SSLContext | None = context
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        if self.context is not None:
            # Handshake later, in the connection's own thread, so one slow client stalls nobody.
            sock = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self._connections_lock:
            self._connections.add(sock)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(5)
                request.do_handshake()
            super().finish_request(request, client_address)
        except (OSError, ssl.SSLError):
            pass  # a client that went away or failed the handshake: its problem, not ours

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30  # an idle keep-alive connection ends after this
    server: _Server

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        reply = self.server.owner.handle(request)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean
