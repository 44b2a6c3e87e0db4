"""Saved templates, validated (compiled in the sandbox) before they are stored."""

from __future__ import annotations

import redis.asyncio as aioredis

from notifier import keys, templates
from notifier.schemas import Template


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

    async def delete(self, name: str) -> bool:
        return bool(await self._redis.delete(keys.template(name)))
