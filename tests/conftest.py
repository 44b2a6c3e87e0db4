from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator

import pytest

from tests import wsclient
from tests.fakes.push_endpoint import PushEndpoint
from tests.fakes.smtp import SmtpServer
from tests.fakes.twilio_api import TwilioApi
from tests.servers import (
    GatewayProcess,
    NotifierProcess,
    RedisCluster,
    RedisServer,
    redis_server_version,
)


@pytest.fixture(autouse=True)
async def close_websockets() -> AsyncIterator[None]:
    """Every client socket a test opened is closed, whatever the test did with it."""
    yield
    while wsclient.OPENED:
        await wsclient.OPENED.pop().close()


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[RedisServer]:
    """One private redis-server for tests that do not restart it (flushed per test)."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_server(shared_redis: RedisServer) -> RedisServer:
    shared_redis.client().flushall()
    return shared_redis


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may kill and restart."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[RedisCluster]:
    """One private 3-master Redis Cluster for tests that do not restart it (flushed per test)."""
    version = redis_server_version()
    if version and version < (7,):  # none at all fails below, like every redis fixture
        pytest.skip(f"Redis Cluster sharded pub/sub needs redis-server >= 7, found {version}")
    cluster = RedisCluster(3)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def redis_cluster(shared_cluster: RedisCluster) -> RedisCluster:
    shared_cluster.flushall()
    return shared_cluster


@pytest.fixture
def gateways() -> Iterator[list[GatewayProcess]]:
    """Append started GatewayProcess objects; all are stopped after the test."""
    started: list[GatewayProcess] = []
    yield started
    for gateway in started:
        gateway.stop()


@pytest.fixture
def notifiers() -> Iterator[list[NotifierProcess]]:
    """Notifier processes a test starts, SIGKILLed after it."""
    started: list[NotifierProcess] = []
    yield started
    for notifier in started:
        notifier.stop(signal.SIGKILL)


@pytest.fixture(params=["memory", "redis", "cluster"])
def backend_url(request: pytest.FixtureRequest) -> str:
    """Each backend a store runs on, by URL: the axis of the broker and presence contracts."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    if request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return "memory://"


# The notifier's peers (a mail server, a push service, the Twilio API), one of each per module.


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture(scope="module")
def push() -> Iterator[PushEndpoint]:
    with PushEndpoint() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioApi]:
    with TwilioApi() as api:
        yield api
