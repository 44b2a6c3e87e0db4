"""The WebSocket upgrade, parsed once. uvicorn's httptools server parses the upgrade request in C,
then hands the WebSocket protocol the request rebuilt as bytes, which websockets parses again in
Python (line by line, a regular expression per header), checks (its `Connection` and `Upgrade`
headers token by token), answers with a `Response` object of headers, and serializes; uvicorn
then turns those headers back into the ASGI scope's bytes. Together that was about a quarter of
what a connect cost the gateway's CPU (docs/benchmarks.md).

`UpgradeProtocol` takes the plain handshake (GET, HTTP/1.1, one `Connection` naming `upgrade`,
one `Upgrade: websocket`, a valid key, version 13, no extension to negotiate) on a short path:
it splits the rebuilt request, builds the scope from its bytes as they are, and writes the 101
response from a template when the app accepts. Everything else (a malformed or unusual request,
an extension such as permessage-deflate enabled on the node, another uvicorn or websockets than
the ones this was written for) takes uvicorn's own path, which answers it exactly as before
(websockets' 400s, or a 101 with the negotiated extension). tests/test_upgrade.py checks both.

These are private internals of uvicorn (the protocol's attributes and `run_asgi`) and websockets
(the parser and its state): pyproject.toml pins the ranges the other modules were tested on,
and the short path runs only on the versions it was tested with (`_TESTED`); on any other,
every request takes uvicorn's path."""

from __future__ import annotations

import binascii
import logging
import re
from base64 import b64decode
from importlib.metadata import version
from typing import Any
from urllib.parse import unquote

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.utils import (
    ClientDisconnected,
    get_client_addr,
    get_path_with_query_string,
)
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import CONNECTING, OPEN, Protocol
from websockets.utils import accept_key

# What this was written against and tested with; anything else takes uvicorn's path.
_TESTED = {"uvicorn": "0.54.", "websockets": "17."}
SUPPORTED = all(version(name).startswith(prefix) for name, prefix in _TESTED.items())

# websockets' own limits on a handshake request (websockets.http11).
_MAX_HEADERS = 128
_MAX_LINE = 8192

# The headers the short path checks, each allowed once; `Connection`'s values are tokens.
_CHECKED = frozenset((b"connection", b"upgrade", b"sec-websocket-key", b"sec-websocket-version"))
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")  # RFC 9110's token

_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


class UpgradeProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol with the plain upgrade on a short path."""

    _accept: bytes | None = None  # the Sec-WebSocket-Accept value, while the app decides

    def data_received(self, data: bytes) -> None:
        if self.handshake_initiated or not SUPPORTED or not self._upgrade(data):
            super().data_received(data)
            if not self.handshake_initiated:
                self._answer_unparsed()

    def _answer_unparsed(self) -> None:
        """websockets refused a request it could not parse (a line over 8 KiB or over 128
        headers: 431; not a request at all: 400) and queued its answer, which uvicorn never
        writes: the socket stayed open and unanswered, and the node's shutdown then failed on
        it (an AssertionError from websockets, asked for a second answer). Write the answer
        and close, as uvicorn does for a request websockets parsed and refused."""
        output = self.conn.data_to_send()
        if not output:
            return  # nothing refused: the request is not complete yet
        self.handshake_complete = self.close_sent = True
        self.transport.write(b"".join(output))
        self.transport.close()

    def _upgrade(self, data: bytes) -> bool:
        """Start the app for a plain upgrade request (what `handle_connect` does); False, with
        nothing changed, for any other."""
        conn = self.conn
        if (
            conn.state is not CONNECTING
            or conn.available_extensions
            or not data.endswith(b"\r\n\r\n")
        ):
            return False
        lines = data[:-4].split(b"\r\n")
        if len(lines) > _MAX_HEADERS + 1:
            return False
        if len(data) > _MAX_LINE and max(map(len, lines)) > _MAX_LINE:
            return False
        method, _, rest = lines[0].partition(b" ")
        target, _, protocol = rest.partition(b" ")
        if method != b"GET" or protocol != b"HTTP/1.1" or not target.isascii():
            return False
        headers: list[tuple[bytes, bytes]] = []
        seen: dict[bytes, bytes] = {}
        subprotocols: list[str] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            if not sep or not name.isascii():
                return False
            name = name.lower()  # httptools' names are lower-case already
            headers.append((name, value))
            if name == b"sec-websocket-protocol":
                subprotocols += [token.strip() for token in value.decode("latin-1").split(",")]
            elif name in _CHECKED:
                if name in seen:
                    return False  # websockets refuses some repeats: let it say so
                seen[name] = value
        key = seen.get(b"sec-websocket-key")
        options = [token.strip() for token in seen.get(b"connection", b"").split(b",")]
        if (
            not all(_TOKEN.fullmatch(option) for option in options)
            or b"upgrade" not in [option.lower() for option in options]
            or seen.get(b"upgrade", b"").lower() != b"websocket"
            or seen.get(b"sec-websocket-version") != b"13"
            or key is None
            or not _valid_key(key)
        ):
            return False
        self._accept = accept_key(key.decode()).encode()
        # From here on what `handle_connect` does for an accepted request, with the same scope.
        conn.parser = Protocol.parse(conn)  # the request is read: frames follow
        next(conn.parser)
        self.handshake_initiated = True
        raw_path, _, query = target.partition(b"?")
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path.decode("ascii")),
            "raw_path": self.root_path.encode("ascii") + raw_path,
            "query_string": query,
            "headers": headers,
            "subprotocols": subprotocols,
            "state": self.app_state.copy(),
            "extensions": {"websocket.http.response": {}},
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)
        return True

    async def send(self, message: ASGISendEvent) -> None:
        accept = self._accept
        if accept is None or message["type"] != "websocket.accept":
            await super().send(message)  # frames, a refusal, or uvicorn's own handshake
            return
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.handshake_complete or self.initial_response is not None:
            await super().send(message)  # out of turn: uvicorn says why
            return
        self._accept = None
        if self.logger.isEnabledFor(logging.INFO):
            where = get_client_addr(self.scope), get_path_with_query_string(self.scope)
            self.logger.info('%s - "WebSocket %s" [accepted]', *where)
        head = [_SWITCHING, accept, b"\r\n"]
        extra: list[Any] = [*self.default_headers, *message.get("headers", [])]
        for name, value in extra:
            head += [bytes(name).lower(), b": ", bytes(value), b"\r\n"]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            head += [b"Sec-WebSocket-Protocol: ", subprotocol.encode(), b"\r\n"]
        head.append(b"\r\n")
        if not self.transport.is_closing():
            self.handshake_complete = True
            self.conn.state = OPEN
            self.transport.write(b"".join(head))
            self.start_keepalive()


def _valid_key(key: bytes) -> bool:
    try:
        return len(b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False
