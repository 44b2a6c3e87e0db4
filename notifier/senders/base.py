"""What every external delivery channel raises when a message could not be handed over."""

from __future__ import annotations

# Longest piece of a remote server's answer quoted in a reason (status records stay small).
MAX_QUOTE = 200


class DeliveryError(Exception):
    """A message was not delivered.

    `reason` is short human text for the delivery status; it never contains secrets.
    `permanent` means retrying the same message cannot help (bad address, unsubscribed, ...).
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, permanent={self.permanent})"


class SubscriptionGone(DeliveryError):
    """The push service answered 404/410: the subscription is dead and should be removed."""

    def __init__(self, reason: str, *, endpoint: str) -> None:
        super().__init__(reason, permanent=True)
        self.endpoint = endpoint


class Suppressed(DeliveryError):
    """Not sent on purpose: the address is on the suppression list (it hard-bounced)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, permanent=True)


def quote_remote(text: str, secrets: tuple[str, ...]) -> str:
    """A remote server's message, cut short and with any of our `secrets` masked.

    Servers do not normally echo credentials, but a reason ends up in status records that
    service clients can read, so a leak would be a real one.
    """
    text = " ".join(text.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    if len(text) > MAX_QUOTE:
        text = text[: MAX_QUOTE - 3] + "..."
    return text
