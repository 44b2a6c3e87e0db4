"""The cluster of `make bench`'s `storm3`: three gateways behind a real nginx on a private Redis
(deploy/local_cluster.py), run by bench/run.py with the project's venv (run.py itself is
standard library only).

Prints one JSON line (nginx's port, each gateway's port, pid and node id, the Redis URL and pid)
once everything is ready, then keeps the cluster up until its stdin closes, and stops it all
(nginx included) on the way out, also when it is killed (the children die with it).

nginx runs two workers: each proxied socket holds two of a worker's connections
(worker_connections 16384 in deploy/nginx.conf) and a descriptor each, under the open-files
limit of the worker's process (20,000 on the bench machine), so one worker holds at most about
8,000 sockets and the scenario's 11,000 need two.

The storm's clients come through the same nginx, on a second port whose upstream has the first
gateway as its server and the others as `backup`: all of them land on the first (where a
balancer places clients over time; round robin alone would spread them at once), and when it
dies nginx moves each handshake on to the others, as on the main port. So nginx relays the
storm clients' traffic before the kill as after it, and the live clients' latency "without the
storm" is taken with the same balancer work as "during".

    .venv/bin/python bench/storm_cluster.py --jwt-secret S --api-key K
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deploy.local_cluster import LocalCluster
from deploy.ports import free_port

GATEWAY_ENV = {
    "ARCHMESH_LOG_LEVEL": "warning",
    "ARCHMESH_DRAIN_SECONDS": "0",
}


def pin_port(conf: Path, port: int, gateway_ports: list[int]) -> None:
    """Add to the rendered nginx.conf a listener on `port` whose /ws goes to the first gateway,
    the others being `backup` (used once it refuses), with the main server's /ws settings."""
    text = conf.read_text()
    location = re.search(r"\n        location = /ws \{.*?\n        \}\n", text, re.DOTALL)
    settings = re.findall(
        r"\n        (proxy_(?:http_version|connect_timeout|next_upstream\w*) [^;]+;)", text
    )
    if location is None or len(settings) != 5:
        raise SystemExit("storm_cluster: deploy/nginx.conf's /ws location or settings moved")
    reuseport = " reuseport" if " reuseport;" in text else ""
    servers = "".join(
        f"        server 127.0.0.1:{p} max_fails=0{' backup' if i else ''};\n"
        for i, p in enumerate(gateway_ports)
    )
    block = (
        f"    upstream archmesh_pinned_ws {{\n{servers}    }}\n\n"
        f"    server {{\n        listen 127.0.0.1:{port}{reuseport};\n"
        + "".join(f"        {line}\n" for line in settings)
        + location.group(0).lstrip("\n").replace("archmesh_gateways_ws;", "archmesh_pinned_ws;")
        + "    }\n"
    )
    end = text.rstrip().rfind("}")  # the http block's end
    conf.write_text(text[:end] + block + text[end:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jwt-secret", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--nginx-workers", type=int, default=2)
    opts = parser.parse_args()
    cluster = LocalCluster(
        opts.gateways,
        notifier=False,
        jwt_secret=opts.jwt_secret,
        api_key=opts.api_key,
        env=GATEWAY_ENV,
        appendfsync="no",
        die_with_parent=True,
        nginx_workers=opts.nginx_workers,
    )
    pinned = free_port()
    pin_port(cluster.workdir / "nginx.conf", pinned, [g.port for g in cluster.gateways])
    with cluster:
        ready = {
            "port": cluster.port,
            "pinned_port": pinned,
            "nginx_pid": cluster.nginx.pid,
            "redis": cluster.redis_url,
            "redis_pid": cluster.redis.pid,
            "gateways": [
                {"port": g.port, "pid": g.pid, "node": g.env["ARCHMESH_NODE_ID"]}
                for g in cluster.gateways
            ],
        }
        print(json.dumps(ready), flush=True)
        sys.stdin.read()  # until run.py closes it (or dies)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
