"""The @archmesh/realtime package (clients/js) as a browser gets it from a gateway: the file at
/static/archmesh-realtime.js is byte for byte the one `npm pack` puts in the package's
tarball (the package copies it from gateway/static, its one source), and a page that
imports it can connect, subscribe and receive with it in headless Chromium."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.browser.cdp import Page
from tests.browser.processes import DevProcess
from tests.servers import REPO
from tests.wsclient import token

pytestmark = pytest.mark.slow

PACKAGE = REPO / "clients" / "js"
EXPORTS = [
    "ArchMeshInbox",
    "ArchMeshRealtime",
    "InboxError",
    "RealtimeError",
    "State",
    "backoffDelay",
    "default",
    "shouldReconnect",
]


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """archmesh-realtime.js as `npm pack` of clients/js puts it in the tarball."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is needed to pack clients/js (apt-get install npm; .ci/run installs it)")
    dest: Path = tmp_path_factory.mktemp("npm-pack")
    result = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(dest), "--loglevel=error"],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    filename = json.loads(result.stdout)[0]["filename"]
    with tarfile.open(dest / filename) as tar:
        member = tar.extractfile("package/archmesh-realtime.js")
        assert member is not None
        return member.read()


def served(page: Page, path: str) -> tuple[int, str, bytes]:
    """Status, content type and body of `path` fetched by the page itself."""
    reply = page.evaluate(
        f"""(async () => {{
          const response = await fetch({json.dumps(path)}, {{cache: "no-store"}});
          const bytes = new Uint8Array(await response.arrayBuffer());
          let binary = "";
          for (const byte of bytes) binary += String.fromCharCode(byte);
          return [response.status, response.headers.get("content-type"), btoa(binary)];
        }})()"""
    )
    return int(reply[0]), str(reply[1]), base64.b64decode(reply[2])


def test_the_browser_gets_the_packed_file_byte_for_byte(
    page: Page, dev: DevProcess, packed: bytes
) -> None:
    page.goto(f"{dev.http}/healthz")  # any document of the gateway's origin
    status, content_type, body = served(page, "/static/archmesh-realtime.js")
    assert status == 200
    # A JavaScript MIME type, or the browser refuses it as a module script.
    assert content_type.split(";")[0] in ("text/javascript", "application/javascript")
    assert len(packed) > 1000
    assert body == packed
    assert body == (REPO / "gateway" / "static" / "archmesh-realtime.js").read_bytes()


def test_the_served_package_imports_and_works_in_the_browser(page: Page, dev: DevProcess) -> None:
    page.goto(f"{dev.http}/healthz")
    jwt = token("pkg-user", ["s-pkg"])
    started = page.evaluate(
        f"""(async () => {{
          const module = await import("/static/archmesh-realtime.js");
          const client = new module.ArchMeshRealtime(`ws://${{location.host}}/ws`, {{
            token: async () => {json.dumps(jwt)},
          }});
          const seen = {{states: [], publications: [], custom: []}};
          window.packageCheck = {{client, seen}};
          client.on("state", (change) => seen.states.push(change.state));
          client.on("publication", (publication) => seen.publications.push(publication));
          client.addEventListener("publication", (event) => {{
            seen.custom.push(event instanceof CustomEvent);
          }});
          const info = await client.connect();
          const subscribed = await client.subscribe("session:s-pkg");
          return {{
            exports: Object.keys(module).sort(),
            isDefault: module.default === module.ArchMeshRealtime,
            isEventTarget: client instanceof EventTarget,
            user: info.user_id,
            subscribed: subscribed.channel,
            state: client.state,
          }};
        }})()"""
    )
    assert started == {
        "exports": EXPORTS,
        "isDefault": True,
        "isEventTarget": True,
        "user": "pkg-user",
        "subscribed": "session:s-pkg",
        "state": "connected",
    }

    reply = dev.publish("session:s-pkg", {"type": "package_check", "n": 1})
    assert reply.is_success, reply.text
    page.wait_for("window.packageCheck.seen.publications.length === 1", what="the publication")
    seen = page.evaluate("window.packageCheck.seen")
    assert seen["publications"] == [
        {
            "channel": "session:s-pkg",
            "offset": reply.json()["offset"],
            "epoch": reply.json()["epoch"],
            "data": {"type": "package_check", "n": 1},
        }
    ]
    assert seen["custom"] == [True]

    # A refused subscription rejects with the package's RealtimeError and its code.
    refused = page.evaluate(
        """(async () => {
          const { RealtimeError } = await import("/static/archmesh-realtime.js");
          try {
            await window.packageCheck.client.subscribe("session:not-granted");
            return null;
          } catch (err) {
            return [err instanceof RealtimeError, err.code, err.channel];
          }
        })()"""
    )
    assert refused == [True, "forbidden", "session:not-granted"]

    page.evaluate("window.packageCheck.client.close()")
    assert page.evaluate("window.packageCheck.seen.states") == ["connecting", "connected", "closed"]
