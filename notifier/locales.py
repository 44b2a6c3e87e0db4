"""Locale tags and their fallback chain: `pt-BR` falls back to `pt`, then to the default.

Tags are case-insensitive (BCP 47), so they are kept in one canonical spelling (`pt-BR`,
`zh-Hant-TW`): a template variant saved as `PT-br` is found for a user whose locale is `pt-BR`.
"""

from __future__ import annotations

import re

from archmesh_client.notifications import LOCALE_PATTERN

_TAG = re.compile(LOCALE_PATTERN)


def canonical(tag: str) -> str:
    """`pt-br` -> `pt-BR`, `ZH-hant-tw` -> `zh-Hant-TW`; raises ValueError if not a tag."""
    if not _TAG.match(tag):
        raise ValueError("not a language tag such as en, pt-BR or zh-Hant-TW")
    language, *rest = tag.split("-")
    parts = [language.lower()]
    for subtag in rest:
        if len(subtag) == 2 and subtag.isalpha():
            parts.append(subtag.upper())  # region
        elif len(subtag) == 4 and subtag.isalpha():
            parts.append(subtag.title())  # script
        else:
            parts.append(subtag.lower())
    return "-".join(parts)


def chain(tag: str | None) -> list[str]:
    """The tags to try, most specific first: `zh-Hant-TW`, `zh-Hant`, `zh`. A malformed tag
    (from a request that skipped validation) gives an empty chain: the default is used."""
    if not tag:
        return []
    try:
        parts = canonical(tag).split("-")
    except ValueError:
        return []
    return ["-".join(parts[:n]) for n in range(len(parts), 0, -1)]
