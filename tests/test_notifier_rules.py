"""The notifier's decisions, without I/O: quiet hours, planning, templates, schemas, rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from archmesh_client.notifications import Medium, NotificationRequest, Priority
from pydantic import ValidationError

from notifier import templates
from notifier.planner import plan
from notifier.quiet_hours import quiet_until
from notifier.schemas import DeliveryState, Preferences, Template
from notifier.workflow import parse_rules

ALL = frozenset(Medium)


def prefs(**extra: object) -> Preferences:
    base: dict[str, object] = {
        "timezone": "Europe/Paris",
        "quiet_hours": {"start": "22:00", "end": "07:00"},
        "contacts": {
            "email": "ada@example.com",
            "phone": "+14155550100",
            "push_subscriptions": [
                {
                    "endpoint": "https://push.example/1",
                    "keys": {"p256dh": "B" * 87, "auth": "a" * 22},
                }
            ],
        },
        "channels": {"default": {"in_app": True, "email": True, "push": True, "sms": True}},
    }
    return Preferences.model_validate({**base, **extra})


def request(**extra: object) -> NotificationRequest:
    fields: dict[str, object] = {"user_id": "ada", "type": "workflow_failed", "title": "Failed"}
    return NotificationRequest.model_validate({**fields, **extra})


# Paris is UTC+1 in January: 22:30 UTC is 23:30 local.
@pytest.mark.parametrize(
    ("utc", "window", "zone", "expected_end"),
    [
        ("2026-01-15T22:30", ("22:00", "07:00"), "Europe/Paris", "2026-01-16T06:00"),  # 23:30
        ("2026-01-16T04:00", ("22:00", "07:00"), "Europe/Paris", "2026-01-16T06:00"),  # 05:00
        ("2026-01-16T06:00", ("22:00", "07:00"), "Europe/Paris", None),  # 07:00 sharp: over
        ("2026-01-15T20:59", ("22:00", "07:00"), "Europe/Paris", None),  # 21:59
        ("2026-01-15T13:00", ("12:00", "14:00"), "UTC", "2026-01-15T14:00"),  # same-day window
        ("2026-01-15T14:00", ("12:00", "14:00"), "UTC", None),
        # Tokyo (UTC+9): 14:00 UTC is 23:00 local, quiet until 07:00 local = 22:00 UTC.
        ("2026-01-15T14:00", ("22:00", "07:00"), "Asia/Tokyo", "2026-01-15T22:00"),
        # New York in July (UTC-4): 03:00 UTC is 23:00 the day before, until 11:00 UTC.
        ("2026-07-15T03:00", ("22:00", "07:00"), "America/New_York", "2026-07-15T11:00"),
    ],
)
def test_quiet_hours_in_the_users_zone(
    utc: str, window: tuple[str, str], zone: str, expected_end: str | None
) -> None:
    p = Preferences(timezone=zone, quiet_hours={"start": window[0], "end": window[1]})  # type: ignore[arg-type]
    end = quiet_until(p, datetime.fromisoformat(utc).replace(tzinfo=UTC))
    expected = None if expected_end is None else datetime.fromisoformat(expected_end)
    assert end == (None if expected is None else expected.replace(tzinfo=UTC))


def test_disabled_or_missing_quiet_hours_never_hold() -> None:
    now = datetime(2026, 1, 15, 23, 0, tzinfo=UTC)
    assert quiet_until(Preferences(), now) is None
    off = Preferences(quiet_hours={"enabled": False, "start": "00:00", "end": "23:59"})  # type: ignore[arg-type]
    assert quiet_until(off, now) is None


def test_in_quiet_hours_only_in_app_goes_and_the_rest_is_held_until_the_end() -> None:
    now = datetime(2026, 1, 15, 22, 30, tzinfo=UTC)
    result = plan(request(), prefs(), None, now, ALL)
    states = {c: d.status for c, d in result.deliveries.items()}
    assert states[Medium.IN_APP] is DeliveryState.SENT
    for channel in (Medium.EMAIL, Medium.PUSH, Medium.SMS):
        assert states[channel] is DeliveryState.HELD
        assert result.due[channel] == datetime(2026, 1, 16, 6, 0, tzinfo=UTC)
        assert result.deliveries[channel].next_attempt_at == result.due[channel]


@pytest.mark.parametrize("priority", [Priority.HIGH, Priority.URGENT])
def test_high_priority_overrides_quiet_hours(priority: Priority) -> None:
    now = datetime(2026, 1, 15, 22, 30, tzinfo=UTC)
    result = plan(request(priority=priority), prefs(), None, now, ALL)
    assert {d.status for d in result.deliveries.values()} == {
        DeliveryState.SENT,
        DeliveryState.PENDING,
    }
    assert all(due == now for due in result.due.values())


def test_drop_policy_suppresses_external_channels_in_quiet_hours() -> None:
    now = datetime(2026, 1, 15, 22, 30, tzinfo=UTC)
    result = plan(request(), prefs(held="drop"), None, now, ALL)
    assert result.deliveries[Medium.EMAIL].status is DeliveryState.SUPPRESSED
    assert "quiet hours" in (result.deliveries[Medium.EMAIL].last_error or "")
    assert Medium.EMAIL not in result.jobs
    assert Medium.EMAIL not in result.due


def test_preferences_per_type_override_the_default_and_defaults_apply_to_new_users() -> None:
    now = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    p = prefs(
        channels={
            "default": {"in_app": True, "email": True, "push": True, "sms": True},
            "workflow_failed": {"email": False},
        }
    )
    result = plan(request(), p, None, now, ALL)
    assert result.deliveries[Medium.EMAIL].status is DeliveryState.SUPPRESSED
    assert result.deliveries[Medium.SMS].status is DeliveryState.PENDING
    fresh = plan(request(), Preferences(), None, now, ALL)
    assert fresh.deliveries[Medium.IN_APP].status is DeliveryState.SENT
    assert fresh.deliveries[Medium.SMS].last_error == "disabled in the user's preferences"
    assert fresh.deliveries[Medium.EMAIL].last_error == "no email address"


def test_requested_channels_limit_and_unconfigured_channels_are_suppressed() -> None:
    now = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    result = plan(request(channels=["email", "sms"]), prefs(), None, now, frozenset({Medium.SMS}))
    assert set(result.deliveries) == {Medium.EMAIL, Medium.SMS}
    assert result.deliveries[Medium.EMAIL].last_error == "email is not configured on this notifier"
    assert result.jobs[Medium.SMS] == {
        "targets": ["+14155550100"],
        "content": {"text": "Failed"},
    }
    assert result.inbox is None


def test_a_render_error_fails_only_that_channel() -> None:
    template = Template.model_validate(
        {
            "channels": {
                "in_app": {"title": "{{ stage }} failed"},
                "email": {"subject": "{{ missing_var }}", "text": "x"},
            }
        }
    )
    now = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
    result = plan(request(data={"stage": "design"}), prefs(), template, now, ALL)
    assert result.inbox is not None
    assert result.inbox.title == "design failed"
    email = result.deliveries[Medium.EMAIL]
    assert email.status is DeliveryState.FAILED
    assert "missing_var" in (email.last_error or "")
    # No sms part in the template: the request's own title is used.
    assert result.jobs[Medium.SMS]["content"] == {"text": "Failed"}


def test_templates_escape_html_but_not_text_and_refuse_sandbox_escapes() -> None:
    template = Template.model_validate(
        {
            "channels": {
                "email": {
                    "subject": "Hi {{ name }}",
                    "text": "{{ name }}",
                    "html": "<b>{{ name }}</b>",
                }
            }
        }
    )
    out = templates.render(template, Medium.EMAIL, {"name": "<script>x</script>"})
    assert out is not None
    assert out["subject"] == "Hi <script>x</script>"
    assert out["html"] == "<b>&lt;script&gt;x&lt;/script&gt;</b>"
    escape = Template.model_validate(
        {"channels": {"sms": {"text": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}}}
    )
    with pytest.raises(templates.TemplateInvalid, match=r"SecurityError|unsafe"):
        templates.render(escape, Medium.SMS, {})


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ name ", "sms.text"),
        ("{% for x in y %}", "sms.text"),
        ("{{ x | nosuchfilter }}", "nosuchfilter"),
    ],
)
def test_invalid_templates_are_refused_with_the_reason(source: str, reason: str) -> None:
    bad = Template.model_validate({"channels": {"sms": {"text": source}}})
    with pytest.raises(templates.TemplateInvalid, match=reason):
        templates.validate(bad)


def test_notification_requests_are_validated_field_by_field() -> None:
    with pytest.raises(ValidationError) as info:
        NotificationRequest.model_validate(
            {"user_id": "a b", "type": "X", "priority": "loud", "channels": ["fax"]}
        )
    fields = {e["loc"][0] for e in info.value.errors()}
    assert fields == {"user_id", "type", "priority", "channels"}
    with pytest.raises(ValidationError, match="title"):
        NotificationRequest.model_validate({"user_id": "a", "type": "x"})
    with pytest.raises(ValidationError, match="repeat"):
        request(channels=["email", "email"])
    with pytest.raises(ValidationError, match="time zone"):
        Preferences(timezone="Mars/Olympus")
    with pytest.raises(ValidationError, match="HH:MM"):
        Preferences(quiet_hours={"start": "25:00", "end": "07:00"})  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"E\.164"):
        Preferences(contacts={"phone": "555-1234"})  # type: ignore[arg-type]


def test_workflow_rules_parse_and_refuse_nonsense() -> None:
    rules = parse_rules("review_required=workflow_review_required:high, failed=wf_failed")
    assert rules["review_required"].priority is Priority.HIGH
    assert rules["failed"].type == "wf_failed"
    assert rules["failed"].priority is Priority.NORMAL
    with pytest.raises(ValueError, match="bad rule"):
        parse_rules("review_required")
    with pytest.raises(ValueError, match="loud"):
        parse_rules("failed=x:loud")
