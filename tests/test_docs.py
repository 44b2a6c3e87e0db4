"""The README and the reference in docs/ stay true to the code they document."""

from __future__ import annotations

from pathlib import Path

from archmesh_realtime.cli import build_parser
from gateway.protocol import CLOSE_REASONS, ErrorCode
from notifier.settings import NotifierSettings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "operations.md").read_text()
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    for name in NotifierSettings.model_fields:  # the gateway's settings and the notifier's
        assert f"| `ARCHMESH_{name.upper()}` |" in OPERATIONS, name


def test_every_error_and_close_code_is_documented() -> None:
    for code in ErrorCode:
        assert f"`{code.value}`" in PROTOCOL, code
    for close, reason in CLOSE_REASONS.items():
        assert f"| {int(close)} | `{reason}` |" in PROTOCOL, close


def test_every_command_is_documented() -> None:
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"`archmesh-rt {name}" in README, name
