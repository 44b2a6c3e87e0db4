"""What happens on each channel for one request: preferences, contacts, quiet hours, content,
and the request's route (throttled, escalation steps, collected into a digest).

Pure: the same request, preferences, template, route and clock reading always plan the same.
Its results are built without validating them again (`model_construct`): every part comes
from the validated request, the template's rendering (strings) or this module, typed alike,
and validating two models per request was a fifth of the notifier's planning."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from archmesh_client.notifications import EscalationStep, Medium, NotificationRequest

from notifier import templates, throttle
from notifier.digests import summary
from notifier.quiet_hours import OVERRIDING, quiet_until
from notifier.rules import Route
from notifier.schemas import ChannelDelivery, DeliveryState, InboxItem, Preferences, Template

AT_ONCE = Route()


@dataclass(slots=True)
class Plan:
    deliveries: dict[Medium, ChannelDelivery] = field(default_factory=dict)
    jobs: dict[Medium, dict[str, Any]] = field(default_factory=dict)  # external, to send
    due: dict[Medium, datetime] = field(default_factory=dict)  # when each job may go
    inbox: InboxItem | None = None


def plan(
    request: NotificationRequest,
    preferences: Preferences,
    template: Template | None,
    now: datetime,
    configured: frozenset[Medium],
    route: Route = AT_ONCE,
    *,
    critical: bool = False,
) -> Plan:
    """`critical`: a type the user's switches and quiet hours do not apply to."""
    result = Plan()
    loud = critical or request.priority in OVERRIDING
    quiet: list[datetime | None] = []  # when quiet hours end: computed only if a job needs it
    locale = request.locale or preferences.locale
    steps = {s.medium: s for s in route.steps} if route.steps else None
    for channel in list(steps or request.channels or Medium):
        step = steps[channel] if steps else None
        state, reason = _gate(request, preferences, channel, configured, critical)
        if state is None and route.throttled:
            state, reason = DeliveryState.SUPPRESSED, throttle.REASON
        elif state is None and channel in route.collect:
            state, reason = DeliveryState.DIGESTED, "collected into a digest"
        elif state is None:
            try:
                content = _content(request, template, channel, locale, route.summary)
            except templates.TemplateInvalid as exc:
                state, reason = DeliveryState.FAILED, f"template render failed: {exc}"
            else:
                state, reason = _schedule(result, request, preferences, channel, content, now)
                if step is not None and step.unless is not None:
                    state, reason = _later(result, channel, step, now)
                elif state is DeliveryState.PENDING and not loud:
                    if not quiet:  # in_app alone (most requests) never needs the time zone
                        quiet.append(quiet_until(preferences, now))
                    if (quiet_end := quiet[0]) is not None:
                        state, reason = _quiet(result, channel, quiet_end, preferences.held)
        delivery = ChannelDelivery.model_construct(  # every field given: no defaults looked up
            status=state,
            attempts=0,
            updated_at=now,
            last_error=reason,
            next_attempt_at=None,
            provider_status=None,
            provider_code=None,
        )
        if state in (DeliveryState.HELD, DeliveryState.WAITING):
            delivery.next_attempt_at = result.due[channel]
        result.deliveries[channel] = delivery
    return result


def _later(
    result: Plan, channel: Medium, step: EscalationStep, now: datetime
) -> tuple[DeliveryState, str]:
    """A later escalation step: due `after` from now, sent then unless the item is seen (or
    read) by then; preferences and quiet hours are checked again when it comes due."""
    result.due[channel] = now + timedelta(seconds=step.after)
    result.jobs[channel]["unless"] = step.unless
    return DeliveryState.WAITING, f"escalation: sent unless {step.unless} by then"


def _quiet(
    result: Plan, channel: Medium, until: datetime, policy: str
) -> tuple[DeliveryState, str]:
    """Only in_app reaches a user in quiet hours: hold the rest until the window ends, or drop."""
    if policy == "drop":
        del result.jobs[channel], result.due[channel]
        return DeliveryState.SUPPRESSED, "quiet hours (preference: drop)"
    result.due[channel] = until
    return DeliveryState.HELD, "quiet hours"


def _gate(
    request: NotificationRequest,
    preferences: Preferences,
    channel: Medium,
    configured: frozenset[Medium],
    critical: bool,
) -> tuple[DeliveryState | None, str | None]:
    """A reason not to deliver on `channel` at all, or (None, None)."""
    if not critical and not preferences.enabled(request.type, channel):
        return DeliveryState.SUPPRESSED, "disabled in the user's preferences"
    if channel is Medium.IN_APP:
        return None, None
    if channel not in configured:
        return DeliveryState.SUPPRESSED, f"{channel.value} is not configured on this notifier"
    contacts = preferences.contacts
    missing = {
        Medium.EMAIL: contacts.email is None and "no email address",
        Medium.SMS: contacts.phone is None and "no phone number",
        Medium.PUSH: not contacts.push_subscriptions and "no push subscription",
    }[channel]
    if missing:
        return DeliveryState.SUPPRESSED, str(missing)
    return None, None


def _schedule(
    result: Plan,
    request: NotificationRequest,
    preferences: Preferences,
    channel: Medium,
    content: dict[str, str],
    now: datetime,
) -> tuple[DeliveryState, str | None]:
    if channel is Medium.IN_APP:
        result.inbox = InboxItem.model_construct(  # of parts already validated (see above)
            id=request.id,
            type=request.type,
            title=content["title"],
            body=content.get("body", ""),
            priority=request.priority,
            data=request.data,
            created_at=now,
            actions=request.actions,
            seen=False,
            read=False,
            archived=False,
        )
        return DeliveryState.SENT, None
    contacts = preferences.contacts
    targets: list[Any]
    if channel is Medium.PUSH:
        targets = [s.model_dump() for s in contacts.push_subscriptions]
    else:
        targets = [contacts.email if channel is Medium.EMAIL else contacts.phone]
    result.jobs[channel] = {"targets": targets, "content": content}
    result.due[channel] = now
    return DeliveryState.PENDING, None


def _content(
    request: NotificationRequest,
    template: Template | None,
    channel: Medium,
    locale: str | None,
    digest: bool = False,
) -> dict[str, str]:
    if template is not None:
        context = {
            **request.data,
            "data": request.data,
            "id": request.id,
            "user_id": request.user_id,
            "type": request.type,
            "priority": request.priority.value,
            "title": request.title or "",
            "body": request.body or "",
        }
        rendered = templates.render(template, channel, context, locale)
        if rendered is not None:
            return rendered
        if request.title is None:
            raise templates.TemplateInvalid(f"template has no {channel.value} part")
    if digest:
        return _plain(*summary(request.title, request.data), channel)
    return _plain(request.title or "", request.body or "", channel)


def _plain(title: str, body: str, channel: Medium) -> dict[str, str]:
    if channel is Medium.EMAIL:
        paragraphs = "".join(f"<p>{html.escape(p)}</p>" for p in body.split("\n\n") if p)
        return {
            "subject": title,
            "text": body or title,
            "html": f"<h1>{html.escape(title)}</h1>{paragraphs}",
        }
    if channel is Medium.SMS:
        return {"text": f"{title}: {body}" if body else title}
    return {"title": title, "body": body}
