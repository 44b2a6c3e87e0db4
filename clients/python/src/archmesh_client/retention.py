"""How much history a channel keeps, and for how long: global, overridable per prefix."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Retention:
    size: int
    ttl: float


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    default: Retention = Retention(size=1000, ttl=3600.0)
    # (prefix, retention), longest prefix first so the most specific one wins.
    overrides: tuple[tuple[str, Retention], ...] = field(default_factory=tuple)

    def for_channel(self, channel: str) -> Retention:
        for prefix, retention in self.overrides:
            if channel.startswith(prefix):
                return retention
        return self.default

    @classmethod
    def parse(cls, default: Retention, spec: str) -> HistoryPolicy:
        """`spec` is `prefix=size/ttl,...`, e.g. `user:=100/86400,session:=2000/3600`."""
        overrides: list[tuple[str, Retention]] = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            prefix, sep, rest = item.partition("=")
            size, slash, ttl = rest.partition("/")
            if not sep or not slash or not prefix:
                raise ValueError(f"history override {item!r}: expected prefix=size/ttl")
            retention = Retention(size=int(size), ttl=float(ttl))
            if retention.size < 0 or retention.ttl <= 0:
                raise ValueError(f"history override {item!r}: size >= 0 and ttl > 0")
            overrides.append((prefix, retention))
        overrides.sort(key=lambda pair: len(pair[0]), reverse=True)
        return cls(default=default, overrides=tuple(overrides))
