"""External delivery channels: email (SMTP), Web Push and SMS (Twilio).

Each sender is built from settings (`from_settings` returns None when the channel is not
configured), delivers one message per `send()`, and raises `DeliveryError` (with `permanent`
telling whether a retry can help) or `SubscriptionGone` for a dead push subscription.
"""

from notifier.senders.base import DeliveryError, SubscriptionGone
from notifier.senders.email import EmailMessage, EmailSender
from notifier.senders.push import PushSender, PushTarget
from notifier.senders.sms import SmsSender

__all__ = [
    "DeliveryError",
    "EmailMessage",
    "EmailSender",
    "PushSender",
    "PushTarget",
    "SmsSender",
    "SubscriptionGone",
]
