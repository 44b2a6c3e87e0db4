"""The Python client's InboxClient against a real notifier process on a private Redis:
notifications sent through the notifier's API are paged, marked seen, read, archived and
unarchived (one id, many, all), with the user's token (renewed after a 401) or the API key."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from archmesh_client.inbox import InboxClient, InboxError, InboxPage, Marked

from shared.tokens import issue_token
from tests.servers import API_KEY, NotifierProcess, RedisServer
from tests.wsclient import token

pytestmark = [pytest.mark.redis, pytest.mark.slow]

T = TypeVar("T")


@pytest.fixture(scope="module")
def notifier(shared_redis: RedisServer) -> Iterator[NotifierProcess]:
    # Nothing of an earlier module's notifiers (their partition leases would keep this one
    # waiting for the claim time).
    shared_redis.client().flushall()
    process = NotifierProcess(shared_redis.url, ARCHMESH_LOG_LEVEL="warning").start()
    yield process
    process.stop(signal.SIGKILL)


async def eventually(check: Callable[[], Awaitable[T | None]], what: str) -> T:
    deadline = time.monotonic() + 10
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def send(notifier: NotifierProcess, user: str, title: str, kind: str = "comment_added") -> str:
    reply = notifier.request(
        "POST",
        "/api/notifications",
        json={"user_id": user, "type": kind, "title": title, "channels": ["in_app"]},
    )
    assert reply.status_code == 202, reply.text
    return str(reply.json()["id"])


async def raised(call: Awaitable[object]) -> InboxError:
    with pytest.raises(InboxError) as caught:
        await call
    return caught.value


async def test_inbox_client_pages_and_marks_with_the_users_token(
    notifier: NotifierProcess,
) -> None:
    user = "pia"
    tokens = iter([issue_token("not-the-notifier-secret-0123456789", user), token(user)])
    asked: list[str] = []

    def fresh() -> str:  # the first token is refused (401): the client asks again, once
        asked.append(next(tokens, asked[-1] if asked else ""))
        return asked[-1]

    ids = [send(notifier, user, title) for title in ("first", "second", "third")]
    ids.append(send(notifier, user, "failed", "workflow_failed"))
    async with InboxClient(notifier.http, user, fresh) as inbox:

        async def all_stored() -> InboxPage | None:
            page = await inbox.page()
            return page if len(page.items) == len(ids) else None

        everything = await eventually(all_stored, "four items stored")
        assert len(asked) == 2, "a fresh token after the 401"
        assert [i.id for i in everything.items] == ids[::-1]  # newest first
        assert (everything.unseen, everything.unread) == (4, 4)

        first = await inbox.page(limit=3)
        assert [i.id for i in first.items] == ids[:0:-1]
        assert first.next_cursor is not None
        rest = await inbox.page(limit=3, cursor=first.next_cursor)
        assert ([i.id for i in rest.items], rest.next_cursor) == ([ids[0]], None)
        failed = await inbox.page(types=["workflow_failed"])
        assert [(i.id, i.type, i.title) for i in failed.items] == [
            (ids[3], "workflow_failed", "failed")
        ]

        assert await inbox.seen(ids[0]) == Marked(unseen=3, unread=4)
        assert await inbox.seen([ids[1], "not-there"]) == Marked(
            unseen=2, unread=4, unknown=["not-there"]
        )
        assert await inbox.read(ids[2]) == Marked(unseen=1, unread=3)
        assert await inbox.archive([ids[0]]) == Marked(unseen=1, unread=2)
        archived = await inbox.page(archived=True)
        assert [(i.id, i.read, i.archived) for i in archived.items] == [(ids[0], True, True)]
        assert len((await inbox.page(archived="all")).items) == 4
        assert await inbox.unarchive(ids[0]) == Marked(unseen=1, unread=2)  # stays read
        item = await inbox.item(ids[0])
        assert (item.title, item.seen, item.read, item.archived) == ("first", True, True, False)

        assert await inbox.seen(all=True) == Marked(unseen=0, unread=2)
        assert await inbox.read_all() == Marked(unseen=0, unread=0)
        assert await inbox.archive(all=True) == Marked(unseen=0, unread=0)
        assert (await inbox.page()).items == []
        await inbox.unarchive(all=True)
        assert [i.id for i in (await inbox.page()).items] == ids[::-1]
        # More ids than one request takes go in several.
        many = [f"gone-{n}" for n in range(620)]
        assert (await inbox.read(many)).unknown == many

        missing = await raised(inbox.item("not-there"))
        assert (missing.status, missing.code) == (404, "not_found")
        assert (await raised(inbox.read("not-there"))).code == "not_found"
        assert (await raised(inbox.page(cursor="bogus"))).code == "bad_cursor"
        assert (await raised(inbox.page(limit=0))).code == "validation_error"
        with pytest.raises(ValueError, match="ids or all"):
            await inbox.seen(["x"], all=True)

    # A user's token opens that user's inbox only; the API key opens any.
    async with InboxClient(notifier.http, "someone-else", token(user)) as other:
        refused = await raised(other.page())
        assert (refused.status, refused.code) == (403, "forbidden")
    async with InboxClient(
        notifier.http, user, issue_token("not-the-notifier-secret-0123456789", user)
    ) as stale:
        assert (await raised(stale.page())).status == 401  # a fixed token is not retried
    async with InboxClient(notifier.http, user, API_KEY) as backend:
        assert [i.id for i in (await backend.page()).items] == ids[::-1]
