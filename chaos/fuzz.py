"""Property-based fuzzing of everything a stranger can send: client WebSocket frames over a
real socket, and the bodies of the publish, control and notifier HTTP APIs. The property: no
crash, no 5xx, and every answer is a documented one (a known frame type, an error code that the
reference (docs/protocol.md, docs/notifier.md) names, a close code of the protocol).

Hypothesis drives synchronous clients (websockets' sync client, httpx.Client), so a run
can sit in a worker thread while the caller's event loop goes on."""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from gateway.protocol import FRAME_TYPES, CloseCode, ErrorCode

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = (ROOT / "docs" / "protocol.md", ROOT / "docs" / "notifier.md")
SERVER_FRAMES = frozenset(
    {
        "connected",
        "subscribed",
        "unsubscribed",
        "pong",
        "refreshed",
        "sub_refreshed",
        "presence",
        "presence_stats",
        "join",
        "leave",
        "history",
        "publication",
        "error",
        "disconnect",
    }
)
# Close codes a hostile frame may legitimately earn: the protocol's (4002 server_error
# excepted: that one means a handler crashed) and 1009, message too big.
ALLOWED_CLOSES = frozenset(int(c) for c in CloseCode if c is not CloseCode.SERVER_ERROR) | {1009}
_MARK = 2**53 - 7  # the id of the ping that ends each probe


class Violation(AssertionError):
    """An answer outside the documented contract (or none at all)."""


@cache
def _readme() -> str:
    return "\n".join(path.read_text() for path in REFERENCE)


def documented(code: str) -> bool:
    """Whether the protocol or notifier reference names this error code."""
    return bool(re.fullmatch(r"[a-z_]+", code)) and re.search(rf"\b{code}\b", _readme()) is not None


# -- strategies -----------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_ids = r"[A-Za-z0-9._@|+=-]{1,20}"
channels = (
    st.sampled_from(["broadcast", "user:fuzz", "user:other", "session:open", "session:closed"])
    | st.from_regex(rf"(session|user):{_ids}", fullmatch=True)
    | st.text(max_size=60)
    | json_values
)
tokens = (
    st.text(max_size=80)
    | json_values
    | st.from_regex(
        r"[A-Za-z0-9_-]{5,30}\.[A-Za-z0-9_-]{5,60}\.[A-Za-z0-9_-]{0,40}", fullmatch=True
    )
)
since = (
    st.fixed_dictionaries(
        {}, optional={"offset": json_values | st.integers(), "epoch": st.text(max_size=80)}
    )
    | json_values
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(sorted(FRAME_TYPES | {"dance", "", "PING"})) | json_values},
    optional={
        "id": st.integers(min_value=-5, max_value=2**60) | json_values,
        "channel": channels,
        "since": since,
        "token": tokens,
        "subscribe": st.lists(
            channels
            | st.fixed_dictionaries(
                {"channel": channels}, optional={"since": since, "token": tokens}
            ),
            max_size=4,
        ),
        "extra": json_values,
    },
)
# Well-formed enough to reach the handler: a session's subscription refreshed with a token
# that is garbage, a JWT shape, or (for the fuzzing user's own sessions) missing.
sub_refreshes = st.fixed_dictionaries(
    {"type": st.just("sub_refresh"), "channel": channels},
    optional={"token": tokens, "id": st.integers(min_value=0, max_value=2**53)},
)
client_inputs = st.one_of(
    frames.map(json.dumps),
    sub_refreshes.map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=300),
    st.binary(max_size=120),
)

events = (
    st.fixed_dictionaries(
        {"type": st.text(max_size=20) | json_values},
        optional={"session_id": json_values, "progress": json_values, "n": json_values},
    )
    | json_values
)
# A few keys reused across inputs, so that repeats and conflicts (409) happen too.
_reused_keys = st.sampled_from(["fuzz-key-1", "fuzz-key-2", "fuzz-key-3"])
idempotency_keys = _reused_keys | st.text(max_size=140) | json_values
# Header values: printable ASCII without surrounding blanks (what HTTP can carry at all).
idempotency_headers: st.SearchStrategy[dict[str, str]] = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {
            "Idempotency-Key": _reused_keys
            | st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=140).map(
                str.strip
            )
        }
    ),
)
publications = (
    st.fixed_dictionaries(
        {"channel": channels},
        optional={"data": events, "idempotency_key": idempotency_keys, "extra": json_values},
    )
    | json_values
)
# (path, body, extra headers)
publish_bodies = st.one_of(
    st.tuples(st.just("/api/publish"), publications.map(json.dumps), idempotency_headers),
    st.tuples(
        st.just("/api/publish/batch"),
        (
            st.lists(publications, max_size=6)
            | st.fixed_dictionaries({"items": st.lists(publications, max_size=6)})
            | json_values
        ).map(json.dumps),
        idempotency_headers,
    ),
    st.tuples(
        st.sampled_from(["/api/publish", "/api/publish/batch"]),
        st.text(max_size=200),
        idempotency_headers,
    ),
)

