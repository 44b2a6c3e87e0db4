"""The answers of the console's read endpoints (`/api/admin/*`, gateway/admin_api.py) as
pydantic models: the endpoints build their answers with them and shared/openapi.py documents
them from the same models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class WhoAmI(BaseModel):
    credential: Literal["api_key", "admin_token"]
    node: str


class NodeAnnouncement(BaseModel):
    """One live node's announcement (shared/announcements.py): identity and uptime, then the
    figures of its role (a gateway's connections, channels, broker state, draining, busiest
    channels; a notifier's queue lag, pending and dead letters) and its rates per second."""

    model_config = ConfigDict(extra="allow")
    node: str
    role: str
    version: str
    started_at: float
    uptime: float
    at: float
    ttl: float
    rates: dict[str, float] = {}


class Nodes(BaseModel):
    nodes: list[NodeAnnouncement]
    at: float


class BusyChannel(BaseModel):
    channel: str
    subscribers: int
    nodes: list[str]


class BusiestChannels(BaseModel):
    """The busiest channels across the live gateways (each announces its own top channels)."""

    channels: list[BusyChannel]


class PresentMember(BaseModel):
    client_id: str
    user_id: str
    node: str


class PresenceCounts(BaseModel):
    connections: int
    users: int


class ChannelPresence(BaseModel):
    """Where presence is tracked (`ARCHMESH_PRESENCE_PREFIXES`): who is there, on which node,
    and the counts; `tracked: false` and nothing else otherwise."""

    channel: str
    tracked: bool
    members: list[PresentMember]
    stats: PresenceCounts | None


class UserConnections(ChannelPresence):
    """A user's connections across nodes: the presence of their own `user:` channel."""

    user: str
