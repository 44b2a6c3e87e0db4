"""Who may subscribe to what. Nobody ever gets another user's `user:` channel."""

from __future__ import annotations

from archmesh_client.channels import BROADCAST, SESSION_PREFIX, USER_PREFIX

from shared.tokens import Claims, InvalidToken, TokenVerifier


def authorize(claims: Claims, channel: str, token: str | None, verifier: TokenVerifier) -> bool:
    """`channel` is already validated. A session needs the connection token's `sessions` claim
    or a subscription token (a JWT whose `sub` is this user and `channel` this channel)."""
    if channel == BROADCAST:
        return True
    if channel.startswith(USER_PREFIX):
        return channel[len(USER_PREFIX) :] == claims.user_id
    if channel.startswith(SESSION_PREFIX):
        if channel[len(SESSION_PREFIX) :] in claims.sessions:
            return True
        return token is not None and _subscription_token_allows(claims, channel, token, verifier)
    return False


def _subscription_token_allows(
    claims: Claims, channel: str, token: str, verifier: TokenVerifier
) -> bool:
    try:
        grant = verifier.verify(token)
    except InvalidToken:
        return False
    return grant.user_id == claims.user_id and grant.channel == channel
