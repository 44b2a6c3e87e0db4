"""Who may subscribe to what. Nobody ever gets another user's `user:` channel.

Two kinds of access: what the connection's claims allow (for as long as the connection holds
them, re-evaluated on `refresh`), and a subscription token's grant of one session channel,
which lasts until that token's `exp` (extended by `sub_refresh`)."""

from __future__ import annotations

from archmesh_client.channels import BROADCAST, SESSION_PREFIX, USER_PREFIX

from shared.tokens import Claims, InvalidToken, TokenVerifier


def authorize(claims: Claims, channel: str, token: str | None, verifier: TokenVerifier) -> bool:
    """`channel` is already validated. A session needs the connection token's `sessions` claim
    or a subscription token (a JWT whose `sub` is this user and `channel` this channel)."""
    if claims_allow(claims, channel):
        return True
    return token is not None and subscription_grant(claims, channel, token, verifier) is not None


def claims_allow(claims: Claims, channel: str) -> bool:
    """Whether the connection's own claims allow `channel` (already validated)."""
    if channel == BROADCAST:
        return True
    if channel.startswith(USER_PREFIX):
        return channel[len(USER_PREFIX) :] == claims.user_id
    if channel.startswith(SESSION_PREFIX):
        return channel[len(SESSION_PREFIX) :] in claims.sessions
    return False


def subscription_grant(
    claims: Claims, channel: str, token: str, verifier: TokenVerifier
) -> float | None:
    """Until when (the token's `exp`) `token` grants this user the session `channel`; None if
    it does not (invalid, expired, another user's or another channel's)."""
    if not channel.startswith(SESSION_PREFIX):
        return None
    try:
        grant = verifier.verify(token)
    except InvalidToken:
        return None
    if grant.user_id != claims.user_id or grant.channel != channel:
        return None
    return grant.expires_at
