"""The notifier's parts wired together; its HTTP routes and its lifespan.

`archmesh-rt notifier` serves `Notifier.app` (API + worker). `archmesh-rt dev`
(archmesh_realtime/dev.py) mounts the same routes and lifespan on the gateway's app, sharing its
broker, and without Redis gives it an embedded in-memory store."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import cast

import redis.asyncio as aioredis
from archmesh_client.cluster_client import cluster_client
from archmesh_client.notifications import Medium
from archmesh_client.publisher import Publisher
from archmesh_client.redis_url import ClusterAddress
from starlette.applications import Starlette
from starlette.routing import BaseRoute

from notifier import keys
from notifier.analytics import Analytics
from notifier.api import NotifierApi
from notifier.cancellation import Canceller
from notifier.deliveries import Deliverer, RetryPolicy, Senders
from notifier.digests import DigestCloser
from notifier.erasure import Erasure
from notifier.escalation import StepGate
from notifier.feedback import ProviderFeedback
from notifier.inbox import Inbox
from notifier.intake import Intake
from notifier.ledger import Ledger
from notifier.live import LiveChannels
from notifier.metrics import NotifierMetrics
from notifier.ops_api import OpsApi
from notifier.ops_figures import NotifierFigures
from notifier.ownership import Everything, Leases, Ownership
from notifier.preferences import PreferenceStore
from notifier.processor import Options, Processor
from notifier.providers import provider_routes
from notifier.senders.email import EmailSender
from notifier.senders.push import PushSender
from notifier.senders.sms import SmsSender
from notifier.settings import NotifierSettings
from notifier.status import StatusStore
from notifier.template_store import TemplateStore
from notifier.topics import TopicStore
from notifier.topics_fanout import TopicFanout
from notifier.unsubscribe import UnsubscribeLinks
from notifier.unsubscribe_api import UnsubscribeApi
from notifier.worker import Worker
from notifier.workflow import WorkflowWatcher, parse_rules
from shared.admin_auth import AdminTokens
from shared.announcements import Announcer, create_board
from shared.broker import Broker, backend_of, create_broker
from shared.http_errors import ERROR_HANDLERS
from shared.http_ops import Readiness, ops_routes
from shared.logging import get_logger
from shared.openapi import openapi_route
from shared.redis_calls import POOL_SIZE
from shared.tokens import TokenVerifier

log = get_logger(__name__)

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def connect_store(url: str) -> aioredis.Redis:
    """The notifier's stores on the Redis server at `url` (`archmesh-rt dev` without Redis
    passes an embedded one instead). A call that finds every pooled connection busy waits for
    one (up to the command timeout) instead of failing: a burst of API calls queues.

    On a Cluster (`redis+cluster://`, the gateways' URL) the client is redis-py's
    `RedisCluster`, typed as the single-server client: the stores use the commands both have,
    and every script is called with a key of its partition, which routes it to that slot."""
    if not url or url.startswith("memory://"):
        raise ValueError("ARCHMESH_REDIS_URL: the notifier's stores need a Redis server")
    if backend_of(url) == "cluster":
        cluster = cluster_client(
            ClusterAddress.parse(url),
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=15,
            health_check_interval=10,
        )
        return cast(aioredis.Redis, cluster)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_SIZE,
        timeout=15,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=15,
        health_check_interval=10,
    )
    return aioredis.Redis.from_pool(pool)


class Notifier:
    def __init__(
        self,
        settings: NotifierSettings,
        *,
        broker: Broker | None = None,
        redis: aioredis.Redis | None = None,
        clock: Clock = utcnow,
        senders: Senders | None = None,
    ) -> None:
        self.settings = s = settings
        self.node = s.node_id or f"{socket.gethostname()}-{os.getpid()}"
        keys.use(s.partitioning())
        self.redis = redis or connect_store(s.redis_url)
        self._own_broker = broker is None
        self.broker = broker or create_broker(s.redis_url, s.history_policy(), s.broker_liveness())
        self.metrics = NotifierMetrics()
        self.senders = senders or Senders(
            EmailSender.from_settings(s), PushSender.from_settings(s), SmsSender.from_settings(s)
        )
        self.verifier = TokenVerifier(s) if s.jwt_algorithms else None
        self.publisher = Publisher(self.broker, s.max_publish_bytes)
        self.preferences = PreferenceStore(self.redis)
        self.templates = TemplateStore(self.redis)
        self.statuses = StatusStore(self.redis)
        # One Redis for the store and the broker: the inbox scripts publish (notifier/live.py).
        shared_redis = redis is None and backend_of(s.redis_url) == "redis"
        self.live = LiveChannels(s.history_policy()) if shared_redis else None
        self.inbox = Inbox(self.redis, self.broker, self.live)
        self.analytics = Analytics(self.redis)
        self.canceller = Canceller(self.redis)
        self.clock = clock
        self.erasure = Erasure(self.redis, clock)
        self.critical = frozenset(s.notifier_critical_types)
        self.unsubscribe = UnsubscribeLinks.from_settings(s, clock)
        self.intake = Intake(self.redis, self.node, s.notifier_claim_idle)
        self.topics = TopicStore(self.redis)
        self.feedback = ProviderFeedback.from_settings(self.redis, s, self.metrics, clock)
        self.ownership: Ownership = (
            Leases(self.redis, self.node, s.notifier_claim_idle)
            if keys.layout().tagged
            else Everything()
        )
        self.workflows = WorkflowWatcher(
            self.redis,
            self.broker,
            parse_rules(s.notifier_workflow_rules),
            s.notifier_retention,
            shards=self.ownership.owned,
        )
        self.worker = self._worker(clock)
        unsubscribe = UnsubscribeApi(self.unsubscribe, self.preferences, self.critical)
        admin_tokens = AdminTokens(self.verifier)
        ops = OpsApi(self, s.api_key, admin_tokens)
        self.routes: list[BaseRoute] = [
            *NotifierApi(self).routes(),
            *unsubscribe.routes(),
            *ops.routes,
            *provider_routes(s, self.feedback, self.preferences, clock),
        ]
        self.announcer = Announcer(
            create_board(s.redis_url, s.broker_liveness()),
            self.node,
            "notifier",
            NotifierFigures(self.redis, self.intake, self.metrics),
            interval=s.announce_interval,
            ttl=s.announce_ttl,
        )
        probes = ops_routes(
            self.node, self.readiness, self.metrics.registry, before_scrape=self.refresh_gauges
        )
        openapi = openapi_route("ArchMesh Realtime notifier", lambda: self.app.routes)
        self.app = Starlette(
            routes=[*self.routes, *probes, openapi],
            lifespan=self._app_span,
            exception_handlers=ERROR_HANDLERS,
        )
        self.app.state.admin_tokens = admin_tokens  # the console acts through these APIs

    def _worker(self, clock: Clock) -> Worker:
        s = self.settings
        options = Options(
            consumer=self.node,
            lock_seconds=s.notifier_claim_idle,
            retention=s.notifier_retention,
            known_users_only=s.notifier_known_users_only,
            configured=self.senders.configured,
            critical=self.critical,
            rules=s.rules(),
        )
        policy = RetryPolicy(
            max_attempts=s.notifier_max_attempts,
            base=s.notifier_retry_base,
            cap=s.notifier_retry_max,
            lease=s.notifier_claim_idle,
            push_ttl=s.push_ttl,
        )
        links = self.unsubscribe
        fanouts = TopicFanout(
            self.redis,
            self.intake,
            clock,
            batch=s.notifier_topic_batch,
            retention=s.notifier_retention,
        )
        deliverer = Deliverer(
            self.redis,
            self.statuses,
            self.preferences,
            self.senders,
            policy,
            self.metrics,
            clock,
            StepGate(self.redis, self.preferences, self.canceller, clock, self.critical),
            DigestCloser(self.redis),
            email_headers=None if links is None else links.email_headers,
            fanouts=fanouts,
            feedback=self.feedback,
        )
        worker: Worker
        ledger = Ledger(
            self.redis,
            s.notifier_retention,
            s.notifier_inbox_size,
            self.live,
            patience=s.notifier_claim_idle / 2,  # the batch's locks last a claim-idle
        )
        processor = Processor(
            ledger,
            self.broker,
            self.metrics,
            options,
            clock,
            on_scheduled=lambda: worker.wake(),
            fanouts=fanouts,
        )
        worker = Worker(
            self.intake,
            processor,
            deliverer,
            ledger,
            self.metrics,
            concurrency=s.notifier_concurrency,
            intake_attempts=s.notifier_intake_attempts,
            claim_every=max(1.0, s.notifier_claim_idle / 2),
            ownership=self.ownership,
        )
        return worker

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the worker; on exit take nothing new, finish what is held, then close."""
        await self._check_layout()
        if self._own_broker:
            await self.broker.start(lambda _: None)
        await self.worker.start()
        await self.workflows.start()
        self.announcer.start()
        log.info("notifier_started", node=self.node, channels=sorted(self.senders.configured))
        if self.unsubscribe is None and Medium.EMAIL in self.senders.configured:
            log.warning(
                "unsubscribe_links_off",
                reason="set ARCHMESH_NOTIFIER_PUBLIC_URL and ARCHMESH_NOTIFIER_UNSUBSCRIBE_SECRET:"
                " until then emails carry no List-Unsubscribe header",
            )
        try:
            yield
        finally:
            await self.announcer.stop()
            await self.workflows.stop()
            await self.worker.stop()
            await self.senders.aclose()
            if self._own_broker:
                await self.broker.close()
            await self.redis.aclose()
            log.info("notifier_stopped", node=self.node)

    async def _check_layout(self) -> None:
        """Partitioned, the first notifier records the partition count; one started with another
        count refuses to start: it would look for users' data in other partitions."""
        layout = keys.layout()
        if not layout.tagged:
            return
        await self.redis.set(keys.LAYOUT, layout.partitions, nx=True)
        found = int(await self.redis.get(keys.LAYOUT) or layout.partitions)
        if found != layout.partitions:
            log.error("notifier_partitions_mismatch", configured=layout.partitions, found=found)
            raise RuntimeError(
                f"ARCHMESH_NOTIFIER_PARTITIONS gives {layout.partitions} partitions, but the"
                f" notifiers' data in this Redis is in {found}: the count is fixed for good"
            )

    @asynccontextmanager
    async def _app_span(self, _: Starlette) -> AsyncIterator[None]:
        async with self.lifespan():
            yield

    async def readiness(self) -> Readiness:
        """Ready while its Redis answers."""
        try:
            ready = bool(await self.redis.ping())
        except Exception:  # any failure to answer means not ready
            ready = False
        return Readiness(ready)

    async def refresh_gauges(self) -> None:
        """Partitions held, queue lag and scheduled deliveries, read when scraped."""
        self.metrics.partitions_held.set(len(self.ownership.owned()))
        try:
            lag, pending = await self.intake.backlog()
            due = 0
            for partition in keys.partitions():
                due += await self.redis.zcard(keys.due(partition))
        except Exception:  # a scrape must not fail because Redis is down
            return
        self.metrics.queue_lag.set(lag)
        self.metrics.queue_pending.set(pending)
        self.metrics.due.set(due)
