"""deploy/grafana/archmesh.json and deploy/prometheus/alerts.yml against the real thing:
`promtool check rules` and `promtool test rules` pass, `promtool check metrics` passes on a
real `/metrics` scrape of a running gateway and of a running notifier, and every metric name
the dashboard's expressions and the rules use exists in those scrapes (a renamed metric would
otherwise leave an empty panel or an alert that can never fire)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.servers import REPO, GatewayProcess, NotifierProcess, RedisServer

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "archmesh.json"
ALERTS = {
    "ArchMeshGatewayNotReady",
    "ArchMeshBrokerReconnecting",
    "ArchMeshSlowConsumerClosesRising",
    "ArchMeshDeliveryP99High",
    "ArchMeshNotifierLagGrowing",
    "ArchMeshNotifierDeadLetters",
    "ArchMeshNotifierRetriesExhausted",
}
# What PromQL may call, and the words it reserves: any other identifier is a metric name.
FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "deriv", "histogram_quantile"}
KEYWORDS = {"by", "without", "on", "ignoring", "and", "or", "unless", "bool"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (.ci/run does)")
    return subprocess.run(
        [binary, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def scrapes(shared_redis: RedisServer) -> Iterator[dict[str, str]]:
    """One `/metrics` text of a gateway and of a notifier, after a publication went through."""
    gateway = GatewayProcess(shared_redis.url).start()
    notifier = NotifierProcess(shared_redis.url)
    try:
        notifier.start()
        assert gateway.publish("session:dash", {"type": "t"}).status_code == 200
        yield {
            "gateway": httpx.get(f"{gateway.http}/metrics", timeout=5).text,
            "notifier": httpx.get(f"{notifier.http}/metrics", timeout=5).text,
        }
    finally:
        notifier.stop()
        gateway.stop()


def exposed(scrape: str) -> set[str]:
    """Every series name a scrape can be queried by (a histogram's _bucket/_sum/_count too),
    labelled families without samples yet included (their TYPE line names them)."""
    names = set()
    for line in scrape.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, *(name + suffix for suffix in SUFFIXES.get(kind, ()))}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", "", text)  # grouping labels
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        if text[match.end() :].lstrip().startswith("("):
            assert word in FUNCTIONS, f"unexpected function {word} in {expr}"
        elif word not in KEYWORDS:
            names.add(word)
    return names


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard_expressions() -> dict[str, str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return {
        f"{panel['title']} {target['refId']}": target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", ())
    }


def test_the_rules_pass_promtool() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in checked.stdout
    assert set(rule_expressions()) == ALERTS
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@pytest.mark.parametrize("process", ["gateway", "notifier"])
def test_promtool_accepts_a_real_scrape(process: str, scrapes: dict[str, str]) -> None:
    checked = promtool("check", "metrics", stdin=scrapes[process])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip() == "", checked.stdout  # lint findings are printed


def test_every_metric_the_dashboard_and_the_rules_use_exists(scrapes: dict[str, str]) -> None:
    available = exposed(scrapes["gateway"]) | exposed(scrapes["notifier"])
    expressions = {**dashboard_expressions(), **rule_expressions()}
    used = {name for expr in expressions.values() for name in metric_names(expr)}
    assert len(used) > 20, used  # the parse found the names at all
    missing = {
        where: sorted(metric_names(expr) - available)
        for where, expr in expressions.items()
        if metric_names(expr) - available
    }
    assert not missing, f"not in a real /metrics scrape: {missing}"


def test_the_dashboard_covers_both_processes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    rows = [p["title"] for p in panels if p["type"] == "row"]
    assert rows == ["Gateways", "Notifier"]
    graphs = [p for p in panels if p["type"] != "row"]
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in graphs)
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="b"}[5m])))') == {
        "x_bucket"
    }
