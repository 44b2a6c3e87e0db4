"""`archmesh-rt dev` is a composition of its own (archmesh_realtime/dev.py): the embedded store
it needs without Redis is an extra, and without it the command says what to install."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.servers import REPO

# The CLI in a process of its own where `import fakeredis` fails, as without the extra.
WITHOUT_EXTRA = (
    "import sys; sys.modules['fakeredis'] = None; "
    "from archmesh_realtime.cli import main; sys.exit(main(sys.argv[1:]))"
)


def test_dev_without_redis_or_the_embedded_extra_says_what_to_install() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARCHMESH_REDIS_URL"}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_EXTRA, "dev", "--port", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert "configuration error" in done.stderr
    assert "archmesh-realtime[embedded]" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_notifier_never_falls_back_to_an_embedded_store() -> None:
    from notifier.app import connect_store

    with pytest.raises(ValueError, match="need a Redis server"):
        connect_store("memory://")