# Users of the control API's bodies: never one the other fuzzers (or attacks) connect as, so a
# generated disconnect or revocation cannot close their sockets.
_control_users = (
    st.sampled_from(["ctl-fuzz", "ctl-nobody"])
    | st.from_regex(rf"ctl-{_ids}", fullmatch=True)
    | json_values
)
_times = (
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
    | st.integers(min_value=-(2**40), max_value=2**40)
    | json_values
)
_control_shapes = {
    "/api/control/disconnect": st.fixed_dictionaries(
        {"user": _control_users}, optional={"reconnect": st.booleans() | json_values}
    ),
    "/api/control/unsubscribe": st.fixed_dictionaries(
        {"user": _control_users, "channel": channels},
        optional={"reason": st.from_regex(r"[a-z_]{1,10}", fullmatch=True) | json_values},
    ),
    "/api/control/subscribe": st.fixed_dictionaries(
        {"user": _control_users, "channel": channels | st.just("$control")}
    ),
    "/api/control/revoke": st.fixed_dictionaries(
        {"jti": st.text(max_size=30) | json_values}, optional={"exp": _times}
    )
    | st.fixed_dictionaries({"user": _control_users}, optional={"before": _times}),
}
_control_extras = st.fixed_dictionaries({}, optional={"type": json_values, "extra": json_values})


def _with_extras(body: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """`body`, sometimes with a `type` (the path names the command) or an unknown field."""
    return _control_extras.map(lambda more: {**body, **more})


control_bodies = st.one_of(
    *(
        st.tuples(st.just(path), (shape.flatmap(_with_extras) | json_values).map(json.dumps))
        for path, shape in _control_shapes.items()
    ),
    st.tuples(st.sampled_from(sorted(_control_shapes)), st.text(max_size=200)),
)

_users = (
    st.sampled_from(["fuzz-user", "nobody", "fuzz-user-2"])
    | st.from_regex(_ids, fullmatch=True)
    | json_values
)
_enums = {
    "priority": st.sampled_from(["low", "normal", "high", "urgent", "URGENT", ""]) | json_values,
    "channels": st.lists(st.sampled_from(["in_app", "email", "push", "sms", "fax"]), max_size=5)
    | json_values,
}
notifications = (
    st.fixed_dictionaries(
        {"user_id": _users, "type": st.text(max_size=30) | json_values},
        optional={
            "id": st.text(max_size=40) | json_values,
            "title": st.text(max_size=60) | json_values,
            "body": st.text(max_size=60) | json_values,
            "template": st.sampled_from(["fuzz", "nope"]) | json_values,
            "data": json_values,
            **_enums,
        },
    )
    | json_values
)
preferences = (
    st.fixed_dictionaries(
        {},
        optional={
            "timezone": st.sampled_from(["UTC", "Europe/Paris", "Mars/Olympus"]) | json_values,
            "quiet_hours": st.fixed_dictionaries(
                {},
                optional={
                    "enabled": json_values,
                    "start": st.text(max_size=8),
                    "end": st.text(max_size=8),
                },
            )
            | json_values,
            "held": st.sampled_from(["hold", "drop", "keep"]) | json_values,
            "channels": st.dictionaries(
                st.text(max_size=20),
                st.dictionaries(st.text(max_size=8), json_values, max_size=3) | json_values,
                max_size=3,
            )
            | json_values,
            "contacts": st.fixed_dictionaries(
                {},
                optional={
                    "email": st.emails() | json_values,
                    "phone": st.text(max_size=20) | json_values,
                },
            )
            | json_values,
        },
    )
    | json_values
)
template_text = st.text(alphabet=st.sampled_from(list("ab {}%#|._()[]'\"=\n")), max_size=40)
templates = (
    st.fixed_dictionaries(
        {
            "channels": st.fixed_dictionaries(
                {},
                optional={
                    "in_app": st.fixed_dictionaries(
                        {"title": template_text}, optional={"body": template_text}
                    )
                    | json_values,
                    "email": st.fixed_dictionaries(
                        {},
                        optional={
                            "subject": template_text,
                            "html": template_text,
                            "text": template_text,
                        },
                    )
                    | json_values,
                },
            )
            | json_values
        },
    )
    | json_values
)
_names = st.sampled_from(["fuzz-user", "nobody"]) | st.from_regex(
    r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,11}", fullmatch=True
)
notifier_requests = st.one_of(
    st.tuples(st.just("POST"), st.just("/api/notifications"), notifications.map(json.dumps)),
    st.tuples(
        st.just("POST"),
        st.just("/api/notifications/batch"),
        (
            st.fixed_dictionaries({"notifications": st.lists(notifications, max_size=5)})
            | json_values
        ).map(json.dumps),
    ),
    st.tuples(
        st.sampled_from(["PUT", "PATCH"]),
        _names.map(lambda u: f"/api/users/{u}/preferences"),
        preferences.map(json.dumps),
    ),
    st.tuples(
        st.just("PUT"),
        st.from_regex(r"[a-z0-9_:-][a-z0-9_.:-]{0,19}", fullmatch=True).map(
            lambda n: f"/api/templates/{n}"
        ),
        templates.map(json.dumps),
    ),
    st.sampled_from(
        [
            ("POST", "/api/notifications"),
            ("POST", "/api/notifications/batch"),
            ("PUT", "/api/templates/x"),
            ("PUT", "/api/users/fuzz-user/preferences"),
        ]
    ).flatmap(lambda route: st.tuples(st.just(route[0]), st.just(route[1]), st.text(max_size=120))),
)


