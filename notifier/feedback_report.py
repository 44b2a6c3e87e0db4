"""What a provider said about a delivery after accepting it, kept beside the delivery.

The deliverer writes a delivery's own record (`ch:<medium>` of the notification's hash); a
provider's later word (a delivery receipt, a bounce, an SMS that never arrived) goes into
`fb:<medium>` of the same hash and is laid over the record when the status is read. Two
writers, two fields: a status callback that arrives before the deliverer has recorded `sent`
is not overwritten by it, and the deliverer never has to know about providers' callbacks.

Reports come out of order and more than once, so a report replaces the kept one only if it
ranks higher: informational (soft bounce, complaint) < delivered < failed or bounced. A final
word is never replaced by an equal or lower one (`sent` after `delivered` changes nothing; an
email may still bounce after its provider said delivered)."""

from __future__ import annotations

from datetime import datetime

from archmesh_client.notifications import Medium
from pydantic import BaseModel

from notifier.schemas import ChannelDelivery, DeliveryState

_RANK = {None: 1, DeliveryState.DELIVERED: 2, DeliveryState.FAILED: 3, DeliveryState.BOUNCED: 3}
# Longest provider text kept in a status (records stay small; the full text is the provider's).
MAX_REASON = 300


class Report(BaseModel):
    """One provider report. `status` None: it informs (`last_error`) without changing it."""

    status: DeliveryState | None = None
    provider_status: str
    code: str | None = None
    reason: str | None = None
    at: datetime

    @property
    def rank(self) -> int:
        return _RANK[self.status]


def field_of(medium: Medium) -> str:
    return f"fb:{medium.value}"


def supersedes(new: Report, old: Report | None) -> bool:
    """Whether `new` replaces the kept report `old` (see the module's ranking)."""
    if old is None or new.rank > old.rank:
        return True
    return new.rank == old.rank and new.status is None and new.at >= old.at


def shown(delivery: ChannelDelivery, report: Report) -> ChannelDelivery:
    """The delivery as the status API shows it with the provider's report laid over it."""
    update: dict[str, object] = {
        "provider_status": report.provider_status,
        "provider_code": report.code,
    }
    if report.status is not None:
        update |= {"status": report.status, "updated_at": report.at, "last_error": report.reason}
    elif report.reason is not None:
        update["last_error"] = report.reason
    return delivery.model_copy(update=update)


def clean(text: str | None, secrets: tuple[str, ...] = ()) -> str | None:
    """A provider's text on one line, cut short, with `secrets` (the recipient's address,
    which an erasure could not find there) masked."""
    if text is None:
        return None
    text = " ".join(text.split())
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
