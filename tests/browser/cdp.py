"""A small Chrome DevTools Protocol driver for Debian's headless Chromium.

Raw CDP over `websockets` (already a dependency) rather than Playwright: no extra download, no
bundled browser to keep in step with Debian's, and the few commands the page tests need
(navigate, evaluate, real mouse and keyboard input, screenshots) are stable protocol methods.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.servers import wait_until

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
)
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
# Keys the tests press: (key, code, Windows virtual key code, text typed).
KEYS = {
    "Enter": ("Enter", "Enter", 13, "\r"),
    "Tab": ("Tab", "Tab", 9, ""),
    "Space": (" ", "Space", 32, " "),
    "Escape": ("Escape", "Escape", 27, ""),
}


def find_chromium() -> str | None:
    override = os.environ.get("ARCHMESH_CHROMIUM")
    if override:
        return override
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


class CdpError(RuntimeError):
    pass


class Browser:
    """One headless Chromium with a throwaway profile; `page()` opens an isolated tab."""

    def __init__(self, binary: str, width: int = 1360, height: int = 900) -> None:
        self.binary = binary
        self.size = (width, height)
        self.profile = tempfile.mkdtemp(prefix="archmesh-chromium-")
        self.log = Path(self.profile) / "chromium.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def start(self) -> Browser:
        args = [
            self.binary,
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            f"--window-size={self.size[0]},{self.size[1]}",
            "about:blank",
        ]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"

        def endpoint() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise CdpError(f"chromium exited {self.proc.returncode}: {self.log.read_text()}")
            lines = port_file.read_text().split() if port_file.exists() else []
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) == 2 else None

        url = wait_until(endpoint, timeout=30, what="chromium's DevTools endpoint")
        # No keepalive pings: each one draws its payload from the global `random` in a thread
        # of its own, which Hypothesis (drawing in the same process, chaos/fuzz.py) reports
        # as a strategy using `random`, failing whichever fuzz test it lands in.
        self._ws = self._stack.enter_context(
            connect(url, max_size=None, open_timeout=10, ping_interval=None)
        )
        return self

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        assert self._ws is not None
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CdpError(f"{method}: no reply in {timeout}s")
            reply = json.loads(self._ws.recv(timeout=remaining))
            if reply.get("id") == ident:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def page(self) -> Page:
        context = self.call("Target.createBrowserContext")["browserContextId"]
        target = self.call(
            "Target.createTarget", {"url": "about:blank", "browserContextId": context}
        )["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        return Page(self, session, target, context)

    def close(self) -> None:
        self._stack.close()
        self._ws = None
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)


class Page:
    """One tab in its own browser context (fresh storage and cookies)."""

    def __init__(self, browser: Browser, session: str, target: str, context: str) -> None:
        self.browser, self.session, self.target, self.context = browser, session, target, context
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        width, height = browser.size
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def call(self, method: str, params: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        return self.browser.call(method, params, session=self.session, **kw)

    # -- what the page said -----------------------------------------------------------------

    def _events(self, method: str) -> list[dict[str, Any]]:
        return [
            e["params"]
            for e in self.browser.events
            if e.get("sessionId") == self.session and e["method"] == method
        ]

    def errors(self) -> list[str]:
        """Uncaught exceptions and Content-Security-Policy refusals: the page's own faults
        (failed connections while a gateway is down are expected and not listed)."""
        found = [
            e["exceptionDetails"].get("exception", {}).get("description")
            or e["exceptionDetails"].get("text", "")
            for e in self._events("Runtime.exceptionThrown")
        ]
        found += [
            e["entry"]["text"]
            for e in self._events("Log.entryAdded")
            if "Content Security Policy" in e["entry"].get("text", "")
        ]
        return found

    def console(self) -> list[str]:
        return [
            " ".join(str(a.get("value", a.get("description", ""))) for a in e["args"])
            for e in self._events("Runtime.consoleAPICalled")
        ]

    # -- driving ----------------------------------------------------------------------------

    def goto(self, url: str) -> None:
        result = self.call("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise CdpError(f"navigate {url}: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", what=f"{url} to load")

    def evaluate(self, expression: str, timeout: float = 15.0) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression!r} threw: {text}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value is returned."""
        last: list[Any] = [None]
        # An element would come back as {} (falsy here): report it as true.
        wrapped = f"((value) => value instanceof Node ? true : value)({expression})"

        def check() -> Any:
            last[0] = self.evaluate(wrapped)
            return last[0]

        try:
            return wait_until(check, timeout=timeout, interval=0.05, what=what or expression)
        except TimeoutError as exc:
            raise TimeoutError(
                f"{exc} (last value {last[0]!r}; errors {self.errors()}; console "
                f"{self.console()[-5:]})"
            ) from None

    def text(self, selector: str) -> str:
        return str(self.evaluate(f"document.querySelector({json.dumps(selector)})?.textContent"))

    def _center(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(
            f"""(() => {{
              const el = document.querySelector({json.dumps(selector)});
              if (!el) return null;
              el.scrollIntoView({{block: "center"}});
              const r = el.getBoundingClientRect();
              return [r.x + r.width / 2, r.y + r.height / 2];
            }})()"""
        )
        if not box:
            raise CdpError(f"no element matches {selector}")
        return float(box[0]), float(box[1])

    def click(self, selector: str) -> None:
        """A real mouse click at the element's centre (hit-testing, focus and all)."""
        x, y = self._center(selector)
        self.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
            )

    def focus(self, selector: str) -> None:
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")

    def fill(self, selector: str, text: str) -> None:
        """Focus a field, select what it holds and type `text` over it."""
        self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            " el.focus(); el.select?.(); })()"
        )
        self.call("Input.insertText", {"text": text})

    def press(self, name: str) -> None:
        key, code, vk, text = KEYS[name]
        down: dict[str, Any] = {
            "type": "keyDown" if text else "rawKeyDown",
            "key": key,
            "code": code,
            "windowsVirtualKeyCode": vk,
        }
        if text:
            down["text"] = text
        self.call("Input.dispatchKeyEvent", down)
        self.call(
            "Input.dispatchKeyEvent",
            {"type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": vk},
        )

    def screenshot(self, path: Path) -> None:
        """The whole page, not only the viewport."""
        metrics = self.call("Page.getLayoutMetrics")["cssContentSize"]
        width, height = self.browser.size
        clip = {
            "x": 0,
            "y": 0,
            "width": width,
            "height": max(height, metrics["height"]),
            "scale": 1,
        }
        shot = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            timeout=30,
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def close(self) -> None:
        self.browser.call("Target.closeTarget", {"targetId": self.target})
        self.browser.call("Target.disposeBrowserContext", {"browserContextId": self.context})
