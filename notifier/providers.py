"""The routes providers call back on (under `/api/providers`), each served only when
configured: the email events webhook with its secret, Twilio's status callback with a Twilio
account and a public URL (SMS carry a `StatusCallback` only then)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from starlette.routing import Route

from notifier.providers_email import EmailEventsApi
from notifier.providers_sms import TwilioStatusApi

if TYPE_CHECKING:
    from notifier.feedback import ProviderFeedback
    from notifier.preferences import PreferenceStore
    from notifier.settings import NotifierSettings


def provider_routes(
    s: NotifierSettings,
    feedback: ProviderFeedback,
    preferences: PreferenceStore,
    clock: Callable[[], datetime],
) -> list[Route]:
    routes: list[Route] = []
    if s.notifier_email_events_secret is not None:
        secret = s.notifier_email_events_secret.get_secret_value().encode()
        critical = frozenset(s.notifier_critical_types)
        tolerance = s.notifier_email_events_tolerance
        routes += EmailEventsApi(secret, tolerance, feedback, preferences, critical).routes()
    token = s.twilio_auth_token.get_secret_value() if s.twilio_auth_token else ""
    if token and s.notifier_public_url:
        routes += TwilioStatusApi(token, s.notifier_public_url, feedback, clock).routes()
    return routes
