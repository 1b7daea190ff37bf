"""The worker: a faust app whose reader task applies batches of input records from its own consumer.

Who does what:
- The reader (a faust task, `_read`) takes whatever input records have arrived from
  the worker's confluent-kafka consumer (`streams.worker.consumer`), up to `BATCH`; when
  nothing came it sleeps a few milliseconds (longer the longer it stays idle, at most
  `IDLE_SLEEP_MAX`), so light traffic is joined at once, never held for a batch to fill.
- It hands each batch, as one event, to the join agent (a faust agent on a channel of
  its own, `BatchChannel`) and waits until the agent has applied it (`apply`): for each
  record, decode it (or dead-letter it), check its partition (or reroute it), call the
  join rule, write the row and its index entry to the partition's tables, and hand what
  the rule emitted to the producer (`streams.worker.processing`); at the end of the
  batch, the changelog records of what it wrote (`streams.worker.tables`). The channel
  is not faust's flow-controlled one: faust suspends and clears those queues when its
  own consumer group rebalances, and a batch dropped or held there left the reader
  waiting (a hung rebalance, seen in tests/worker/test_rebalance.py); this one holds
  the one batch in flight whatever faust's group does.
- The reader then begins a commit when one is due (`streams.worker.checkpoint`): it
  cuts what was applied so far, and the commit thread waits for Kafka to have it,
  commits the offsets (or the transaction) and persists, while the reader reads and
  applies the next batches. Nothing blocking is called on the reader's path: the
  reader waits only while an aborted transaction is rewound, or while a commit under
  way has many inputs behind it.
- faust runs the app: the reader task, the join agent, the web pages (`streams.worker.web`), the
  expiry sweep and the watchdog timers, the lifecycle (SIGTERM). Its own consumer reads
  nothing but its leader topic; it owns no table.

One lock orders everything that touches the tables: the reader holds it from a read
until the agent has applied the batch, the sweep per chunk. So rebalance callbacks, which run
inside the read (`streams.worker.rebalance`), always see whole batches and whole
chunks, and so does a commit's cut (it happens between batches, on the event loop).

Misplaced records. The tables are partitioned like the inputs, so a prediction and its
feedback must sit on the same partition number: the one murmur2 of the join key gives
(Java clients, aiokafka, our SDK). A record another client put elsewhere is sent on,
unchanged but for a header, to the partition its key hashes to, and joined there.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
from dataclasses import dataclass
from typing import Any, NoReturn

import faust
from confluent_kafka import KafkaException

from streams.clock import Clock, SystemClock
from streams.kafka_config import faust_broker_options, librdkafka_config
from streams.settings import Settings
from streams.topics import DEADLETTER, FEEDBACK, FEEDBACK_STATS, JOINED, PREDICTIONS, UNMATCHED
from streams.worker import feedback_stats
from streams.worker.checkpoint import Checkpoint
from streams.worker.consumer import InputConsumer, faust_group_timing
from streams.worker.expiry import SWEEP_INTERVAL_SECONDS, Sweeper, WorkerStore
from streams.worker.metrics import Metrics
from streams.worker.outbox import DeliveryFailed, Outbox
from streams.worker.processing import Outgoing, Processor
from streams.worker.rebalance import Partitions
from streams.worker.state import PENDING_KEY, pending_count
from streams.worker.tables import Tables
from streams.worker.web import install_pages

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
BATCH = 500  # input records per batch, at most
IDLE_SLEEP_MIN = 0.001  # seconds; doubled while nothing comes, up to the max
IDLE_SLEEP_MAX = 0.008
# A crashed service stops the work while the process lives on; exit so a supervisor
# restarts the worker (the restart is as safe as a kill, see streams.worker.checkpoint).
WATCHDOG_SECONDS = 2.0
CRASH_EXIT_STATUS = 70


@dataclass(eq=False)
class Batch:
    """One event of the join agent: the input records read at once, and when they are applied."""

    messages: list[Any]
    done: asyncio.Future[None]


class BatchChannel(faust.Channel[Batch]):
    """The join agent's channel: faust's flow control neither holds nor clears it.

    faust's channels put through a queue that waits while faust's own consumer group
    rebalances and is cleared when it resumes (an event in flight is lost). The reader
    hands over one batch at a time and waits until it is applied, so this queue holds
    at most one and `put` never waits.
    """

    @property
    def queue(self) -> Any:
        """The subscriber's queue, made on first use (as faust's own)."""
        if self._queue is None:
            self._queue = self.app.FlowControlQueue(maxsize=1, clear_on_resume=False)
        return self._queue

    async def put(self, value: Any) -> None:
        """Hand `value` to the agent's stream."""
        subscribers = (self._root or self)._subscribers
        if not subscribers:
            raise RuntimeError("the join agent is not running")
        for subscriber in subscribers:
            subscriber.queue.put_nowait(value)

    async def subscribed(self) -> None:
        """Return once the agent's stream reads from this channel (after faust starts it)."""
        while not (self._root or self)._subscribers:
            await asyncio.sleep(0.01)


