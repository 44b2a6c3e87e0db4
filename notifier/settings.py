"""The notifier's settings: everything a gateway has (Redis, JWT, API key, logs) plus its own."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from archmesh_client.notifications import TYPE_PATTERN
from archmesh_client.redis_url import CLUSTER_SCHEMES
from archmesh_client.request_stream import Partitioning
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from notifier.rules import Rules
from shared.settings import Settings


class NotifierSettings(Settings):
    """`ARCHMESH_*` settings of a notifier process (and of `archmesh-rt dev`, which runs both)."""

    notifier_host: str = "127.0.0.1"
    notifier_port: int = Field(8100, ge=0, le=65535)
    notifier_concurrency: int = Field(32, ge=1, le=4096, description="Requests in flight.")
    notifier_max_attempts: int = Field(5, ge=1, description="Deliveries per channel, then failed.")
    notifier_retry_base: float = Field(1.0, gt=0, description="First retry delay, seconds.")
    notifier_retry_max: float = Field(300.0, gt=0, description="Cap on one retry delay.")
    notifier_intake_attempts: int = Field(5, ge=1, description="Tries of a request, then DLQ.")
    notifier_claim_idle: float = Field(30.0, gt=0, description="Reclaim after idle seconds.")
    notifier_partitions: int = Field(
        0,
        ge=0,
        le=1024,
        description="Intake partitions; 0: 1 on one Redis, 8 on a Cluster. Fixed for good.",
    )
    notifier_inbox_size: int = Field(500, ge=1, description="Inbox items kept per user.")
    notifier_retention: float = Field(7 * 86400.0, gt=0, description="Status/idempotency TTL.")
    notifier_workflow_rules: str = Field(
        "review_required=workflow_review_required:high,"
        "failed=workflow_failed:high,completed=workflow_completed:normal",
        description="status=notification_type:priority, comma-separated.",
    )
    notifier_escalation: str = Field(
        "",
        description="type=steps, comma-separated; steps e.g. in_app;email@unseen:10m;sms@unread:1h",
    )
    notifier_digests: str = Field(
        "",
        description="type=window:10m[;sliding:1h][;max:50][;first:now][;show:20][;in_app:each]",
    )
    notifier_throttles: str = Field("", description="type=K/window, e.g. comment_added=5/1h")
    notifier_topic_batch: int = Field(
        500, ge=1, le=10000, description="Subscribers a topic fan-out enqueues per step."
    )
    notifier_max_topics: int = Field(
        1000, ge=1, description="Topics one user may subscribe to through the API."
    )

    smtp_host: str = ""
    smtp_port: int = Field(587, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr | None = None
    smtp_security: Literal["none", "starttls", "tls"] = "starttls"
    smtp_timeout: float = Field(10.0, gt=0)
    email_from: str = "ArchMesh <noreply@localhost>"

    vapid_private_key: SecretStr | None = None
    vapid_subject: str = "mailto:ops@localhost"
    push_ttl: int = Field(86400, ge=0, description="Seconds a push service keeps a message.")
    push_timeout: float = Field(10.0, gt=0)

    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr | None = None
    twilio_from: str = ""
    twilio_base_url: str = Field("", description="Empty: Twilio's API; set for a local stand-in.")
    sms_timeout: float = Field(10.0, gt=0)
    notifier_known_users_only: bool = Field(
        False, description="Refuse requests for users who never saved preferences."
    )
    notifier_critical_types: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Types preferences cannot switch off and quiet hours do not hold.",
    )
    notifier_public_url: str = Field(
        "", description="HTTPS base URL users reach this API at (unsubscribe links)."
    )
    notifier_unsubscribe_secret: SecretStr | None = Field(
        None, description="HMAC key of unsubscribe links, at least 32 bytes."
    )
    notifier_unsubscribe_ttl: float = Field(
        30 * 86400.0, ge=60, description="Seconds an unsubscribe link stays valid."
    )
    notifier_email_events_secret: SecretStr | None = Field(
        None, description="HMAC key of the email bounce/complaint webhook, at least 32 bytes."
    )
    notifier_email_events_tolerance: float = Field(
        300.0, ge=1, description="Seconds a signed email events request stays acceptable."
    )

    @field_validator("notifier_critical_types", mode="before")
    @classmethod
    def _types_csv(cls, value: object) -> object:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("notifier_critical_types")
    @classmethod
    def _types(cls, value: list[str]) -> list[str]:
        for kind in value:
            if not re.match(TYPE_PATTERN, kind):
                raise ValueError(f"{kind!r} is not a notification type")
        return value

    @field_validator("notifier_public_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if value and not re.match(r"^https://[^/?#\s]+(/[^?#\s]*)?$", value):
            raise ValueError("must be an https:// URL without query or fragment")
        return value.rstrip("/")

    @field_validator("notifier_unsubscribe_secret", "notifier_email_events_secret")
    @classmethod
    def _secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes")
        return value

    @model_validator(mode="after")
    def _rules(self) -> NotifierSettings:
        self.rules()  # a typo in a rule stops the notifier at start, with the reason
        return self

    def partitioning(self) -> Partitioning:
        """The key layout: tagged per partition on a Cluster or with more than one partition."""
        cluster = self.redis_url.partition("://")[0] in CLUSTER_SCHEMES
        return Partitioning.of(self.notifier_partitions, cluster=cluster)

    def rules(self) -> Rules:
        return Rules.parse(self.notifier_escalation, self.notifier_digests, self.notifier_throttles)
