"""Configuration from ARCHMESH_* environment variables (pydantic-settings)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:
    from archmesh_client.retention import HistoryPolicy

    from shared.broker.link import Liveness

# Used only by `archmesh-rt dev` and `archmesh-rt token` when no secret is configured.
DEV_JWT_SECRET = "archmesh-dev-secret-do-not-use-in-production"
DEV_API_KEY = "archmesh-dev-api-key"

_ASYMMETRIC = {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
_SYMMETRIC = {"HS256", "HS384", "HS512"}


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    """Every setting of a gateway node (and, later, the notifier)."""

    model_config = SettingsConfigDict(env_prefix="ARCHMESH_", extra="ignore")

    redis_url: str = Field("", description="Empty: embedded in-memory broker (one node).")
    redis_ping_interval: float = Field(1.0, gt=0, description="PING a silent Redis link after.")
    redis_ping_timeout: float = Field(3.0, gt=0, description="A silent Redis link is dead after.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    node_id: str = Field("", description="Node name in logs and replies; default host-pid.")

    jwt_secret: SecretStr | None = None
    jwt_public_key: SecretStr | None = None
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(default_factory=list)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: float = Field(5.0, ge=0, le=300)

    max_token_lifetime: float = Field(
        86400.0, gt=0, description="Longest exp - iat of issued tokens: a user revocation's life."
    )
    user_connection_limit: int = Field(0, ge=0, description="Per user per node; 0: no limit.")

    api_key: SecretStr | None = None
    allowed_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    connect_timeout: float = Field(10.0, gt=0, description="Seconds to send `connect`.")
    handshake_concurrency: int = Field(
        64,
        ge=1,
        description="Connects and recovering subscribes a node works on at once (the rest wait).",
    )
    listen_backlog: int = Field(
        4096,
        ge=1,
        description="Connections the kernel queues before a node accepts them (<= somaxconn).",
    )
    fd_reserve: int = Field(
        128,
        ge=0,
        description="Open files a node keeps for other than client sockets; past the rest, "
        "handshakes get 503 node_full.",
    )
    handshake_max_lag_ms: float = Field(
        200.0,
        gt=0,
        description="Event-loop lag above which a node admits fewer handshakes at once.",
    )
    max_frame_bytes: int = Field(65536, ge=1024)
    ws_max_bytes: int = Field(1048576, ge=1024, description="Hard WebSocket limit (close 1009).")
    max_subscriptions: int = Field(100, ge=1)
    client_queue_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    rate_limit_per_second: float = Field(50.0, gt=0)
    rate_limit_burst: int = Field(100, ge=1)
    rate_limit_close_after: int = Field(200, ge=1, description="Refused frames before 4005.")
    ws_ping_interval: float = Field(20.0, gt=0)
    ws_ping_timeout: float = Field(20.0, gt=0)
    ws_per_message_deflate: bool = False
    sse_ping_interval: float = Field(15.0, gt=0, description="`: ping` on an idle SSE stream.")
    max_publish_bytes: int = Field(65536, ge=256)
    max_batch_items: int = Field(1000, ge=1)
    idempotency_window: float = Field(
        300.0, gt=0, description="Seconds an idempotency key of a publish is remembered."
    )

    history_size: int = Field(1000, ge=0)
    history_ttl: float = Field(3600.0, gt=0)
    history_overrides: str = Field("", description="Per prefix: `user:=100/86400,...`.")
    presence_prefixes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["session:"])
    history_max_limit: int = Field(
        100, ge=1, description="Publications per history page (frame and HTTP API) at most."
    )
    latest_on_subscribe: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Channel prefixes whose subscribe gets the latest publication by default.",
    )
    presence_ttl: float = Field(30.0, ge=1)
    join_leave: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Channel prefixes whose subscribers get join/leave."
    )
    drain_seconds: float = Field(5.0, ge=0, description="Spread of reconnects on SIGTERM.")
    announce_interval: float = Field(
        2.0, gt=0, description="Seconds between a node's announcements (the console's nodes)."
    )
    announce_ttl: float = Field(
        6.0, gt=0, description="Seconds a node stays listed after its last announcement."
    )
    announce_top_channels: int = Field(
        10, ge=0, le=100, description="Busiest local channels a gateway announces."
    )

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator(
        "allowed_origins",
        "jwt_algorithms",
        "presence_prefixes",
        "join_leave",
        "latest_on_subscribe",
        mode="before",
    )
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("redis_url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        known = ("memory://", "redis://", "rediss://", "unix://")
        cluster = ("redis+cluster://", "rediss+cluster://")
        if value.startswith(cluster):
            from archmesh_client.redis_url import ClusterAddress

            ClusterAddress.parse(value)  # fails start-up on a malformed node list
        elif value and not value.startswith(known):
            raise ValueError(
                "must start with memory://, redis://, rediss://, unix://, redis+cluster:// "
                "or rediss+cluster://"
            )
        return value

    @field_validator("history_overrides")
    @classmethod
    def _overrides(cls, value: str) -> str:
        from archmesh_client.retention import HistoryPolicy, Retention

        HistoryPolicy.parse(Retention(0, 1), value)  # fails start-up on a bad spec
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes (HS256 needs a key as long as its hash)")
        return value

    @model_validator(mode="after")
    def _ping(self) -> Settings:
        if self.redis_ping_interval >= self.redis_ping_timeout:
            raise ValueError(
                "ARCHMESH_REDIS_PING_INTERVAL must be below ARCHMESH_REDIS_PING_TIMEOUT"
            )
        return self

    @model_validator(mode="after")
    def _announce(self) -> Settings:
        if self.announce_interval >= self.announce_ttl:
            raise ValueError("ARCHMESH_ANNOUNCE_INTERVAL must be below ARCHMESH_ANNOUNCE_TTL")
        return self

    @model_validator(mode="after")
    def _algorithms(self) -> Settings:
        if not self.jwt_algorithms:
            algs = ["HS256"] if self.jwt_secret else []
            if self.jwt_public_key:
                algs += ["RS256", "ES256"]
            self.jwt_algorithms = algs
        unknown = set(self.jwt_algorithms) - _SYMMETRIC - _ASYMMETRIC
        if unknown:
            raise ValueError(f"ARCHMESH_JWT_ALGORITHMS: unsupported {sorted(unknown)}")
        if set(self.jwt_algorithms) & _SYMMETRIC and not self.jwt_secret:
            raise ValueError("ARCHMESH_JWT_ALGORITHMS has HS* but ARCHMESH_JWT_SECRET is unset")
        if set(self.jwt_algorithms) & _ASYMMETRIC and not self.jwt_public_key:
            raise ValueError("ARCHMESH_JWT_ALGORITHMS has RS*/ES* but no ARCHMESH_JWT_PUBLIC_KEY")
        return self

    def history_policy(self) -> HistoryPolicy:
        """ARCHMESH_HISTORY_*, and the control stream's own retention (which they cannot
        change: a node cut off from Redis must find the commands it missed)."""
        from archmesh_client.control_commands import with_control_retention
        from archmesh_client.retention import HistoryPolicy, Retention

        default = Retention(self.history_size, self.history_ttl)
        return with_control_retention(HistoryPolicy.parse(default, self.history_overrides))

    def broker_liveness(self) -> Liveness:
        """How fast a Redis broker notices a silent link (ARCHMESH_REDIS_PING_*)."""
        from shared.broker.link import Liveness

        return Liveness(self.redis_ping_interval, self.redis_ping_timeout)

    def require_production_secrets(self) -> None:
        """A real node refuses to start without a way to verify tokens."""
        if not self.jwt_algorithms:
            raise ValueError("set ARCHMESH_JWT_SECRET or ARCHMESH_JWT_PUBLIC_KEY")
