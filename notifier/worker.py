"""The notifier's two loops: intake (stream batches) and deliveries (due external jobs).

Bounded: at most `concurrency` external sends in flight. On stop it takes nothing new,
finishes what it holds (bounded by a grace period) and hands unstarted jobs back at once."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from archmesh_client.backoff import Backoff
from redis.exceptions import RedisError

from notifier import keys
from notifier.deliveries import Deliverer
from notifier.intake import LEGACY, Entry, Intake
from notifier.ledger import Ledger, Outcome
from notifier.metrics import NotifierMetrics
from notifier.ownership import Everything, Ownership
from notifier.processor import Batch, Processor
from shared.logging import get_logger

log = get_logger(__name__)

_NETWORK = (RedisError, OSError, asyncio.TimeoutError)

# How long an idle partition reader's XREADGROUP waits for a request (an arriving one returns
# it at once): also how long a stop, or a partition handed to another replica, may wait for
# it. 500 ms made every stop take a third of a second; an idle reader now asks Redis ten
# times a second per partition held, a few microseconds of Redis each.
IDLE_BLOCK_MS = 100


@dataclass(slots=True)
class _Flow:
    """A partition reader's batches between rounds: the one planned whose commit is next, and
    the entries held back until it is done (Processor.read)."""

    staged: Batch | None = None
    later: list[Entry] = field(default_factory=list)


class Worker:
    def __init__(
        self,
        intake: Intake,
        processor: Processor,
        deliverer: Deliverer,
        ledger: Ledger,
        metrics: NotifierMetrics,
        *,
        concurrency: int,
        intake_attempts: int,
        claim_every: float,
        batch_size: int = 200,
        ownership: Ownership | None = None,
    ) -> None:
        """`ownership`: which partitions this replica reads (notifier/ownership.py)."""
        self.ownership: Ownership = ownership or Everything()
        self._intake = intake
        self.processor = processor  # what it runs each batch through
        self._deliverer = deliverer
        self._ledger = ledger
        self._metrics = metrics
        self._concurrency = concurrency
        self._intake_attempts = intake_attempts
        self._claim_every = claim_every
        self._batch = batch_size
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._sends: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []
        self._readers: dict[int, asyncio.Task[None]] = {}

    def wake(self) -> None:
        """New jobs are due now: don't wait for the next poll."""
        self._wake.set()

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._intake_loop(), name="notifier-intake"),
            asyncio.create_task(self._delivery_loop(), name="notifier-deliveries"),
            asyncio.create_task(self._renewal_loop(), name="notifier-lease-renewal"),
        ]

    async def stop(self, grace: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._loops, return_exceptions=True), grace)
        if self._sends:
            await asyncio.wait(self._sends, timeout=grace)
        for task in [*self._loops, *self._sends]:
            task.cancel()
        await asyncio.gather(*self._loops, *self._sends, return_exceptions=True)
        with contextlib.suppress(*_NETWORK):
            await self.ownership.release_all()  # the others take them over at once
        log.info("notifier_worker_stopped")

    # -- intake ------------------------------------------------------------------------------

    def _wanted(self) -> set[int]:
        """The partitions to read now; partitioned, the holder of partition 0 also drains the
        untagged `nt:requests` of before (or of producers that do not know the layout)."""
        owned = set(self.ownership.owned())
        if self.ownership.partitioned and 0 in owned:
            owned.add(LEGACY)
        return owned

    async def _intake_loop(self) -> None:
        """One reader per partition held, started and stopped as the leases come and go."""
        tick = min(1.0, max(0.1, self._claim_every / 4))
        try:
            while not self._stopping.is_set():
                try:
                    await self.ownership.tick(self._reading)
                except _NETWORK as exc:
                    log.warning("partition_leases_failed", error=str(exc))
                except Exception:  # the held partitions are still read; try again next tick
                    log.exception("partition_leases_crashed")
                wanted = self._wanted()
                for partition in wanted - set(self._readers):
                    self._readers[partition] = asyncio.create_task(
                        self._reader(partition), name=f"notifier-intake-{partition}"
                    )
                for partition, task in list(self._readers.items()):
                    if task.done():
                        del self._readers[partition]
                await self._pause_stop(tick if self.ownership.partitioned else 0.5)
        finally:
            await asyncio.gather(*self._readers.values(), return_exceptions=True)

    def _reading(self, partition: int) -> bool:
        task = self._readers.get(partition)
        return task is not None and not task.done()

    async def _pause_stop(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _reader(self, partition: int) -> None:
        backoff = Backoff(base=0.1, cap=5.0)
        loop = asyncio.get_running_loop()
        next_claim = 0.0
        group_ready = False
        flow = _Flow()
        # Taken over from another replica: what it left pending is ours now, whatever its age.
        takeover = self.ownership.partitioned
        while not self._stopping.is_set() and partition in self._wanted():
            try:
                if not group_ready:  # again after any Redis error: it may have lost the group
                    await self._intake.ensure_group(partition)
                    group_ready = True
                entries: list[Entry] = []
                if loop.time() >= next_claim:
                    await self._flush(flow)  # nothing of ours in flight while reclaiming
                    entries = await self._intake.reclaim(self._batch, partition, idle=not takeover)
                    takeover = False
                    next_claim = loop.time() + (0 if entries else self._claim_every)
                if not entries:
                    # With a batch in flight or held back, don't wait for more: go on at once.
                    block = None if flow.staged or flow.later else IDLE_BLOCK_MS
                    room = max(1, self._batch - len(flow.later))
                    entries = await self._intake.read(room, block, partition)
                await self._advance(flow, await self._settle(entries))
                backoff.reset()
            except _NETWORK as exc:
                # What it held stays pending (its locks expire): reclaimed, as after a crash.
                flow = _Flow()
                group_ready = False
                await self._unreachable(backoff, exc)
            except Exception:  # the same, logged whole (a client's bug, not a Redis outage)
                log.exception("notifier_intake_crashed", partition=partition)
                flow = _Flow()
                group_ready = False
                await self._pause_stop(backoff.next_delay())
        try:
            if partition in self._wanted():  # stopping: finish what was read
                await self._flush(flow)
            elif flow.staged is not None:  # no longer ours: the next holder reclaims the rest
                await self._commit(flow.staged)
        except _NETWORK as exc:
            log.warning("notifier_batch_left_pending", error=str(exc))

    async def _advance(self, flow: _Flow, entries: list[Entry]) -> None:
        """Read and prepare the next batch, then plan it while the previous one's commit is in
        flight: a partition's wall time nears the larger of the notifier's CPU and Redis's,
        not their sum. The next batch is prepared before that commit is sent, so Redis (which
        runs one command at a time) does not make the preparation wait for the commit; what
        the commit could still change is held back (Processor.read) to the next round."""
        entries = [*flow.later, *entries]
        flow.later = []
        if not entries:
            await self._flush(flow)
            return
        try:
            prepared, flow.later = await self.processor.read(entries, flow.staged)
        except _NETWORK:
            raise
        except Exception:
            log.exception("batch_failed", size=len(entries))
            await self._flush(flow)
            await self._broken(entries)
            return
        staged, flow.staged = flow.staged, None
        inflight = None if staged is None else asyncio.create_task(self._commit(staged))
        batch: Batch | None = None
        try:
            batch = await self.processor.plan(prepared)
        except Exception:  # isolated once the commit in flight is done
            log.exception("batch_failed", size=len(prepared.entries))
        finally:
            if inflight is not None:
                await inflight
        if batch is None:
            await self._broken(prepared.entries)
        flow.staged = batch

    async def _flush(self, flow: _Flow) -> None:
        """Commit the batch in flight, then process what was held back, one after the other."""
        staged, flow.staged = flow.staged, None
        if staged is not None:
            await self._commit(staged)
        later, flow.later = flow.later, []
        await self._process(later)

    async def _commit(self, batch: Batch) -> None:
        try:
            await self.processor.commit(batch)
        except _NETWORK:
            raise
        except Exception:
            log.exception("batch_failed", size=len(batch.entries))
            await self._broken(batch.entries)

    async def _settle(self, entries: list[Entry]) -> list[Entry]:
        """Move the entries of other partitions' users home; the rest are processed here."""
        if keys.layout().partitions == 1 and not keys.layout().tagged:
            return entries
        stray = [e for e in entries if e.partition == LEGACY or e.home() not in (None, e.partition)]
        if not stray:
            return entries
        await self._intake.forward(stray)
        moved = {e.id for e in stray}
        return [e for e in entries if e.id not in moved]

    async def _process(self, entries: list[Entry]) -> None:
        if not entries:
            return
        try:
            await self.processor.process(entries)
        except _NETWORK:
            raise
        except Exception:
            log.exception("batch_failed", size=len(entries))
            await self._broken(entries)

    async def _broken(self, entries: list[Entry]) -> None:
        """A batch failed (not Redis): isolate the entry that breaks it."""
        self._metrics.processing_errors.inc()
        if len(entries) == 1:
            await self._failed(entries[0])
            return
        for entry in entries:
            await self._process([entry])

    async def _failed(self, entry: Entry) -> None:
        """Left pending to be reclaimed, or dead-lettered once it failed too often."""
        attempts = await self._intake.note_failure(entry)
        if attempts < self._intake_attempts:
            return
        outcome = Outcome(partition=entry.partition)
        outcome.dead_letter(entry, f"processing failed {attempts} times (see logs)")
        await self._ledger.commit(outcome)
        self._metrics.dead_letters.inc()

    # -- deliveries --------------------------------------------------------------------------

    async def _delivery_loop(self) -> None:
        """Claim due jobs and start their sends. It outlives any error: a Cluster client that
        re-learns its slot map mid-call has raised others than Redis's (see deliveries.py),
        and a loop that died would leave every due job to wait for another replica."""
        backoff = Backoff(base=0.1, cap=5.0)
        while not self._stopping.is_set():
            try:
                room = self._concurrency - len(self._sends)
                jobs = await self._deliverer.claim(room) if room > 0 else []
                for job in jobs:
                    task = asyncio.create_task(self._deliverer.run(job))
                    self._sends.add(task)
                    task.add_done_callback(self._sent)
                if not jobs:
                    wait = await self._deliverer.next_due()
                    await self._pause(0.5 if wait is None else min(wait, 0.5))
                else:
                    await asyncio.sleep(0)  # let the new sends start before claiming more
                backoff.reset()
            except _NETWORK as exc:
                await self._unreachable(backoff, exc)
            except Exception:
                log.exception("notifier_deliveries_crashed")
                await self._pause(backoff.next_delay())

    async def _renewal_loop(self) -> None:
        """Keep the leases of the jobs in flight a lease ahead, on its own: a claim or a poll
        slowed by a master's outage or a slot migration must not let the lease of a job whose
        message went out (and whose record waits for Redis) run out, or another replica
        sends it again. Stopping, it goes on until the last send is done."""
        every = self._claim_every / 3
        while not self._stopping.is_set() or self._sends:
            try:
                await self._deliverer.renew()
            except Exception as exc:  # renewed again at the next tick
                log.warning("delivery_leases_not_renewed", error=type(exc).__name__)
            if not self._stopping.is_set():
                await self._pause_stop(every)
            elif sends := set(self._sends):
                await asyncio.wait(sends, timeout=every)

    async def _unreachable(self, backoff: Backoff, exc: Exception) -> None:
        delay = backoff.next_delay()
        log.warning("notifier_redis_unreachable", error=str(exc), retry_in=delay)
        await self._pause(delay)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
