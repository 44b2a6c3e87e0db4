"""`archmesh-rt dev` and `archmesh-rt notifier` as processes, next to tests/servers.py's
GatewayProcess (same environment: test JWT secret and API key)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx

from tests.servers import API_KEY, REPO, GatewayProcess, wait_until


def _spawn(server: GatewayProcess, command: str) -> None:
    """Start `archmesh-rt <command>` like GatewayProcess.start does for `gateway`."""
    cmd = [sys.executable, "-m", "archmesh_realtime", command]
    with server.log.open("ab") as log:
        server.proc = subprocess.Popen(cmd, env=server.env, cwd=REPO, stdout=log, stderr=log)
    wait_until(server._healthy, timeout=20, what=f"archmesh-rt {command} on {server.port}")


class DevProcess(GatewayProcess):
    """`archmesh-rt dev`: the page's development mode (token minting, simulation)."""

    def start(self) -> DevProcess:
        _spawn(self, "dev")
        return self


class NotifierProcess(GatewayProcess):
    """`archmesh-rt notifier` (API on `port`, stream worker) sharing the gateways' Redis."""

    def __init__(self, redis_url: str, **env: str) -> None:
        super().__init__(redis_url, **env)
        self.env["ARCHMESH_NOTIFIER_PORT"] = str(self.port)
        self.env["ARCHMESH_NODE_ID"] = f"notifier-{self.port}"

    def start(self) -> NotifierProcess:
        _spawn(self, "notifier")
        return self

    def send(self, request: dict[str, Any]) -> httpx.Response:
        return httpx.post(
            f"{self.http}/api/notifications",
            json=request,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=5,
        )

    def wait_delivered(self, notification: str, channel: str) -> None:
        def sent() -> bool:
            response = httpx.get(
                f"{self.http}/api/notifications/{notification}",
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=5,
            )
            found = response.json().get("deliveries", {}).get(channel, {})
            return response.is_success and found.get("status") == "sent"

        wait_until(sent, what=f"{channel} delivery of {notification}")
