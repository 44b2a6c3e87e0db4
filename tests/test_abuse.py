"""The fast part of the hostile-input suite (`make chaos` runs it all, with 10,000 generated
inputs per fuzzer and the floods): a few hundred generated frames and API bodies, forged and
stolen tokens, foreign origins, oversized frames and bodies, missing keys and template sandbox
escapes, all against a real cluster behind nginx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from chaos import abuse, fuzz
from deploy.local_cluster import cli_commands

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EXAMPLES = 300
HAS_NOTIFIER = "notifier" in cli_commands()
needs_notifier = pytest.mark.skipif(not HAS_NOTIFIER, reason="no `archmesh-rt notifier` yet")


@pytest.fixture(scope="module")
def target() -> Iterator[abuse.Target]:
    cluster, key = abuse.attack_cluster(env=abuse.FUZZ_ENV)
    cluster.start()
    try:
        yield abuse.Target(cluster, key)
    finally:
        cluster.stop()


def test_a_frame_type_that_is_not_a_string_is_a_bad_frame(target: abuse.Target) -> None:
    with connect(target.cluster.ws_url, open_timeout=10) as ws:
        ws.send(json.dumps({"type": "connect", "token": target.token("alice"), "id": 1}))
        assert json.loads(ws.recv(timeout=10))["type"] == "connected"
        ws.send(json.dumps({"type": [], "id": 2}))
        reply = json.loads(ws.recv(timeout=10))
        assert (reply["type"], reply.get("code")) == ("error", "bad_frame")


@needs_notifier
def test_patching_preferences_with_null_channels_is_a_validation_error(
    target: abuse.Target,
) -> None:
    reply = httpx.patch(
        f"{target.cluster.url}/api/users/alice/preferences",
        json={"channels": None},
        headers={"Authorization": f"Bearer {target.cluster.api_key}"},
    )
    assert reply.status_code == 422


def _run(findings: fuzz.Findings, examples: int) -> None:
    assert findings.violations == 0, findings.note()
    assert findings.inputs >= examples  # shrinking may add a few
    assert findings.answers, "no answer was recorded"


def test_generated_client_frames_get_documented_answers(target: abuse.Target) -> None:
    probe = fuzz.FrameProbe(target.cluster.ws_url, target.token("fuzz-user"))
    try:
        fuzz.run(fuzz.client_inputs, probe.probe, EXAMPLES)
    finally:
        probe.close()
    _run(probe.findings, EXAMPLES)
    assert probe.findings.answers["bad_json"] > 0  # the strategies reach the error paths
    assert probe.findings.answers["bad_frame"] > 0


def test_generated_frames_before_connect_get_documented_answers(target: abuse.Target) -> None:
    probe = fuzz.FrameProbe(target.cluster.ws_url, None)
    try:
        fuzz.run(fuzz.client_inputs, probe.probe, EXAMPLES // 3)
    finally:
        probe.close()
    _run(probe.findings, EXAMPLES // 3)


def test_generated_publish_bodies_get_documented_answers(target: abuse.Target) -> None:
    findings = fuzz.fuzz_publish_api(target.cluster.url, target.cluster.api_key, EXAMPLES)
    _run(findings, EXAMPLES)
    assert {"200", "400 bad_json", "422 bad_request"} <= set(findings.answers)


def test_generated_control_bodies_get_documented_answers(target: abuse.Target) -> None:
    findings = fuzz.fuzz_control_api(target.cluster.url, target.cluster.api_key, EXAMPLES)
    _run(findings, EXAMPLES)
    assert {"200", "400 bad_json", "422 bad_request"} <= set(findings.answers)


@needs_notifier
def test_generated_notifier_bodies_get_documented_answers(target: abuse.Target) -> None:
    probe = fuzz.HttpProbe(target.cluster.url, target.cluster.api_key)

    def check(request: Any) -> None:
        probe.probe(*request)

    try:
        fuzz.run(fuzz.notifier_requests, check, EXAMPLES)
    finally:
        probe.close()
    _run(probe.findings, EXAMPLES)


def test_forged_tokens_and_stolen_channels_are_refused(target: abuse.Target) -> None:
    assert abuse.jwt_attacks(target) >= 20


def test_foreign_origins_are_refused(target: abuse.Target) -> None:
    assert abuse.origin_attacks(target) == 3


def test_oversized_frames_and_bodies_get_documented_answers(target: abuse.Target) -> None:
    abuse.oversize_attacks(target)


def test_api_without_or_with_a_wrong_key_is_refused(target: abuse.Target) -> None:
    assert abuse.api_key_attacks(target) >= 5


@needs_notifier
def test_template_sandbox_escapes_are_refused_or_harmless(target: abuse.Target) -> None:
    sent, note = abuse.template_attacks(target)
    assert sent == len(abuse.ESCAPES), note


def test_the_fuzzed_processes_are_still_alive(target: abuse.Target) -> None:
    parts = [*target.cluster.gateways, target.cluster.notifier, target.cluster.nginx]
    assert all(part.running for part in parts if part is not None)
