"""Container health check: exit 0 when this container's process answers GET /healthz.

One image runs either a gateway (ARCHMESH_PORT) or a notifier (ARCHMESH_NOTIFIER_PORT), and a
Dockerfile HEALTHCHECK cannot tell which, so the first port that answers 200 wins. Standard
library only: it runs in the slim runtime image with nothing else installed."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def healthy(port: str, timeout: float = 2.0) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/healthz"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return int(reply.status) == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def main() -> int:
    ports = (
        os.environ.get("ARCHMESH_PORT", "8000"),
        os.environ.get("ARCHMESH_NOTIFIER_PORT", "8100"),
    )
    return 0 if any(healthy(port) for port in ports) else 1


if __name__ == "__main__":
    sys.exit(main())
