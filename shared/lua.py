"""Every Lua script of the project is a file next to the code that runs it, read here once.

A script in a file can be read, linted and diffed as Lua, and the key layout it touches is in
one place with it; scripts are registered with redis-py (EVALSHA, falling back to EVAL after a
restart or a failover flushed the script cache)."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def lua(package: str, name: str) -> str:
    """The source of `name` (e.g. "publish.lua") shipped inside `package` (its package data)."""
    return resources.files(package).joinpath(name).read_text(encoding="utf-8")