# -- probes ---------------------------------------------------------------------------------


@dataclass
class Findings:
    """What a fuzz run sent and how it was answered."""

    inputs: int = 0
    answers: Counter[str] = field(default_factory=Counter)
    violations: int = 0  # inputs answered outside the contract
    violation: str | None = None  # the shortest of them

    def note(self) -> str:
        if self.violation is not None:
            return f"{self.violations:,} answers outside the contract, e.g. {self.violation}"
        common = ", ".join(f"{code} {count}" for code, count in self.answers.most_common(6))
        return f"no 5xx, no crash; answers: {common}"


class FrameProbe:
    """One WebSocket, connected (`token`) or not (None: inputs arrive before `connect`). Each
    input is followed by a ping; every frame before the ping's answer (pong, or not_connected)
    is the input's answer. A socket the server closed (legitimately) is reopened."""

    def __init__(self, url: str, token: str | None, origin: str | None = None) -> None:
        self.url, self.token, self.origin = url, token, origin
        self.findings = Findings()
        self.ws: ClientConnection | None = None
        self._sockets = contextlib.ExitStack()

    def _open(self) -> ClientConnection:
        ws = self._sockets.enter_context(
            # ping_interval=None: a keepalive ping draws from the global `random` in another
            # thread, which Hypothesis, drawing meanwhile, reports as an error.
            connect(
                self.url,
                origin=self.origin,  # type: ignore[arg-type]
                open_timeout=10,
                max_size=2**22,
                ping_interval=None,
            )
        )
        if self.token is None:
            return ws
        ws.send(json.dumps({"type": "connect", "token": self.token, "id": 1}))
        reply = json.loads(ws.recv(timeout=10))
        if reply.get("type") != "connected":
            raise Violation(f"could not connect the fuzzing socket: {reply}")
        return ws

    def close(self) -> None:
        self.ws = None
        self._sockets.close()

    def probe(self, payload: str | bytes) -> None:
        if self.ws is None:
            self.ws = self._open()
        ws = self.ws
        self.findings.inputs += 1
        try:
            ws.send(payload)
            ws.send(json.dumps({"type": "ping", "id": _MARK}))
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame.get("id") == _MARK and frame.get("type") in ("pong", "error"):
                    return
                self._check(frame, payload)
        except ConnectionClosed as exc:
            self.close()
            code = exc.rcvd.code if exc.rcvd is not None else None
            self.findings.answers[f"close {code}"] += 1
            if code not in ALLOWED_CLOSES:
                raise Violation(f"closed with {code} after {payload!r:.200}") from None
        except TimeoutError:
            self.close()
            raise Violation(f"no answer within 10 s to {payload!r:.200}") from None
        except Violation:
            self.close()  # the next input starts on a fresh socket
            raise

    def _check(self, frame: dict[str, Any], payload: str | bytes) -> None:
        kind = frame.get("type")
        if kind not in SERVER_FRAMES:
            raise Violation(f"undocumented frame {frame!r:.200} after {payload!r:.200}")
        if kind == "error":
            code = frame.get("code")
            if code not in {c.value for c in ErrorCode} or not documented(str(code)):
                raise Violation(f"undocumented error code {code!r} after {payload!r:.200}")
            self.findings.answers[str(code)] += 1
        elif kind == "disconnect":
            if frame.get("code") not in ALLOWED_CLOSES:
                raise Violation(f"disconnect {frame!r} after {payload!r:.200}")
        else:
            self.findings.answers[str(kind)] += 1


