"""A node's member (gateway/membership.py `Member`) that takes whatever it is sent and does
nothing with it: for tests of the registries (membership, presence) without sockets."""

from __future__ import annotations

from gateway.protocol import CloseCode, Outgoing
from shared.broker import BrokerPublication


class IdleMember:
    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.user_id: str | None = client_id

    def deliver(self, pub: BrokerPublication, frame: Outgoing) -> None: ...

    def push(self, frame: Outgoing) -> None: ...

    def close(self, code: CloseCode) -> None: ...
