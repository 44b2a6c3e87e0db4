"""The operator's credential: the API key, or a JWT whose claims say `"admin": true`.

The console at `/admin` signs in with either. Its read endpoints (`/api/admin/*` on a gateway,
`/api/ops/*` on the notifier) refuse a missing or broken credential with 401 and a valid
*user* token with 403: a page's user token never opens them. The service APIs the console acts
through (publish, control, history, the notifier's) take the API key as before and, where the
app installed an `AdminTokens` as `app.state.admin_tokens`, an admin token too
(shared/http_api.py `require_api_key`)."""

from __future__ import annotations

from typing import Any

import jwt
from pydantic import SecretStr
from starlette.requests import Request

from shared.http_api import bearer, is_api_key
from shared.http_errors import ApiError
from shared.tokens import InvalidToken, TokenVerifier

ADMIN_CLAIM = "admin"


class AdminTokens:
    """Tells admin tokens from user tokens, with the node's own verifier (algorithms pinned,
    signature, expiry, audience and issuer checked before the claim is looked at)."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self._verifier = verifier

    def is_admin(self, token: str) -> bool:
        """True for a valid admin token, False for a valid user token; InvalidToken else."""
        if self._verifier is None:
            raise InvalidToken("no token verification configured")
        self._verifier.verify(token)
        # Verified just above: reading its claims again without the signature is safe.
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
        return claims.get(ADMIN_CLAIM) is True


def require_admin(request: Request, key: SecretStr | None, tokens: AdminTokens) -> str:
    """Which credential the caller gave ("api_key" or "admin_token"), or the refusal."""
    given = bearer(request)
    if given is None:
        raise ApiError(401, "unauthorized", "sign in with the API key or an admin token")
    if is_api_key(given, key):
        return "api_key"
    try:
        admin = tokens.is_admin(given)
    except InvalidToken as exc:
        raise ApiError(401, "unauthorized", f"not the API key nor a valid token: {exc}") from None
    if not admin:
        raise ApiError(403, "forbidden", "a user token does not open the operator console")
    return "admin_token"
