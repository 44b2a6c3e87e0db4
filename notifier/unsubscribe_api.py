"""`/api/unsubscribe?token=...`: where an email's List-Unsubscribe link leads.

POST (what a mail client's one-click button sends, RFC 8058: the form body
`List-Unsubscribe=One-Click`, no login) switches that type's email off for that user. GET only
shows a page whose button makes that POST: mail scanners and link previewers follow links with
GET, and must not unsubscribe anyone."""

from __future__ import annotations

import email.parser
import email.policy
import html
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from notifier.schemas import PreferencesPatch
from notifier.unsubscribe import ONE_CLICK, PATH, InvalidLink, Unsubscription
from shared.http_errors import ApiError
from shared.logging import get_logger

if TYPE_CHECKING:
    from notifier.preferences import PreferenceStore
    from notifier.unsubscribe import UnsubscribeLinks

log = get_logger(__name__)

MAX_FORM = 4096
_FIELD, _VALUE = ONE_CLICK.split("=")
# The page loads nothing and posts only to itself.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"


class UnsubscribeApi:
    def __init__(
        self,
        links: UnsubscribeLinks | None,
        preferences: PreferenceStore,
        critical: frozenset[str],
    ) -> None:
        self._links = links
        self._preferences = preferences
        self._critical = critical

    def routes(self) -> list[Route]:
        return [Route(PATH, self.endpoint, methods=["GET", "POST"])]

    async def endpoint(self, request: Request) -> Response:
        found = self._verify(request)
        if request.method == "POST":
            return await self._unsubscribe(request, found)
        return _page(found)

    def _verify(self, request: Request) -> Unsubscription:
        if self._links is None:
            raise ApiError(404, "not_found", "unsubscribe links are not enabled on this notifier")
        token = request.query_params.get("token")
        if not token:
            raise ApiError(400, "invalid_link", "the link has no token")
        try:
            found = self._links.verify(token)
        except InvalidLink as exc:
            raise ApiError(400, "invalid_link", str(exc)) from None
        if found.type in self._critical:
            raise ApiError(422, "critical_type", f"{found.type!r} is critical: it cannot be off")
        return found

    async def _unsubscribe(self, request: Request, found: Unsubscription) -> Response:
        if not await _one_click(request):
            raise ApiError(400, "bad_request", f"the form body must be {ONE_CLICK}")
        # A user with no preferences has no address, so gets no email: nothing to switch off,
        # and an erased user is not brought back as a record holding one switch.
        if await self._preferences.get(found.user_id) is not None:
            patch = PreferencesPatch(channels={found.type: {found.medium: False}})
            await self._preferences.patch(found.user_id, patch)
        log.info("unsubscribed", type=found.type, medium=found.medium.value)
        if "text/html" in request.headers.get("accept", ""):
            return _done(found)  # a person who pressed the page's button
        return JSONResponse(
            {"unsubscribed": True, "type": found.type, "medium": found.medium.value}
        )


async def _one_click(request: Request) -> bool:
    """Whether the body is the RFC 8058 form, url-encoded or multipart."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise ApiError(413, "too_large", f"body exceeds {MAX_FORM} bytes")
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        head = f"Content-Type: {kind}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            return False
        return any(
            part.get_param("name", header="content-disposition") == _FIELD
            and str(part.get_payload()).strip() == _VALUE
            for part in message.iter_parts()
        )
    return parse_qs(body.decode("latin-1")).get(_FIELD) == [_VALUE]


def _page(found: Unsubscription) -> HTMLResponse:
    # No `action`: the form posts to this very URL, token included, behind any path prefix.
    form = (
        f'<form method="post"><input type="hidden" name="{_FIELD}" value="{_VALUE}">'
        '<button type="submit">Unsubscribe</button></form>'
    )
    question = "<p>Stop emails of the kind <strong>{}</strong>? Others still arrive.</p>"
    return _html("Unsubscribe", question.format(html.escape(found.type)) + form)


def _done(found: Unsubscription) -> HTMLResponse:
    text = "<p>You will get no more emails of the kind <strong>{}</strong>.</p>"
    return _html("Unsubscribed", text.format(html.escape(found.type)))


def _html(title: str, content: str) -> HTMLResponse:
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
        '<body style="font-family: sans-serif; max-width: 32rem; margin: 3rem auto">'
        f"<h1>{title}</h1>{content}</body></html>"
    )
    headers = {"Content-Security-Policy": _CSP, "Cache-Control": "no-store"}
    return HTMLResponse(page, headers=headers)
