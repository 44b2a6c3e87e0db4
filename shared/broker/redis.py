"""Redis broker: one watched pub/sub link per server, publish and history in Lua scripts."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
import redis.asyncio as aioredis
from archmesh_client import history_script, publish_script
from archmesh_client.backoff import Backoff
from archmesh_client.channels import (
    channel_of_pubsub,
    pubsub_name,
)
from archmesh_client.idempotency import Idempotency
from archmesh_client.retention import HistoryPolicy
from archmesh_client.stream import StreamPosition
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.broker.base import (
    BrokerError,
    BrokerPublication,
    Handler,
    History,
    StateHandler,
)
from shared.broker.link import LinkDead, LinkSilent, Liveness, PubSubLink
from shared.broker.reads import ReadCounts, ReadKey, TurnBatch
from shared.logging import get_logger
from shared.redis_calls import NETWORK_ERRORS, as_broker_error, client_options, redis_client

SIGNAL = "!"  # the first byte of a signal's pub/sub message; a publication's is `{` or a digit

log = get_logger(__name__)


class RedisBroker:
    """One Redis server. Subclasses change where pub/sub links go (see `RedisClusterBroker`)."""

    sharded = False  # SSUBSCRIBE/SPUBLISH instead of SUBSCRIBE/PUBLISH
    batched_reads = True  # history reads of one event-loop turn in one pipeline (reads.py)

    def __init__(
        self, url: str, policy: HistoryPolicy | None = None, liveness: Liveness | None = None
    ) -> None:
        self._url = url
        self._policy = policy or HistoryPolicy()
        self._liveness = liveness or Liveness()
        self._redis = self._command_client()
        self._publish = self._redis.register_script(publish_script.SOURCE)
        self._history = self._redis.register_script(history_script.SOURCE)
        self._read_counts = ReadCounts()
        self._reads = (
            TurnBatch[ReadKey, History](self._read_key, self._history_many, self._read_counts)
            if self.batched_reads
            else None
        )
        self._channels: set[str] = set()
        # Subscribes and unsubscribes asked while none is being sent, in order: sent together.
        self._changes: list[tuple[str, bool, asyncio.Future[None]]] = []
        self._changing: asyncio.Task[None] | None = None
        self._links: dict[str, PubSubLink] = {}
        self._kick = asyncio.Event()
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._connected = False
        self._on_message: Handler | None = None
        self._on_state: StateHandler | None = None

    # -- what differs on a cluster --------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        return client_options(self._liveness)

    def _command_client(self) -> Any:
        return redis_client(self._url, self._liveness, cluster=False)

    async def _link_clients(self) -> dict[str, aioredis.Redis]:
        """A fresh client per server that should hold a pub/sub link, by server name."""
        return {"redis": aioredis.Redis.from_url(self._url, **self._options())}

    def _route(self, name: str) -> str:
        """The server that carries pub/sub channel `name`."""
        return "redis"

    async def _ping_commands(self) -> None:
        await self._redis.ping()

    async def _drop_command_connections(self) -> None:
        await self._redis.connection_pool.disconnect()

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def history_reads(self) -> ReadCounts:
        return self._read_counts

    async def start(self, on_message: Handler, on_state: StateHandler | None = None) -> None:
        self._on_message, self._on_state = on_message, on_state
        self._reader = asyncio.create_task(self._read_forever(), name="redis-broker-reader")

    async def close(self) -> None:
        if self._changing is not None:
            self._changing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._changing
        for _, _, done in self._changes:
            done.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._reads is not None:
            await self._reads.close()
        await self._redis.aclose()

    # -- fan-in ---------------------------------------------------------------------------

    async def _read_forever(self) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        while True:
            try:
                await self._session(backoff)
            except NETWORK_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning(
                    "redis_unreachable", error=str(exc) or type(exc).__name__, retry_in=delay
                )
                self._set_connected(False)
                if isinstance(exc, LinkSilent):
                    # Commands in flight on the same dead path would wait out their timeout.
                    with contextlib.suppress(*NETWORK_ERRORS):
                        await self._drop_command_connections()
                await asyncio.sleep(delay)

    async def _session(self, backoff: Backoff) -> None:
        """Open every link, report connected once all answer, and run until one fails."""
        tasks: list[asyncio.Task[object]] = []
        self._kick.clear()
        try:
            # No asyncio timeout around redis-py calls here: cancelling a topology refresh leaks
            # its connections. The clients' socket timeouts bound every step instead.
            await self._open_links()
            tasks = [
                asyncio.create_task(link.run(), name=f"redis-link {name}")
                for name, link in self._links.items()
            ]
            await self._until_alive(tasks)
            await self._check_commands()
            tasks.append(asyncio.create_task(self._watch_commands(), name="redis-commands"))
            self._set_connected(True)
            backoff.reset()
            kicked = asyncio.create_task(self._kick.wait())
            tasks.append(kicked)
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not kicked:
                    task.result()  # raises what ended the link
            raise LinkDead("topology changed: a channel belongs to a server without a link")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            links, self._links = self._links, {}
            await asyncio.gather(*(link.close() for link in links.values()))

    async def _open_links(self) -> None:
        clients = await self._link_clients()
        async with self._lock:
            self._links = {
                name: PubSubLink(
                    client,
                    name=name,
                    sharded=self.sharded,
                    liveness=self._liveness,
                    on_message=self._deliver,
                )
                for name, client in clients.items()
            }
            by_link: dict[str, list[str]] = {name: [] for name in self._links}
            for channel in self._channels:
                name = pubsub_name(channel)
                by_link.setdefault(self._route(name), []).append(name)
            if by_link.keys() != self._links.keys():
                raise LinkDead("a channel's server is not among the known ones")
            for server, names in by_link.items():
                await self._links[server].open(names)

    async def _until_alive(self, tasks: list[asyncio.Task[object]]) -> None:
        """Wait until every link has answered its first PING, i.e. its subscriptions are in
        effect; fail if a link fails first or stays silent."""
        links = list(self._links.values())

        async def all_alive() -> None:
            for link in links:
                await link.alive.wait()

        alive = asyncio.create_task(all_alive())
        try:
            done, _ = await asyncio.wait(
                [alive, *tasks], timeout=self._liveness.timeout, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                task.result()
            if not all(link.alive.is_set() for link in links):
                raise LinkSilent(f"no answer within {self._liveness.timeout}s of connecting")
        finally:
            alive.cancel()
            await asyncio.gather(alive, return_exceptions=True)

    async def _watch_commands(self) -> None:
        """The command connections are watched too: a node that cannot publish or read history
        is not ready, even if its pub/sub links still answer."""
        while True:
            await asyncio.sleep(self._liveness.interval)
            await self._check_commands()

    async def _check_commands(self) -> None:
        try:
            await self._ping_commands()
        except RedisTimeoutError as exc:
            raise LinkSilent(f"commands: no answer within {self._liveness.timeout}s") from exc

    def _deliver(self, name: bytes, raw: bytes) -> None:
        channel = channel_of_pubsub(name.decode())
        publication = _parse(channel, raw) if channel else None
        if publication is None:
            log.warning("invalid_pubsub_message", redis_channel=name.decode(errors="replace"))
            return
        assert self._on_message is not None
        try:
            self._on_message(publication)
        except Exception:
            log.exception("message_handler_failed", channel=channel)

    def _set_connected(self, connected: bool) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        log.info("redis_pubsub_" + ("connected" if connected else "lost"), url=_safe_url(self._url))
        if self._on_state is not None:
            self._on_state(connected)

    async def subscribe(self, channel: str) -> None:
        await self._change(channel, subscribe=True)

    async def unsubscribe(self, channel: str) -> None:
        await self._change(channel, subscribe=False)

    async def _change(self, channel: str, *, subscribe: bool) -> None:
        """Returns once the command is written (as a direct call would). The changes asked
        while others are being written leave together after them, in the order asked: under a
        burst of connects (each joining its own channel) one SUBSCRIBE names many channels,
        one write instead of one per connect. A caller that is cancelled does not undo its
        change: membership counted it already."""
        done = asyncio.get_running_loop().create_future()
        self._changes.append((channel, subscribe, done))
        if self._changing is None:
            self._changing = asyncio.create_task(self._apply_changes(), name="redis-subscribe")
        await done  # cancelled, it still leaves: the change stays in the list

    async def _apply_changes(self) -> None:
        try:
            while self._changes:
                async with self._lock:  # not while a new session subscribes the whole set
                    changes, self._changes = self._changes, []
                    try:
                        await self._send(changes)
                    except Exception:  # a bug: the rest must still be sent
                        log.exception("redis_subscribe_crashed", channels=len(changes))
                    finally:
                        for _, _, done in changes:
                            if not done.done():
                                done.set_result(None)
        finally:
            self._changing = None

    async def _send(self, changes: list[tuple[str, bool, asyncio.Future[None]]]) -> None:
        """Runs of the same kind to the same server go in one command (one per channel where
        sharded: a command may not span slots)."""
        runs: list[tuple[bool, str, list[str]]] = []  # (subscribe, server, pub/sub names)
        for channel, subscribe, _ in changes:
            if subscribe:
                self._channels.add(channel)
            else:
                self._channels.discard(channel)
            name = pubsub_name(channel)
            server = self._route(name) if self._links else ""
            if runs and runs[-1][0] == subscribe and runs[-1][1] == server:
                runs[-1][2].append(name)
            else:
                runs.append((subscribe, server, [name]))
        # Between links (reconnecting), the next session subscribes the whole set.
        if not self._links:
            return
        for subscribe, server, names in runs:
            try:
                link = self._links.get(server)
                if link is None:
                    self._kick.set()  # the channel's server has no link yet: reconnect
                elif subscribe:
                    await link.subscribe(*names)
                else:
                    await link.unsubscribe(*names)
            except NETWORK_ERRORS as exc:
                # The link's reader fails too and the next session resubscribes everything.
                log.warning("redis_subscribe_failed", channels=len(names), error=str(exc))

    # -- commands -------------------------------------------------------------------------

    async def publish(
        self, channel: str, data: str, idempotency: Idempotency | None = None
    ) -> StreamPosition:
        with as_broker_error("publish"):
            try:
                reply = await self._publish(**self._publish_args(channel, data, idempotency))
            except ResponseError as exc:
                conflict = publish_script.conflict(exc)
                if conflict is not None:
                    raise conflict from None
                raise
        return publish_script.position(reply)

    async def publish_many(self, items: list[tuple[str, str]]) -> list[StreamPosition]:
        if not items:
            return []
        with as_broker_error("publish"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel, data in items:
                    await self._publish(**self._publish_args(channel, data), client=pipe)
                replies = await pipe.execute()
        return [StreamPosition(int(offset), epoch.decode()) for offset, epoch in replies]

    async def signal(self, channel: str, frame: str) -> None:
        # A bare (S)PUBLISH of "!" + frame: `_parse` tells it from a publication by that byte.
        command = "SPUBLISH" if self.sharded else "PUBLISH"
        with as_broker_error("signal"):
            await self._redis.execute_command(command, pubsub_name(channel), SIGNAL + frame)

    def _publish_args(
        self, channel: str, data: str, idempotency: Idempotency | None = None
    ) -> dict[str, Any]:
        retention = self._policy.for_channel(channel)
        keys, args = publish_script.keys_and_args(
            channel, data, retention, sharded=self.sharded, idempotency=idempotency
        )
        return {"keys": keys, "args": args}

    async def history(self, channel: str, since: int, limit: int) -> History:
        if self._reads is None:
            self._read_counts.asked += 1
            self._read_counts.issued += 1
            return await self._history_one(channel, since, limit)
        return await self._reads.read((channel, since, limit))

    async def _read_key(self, key: ReadKey) -> History:
        return await self._history_one(*key)

    async def _history_one(self, channel: str, since: int, limit: int) -> History:
        ttl = self._policy.for_channel(channel).ttl
        keys, args = history_script.keys_and_args(channel, since, limit, ttl)
        with as_broker_error("history"):
            reply = await self._history(keys=keys, args=args)
        return _history(channel, since, reply)

    async def _history_many(self, reads: list[ReadKey]) -> list[History | BaseException]:
        """Several reads in one pipeline (one round trip); each answers for itself."""
        with as_broker_error("history"):
            async with self._redis.pipeline(transaction=False) as pipe:
                for channel, since, limit in reads:
                    ttl = self._policy.for_channel(channel).ttl
                    keys, args = history_script.keys_and_args(channel, since, limit, ttl)
                    pipe.evalsha(self._history.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
        answers: list[History | BaseException] = []
        for (channel, since, limit), reply in zip(reads, replies, strict=True):
            if isinstance(reply, NoScriptError):  # the server lost its scripts: load it again
                try:
                    answers.append(await self._history_one(channel, since, limit))
                except BrokerError as exc:
                    answers.append(exc)
            elif isinstance(reply, Exception):
                answers.append(BrokerError(f"history failed: {reply}"))
            else:
                answers.append(_history(channel, since, reply))
        return answers

    async def position(self, channel: str) -> StreamPosition:
        return (await self.history(channel, 0, 0)).position

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except NETWORK_ERRORS:
            return False


def _history(channel: str, since: int, raw: Any) -> History:
    """The history script's answer to a read of `channel` after `since`."""
    reply = history_script.parse(raw)
    position = reply.position
    offset, epoch, first = position.offset, position.epoch, reply.first
    publications = [BrokerPublication(channel, data, entry, epoch) for entry, data in reply.entries]
    covered = since == offset or (first is not None and first <= since + 1)
    reaches_head = since == offset or (bool(publications) and publications[-1].offset == offset)
    return History(publications, position, 0 <= since <= offset and covered and reaches_head)


def _parse(channel: str, raw: bytes) -> BrokerPublication | None:
    """`<offset>:<epoch>:<json>` from the publish script, bare JSON from a plain PUBLISH, or
    `!<frame>` from `signal`."""
    try:
        if raw[:1] == b"{":
            if not isinstance(orjson.loads(raw), dict):
                return None
            return BrokerPublication(channel, raw.decode())
        if raw[:2] == b"!{":
            return BrokerPublication(channel, raw[1:].decode(), signal=True)
        offset, _, rest = raw.partition(b":")
        epoch, _, data = rest.partition(b":")
        if not epoch.isalnum() or data[:1] != b"{":
            return None
        return BrokerPublication(channel, data.decode(), int(offset), epoch.decode())
    except ValueError:
        return None


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    _, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}"
