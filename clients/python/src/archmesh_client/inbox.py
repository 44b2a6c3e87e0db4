"""A user's in-app inbox over the notifier's HTTP API (`/api/users/{user}/inbox`): pages, one
item, and the seen/read/archive/unarchive marks, for one id, many, or all.

async with InboxClient("https://rt.example.com", "ada", token=fetch_token) as inbox:
    page = await inbox.page(limit=20)
    await inbox.read([item.id for item in page.items])

The token is the user's own (the one the gateway takes), or on a backend the API key; a
provider (plain or async function) is asked on every request, and once more after a 401, so
an expired token is replaced. Unlike `NotifierClient`, which queues on the notifiers' Redis
Stream, this talks HTTP: an inbox lives behind the notifier's API, which checks who may see it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Literal
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field

from archmesh_client.notifications import Priority

TokenProvider = Callable[[], str | Awaitable[str]]
TokenSource = str | TokenProvider

# The API's limit of ids in one bulk mark; more are sent in several requests.
MARK_BATCH = 500


class Mark(StrEnum):
    SEEN = "seen"
    READ = "read"  # read implies seen
    ARCHIVE = "archive"  # archiving reads
    UNARCHIVE = "unarchive"  # back in the inbox, still read


class _Reply(BaseModel):
    # A newer notifier may add fields: they are ignored, not refused.
    model_config = ConfigDict(extra="ignore")


class InboxAction(_Reply):
    id: str
    label: str
    url: str


class InboxItem(_Reply):
    """An in-app notification as the inbox keeps it (its id is the notification's id)."""

    id: str
    type: str
    title: str
    body: str
    priority: Priority
    data: dict[str, Any] = Field(default_factory=dict)
    actions: list[InboxAction] = Field(default_factory=list)
    created_at: datetime
    seen: bool = False
    read: bool = False
    archived: bool = False


class InboxCounts(_Reply):
    """How many items are not seen (a bell's "new") and not read."""

    unseen: int
    unread: int


class InboxPage(InboxCounts):
    """Newest first; `next_cursor` (for `page(cursor=...)`) is None on the last page."""

    items: list[InboxItem]
    next_cursor: str | None


class Marked(InboxCounts):
    """The counts after a mark, and the ids that are not in the inbox (none for one id, which
    raises `InboxError` "not_found" instead)."""

    unknown: list[str] = Field(default_factory=list)


class InboxError(Exception):
    """A refusal of the API: `code` is its error code (`not_found`, `bad_cursor`,
    `validation_error`, `forbidden`, `invalid_token`, ...), or `http_<status>` for an answer
    that is not the API's JSON (e.g. no notifier behind that address)."""

    def __init__(
        self, status: int, code: str, message: str, fields: list[Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields


async def _resolve(source: TokenSource) -> str:
    value = source() if callable(source) else source
    if inspect.isawaitable(value):
        value = await value
    if not isinstance(value, str) or not value:
        raise TypeError("token must be a non-empty string (or a function returning one)")
    return value


def _error(response: httpx.Response) -> InboxError:
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error.get("message", error["code"]))
    except (ValueError, KeyError, TypeError):
        return InboxError(response.status_code, f"http_{response.status_code}", response.text)
    fields = error.get("fields")
    return InboxError(
        response.status_code, code, message, fields if isinstance(fields, list) else None
    )


class InboxClient:
    """One user's inbox on a notifier at `base_url` (its API's address, or `archmesh-rt dev`'s).

    `transport`: an httpx transport (e.g. to reach an ASGI app in-process); `timeout` in
    seconds per request."""

    def __init__(
        self,
        base_url: str,
        user: str,
        token: TokenSource,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not user:
            raise ValueError("user is required (whose inbox)")
        self.user = user
        self._token = token
        self._path = f"/api/users/{quote(user, safe='')}/inbox"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, transport=transport
        )

    async def page(
        self,
        *,
        cursor: str | None = None,
        limit: int | None = None,
        types: Sequence[str] = (),
        archived: bool | Literal["all"] = False,
    ) -> InboxPage:
        """A page, newest first: `cursor` is the `next_cursor` of the page before; `limit`
        1-500 (default 50); `types`: only these notification types; `archived`: False (the
        inbox), True (the archive) or "all"."""
        params: list[tuple[str, str]] = [("archived", str(archived).lower())]
        if cursor:
            params.append(("cursor", cursor))
        if limit is not None:
            params.append(("limit", str(limit)))
        params.extend(("type", t) for t in types)
        return InboxPage.model_validate(await self._call("GET", self._path, params=params))

    async def item(self, item_id: str) -> InboxItem:
        """One item; `InboxError` "not_found" if it is not (or no longer) in the inbox."""
        return InboxItem.model_validate(await self._call("GET", self._item_path(item_id)))

    async def seen(self, ids: str | Sequence[str] | None = None, *, all: bool = False) -> Marked:
        """Mark one id, many ids (sent 500 at a time), or every item (`all=True`) seen."""
        return await self.mark(Mark.SEEN, ids, all=all)

    async def read(self, ids: str | Sequence[str] | None = None, *, all: bool = False) -> Marked:
        return await self.mark(Mark.READ, ids, all=all)

    async def archive(self, ids: str | Sequence[str] | None = None, *, all: bool = False) -> Marked:
        return await self.mark(Mark.ARCHIVE, ids, all=all)

    async def unarchive(
        self, ids: str | Sequence[str] | None = None, *, all: bool = False
    ) -> Marked:
        return await self.mark(Mark.UNARCHIVE, ids, all=all)

    async def read_all(self) -> Marked:
        """`POST .../inbox/read-all`: the same as `read(all=True)`."""
        return Marked.model_validate(await self._call("POST", f"{self._path}/read-all"))

    async def mark(
        self, mark: Mark, ids: str | Sequence[str] | None = None, *, all: bool = False
    ) -> Marked:
        """`ids` (one or many) or `all`, not both; one id not in the inbox raises
        `InboxError` "not_found", many report the unknown ones in `Marked.unknown`."""
        if all == (ids is not None):
            raise ValueError("give ids or all=True")
        if all:
            reply = await self._call("POST", f"{self._path}/{mark}", json={"all": True})
            return Marked.model_validate(reply)
        if isinstance(ids, str):
            reply = await self._call("POST", f"{self._item_path(ids)}/{mark}")
            return Marked.model_validate(reply)
        wanted = list(dict.fromkeys(ids or ()))
        if not wanted:
            raise ValueError("ids: at least one")
        unknown: list[str] = []
        counts: dict[str, Any] = {}
        for start in range(0, len(wanted), MARK_BATCH):
            batch = wanted[start : start + MARK_BATCH]
            counts = await self._call("POST", f"{self._path}/{mark}", json={"ids": batch})
            unknown.extend(counts.get("unknown", []))
        return Marked.model_validate({**counts, "unknown": unknown})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> InboxClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _item_path(self, item_id: str) -> str:
        return f"{self._path}/{quote(item_id, safe='')}"

    async def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, kwargs)
        if response.status_code == 401 and callable(self._token):
            response = await self._send(method, path, kwargs)  # a fresh token, once
        if not response.is_success:
            raise _error(response)
        reply: dict[str, Any] = response.json()
        return reply

    async def _send(self, method: str, path: str, kwargs: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {await _resolve(self._token)}"}
        return await self._http.request(method, path, headers=headers, **kwargs)
