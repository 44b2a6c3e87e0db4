"""An SSE stream's event id: the position (offset, epoch) of every channel of the stream, as
base64url (unpadded) JSON `{"channel": [offset, "epoch"], ...}`.

One id says where the client stands on all its channels at once, so the `Last-Event-ID` a
browser sends when it reconnects is enough to recover each of them (gateway.sse). The id is
opaque to clients; only the node reads it back, and one it cannot read recovers nothing."""

from __future__ import annotations

import base64
import binascii

import orjson
from pydantic import ValidationError

from gateway.protocol import Since

# Bounds what a client can make the node parse: a header of 100 channels fits well within.
MAX_ID_CHARS = 32768


class Positions:
    """Where a stream stands on each of its channels; its id rebuilt when asked."""

    __slots__ = ("_by_channel",)

    def __init__(self) -> None:
        self._by_channel: dict[str, tuple[int, str]] = {}

    def move(self, channel: str, offset: int, epoch: str) -> None:
        self._by_channel[channel] = (offset, epoch)

    def drop(self, channel: str) -> None:
        self._by_channel.pop(channel, None)

    def event_id(self) -> str:
        raw = orjson.dumps({c: [o, e] for c, (o, e) in self._by_channel.items()})
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_positions(event_id: str) -> dict[str, Since] | None:
    """The positions an id holds; None when it is not one of ours (malformed, too long)."""
    if not event_id or len(event_id) > MAX_ID_CHARS:
        return None
    try:
        raw = orjson.loads(base64.urlsafe_b64decode(event_id + "=" * (-len(event_id) % 4)))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    positions: dict[str, Since] = {}
    for channel, value in raw.items():
        if not isinstance(value, list) or len(value) != 2:
            return None
        try:
            positions[channel] = Since(offset=value[0], epoch=value[1])
        except ValidationError:
            return None
    return positions
