"""Saved templates, validated (compiled in the sandbox) before they are stored."""

from __future__ import annotations

import redis.asyncio as aioredis

from notifier import keys, templates
from shared.notifications import Template


class TemplateStore:
    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis

    async def put(self, name: str, template: Template) -> None:
        """Raises TemplateInvalid with the reason; nothing is saved then."""
        templates.validate(template)
        await self._redis.set(keys.template(name), template.model_dump_json(exclude_none=True))

    async def get(self, name: str) -> Template | None:
        raw = await self._redis.get(keys.template(name))
        return None if raw is None else Template.model_validate_json(raw)

    async def get_many(self, names: list[str]) -> dict[str, Template | None]:
        unique = list(dict.fromkeys(names))
        if not unique:
            return {}
        raws = await self._redis.mget([keys.template(n) for n in unique])
        return {
            name: None if raw is None else Template.model_validate_json(raw)
            for name, raw in zip(unique, raws, strict=True)
        }

    async def delete(self, name: str) -> bool:
        return bool(await self._redis.delete(keys.template(name)))
