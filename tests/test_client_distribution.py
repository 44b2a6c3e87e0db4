"""The client distribution (clients/python) on its own: built as a wheel, installed into a fresh
venv without the server, it brings none of the server's dependencies, puts only
`archmesh_client` on the path, and its SDK, publisher and notifier client work there.

Building and installing go through pip and the package index (websockets, redis, pydantic,
httpx):
some 20-40 s, hence `slow`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

from tests.servers import RedisServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

CLIENT = Path(__file__).resolve().parent.parent / "clients" / "python"
ALLOWED_REQUIRES = {"websockets", "redis", "pydantic", "httpx"}
SERVER_ONLY = {
    "archmesh-realtime",
    "uvicorn",
    "starlette",
    "twilio",
    "aiohttp",
    "fakeredis",
    "jinja2",
}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=200
    )
    assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built from a copy, so the checkout gets no build/ or egg-info/."""
    work = tmp_path_factory.mktemp("client-build")
    source = work / "src"
    shutil.copytree(
        CLIENT, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "-q",
        "-w",
        work / "dist",
        source,
        cwd=work,
    )
    (built,) = (work / "dist").glob("archmesh_realtime_client-0.1.0-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel and what it requires, nothing else; returns its python."""
    where = tmp_path_factory.mktemp("client-venv")
    _run(sys.executable, "-m", "venv", where / "venv", cwd=where)
    python = where / "venv" / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", wheel, cwd=where)
    return python


def test_wheel_requires_only_the_client_dependencies_and_ships_one_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(archive.read(metadata_name).decode())
    assert metadata["Name"] == "archmesh-realtime-client"
    assert metadata["Version"] == "0.1.0"
    requires = metadata.get_all("Requires-Dist") or []
    required = {re.split(r"[\s\[<>=!~;(]", r, maxsplit=1)[0].lower() for r in requires}
    assert required == ALLOWED_REQUIRES, requires
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"archmesh_client", "archmesh_realtime_client-0.1.0.dist-info"}, top
    # The publish and history scripts ship with the package, and so does the typing marker.
    scripts = {"archmesh_client/publish.lua", "archmesh_client/history.lua"}
    assert {*scripts, "archmesh_client/py.typed"} <= set(names)
    print(f"\n{wheel.name}: {wheel.stat().st_size} bytes; Requires-Dist: {requires}")


def test_fresh_venv_has_none_of_the_servers_dependencies(venv: Path) -> None:
    listed = json.loads(_run(venv, "-m", "pip", "list", "--format=json", cwd=venv.parent))
    installed = {item["name"].lower().replace("_", "-") for item in listed}
    assert "archmesh-realtime-client" in installed
    assert not installed & SERVER_ONLY, installed & SERVER_ONLY
    # Only the client's site-packages entries: no `shared`, `gateway`, `notifier` beside it.
    site = Path(
        _run(
            venv,
            "-I",
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            cwd=venv.parent,
        ).strip()
    )
    ours = {
        p.name
        for p in site.iterdir()
        if p.name.startswith(("archmesh", "shared", "gateway", "notifier"))
    }
    assert ours == {"archmesh_client", "archmesh_realtime_client-0.1.0.dist-info"}, ours


# Runs in the fresh venv, isolated (-I: not the checkout, not PYTHONPATH), against real Redis.
_CLIENT_SCRIPT = """
import asyncio, importlib.util, sys

import archmesh_client.realtime
from archmesh_client.realtime import RealtimeClient, RecoveryFailed, backoff_delay
# The WebSocket SDK alone loads neither Redis nor pydantic.
assert not {"redis", "pydantic"} & {m.split(".")[0] for m in sys.modules}, "SDK pulled in more"

import archmesh_client
from archmesh_client.channels import session_channel, validate_channel
from archmesh_client.events import WorkflowUpdate
from archmesh_client.notifications import REQUEST_STREAM, NotificationRequest
from archmesh_client.notifier import NotifierClient
from archmesh_client.inbox import InboxClient  # needs httpx, which the wheel requires
from archmesh_client.publish_script import SOURCE
from archmesh_client.publisher import connect_publisher
for server in ("shared", "gateway", "notifier"):
    assert importlib.util.find_spec(server) is None, server + " is importable"
assert SOURCE.startswith("-- ArchMesh Realtime")
RealtimeClient("ws://127.0.0.1:1/ws", "token")

async def main(url):
    async with connect_publisher(url) as publisher:
        update = WorkflowUpdate(session_id="dist", stage="design", progress=0.5)
        position = await publisher.publish(session_channel("dist"), update)
    async with NotifierClient(url) as notifier:
        nid = await notifier.send({"user_id": "u1", "type": "workflow_failed", "title": "x"})
    print(archmesh_client.__version__, position.offset, nid)

asyncio.run(main(sys.argv[1]))
"""


def test_sdk_publisher_and_notifier_client_work_without_the_server(
    venv: Path, redis_server: RedisServer
) -> None:
    out = _run(venv, "-I", "-c", _CLIENT_SCRIPT, redis_server.url, cwd=venv.parent)
    version, offset, notification_id = out.split()
    assert (version, offset) == ("0.1.0", "1")
    redis = redis_server.client()
    history = redis.xrange("rt:{session:dist}:history")
    assert len(history) == 1
    assert json.loads(history[0][1][b"d"])["stage"] == "design"
    (request,) = redis.xrange("nt:requests")
    assert json.loads(request[1][b"request"])["id"] == notification_id
