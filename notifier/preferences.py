"""Users' preferences and contact points; users who saved nothing get the defaults."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from notifier import keys
from notifier.schemas import ChannelSwitches, Preferences, PreferencesPatch
from shared.lua import lua


def critical_switched_off(
    channels: dict[str, ChannelSwitches] | None, critical: frozenset[str]
) -> list[dict[str, Any]]:
    """The switches that would turn a critical type off, as 422 `fields` entries.

    A critical type (ARCHMESH_NOTIFIER_CRITICAL_TYPES) reaches the user whatever the switches
    say, so saving one as off would only mislead the user: it is refused with the reason."""
    refused = []
    for kind, switches in (channels or {}).items():
        if kind not in critical:
            continue
        for medium, on in switches.items():
            if not on:
                refused.append(
                    {
                        "loc": ["channels", kind, medium.value],
                        "msg": f"{kind} is a critical notification type: it cannot be switched off",
                        "type": "critical_type",
                    }
                )
    return refused


class PreferenceStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self._save = redis.register_script(lua("notifier.scripts", "preferences_save.lua"))

    async def get(self, user_id: str) -> Preferences | None:
        """None when the user never saved any (callers use `Preferences()` then)."""
        raw = await self._redis.get(keys.preferences(user_id))
        return None if raw is None else Preferences.model_validate_json(raw)

    async def put(self, user_id: str, preferences: Preferences) -> Preferences:
        await self._redis.set(keys.preferences(user_id), preferences.model_dump_json())
        return preferences

    async def patch(self, user_id: str, patch: PreferencesPatch) -> Preferences:
        """Merge `patch` into what is saved, atomically against concurrent writers."""
        changes = patch.model_dump(exclude_unset=True)

        def merge(current: Preferences) -> Preferences:
            merged: dict[str, Any] = current.model_dump()
            for field, value in changes.items():
                if field == "channels":
                    for kind, switches in value.items():
                        merged["channels"].setdefault(kind, {}).update(switches)
                else:
                    merged[field] = value
            return Preferences.model_validate(merged)

        return await self._update(user_id, merge)

    async def remove_push_subscription(self, user_id: str, endpoint: str) -> None:
        """Forget a subscription the push service says is gone (404/410)."""

        def prune(current: Preferences) -> Preferences:
            subs = [s for s in current.contacts.push_subscriptions if s.endpoint != endpoint]
            contacts = current.contacts.model_copy(update={"push_subscriptions": subs})
            return current.model_copy(update={"contacts": contacts})

        await self._update(user_id, prune)

    async def _update(self, user_id: str, change: Any) -> Preferences:
        """Read, change, and save only if nothing was saved in between (else again): one
        compare-and-set script on the user's one key, no WATCH."""
        key = keys.preferences(user_id)
        while True:
            raw = await self._redis.get(key)
            current = Preferences() if raw is None else Preferences.model_validate_json(raw)
            updated: Preferences = change(current)
            seen = "0" if raw is None else "1" + str(raw)
            if await self._save(keys=[key], args=[seen, updated.model_dump_json()]):
                return updated