def faust_app(settings: Settings) -> faust.App:
    """The worker's faust app as configured from `settings` (no agents or pages yet)."""
    return faust.App(
        settings.app_id,
        **faust_broker_options(settings),
        **faust_group_timing(settings),
        store="memory://",
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=True,
        producer_acks=-1,
        web_in_thread=False,
        # faust reads unprefixed variables (WEB_PORT, BROKER_URL, ...) over these
        # arguments; the worker is configured by STREAMS_* alone.
        env={},
    )


def transactional_id(settings: Settings) -> str:
    """The producer's transactional id: stable per worker (its data directory).

    A worker restarted on its data directory takes the same id, which fences the
    producer of its previous life and aborts that one's open transaction at once.
    """
    where = hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:16]
    return f"{settings.app_id}-{where}"


class JoinApp:
    """The faust app, its consumer, tables, reader, sweep and web pages."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.connection = librdkafka_config(settings)  # address and security, every client
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self.app = faust_app(settings)
        self.topic_names = {name: settings.topic(name) for name in (PREDICTIONS, FEEDBACK)}
        self.kind_of = {full: short for short, full in self.topic_names.items()}
        self.output_topics = {
            name: settings.topic(name) for name in (JOINED, UNMATCHED, DEADLETTER)
        }
        self.stats_topic = settings.topic(FEEDBACK_STATS)
        exactly_once = settings.processing_guarantee == "exactly_once"
        self.outbox = Outbox(
            self.connection,
            transactional_id=transactional_id(settings) if exactly_once else None,
        )
        self.tables = Tables(settings.data_dir, settings.app_id, self.outbox)
        self.processor = Processor(settings, self.clock, self.metrics, self.tables, self.kind_of)
        self.expired_memory_ms = self.processor.expired_memory_ms
        self.inputs = InputConsumer(settings, self.kind_of, self.metrics)
        self.checkpoint = Checkpoint(
            self.outbox,
            self.tables,
            self.inputs,
            self.publish_stats,
            self.discard_stats,
            self.stop_on,
        )
        self.partitions = Partitions(self)
        self.lock = asyncio.Lock()
        self.sweeper = Sweeper(self)
        self.checkpoint.on_reset.append(self.sweeper.forget_floors)
        self.checkpoint.reloader = self.partitions
        self.batches = BatchChannel(self.app, maxsize=1)
        self.app.agent(self.batches, name="streams.worker.join")(self._join)
        self.app.task(self._read)
        self.app.timer(SWEEP_INTERVAL_SECONDS, name="expiry-sweep")(self.sweeper.sweep)
        self.app.timer(WATCHDOG_SECONDS, name="watchdog")(self._watchdog)
        self.app.on_before_shutdown.connect(self._on_shutdown)
        self.running = False
        self.stopping = False
        self.reader_crash: str | None = None
        self._pending_seen = 0
        self.metrics.pending.set_function(self.pending_now)
        install_pages(self)

    # -- the reader ---------------------------------------------------------------

    async def _read(self) -> None:
        try:
            await self._read_batches()
        except Exception as error:
            log.exception("reader_crashed")
            self.reader_crash = repr(error)

    async def _join(self, batches: Any) -> None:
        """The join agent: apply each batch the reader hands over (`apply`)."""
        async for batch in batches:
            if batch.done.cancelled():
                continue  # the reader stopped waiting for it (shutdown): not applied
            try:
                self.apply(batch.messages)
            except Exception as error:  # the reader raises it where it waits
                batch.done.set_exception(error)
            else:
                batch.done.set_result(None)

    async def _hand_over(self, messages: list[Any]) -> None:
        # One event of the join agent; back once it is applied, or with what it raised.
        batch = Batch(messages, asyncio.get_running_loop().create_future())
        await self.batches.put(batch)
        await batch.done

    async def _read_batches(self) -> None:
        await self.batches.subscribed()
        p = self.partitions
        self.inputs.subscribe(p.on_assign, p.on_revoke, p.on_lost)
        self.running = True
        # What exists by now (faust, the libraries, the app) lives as long as the process:
        # keep it out of the cyclic collector's full collections, which otherwise walk
        # it all and stopped the reader for 50-100 ms a few times a minute under load.
        gc.freeze()
        idle = IDLE_SLEEP_MIN
        checkpoint = self.checkpoint
        while not self.stopping:
            waiting = checkpoint.blocked()
            if waiting is not None:
                await waiting
                continue
            async with self.lock:
                if self.stopping:
                    return
                try:
                    messages = self.inputs.read(BATCH)
                    if messages:
                        await self._hand_over(messages)
                    elif self.inputs.stranded():  # it would never read again
                        self.inputs.renew()
                    self.outbox.poll()  # serve the delivery reports
                    if checkpoint.due():
                        checkpoint.start()  # the cut; the rest runs beside the reader
                except DeliveryFailed as error:
                    self.stop_on(f"delivery_failed error={error}")
                except KafkaException as error:  # fenced, or the producer failed for good
                    self.stop_on(f"commit_failed error={error}")
            if messages:
                idle = IDLE_SLEEP_MIN
                await asyncio.sleep(0)  # let the web pages and timers in
            else:
                await asyncio.sleep(idle)
                idle = min(idle * 2, IDLE_SLEEP_MAX)

    def apply(self, messages: list[Any]) -> None:
        """Apply a batch of input records to the tables and send what they produce."""
        ready = self.partitions.ready
        process = self.processor.process
        send = self.send
        mark_applied = self.inputs.mark_applied
        applied = 0
        for message in messages:
            if message.error() is not None:
                log.warning("consume_error error=%s", message.error())
                continue
            partition = message.partition()
            if partition not in ready:
                continue  # revoked meanwhile, or restoring: its new owner reads it
            for out in process(message):
                send(out)
            mark_applied(message.topic(), partition, message.offset())
            applied += 1
        self.tables.log_changes()
        self.processor.flush_metrics()
        self.checkpoint.applied += applied
        self.metrics.batch_size.observe(applied)

    def send(self, out: Outgoing) -> None:
        """Hand one record to the outbox."""
        topic = self.topic_names.get(out.topic) or self.output_topics[out.topic]
        self.outbox.send(topic, out.key, out.value, out.partition, out.headers)

    def publish_stats(self) -> None:
        """Hand the aggregate shares changed since the last call to the outbox (`feedback-stats`).

        Called at every commit, so a committed input's aggregates are published;
        a replayed input marks its aggregates again (`state.apply_input`).
        """
        processor = self.processor
        if not processor.stats_unpublished:
            return
        unpublished, processor.stats_unpublished = processor.stats_unpublished, {}
        now = self.clock.now_ms()
        for (partition, key), raw in unpublished.items():
            self.outbox.send(
                self.stats_topic,
                feedback_stats.published_key(key, partition),
                feedback_stats.stats_value(key, raw, partition, now),
            )

    def discard_stats(self) -> None:
        """Forget every changed share not yet published (an aborted transaction moved them)."""
        self.processor.stats_unpublished = {}

    # -- what the sweep and the pages need ---------------------------------------

    def active_partitions(self) -> list[int]:
        """Input partitions this worker owns and has restored."""
        return sorted(self.partitions.ready)

    def sweep_store(self, partition: int) -> WorkerStore:
        """One active partition's tables."""
        return self.tables.partition(partition)

    async def commit(self) -> None:
        """Commit everything applied so far; return once it is done (no lock needed)."""
        await self.checkpoint.commit()  # a commit that fails stops the worker itself

    async def drain(self) -> None:
        """Wait until Kafka has everything sent so far (without blocking the event loop)."""
        try:
            await self.outbox.drain()
        except DeliveryFailed as error:
            self.stop_on(f"delivery_failed error={error}")

    def stop_on(self, reason: str) -> NoReturn:
        """Exit at once, committing nothing more: the inputs are read again after a restart."""
        log.critical("%s exiting=%d", reason, CRASH_EXIT_STATUS)
        logging.shutdown()
        os._exit(CRASH_EXIT_STATUS)

    def pending_now(self) -> float:
        """Feedback waiting for its prediction in this worker's partitions (their stored counts).

        During a rebalance, the last count read: the partitions are being handed over.
        """
        if self.partitions.settled():
            self._pending_seen = sum(
                pending_count(self.tables.partition(p).state.get(PENDING_KEY))
                for p in self.partitions.ready
            )
        return self._pending_seen

    def crashed(self) -> list[str]:
        """What crashed: the app, its consumer and fetcher, or the reader; with the reasons."""
        app: Any = self.app
        services = {"app": app, "consumer": app.consumer, "fetcher": app._fetcher}
        reasons = [f"{name}: {s.crash_reason!r}" for name, s in services.items() if s.crashed]
        if self.reader_crash is not None:
            reasons.append(f"reader: {self.reader_crash}")
        return reasons

    async def _watchdog(self) -> None:
        crashed = self.crashed()
        if crashed:
            self.stop_on(f"worker_crashed reasons={'; '.join(crashed)}")

    def recovered(self) -> bool:
        """True once the worker reads its inputs and every partition it owns is restored."""
        return self.running and not self.stopping and self.partitions.settled()

    async def _on_shutdown(self, app: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # SIGTERM: finish the batch under way, commit, leave the group at once.
        self.stopping = True
        async with self.lock:
            try:
                self.partitions.close()
                await self.checkpoint.commit()  # the one under way, then the rest
                log.info("released partitions=%s reason=shutdown", sorted(self.partitions.ready))
            finally:
                self.partitions.ready.clear()  # nothing left to commit when close() revokes
                self.inputs.close()
                self.tables.close_all()
        log.info("worker_stopped")
