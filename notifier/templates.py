"""Templates: Jinja2 in a sandbox, undefined variables are errors, HTML autoescaped.

An invalid template is refused when it is saved; a render error fails only that delivery."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from archmesh_client.notifications import Medium
from jinja2 import StrictUndefined, TemplateError
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import ImmutableSandboxedEnvironment

from notifier import locales
from notifier.schemas import Template, TemplateChannels

# Fields rendered as HTML (escaped); every other field is plain text (not escaped).
_HTML_FIELDS = frozenset({"html"})
MAX_RENDERED_CHARS = 200_000


class TemplateInvalid(ValueError):
    """The reason names the channel and field, e.g. `email.subject: unexpected '}'`."""


_html_env = ImmutableSandboxedEnvironment(autoescape=True, undefined=StrictUndefined)
_text_env = ImmutableSandboxedEnvironment(autoescape=False, undefined=StrictUndefined)


@lru_cache(maxsize=1024)
def _compile(source: str, html: bool) -> JinjaTemplate:
    return (_html_env if html else _text_env).from_string(source)


def _fields(channels: TemplateChannels, channel: Medium) -> dict[str, str] | None:
    part = getattr(channels, channel.value)
    if part is None:
        return None
    return {k: v for k, v in part.model_dump().items() if isinstance(v, str)}


def _localized(template: Template, channel: Medium, locale: str | None) -> dict[str, str] | None:
    """The channel's sources in the first variant of the locale's chain that has the channel
    (`pt-BR`, then `pt`), else the default's. An unknown locale simply gets the default."""
    for tag in locales.chain(locale):
        variant = template.locales.get(tag)
        if variant is not None and (fields := _fields(variant, channel)) is not None:
            return fields
    return _fields(template.channels, channel)


def validate(template: Template) -> None:
    """Compile every source now, so a broken template never reaches a delivery."""
    if not any(_fields(template.channels, channel) for channel in Medium):
        raise TemplateInvalid("channels: give at least one of in_app, email, push, sms")
    variants = [("", template.channels)]
    variants += [(f"locales.{tag}.", part) for tag, part in template.locales.items()]
    for prefix, channels in variants:
        for channel in Medium:
            for name, source in (_fields(channels, channel) or {}).items():
                try:
                    _compile(source, name in _HTML_FIELDS)
                except TemplateError as exc:
                    raise TemplateInvalid(f"{prefix}{channel.value}.{name}: {exc}") from None


def render(
    template: Template, channel: Medium, context: dict[str, Any], locale: str | None = None
) -> dict[str, str] | None:
    """The channel's fields rendered in `locale` (or the closest variant there is), None when
    the template has no part for the channel."""
    fields = _localized(template, channel, locale)
    if fields is None:
        return None
    out = {}
    for name, source in fields.items():
        try:
            text = _compile(source, name in _HTML_FIELDS).render(context)
        except Exception as exc:  # the sandbox raises SecurityError, user code anything
            raise TemplateInvalid(f"{channel.value}.{name}: {type(exc).__name__}: {exc}") from None
        if len(text) > MAX_RENDERED_CHARS:
            raise TemplateInvalid(f"{channel.value}.{name}: rendered text is too long")
        out[name] = text
    return out