class HttpProbe:
    """Sends a request; the answer must be < 500 and, when an error, carry a documented
    code in the shared JSON error shape."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            timeout=15,
        )
        self.findings = Findings()

    def close(self) -> None:
        self.http.close()

    def probe(
        self, method: str, path: str, body: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.findings.inputs += 1
        content = body.encode("utf-8", "surrogatepass")
        reply = self.http.request(method, path, content=content, headers=headers)
        where = f"{method} {path} {body!r:.200}"
        if reply.status_code >= 500:
            raise Violation(f"{reply.status_code} {reply.text!r:.200} for {where}")
        try:
            answer = reply.json() if reply.content else None
        except ValueError:
            raise Violation(f"not JSON: {reply.text!r:.200} for {where}") from None
        if reply.status_code >= 400:
            code = self._error(answer, where)
            self.findings.answers[f"{reply.status_code} {code}"] += 1
            return
        self.findings.answers[str(reply.status_code)] += 1
        for item in (answer or {}).get("results", []) if isinstance(answer, dict) else []:
            if not item.get("ok"):
                self._error(item, where)

    @staticmethod
    def _error(answer: Any, where: str) -> str:
        """The error's code, once checked to be documented and in the shared shape."""
        error = answer.get("error") if isinstance(answer, dict) else None
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            raise Violation(f"error without the JSON shape: {answer!r:.200} for {where}")
        code = error.get("code")
        if not isinstance(code, str) or not documented(code):
            raise Violation(f"undocumented error code {code!r} for {where}")
        return code


def first_violation(exc: BaseException) -> str:
    """The message of the first Violation in `exc` (Hypothesis groups distinct failures)."""
    if isinstance(exc, BaseExceptionGroup):
        return first_violation(exc.exceptions[0])
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def run(strategy: st.SearchStrategy[Any], check: Callable[[Any], None], examples: int) -> None:
    """`check` every one of `examples` generated inputs; a Violation is shrunk and raised."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=(Phase.generate, Phase.shrink),
    )
    @given(strategy)
    def fuzz(value: Any) -> None:
        check(value)

    fuzz()


def _tolerant(findings: Findings, check: Callable[[Any], None]) -> Callable[[Any], None]:
    """`check` that records a violation and goes on, so that one known bug does not hide
    what the other inputs would find (the tests use `check` itself, which shrinks)."""

    def record(value: Any) -> None:
        try:
            check(value)
        except Violation as exc:
            findings.violations += 1
            message = str(exc)[:240]
            if findings.violation is None or len(message) < len(findings.violation):
                findings.violation = message

    return record


def fuzz_frames(url: str, token: str | None, examples: int, origin: str | None = None) -> Findings:
    probe = FrameProbe(url, token, origin)
    try:
        run(client_inputs, _tolerant(probe.findings, probe.probe), examples)
    finally:
        probe.close()
    return probe.findings


def fuzz_publish_api(base_url: str, api_key: str, examples: int) -> Findings:
    probe = HttpProbe(base_url, api_key)
    try:
        check = _tolerant(probe.findings, lambda request: probe.probe("POST", *request))
        run(publish_bodies, check, examples)
    finally:
        probe.close()
    return probe.findings


def fuzz_control_api(base_url: str, api_key: str, examples: int) -> Findings:
    probe = HttpProbe(base_url, api_key)
    try:
        check = _tolerant(probe.findings, lambda pair: probe.probe("POST", *pair))
        run(control_bodies, check, examples)
    finally:
        probe.close()
    return probe.findings


def fuzz_notifier_api(base_url: str, api_key: str, examples: int) -> Findings:
    probe = HttpProbe(base_url, api_key)
    try:
        check = _tolerant(probe.findings, lambda triple: probe.probe(*triple))
        run(notifier_requests, check, examples)
    finally:
        probe.close()
    return probe.findings
