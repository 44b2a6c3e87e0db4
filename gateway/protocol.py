"""The wire protocol: frame types, error codes, close codes, and frame encoding."""

from __future__ import annotations

import struct
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.broker import BrokerPublication


class ErrorCode(StrEnum):
    """`code` of an `error` frame; the socket stays usable after each of these."""

    BAD_JSON = "bad_json"
    BAD_FRAME = "bad_frame"
    FRAME_TOO_LARGE = "frame_too_large"
    NOT_CONNECTED = "not_connected"
    ALREADY_CONNECTED = "already_connected"
    INVALID_CHANNEL = "invalid_channel"
    FORBIDDEN = "forbidden"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    NOT_SUBSCRIBED = "not_subscribed"
    RATE_LIMITED = "rate_limited"
    INVALID_TOKEN = "invalid_token"
    NO_SUBSCRIPTION_TOKEN = "no_subscription_token"
    UNAVAILABLE = "unavailable"


class UnsubscribeReason(StrEnum):
    """`reason` of an unasked `unsubscribed`: the gateway ended a subscription by itself."""

    TOKEN_EXPIRED = "token_expired"  # the subscription token's `exp` passed, no `sub_refresh`
    REVOKED = "revoked"  # a `refresh` brought claims that no longer allow the channel


class CloseCode(IntEnum):
    """4000-4499: the client should reconnect. 4500-4999: it should not."""

    SHUTDOWN = 4000
    SLOW_CONSUMER = 4001
    SERVER_ERROR = 4002
    TOKEN_EXPIRED = 4004
    RATE_LIMITED = 4005
    CONNECT_TIMEOUT = 4006
    DISCONNECTED = 4007  # by a backend (control API), asking the client to reconnect
    INVALID_TOKEN = 4501
    TERMINATED = 4502  # by a backend (control API), asking the client not to reconnect
    TOKEN_REVOKED = 4503
    CONNECTION_LIMIT = 4504

    @property
    def reconnect(self) -> bool:
        return self < 4500


CLOSE_REASONS: dict[CloseCode, str] = {
    CloseCode.SHUTDOWN: "shutdown",
    CloseCode.SLOW_CONSUMER: "slow_consumer",
    CloseCode.SERVER_ERROR: "server_error",
    CloseCode.TOKEN_EXPIRED: "token_expired",
    CloseCode.RATE_LIMITED: "rate_limited",
    CloseCode.CONNECT_TIMEOUT: "connect_timeout",
    CloseCode.DISCONNECTED: "disconnected",
    CloseCode.INVALID_TOKEN: "invalid_token",
    CloseCode.TERMINATED: "terminated",
    CloseCode.TOKEN_REVOKED: "token_revoked",
    CloseCode.CONNECTION_LIMIT: "connection_limit",
}


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: int | None = Field(None, ge=0, le=2**53)


class Since(BaseModel):
    model_config = ConfigDict(extra="forbid")
    offset: int = Field(ge=0)
    epoch: str = Field(max_length=64)


class SubscribeFrame(_Frame):
    type: Literal["subscribe"]
    channel: str = Field(max_length=200)
    since: Since | None = None
    token: str | None = Field(None, max_length=8192)
    # The channel's latest publication right after `subscribed`; None: ARCHMESH_LATEST_ON_SUBSCRIBE.
    latest: bool | None = None


class InitialSubscription(SubscribeFrame):
    """An item of `connect.subscribe`: a subscribe frame whose `type` may be left out."""

    type: Literal["subscribe"] = "subscribe"


class ConnectFrame(_Frame):
    type: Literal["connect"]
    token: str = Field(max_length=8192)
    since: Since | None = None  # where the client stands on its own `user:` channel
    subscribe: list[InitialSubscription | str] = Field(default_factory=list, max_length=100)


class UnsubscribeFrame(_Frame):
    type: Literal["unsubscribe"]
    channel: str = Field(max_length=200)


class PingFrame(_Frame):
    type: Literal["ping"]


class RefreshFrame(_Frame):
    type: Literal["refresh"]
    token: str = Field(max_length=8192)


class SubRefreshFrame(_Frame):
    type: Literal["sub_refresh"]
    channel: str = Field(max_length=200)
    token: str = Field(max_length=8192)


class HistoryFrame(_Frame):
    """A page of a channel's history (`archmesh_client.history_page`), authorized like a
    subscribe (`token`: a subscription token for it)."""

    type: Literal["history"]
    channel: str = Field(max_length=200)
    limit: int = Field(ge=0, le=2**31)
    since: Since | None = None
    reverse: bool = False
    token: str | None = Field(None, max_length=8192)


class PresenceFrame(_Frame):
    type: Literal["presence"]
    channel: str = Field(max_length=200)


class PresenceStatsFrame(_Frame):
    type: Literal["presence_stats"]
    channel: str = Field(max_length=200)


ClientFrame = Annotated[
    ConnectFrame
    | SubscribeFrame
    | UnsubscribeFrame
    | PingFrame
    | RefreshFrame
    | SubRefreshFrame
    | PresenceFrame
    | PresenceStatsFrame
    | HistoryFrame,
    Field(discriminator="type"),
]
CLIENT_FRAME: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
FRAME_TYPES = frozenset(
    (
        "connect",
        "subscribe",
        "unsubscribe",
        "ping",
        "refresh",
        "sub_refresh",
        "presence",
        "presence_stats",
        "history",
    )
)


class Outgoing:
    """A frame for clients, encoded once however many sockets it goes to: `text` for ASGI,
    `wire` (the complete unmasked WebSocket text frame, built on first use) for writing
    straight to a transport."""

    __slots__ = ("_wire", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._wire: bytes | None = None

    @property
    def wire(self) -> bytes:
        wire = self._wire
        if wire is None:
            wire = self._wire = text_frame(self.text.encode())
        return wire


def text_frame(payload: bytes) -> bytes:
    """RFC 6455 section 5.2: FIN + text opcode, then the length; server frames are unmasked."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def encode(frame: dict[str, Any]) -> str:
    return orjson.dumps(frame).decode()


def error_frame(code: ErrorCode, message: str, request_id: int | None = None) -> str:
    frame: dict[str, Any] = {"type": "error", "code": code.value, "message": message}
    if request_id is not None:
        frame["id"] = request_id
    return encode(frame)


def disconnect_frame(code: CloseCode) -> str:
    reason = CLOSE_REASONS[code]
    return encode(
        {"type": "disconnect", "code": int(code), "reason": reason, "reconnect": code.reconnect}
    )


def publication_frame(publication: BrokerPublication) -> str:
    """Built by concatenation: `data` is already JSON and the channel needs no escaping, so
    one message costs one string build per node, whatever the number of sockets."""
    if publication.offset is None:
        return (
            f'{{"type":"publication","channel":"{publication.channel}","data":{publication.data}}}'
        )
    return (
        f'{{"type":"publication","channel":"{publication.channel}",'
        f'"offset":{publication.offset},"epoch":"{publication.epoch}","data":{publication.data}}}'
    )
