"""`archmesh-rt`: run a gateway node, the one-process development mode, or mint a token."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from shared.settings import DEV_API_KEY, DEV_JWT_SECRET

if TYPE_CHECKING:
    from notifier.settings import NotifierSettings


class ConfigError(Exception):
    """A wrong or missing setting: reported in one line, never as a traceback."""


def load_settings(**overrides: Any) -> NotifierSettings:
    """Every setting (the notifier's are a superset of the gateway's)."""
    from notifier.settings import NotifierSettings

    try:
        return NotifierSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = "_".join(str(part) for part in error["loc"]).upper()
            name = f"ARCHMESH_{field}: " if field else ""
            lines.append(f"{name}{error['msg']}")
        raise ConfigError("; ".join(lines)) from None


def _gateway(args: argparse.Namespace) -> None:
    settings = load_settings(host=args.host, port=args.port, redis_url=args.redis_url)
    try:
        settings.require_production_secrets()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    _serve(settings)


def _dev(args: argparse.Namespace) -> None:
    settings = load_settings(
        host=args.host,
        port=args.port,
        redis_url=args.redis_url,
        jwt_secret=_env_or("ARCHMESH_JWT_SECRET", DEV_JWT_SECRET),
        api_key=_env_or("ARCHMESH_API_KEY", DEV_API_KEY),
        allowed_origins=_env_or("ARCHMESH_ALLOWED_ORIGINS", "*"),
    )
    _print_dev_banner(settings)
    _serve(settings, dev=True)


def _notifier(args: argparse.Namespace) -> None:
    settings = load_settings(
        notifier_host=args.host, notifier_port=args.port, redis_url=args.redis_url
    )
    if not settings.redis_url or settings.redis_url.startswith("memory://"):
        raise ConfigError(
            "ARCHMESH_REDIS_URL: a separate notifier needs Redis to share work with the "
            "gateways (archmesh-rt dev runs both in one process without it)"
        )
    from notifier.app import Notifier
    from notifier.server import serve
    from shared.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    try:
        notifier = Notifier(settings)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    serve(notifier)


def _env_or(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _serve(settings: NotifierSettings, dev: bool = False) -> None:
    from gateway.app import Gateway
    from gateway.server import serve
    from shared.logging import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    if not dev:
        serve(Gateway(settings))
        return
    from archmesh_realtime.dev import EmbeddedStoreMissing, development_node

    try:
        serve(development_node(settings))
    except EmbeddedStoreMissing as exc:
        raise ConfigError(str(exc)) from None


def _print_dev_banner(settings: NotifierSettings) -> None:
    from shared.tokens import issue_token

    assert settings.jwt_secret is not None
    assert settings.api_key is not None
    token = issue_token(settings.jwt_secret.get_secret_value(), "dev-user", sessions=["demo"])
    base = f"{settings.host}:{settings.port}"
    event = {"type": "workflow_update", "session_id": "demo", "stage": "design", "progress": 0.5}
    sample = json.dumps({"channel": "session:demo", "data": event}, separators=(",", ":"))
    broker = settings.redis_url or "embedded in-memory broker (one process, no Redis)"
    print(
        f"""
ArchMesh Realtime (development mode) on http://{base}  broker: {broker}

  Open       http://{base}/   the live page: workflows, inbox, preferences

  WebSocket  ws://{base}/ws   send: {{"type":"connect","token":"<token>"}}
  Token      user dev-user, may watch session:demo, valid 1 h:
             {token}
  Publish    curl -s -X POST http://{base}/api/publish \\
               -H 'Authorization: Bearer {settings.api_key.get_secret_value()}' \\
               -H 'Content-Type: application/json' \\
               -d '{sample}'
  More tokens: archmesh-rt token --user alice --sessions demo
""",
        flush=True,
    )


def _token(args: argparse.Namespace) -> None:
    from shared.tokens import issue_token

    settings = load_settings()
    secret = args.secret or (
        settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
    )
    if secret is None:
        print(
            "archmesh-rt: no ARCHMESH_JWT_SECRET set; signing with the development secret",
            file=sys.stderr,
        )
        secret = DEV_JWT_SECRET
    sessions = [s for s in (args.sessions or "").split(",") if s]
    print(
        issue_token(
            secret,
            args.user,
            sessions=sessions,
            channel=args.channel,
            ttl=args.ttl,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archmesh-rt",
        description="ArchMesh Realtime: a horizontally scalable realtime gateway and notifier. "
        "Configuration comes from ARCHMESH_* environment variables (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def server_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", help="interface to bind (ARCHMESH_HOST, default 127.0.0.1)")
        sub.add_argument("--port", type=int, help="port to listen on (ARCHMESH_PORT, default 8000)")
        sub.add_argument("--redis-url", help="redis://... (ARCHMESH_REDIS_URL; empty: in-memory)")

    gateway = commands.add_parser(
        "gateway",
        help="run one gateway node (WebSockets + publish API)",
        description="Run one gateway node. Needs ARCHMESH_JWT_SECRET or ARCHMESH_JWT_PUBLIC_KEY; "
        "run several on one ARCHMESH_REDIS_URL behind a load balancer to scale out.",
    )
    server_options(gateway)
    gateway.set_defaults(func=_gateway)

    dev = commands.add_parser(
        "dev",
        help="run everything in one process on the embedded broker (no Redis needed)",
        description="Development mode: one process, in-memory broker unless --redis-url is given, "
        "a development JWT secret and API key unless set, any Origin allowed. Prints a token.",
    )
    server_options(dev)
    dev.set_defaults(func=_dev)

    notifier = commands.add_parser(
        "notifier",
        help="run one notifier (request stream worker + notification API)",
        description="Run one notifier: reads notification requests from the Redis stream "
        "(several replicas share it), delivers in-app, email, push and SMS, and serves the "
        "notification API on ARCHMESH_NOTIFIER_PORT. Needs ARCHMESH_REDIS_URL.",
    )
    notifier.add_argument("--host", help="interface (ARCHMESH_NOTIFIER_HOST, default 127.0.0.1)")
    notifier.add_argument(
        "--port", type=int, help="API port (ARCHMESH_NOTIFIER_PORT, default 8100)"
    )
    notifier.add_argument("--redis-url", help="redis://... (ARCHMESH_REDIS_URL, required)")
    notifier.set_defaults(func=_notifier)

    token = commands.add_parser(
        "token",
        help="print a signed HS256 token for development",
        description="Print a signed HS256 JWT (connection token, or with --channel a subscription "
        "token) using ARCHMESH_JWT_SECRET, or the development secret when it is unset.",
    )
    token.add_argument("--user", required=True, help="user id (the `sub` claim)")
    token.add_argument("--sessions", help="comma-separated session ids the user may watch")
    token.add_argument("--channel", help="make a subscription token for this channel")
    token.add_argument(
        "--ttl", type=float, default=3600, help="seconds until expiry (default 3600)"
    )
    token.add_argument("--secret", help="HS256 secret (default: ARCHMESH_JWT_SECRET)")
    token.set_defaults(func=_token)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as exc:
        print(f"archmesh-rt: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
