"""The revocation store's contract, on every backend (memory, Redis, the 3-master Cluster):
what is revoked, what is not, and that every entry goes away with what it revokes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from shared.revocations import RevocationStore, create_revocations

LIFE = 2.0  # seconds an entry of these tests lives: room for a busy machine's round trips


async def until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.time()))


@pytest.fixture
async def store(backend_url: str) -> AsyncIterator[RevocationStore]:
    revocations = create_revocations(backend_url)
    yield revocations
    await revocations.close()


async def test_a_token_is_revoked_by_its_jti_until_it_expires(store: RevocationStore) -> None:
    now = time.time()
    assert not await store.revoked("t1", "alice", now)
    await store.revoke_token("t1", now + LIFE)
    await store.revoke_token("gone", now - 1)  # already expired: nothing to keep
    assert await store.revoked("t1", "alice", now)
    assert await store.revoked("t1", "bob", None)  # a jti names one token, whoever holds it
    assert not await store.revoked("t2", "alice", now)
    assert not await store.revoked(None, "alice", now)
    assert not await store.revoked("gone", "alice", now)
    await until(now + LIFE + 0.1)
    assert not await store.revoked("t1", "alice", now)


async def test_a_user_cut_off_revokes_tokens_issued_before_it(store: RevocationStore) -> None:
    now = time.time()
    await store.revoke_user("carol", now - 10, now + LIFE)
    assert await store.revoked(None, "carol", now - 11)
    assert await store.revoked("any", "carol", None)  # no `iat`: it might be older
    assert not await store.revoked(None, "carol", now - 10)  # not before: issued at the cut-off
    assert not await store.revoked(None, "carol", now)
    assert not await store.revoked(None, "dave", now - 100)
    # An earlier cut-off with a shorter life changes neither the cut-off nor the expiry.
    await store.revoke_user("carol", now - 50, now + 0.2)
    assert await store.revoked(None, "carol", now - 11)
    await until(now + 0.3)
    assert await store.revoked(None, "carol", now - 11)
    # A later cut-off replaces it.
    await store.revoke_user("carol", now + 5, now + LIFE)
    assert await store.revoked(None, "carol", now)
    await until(now + LIFE + 0.1)
    assert not await store.revoked(None, "carol", now - 100)
