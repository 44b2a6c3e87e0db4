"""deploy/ holds files no container engine runs here: validate what can be validated (they
parse, name real settings, commands and probe paths, agree with each other, nginx accepts its
config) and run the local cluster for real."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from deploy import nginx
from deploy.local_cluster import LocalCluster, cli_commands
from deploy.ports import free_port
from notifier.settings import NotifierSettings
from tests.servers import REPO, GatewayProcess, RedisServer, wait_until
from tests.sseclient import open_sse
from tests.wsclient import open_ws, recv, recv_type, send

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
IMAGE = "archmesh-realtime"
NOTIFIER_ROUTES = (
    "notifications",
    "users",
    "templates",
    "analytics",
    "sessions",
    "unsubscribe",
    "providers",
)
# After the drain window a gateway waits up to 5 s for sockets to close, then uvicorn's
# graceful shutdown takes up to 10 s (gateway/app.py, gateway/server.py).
SHUTDOWN_AFTER_DRAIN = 15


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.stem == "kustomization":
            continue
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in k8s_docs() if doc["kind"] == kind]


def pod_containers() -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for workload in of_kind("Deployment") + of_kind("StatefulSet"):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def archmesh_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(w, c) for w, c in pod_containers() if c["image"].split(":")[0] == IMAGE]


def deployment(name: str) -> dict[str, Any]:
    return next(d for d in of_kind("Deployment") if d["metadata"]["name"] == name)


def env_names_used() -> set[str]:
    """Every ARCHMESH_* name that compose, the manifests or the Dockerfile set."""
    names: set[str] = set()
    for service in compose()["services"].values():
        names |= set(service.get("environment") or {})
    names |= set(re.findall(r"\$\{(ARCHMESH_\w+)", COMPOSE.read_text()))
    for doc in of_kind("ConfigMap"):
        names |= set(doc["data"])
    for doc in of_kind("Secret"):
        names |= set(doc.get("stringData") or {}) | set(doc.get("data") or {})
    for _, container in pod_containers():
        names |= {item["name"] for item in container.get("env", [])}
    names |= set(re.findall(r"\b(ARCHMESH_\w+)=", DOCKERFILE.read_text()))
    return {name for name in names if name.startswith("ARCHMESH_")}


# -- files parse and name real things -------------------------------------------------------


def test_every_yaml_file_parses_into_named_objects() -> None:
    assert compose()["services"]
    docs = k8s_docs()
    kinds = {doc["kind"] for doc in docs}
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert expected | {"ConfigMap", "Secret"} <= kinds
    for doc in docs:
        assert doc["apiVersion"], doc
        assert doc["metadata"]["name"], doc
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.stem != "kustomization")


def test_every_archmesh_variable_is_a_real_setting() -> None:
    names = env_names_used()
    assert {"ARCHMESH_REDIS_URL", "ARCHMESH_JWT_SECRET", "ARCHMESH_DRAIN_SECONDS"} <= names
    fields = set(NotifierSettings.model_fields)  # the gateway's Settings and the notifier's
    unknown = sorted(n for n in names if n.removeprefix("ARCHMESH_").lower() not in fields)
    assert unknown == [], f"not settings (typo, or a setting renamed?): {unknown}"


def commands_used() -> list[tuple[str, str]]:
    used = [
        (f"compose {name}", service["command"][0])
        for name, service in compose()["services"].items()
        if service.get("image", "").startswith(IMAGE)
    ]
    used += [(f"k8s {w['metadata']['name']}", c["args"][0]) for w, c in archmesh_containers()]
    cmd = re.search(r'^CMD \["([^"]+)"', DOCKERFILE.read_text(), re.MULTILINE)
    assert cmd is not None
    return [*used, ("Dockerfile CMD", cmd.group(1))]


@pytest.mark.parametrize(("where", "command"), commands_used())
def test_containers_run_real_cli_commands(where: str, command: str) -> None:
    commands = cli_commands()
    if command == "notifier" and "notifier" not in commands:
        pytest.skip("`archmesh-rt notifier` is not in this build of the CLI yet")
    assert command in commands, f"{where}: archmesh-rt has no {command!r} command"


def test_dockerfile_is_slim_non_root_with_the_cli_as_entrypoint() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert stages
    assert all(image == "python:3.11-slim" for image in stages)
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user
    assert user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["archmesh-rt"\]', text, re.MULTILINE)  # exec form: PID 1
    assert re.search(r"^HEALTHCHECK .*\n?.*archmesh-healthcheck", text, re.MULTILINE)
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), f"COPY {path}: no such path in the repository"
            assert f"!{path.rstrip('/')}" in {i.rstrip("/") for i in ignored}, path


def test_compose_runs_the_issue_topology() -> None:
    services = compose()["services"]
    assert services["gateway"]["deploy"]["replicas"] == 3
    assert services["notifier"]["deploy"]["replicas"] == 2
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in services["nginx"]["volumes"]
    smtp = services["notifier"]["environment"]["ARCHMESH_SMTP_HOST"]
    assert smtp in services  # the local SMTP catcher
    drain = float(services["gateway"]["environment"]["ARCHMESH_DRAIN_SECONDS"])
    grace = int(services["gateway"]["stop_grace_period"].rstrip("s"))
    assert grace > drain + SHUTDOWN_AFTER_DRAIN
    # nginx's upstreams name the compose services on the ports they listen on.
    upstreams = dict(re.findall(r"server (\w+):(\d+)", nginx.NGINX_CONF.read_text()))
    assert upstreams == {
        "gateway": services["gateway"]["environment"]["ARCHMESH_PORT"],
        "notifier": services["notifier"]["environment"]["ARCHMESH_NOTIFIER_PORT"],
    }


# -- manifests agree with each other ----------------------------------------------------------


def test_selectors_targets_and_references_resolve() -> None:
    deployments = {d["metadata"]["name"]: d for d in of_kind("Deployment")}
    pod_labels = [
        w["spec"]["template"]["metadata"]["labels"]
        for w in of_kind("Deployment") + of_kind("StatefulSet")
    ]
    for workload in of_kind("Deployment") + of_kind("StatefulSet"):
        match = workload["spec"]["selector"]["matchLabels"]
        assert match.items() <= workload["spec"]["template"]["metadata"]["labels"].items()
    for doc in of_kind("Service"):
        selector = doc["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), doc
    for doc in of_kind("PodDisruptionBudget"):
        selector = doc["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pod_labels), doc
    for doc in of_kind("HorizontalPodAutoscaler"):
        target = doc["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        assert target["name"] in deployments
        assert doc["spec"]["minReplicas"] >= 2  # a drain always has somewhere to go
    configs = {d["metadata"]["name"] for d in of_kind("ConfigMap")}
    secrets = {d["metadata"]["name"] for d in of_kind("Secret")}
    services = {d["metadata"]["name"]: d for d in of_kind("Service")}
    for _, container in archmesh_containers():
        for source in container["envFrom"]:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in configs
            else:
                assert source["secretRef"]["name"] in secrets
    for doc in of_kind("Ingress"):
        for rule in doc["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                ports = {p["name"] for p in services[backend["name"]]["spec"]["ports"]}
                assert backend["port"]["name"] in ports


def probes(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kind: container[kind] for kind in ("readinessProbe", "livenessProbe")}


def test_gateway_probes_ports_and_drain_budget() -> None:
    gateway = deployment("archmesh-gateway")
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = of_kind("ConfigMap")[0]["data"]
    assert port_names["http"] == int(config["ARCHMESH_PORT"])
    assert probes(container)["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes(container)["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in probes(container).values():
        assert probe["httpGet"]["port"] in port_names
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    drain = float(config["ARCHMESH_DRAIN_SECONDS"])
    needed = float(pre_stop[1]) + drain + SHUTDOWN_AFTER_DRAIN
    assert pod["terminationGracePeriodSeconds"] > needed
    assert gateway["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    notifier = deployment("archmesh-notifier")["spec"]["template"]["spec"]["containers"][0]
    assert notifier["ports"][0]["containerPort"] == int(config["ARCHMESH_NOTIFIER_PORT"])


def test_ingress_and_nginx_route_the_same_paths_to_the_notifier() -> None:
    regex = re.search(r"location ~ (\S+) \{", nginx.NGINX_CONF.read_text())
    assert regex is not None
    routes = re.compile(regex.group(1))
    for name in NOTIFIER_ROUTES:
        assert routes.match(f"/api/{name}")
        assert routes.match(f"/api/{name}/x/y")
    for path in ("/api/publish", "/api/publish/batch", "/api/usersx", "/ws", "/readyz"):
        assert not routes.match(path), path
    ingress = of_kind("Ingress")[0]["spec"]["rules"][0]["http"]["paths"]
    to_notifier = {
        p["path"] for p in ingress if p["backend"]["service"]["name"] == "archmesh-notifier"
    }
    assert to_notifier == {f"/api/{name}" for name in NOTIFIER_ROUTES}


# -- real processes -----------------------------------------------------------------------


@pytest.mark.redis
def test_probe_paths_answer_and_the_healthcheck_script_works(
    redis_server: RedisServer, gateways: list[GatewayProcess]
) -> None:
    node = GatewayProcess(redis_server.url).start()
    gateways.append(node)
    container = deployment("archmesh-gateway")["spec"]["template"]["spec"]["containers"][0]
    for probe in probes(container).values():
        assert httpx.get(node.http + probe["httpGet"]["path"]).status_code == 200
    script = [sys.executable, str(DEPLOY / "healthcheck.py")]
    closed = str(free_port())
    up = {**os.environ, "ARCHMESH_PORT": str(node.port), "ARCHMESH_NOTIFIER_PORT": closed}
    down = {**up, "ARCHMESH_PORT": closed}
    assert subprocess.run(script, env=up, timeout=10, check=False).returncode == 0
    assert subprocess.run(script, env=down, timeout=10, check=False).returncode == 1


def test_notifier_probe_paths_answer(redis_server: RedisServer) -> None:
    if "notifier" not in cli_commands():
        pytest.skip("`archmesh-rt notifier` is not in this build of the CLI yet")
    container = deployment("archmesh-notifier")["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    env = {
        **os.environ,
        "ARCHMESH_REDIS_URL": redis_server.url,
        "ARCHMESH_JWT_SECRET": "x" * 32,
        "ARCHMESH_API_KEY": "k",
        "ARCHMESH_NOTIFIER_PORT": str(port),
    }
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "archmesh_realtime", "notifier"], env=env, stdout=log, stderr=log
        )
        try:
            for probe in probes(container).values():
                url = f"http://127.0.0.1:{port}{probe['httpGet']['path']}"
                wait_until(lambda u=url: _status(u) == 200, timeout=20, what=url)
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return None


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    try:
        nginx.nginx_binary()
    except nginx.NginxError as exc:
        pytest.skip(str(exc))
    tmp_path.chmod(0o755)
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx.render(free_port(), [free_port(), free_port()], [free_port()], tmp_path))
    assert "test is successful" in nginx.check(conf, tmp_path)
    # More workers for more sockets than one worker's connections: the kernel spreads them.
    two = nginx.render(free_port(), [free_port()], [], tmp_path, workers=2)
    assert "worker_processes 2;" in two
    assert "reuseport;" in two
    (tmp_path / "two.conf").write_text(two)
    assert "test is successful" in nginx.check(tmp_path / "two.conf", tmp_path)
    broken = conf.read_text().replace("proxy_read_timeout 75s;", "proxy_read_timeout;", 1)
    conf.write_text(broken)
    with pytest.raises(nginx.NginxError, match="invalid number of arguments"):
        nginx.check(conf, tmp_path)


def test_rendering_refuses_a_config_it_cannot_adapt(tmp_path: Path) -> None:
    text = nginx.NGINX_CONF.read_text().replace("listen 8080;", "listen 8080 reuseport;")
    with pytest.raises(nginx.NginxError, match="listen"):
        nginx.render(1, [2], [], tmp_path, source=text)


@pytest.mark.slow
async def test_local_cluster_serves_websockets_and_api_through_nginx() -> None:
    cluster = LocalCluster(2, notifier=False)
    try:
        await _to_thread(cluster.start)
        # A browser page on the balancer's origin passes the gateway's same-origin check:
        # nginx must forward Host with its port.
        ws = await open_ws(cluster.ws_url, origin=cluster.url)
        await send(ws, {"type": "connect", "token": cluster.token("ann", ["d"]), "id": 1})
        assert (await recv_type(ws, "connected"))["user_id"] == "ann"
        await send(ws, {"type": "subscribe", "channel": "session:d", "id": 2})
        assert (await recv(ws))["type"] == "subscribed"
        async with httpx.AsyncClient() as http:
            reply = await http.post(
                f"{cluster.url}/api/publish",
                json={"channel": "session:d", "data": {"type": "t", "n": 1}},
                headers={"Authorization": f"Bearer {cluster.api_key}"},
            )
            assert reply.status_code == 200, reply.text
            assert (await recv_type(ws, "publication"))["data"] == {"type": "t", "n": 1}
            evil = await http.get(
                cluster.ws_url.replace("ws:", "http:"),
                headers={
                    "Origin": "https://evil.example",
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            )
            assert evil.status_code == 403
        await ws.close()
        pids = [p.pid for p in [*cluster.gateways, cluster.nginx, cluster.redis]]
    finally:
        await _to_thread(cluster.stop)
    assert all(not _alive(pid) for pid in pids if pid is not None)
    assert not cluster.workdir.exists()


async def test_sse_streams_through_nginx_and_recovers_on_another_node() -> None:
    """Events pass nginx one by one (no buffering); a draining node's stream ends and the
    Last-Event-ID reopens it (on the other node) with what was published meanwhile; the
    token in the query never reaches the access log."""
    cluster = LocalCluster(2, notifier=False)
    try:
        await _to_thread(cluster.start)
        tok = cluster.token("ann", ["d"])
        headers = {"Authorization": f"Bearer {cluster.api_key}"}
        async with httpx.AsyncClient() as http:

            async def publish(n: int) -> None:
                data = {"type": "t", "n": n}
                reply = await http.post(
                    f"{cluster.url}/api/publish",
                    json={"channel": "session:d", "data": data},
                    headers=headers,
                )
                assert reply.status_code == 200, reply.text

            async with open_sse(cluster.url, tok, ("session:d",), query_token=True) as sse:
                node = (await sse.next_type("connected")).frame["node"]
                # Publish once the stream follows the channel: a publication before its
                # `subscribed` is history the stream starts after, not a live one.
                while (await sse.next_type("subscribed")).frame["channel"] != "session:d":
                    pass
                await publish(1)
                assert (await sse.next_type("publication")).frame["data"]["n"] == 1
                index = int(node.removeprefix("gw")) - 1
                stopping = asyncio.create_task(
                    _to_thread(lambda: cluster.kill_gateway(index, signal.SIGTERM))
                )
                assert (await sse.next_type("disconnect", timeout=20)).frame["code"] == 4000
                await stopping
                last_id = sse.last_id
            await publish(2)
            assert last_id is not None
            async with open_sse(
                cluster.url, tok, ("session:d",), last_event_id=last_id, query_token=True
            ) as sse:
                assert (await sse.next_type("connected")).frame["node"] != node
                frames = [(await sse.next_type("subscribed")).frame for _ in range(2)]
                assert all(f["recovered"] is not False for f in frames)
                assert (await sse.next_type("publication")).frame["data"]["n"] == 2
        await asyncio.sleep(0.5)  # nginx logs a request when it ends
        log = (cluster.workdir / "access.log").read_text()
        assert "GET /sse HTTP/1.1" in log
        assert tok not in log
        assert "token=" not in log
        for name in ("error.log", "nginx.out"):
            if (cluster.workdir / name).exists():
                assert tok not in (cluster.workdir / name).read_text(), name
    finally:
        await _to_thread(cluster.stop)


async def _to_thread(function: Any) -> Any:
    import asyncio

    return await asyncio.to_thread(function)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (its parent has not reaped it yet).
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_make_cluster_stops_every_child(how: signal.Signals) -> None:
    """The launcher leaves no orphans: stopped by a signal, or killed outright."""
    ports = [free_port(), free_port()]
    cmd = [sys.executable, "-m", "deploy.local_cluster", "--gateways", "1", "--no-notifier"]
    cmd += ["--port", str(ports[0]), "--gateway-port", str(ports[1])]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    banner = ""
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while "Ctrl-C stops everything" not in banner and time.monotonic() < deadline:
            banner += proc.stdout.readline()
        assert f"http://127.0.0.1:{ports[0]}" in banner
        children = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", banner)]
        assert children
        assert all(_alive(pid) for pid in children)
        assert _status(f"http://127.0.0.1:{ports[0]}/readyz") == 200
        proc.send_signal(how)
        proc.wait(timeout=30)
        assert proc.returncode == (0 if how == signal.SIGTERM else -signal.SIGKILL)
        wait_until(lambda: not any(_alive(p) for p in children), timeout=15, what="children gone")
        wait_until(
            lambda: _status(f"http://127.0.0.1:{ports[0]}/healthz") is None,
            timeout=15,
            what="nginx gone",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        logs = re.search(r"Logs\s+(\S+)", banner)
        if logs:  # left behind by a launcher killed outright
            shutil.rmtree(logs.group(1), ignore_errors=True)
