"""The control stream's contract: what a backend may ask of every gateway node, as JSON objects
on one internal channel that every node follows.

Control commands travel on `CONTROL_CHANNEL` through the same publish script as events (history,
offsets, epochs), so a node whose Redis link blipped reads back what it missed exactly as it
repairs any channel. Its name is not a channel name clients may use (`validate_channel` refuses
it): no client can subscribe to, or publish on, the control stream.

    {"type": "disconnect", "user": "alice", "reconnect": true}
    {"type": "unsubscribe", "user": "alice", "channel": "session:abc", "reason": "removed"}
    {"type": "subscribe", "user": "alice", "channel": "session:abc"}
    {"type": "revoke_token", "jti": "6f1c...", "exp": 1767225600}
    {"type": "revoke_user", "user": "alice", "before": 1767225600.5}
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, TypeAdapter

from archmesh_client.channels import user_channel, validate_channel
from archmesh_client.retention import HistoryPolicy, Retention

CONTROL_CHANNEL = "$control"
# Enough for a node cut off for a long while to read back every command it missed (a gateway
# repairs at most 10,000 publications per gap), kept for a week after the last command.
CONTROL_RETENTION = Retention(size=10_000, ttl=7 * 86400.0)

# A user revocation is kept this long after its cut-off: the longest lifetime (exp - iat) of
# the tokens the backend issues (the gateways' ARCHMESH_MAX_TOKEN_LIFETIME).
DEFAULT_MAX_TOKEN_LIFETIME = 86400.0
# Revocations outlive what they revoke by the largest clock-skew leeway a gateway may accept on
# `exp` (ARCHMESH_JWT_LEEWAY is at most 300 s).
REVOCATION_MARGIN = 300.0


def _user(value: str) -> str:
    user_channel(value)  # the same ids as `user:<id>` channels
    return value


def _channel(value: str) -> str:
    return validate_channel(value)


UserId = Annotated[str, AfterValidator(_user)]
ClientChannel = Annotated[str, AfterValidator(_channel)]
# Unix time in seconds (a JWT's NumericDate), after 1970 and before the year 5138.
UnixTime = Annotated[float, Field(strict=True, gt=0, lt=1e11)]


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Disconnect(_Command):
    """Close every connection of `user` on every node; `reconnect` picks the close code:
    4007 `disconnected` (the client reconnects) or 4502 `terminated` (it does not)."""

    type: Literal["disconnect"] = "disconnect"
    user: UserId
    reconnect: StrictBool = True


class Unsubscribe(_Command):
    """Take `channel` away from every connection of `user`: each gets an unasked
    `unsubscribed` with `reason`."""

    type: Literal["unsubscribe"] = "unsubscribe"
    user: UserId
    channel: ClientChannel
    reason: str = Field("server", pattern=r"^[A-Za-z0-9_.:-]{1,64}$")


class Subscribe(_Command):
    """Subscribe every connection of `user` to `channel` (no authorization check: the backend
    decided): each gets an unasked `subscribed` with the channel's offset and epoch, then its
    publications."""

    type: Literal["subscribe"] = "subscribe"
    user: UserId
    channel: ClientChannel


class RevokeToken(_Command):
    """Refuse the token whose `jti` claim this is until its `exp`; close the connections it
    opened (4503 `token_revoked`)."""

    type: Literal["revoke_token"] = "revoke_token"
    jti: str = Field(pattern=r"^[\x21-\x7e]{1,256}$")
    exp: UnixTime


class RevokeUser(_Command):
    """Refuse every token of `user` issued (`iat`) before `before`, and one without `iat`;
    close the connections they opened (4503 `token_revoked`)."""

    type: Literal["revoke_user"] = "revoke_user"
    user: UserId
    before: UnixTime


ControlCommand = Annotated[
    Disconnect | Unsubscribe | Subscribe | RevokeToken | RevokeUser, Field(discriminator="type")
]
COMMAND: TypeAdapter[ControlCommand] = TypeAdapter(ControlCommand)


def parse_command(data: str) -> ControlCommand:
    """A command from the control stream's JSON text; pydantic's ValidationError (a ValueError)
    for anything else."""
    return COMMAND.validate_json(data)


def with_control_retention(policy: HistoryPolicy) -> HistoryPolicy:
    """`policy`, with the control stream kept as `CONTROL_RETENTION` whatever the defaults."""
    overrides = ((CONTROL_CHANNEL, CONTROL_RETENTION), *policy.overrides)
    ordered = tuple(sorted(overrides, key=lambda pair: len(pair[0]), reverse=True))
    return HistoryPolicy(default=policy.default, overrides=ordered)
