"""A type's orchestration rules from settings (escalation, digest, throttle) and the route a
request takes through them. The route is decided from the rules and what the batch's prepare
script found (throttle admission, first of a digest window); the planner then follows it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from archmesh_client.notifications import (
    TYPE_PATTERN,
    EscalationStep,
    Medium,
    NotificationRequest,
    parse_escalation,
)

from notifier.digests import DigestRule
from notifier.digests import parse_rule as parse_digest
from notifier.throttle import ThrottleRule
from notifier.throttle import parse_rule as parse_throttle

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Route:
    """How one request is planned: at once (the default), suppressed by its throttle, in
    escalation steps, or with `collect` media collected into its digest window. `summary`
    marks a digest's own request (its data has `events` and `count`)."""

    throttled: bool = False
    steps: tuple[EscalationStep, ...] | None = None
    collect: frozenset[Medium] = frozenset()
    summary: bool = False


def _per_type(text: str, parse: Callable[[str], T], what: str) -> dict[str, T]:
    rules: dict[str, T] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, sep, spec = part.partition("=")
        kind = kind.strip()
        if not sep or not re.match(TYPE_PATTERN, kind):
            raise ValueError(f"{what}: {part!r} is not type=rule")
        try:
            rules[kind] = parse(spec)
        except ValueError as exc:
            raise ValueError(f"{what} of {kind}: {exc}") from None
    return rules


@dataclass(frozen=True, slots=True)
class Rules:
    escalation: dict[str, tuple[EscalationStep, ...]] = field(default_factory=dict)
    digests: dict[str, DigestRule] = field(default_factory=dict)
    throttles: dict[str, ThrottleRule] = field(default_factory=dict)

    @classmethod
    def parse(cls, escalation: str = "", digests: str = "", throttles: str = "") -> Rules:
        """From the settings' texts; a ValueError names the setting, type and reason."""
        rules = cls(
            _per_type(escalation, parse_escalation, "ARCHMESH_NOTIFIER_ESCALATION"),
            _per_type(digests, parse_digest, "ARCHMESH_NOTIFIER_DIGESTS"),
            _per_type(throttles, parse_throttle, "ARCHMESH_NOTIFIER_THROTTLES"),
        )
        both = set(rules.escalation) & set(rules.digests)
        if both:
            raise ValueError(f"a type escalates or is digested, not both: {sorted(both)}")
        return rules

    def digest_of(self, request: NotificationRequest) -> DigestRule | None:
        """A request with its own escalation is not digested."""
        return None if request.escalation else self.digests.get(request.type)

    def route(self, request: NotificationRequest, admitted: bool, opener: bool) -> Route:
        digest = self.digest_of(request)
        throttled = request.type in self.throttles and not admitted
        if digest is not None:
            # The first K of a throttle (or the window's first, with first:now) go at once.
            at_once = opener or (request.type in self.throttles and admitted)
            return Route() if at_once else Route(collect=digest.collected(request.channels))
        if throttled:
            return Route(throttled=True)
        if request.escalation is not None:
            return Route(steps=parse_escalation(request.escalation))
        if request.channels is None and request.type in self.escalation:
            return Route(steps=self.escalation[request.type])
        return Route()
