"""The faust app: one agent reads `predictions` and `feedback`, two RocksDB tables keep state.

The agent stays thin: for each input record it decodes it (or dead-letters it),
checks its partition (or reroutes it), calls the join rule, writes the row and its
index entry, and sends what the rule emitted.

Why this is safe (at least once, exactly once in effect downstream):
1. Each row and index entry is written to its partition's RocksDB database and its
   changelog record is handed to the outbox (`streams.worker.tables`) before the records
   the rule emitted are handed to the same outbox (`streams.worker.outbox`). All of this
   happens before the agent asks faust for the next event, which is when faust
   counts this one as acknowledged.
2. Before faust commits any offset it calls the sensor `FlushBeforeCommit`, which
   waits until Kafka has every record in the outbox (`Outbox.flush`); faust computes
   the offsets to commit right after, from the events acknowledged by then. So a
   committed offset means its changelog and output records are in Kafka.
3. A crash before that makes the worker read the inputs again; the join rules
   recognise a replay by its source offset and emit the same records again, with
   the same ids (see `streams.worker.join`). A record Kafka refuses for good stops the
   worker before the commit, with the same effect.

Misplaced records. The table lives on the partition of the event being processed,
so a prediction and its feedback must sit on the same partition number: the one
murmur2 of the join key gives (Java clients, aiokafka, our SDK). A record another
client put elsewhere is sent on, unchanged but for a header, to the partition its
key hashes to, and joined when it arrives there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from functools import partial
from typing import Any, NoReturn

import faust

from streams.clock import Clock, SystemClock
from streams.kafka_config import faust_broker_options, librdkafka_config
from streams.settings import Settings
from streams.topics import DEADLETTER, FEEDBACK, FEEDBACK_STATS, JOINED, PREDICTIONS, UNMATCHED
from streams.worker import feedback_stats, rebalance
from streams.worker.expiry import SWEEP_INTERVAL_SECONDS, Sweeper
from streams.worker.metrics import Metrics
from streams.worker.outbox import DeliveryFailed, Outbox
from streams.worker.processing import Outgoing, Processor
from streams.worker.state import PENDING_KEY, pending_count
from streams.worker.tables import Tables, partition_db
from streams.worker.web import install_pages

log = logging.getLogger(__name__)

RAW: dict[str, Any] = {
    "key_type": bytes,
    "value_type": bytes,
    "key_serializer": "raw",
    "value_serializer": "raw",
}
TABLE: dict[str, Any] = {"key_type": bytes, "value_type": bytes}  # bytes -> the raw serializer
# Per partition database; faust's defaults (2 GiB cache, 3 x 64 MiB buffers) would
# reserve gigabytes across 2 tables x 8 partitions.
STATE_OPTIONS = {
    "block_cache_size": 32 * 1024**2,
    "write_buffer_size": 16 * 1024**2,
    "max_write_buffer_number": 2,
}
# Changelogs are compacted: the latest row per key survives, deleted rows (expired
# predictions, timed-out feedback) leave as tombstones, which compaction removes a day
# later. Hour-long segments let compaction reach rows within the hour, instead of
# waiting for a 7-day segment to close; `max.compaction.lag.ms` makes it come within a
# day even when little else changed, so an expired prediction's inputs and outputs
# leave the changelog within about a day of its expiry (the input topics keep records
# a day past the longest retention).
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(3_600_000),
    "delete.retention.ms": str(86_400_000),
    "max.compaction.lag.ms": str(86_400_000),
    "min.cleanable.dirty.ratio": "0.2",
}
DUE_OPTIONS = {
    "block_cache_size": 8 * 1024**2,
    "write_buffer_size": 4 * 1024**2,
    "max_write_buffer_number": 2,
}
# A crashed fetcher stops consumption while the process lives on; exit so a
# supervisor restarts the worker (the restart is as safe as a kill, see above).
WATCHDOG_SECONDS = 2.0
CRASH_EXIT_STATUS = 70


def faust_app(settings: Settings) -> faust.App:
    """The worker's faust app as configured from `settings` (no agents, tables or pages yet)."""
    return faust.App(
        settings.app_id,
        **faust_broker_options(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
        web_bind=settings.web_host,
        processing_guarantee=settings.processing_guarantee,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=True,
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        web_in_thread=False,
        # faust reads unprefixed variables (WEB_PORT, BROKER_URL, ...) over these
        # arguments; the worker is configured by STREAMS_* alone.
        env={},
    )


class FlushBeforeCommit(faust.Sensor):
    """A faust sensor: before any offset commit, everything in the outbox must be in Kafka."""

    def __init__(self, join_app: JoinApp) -> None:
        super().__init__()
        self.join_app = join_app

    def on_commit_initiated(self, consumer: Any) -> Any:
        """Called by faust right before it picks the offsets to commit."""
        self.join_app.flush_before_commit()
        return None


class JoinApp:
    """The faust app, its topics, tables, agent, sweep and web pages."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        self.metrics = Metrics()
        self.app = faust_app(settings)
        self.topic_names = {name: settings.topic(name) for name in (PREDICTIONS, FEEDBACK)}
        self.kind_of = {full: short for short, full in self.topic_names.items()}
        self.inputs = self.app.topic(*self.topic_names.values(), **RAW)
        self.output_topics = {
            name: settings.topic(name) for name in (JOINED, UNMATCHED, DEADLETTER)
        }
        tables = {
            "partitions": settings.partitions,
            "extra_topic_configs": CHANGELOG_CONFIG,
            **TABLE,
        }
        self.state = self.app.Table("state", options=STATE_OPTIONS, **tables)
        self.due = self.app.Table("due", options=DUE_OPTIONS, **tables)
        self.outbox = Outbox(librdkafka_config(settings))
        self.tables = Tables(self.state, self.due, self.outbox)
        self.stats_topic = settings.topic(FEEDBACK_STATS)
        self.processor = Processor(settings, self.clock, self.metrics, self.tables, self.kind_of)
        self.app.sensors.add(FlushBeforeCommit(self))
        self.app.on_partitions_revoked.connect(partial(rebalance.on_partitions_revoked, self))
        self.app.on_partitions_assigned.connect(partial(rebalance.on_partitions_assigned, self))
        # Held by the agent while it reads and writes a row, and by the sweep per chunk.
        self.lock = asyncio.Lock()
        self.sweeper = Sweeper(self)
        self.app.agent(self.inputs, name="join")(self._agent)
        self.app.timer(SWEEP_INTERVAL_SECONDS, name="expiry-sweep")(self.sweeper.sweep)
        self.app.timer(WATCHDOG_SECONDS, name="watchdog")(self._watchdog)
        self._pending_seen = 0
        self.metrics.pending.set_function(self.pending_now)
        install_pages(self)

    # -- the agent ---------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            async with self.lock:
                for out in self.processor.process(event.message):
                    self.send(out)

    def send(self, out: Outgoing) -> None:
        """Hand one record to the outbox."""
        topic = self.topic_names.get(out.topic) or self.output_topics[out.topic]
        self.outbox.send(topic, out.key, out.value, out.partition, out.headers)

    def publish_stats(self) -> None:
        """Hand the aggregate shares changed since the last call to the outbox (`feedback-stats`).

        Called before every commit, so a committed input's aggregates are published;
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

    async def drain(self) -> None:
        """Wait until Kafka has everything sent so far (without blocking the event loop)."""
        try:
            offsets = await self.outbox.drain()
        except DeliveryFailed as error:
            self._stop_on(error)
        self.tables.persist(offsets)

    def flush_before_commit(self) -> None:
        """Block until Kafka has everything sent so far: faust is about to commit offsets."""
        self.publish_stats()
        try:
            offsets = self.outbox.flush()
        except DeliveryFailed as error:
            self._stop_on(error)
        self.tables.persist(offsets)

    def _stop_on(self, error: DeliveryFailed) -> NoReturn:
        # Without acknowledging or committing anything more: the inputs are read again.
        log.critical("delivery_failed exiting=%d error=%s", CRASH_EXIT_STATUS, error)
        logging.shutdown()
        os._exit(CRASH_EXIT_STATUS)

    def pending_now(self) -> float:
        """Feedback waiting for its prediction in this worker's partitions (their stored counts).

        During a rebalance, the last count read: the partitions are being handed over.
        """
        app: Any = self.app
        if not app.rebalancing and self.recovered():
            self._pending_seen = sum(
                pending_count(partition_db(self.state, p).get(PENDING_KEY))
                for p in self.sweeper.active_partitions()
            )
        return self._pending_seen

    def crashed(self) -> list[str]:
        """What crashed among the app, its consumer and its fetcher, with the reasons."""
        app: Any = self.app
        services = {"app": app, "consumer": app.consumer, "fetcher": app._fetcher}
        return [f"{name}: {s.crash_reason!r}" for name, s in services.items() if s.crashed]

    async def _watchdog(self) -> None:
        crashed = self.crashed()
        if crashed:
            log.critical(
                "worker_crashed exiting=%d reasons=%s", CRASH_EXIT_STATUS, "; ".join(crashed)
            )
            logging.shutdown()
            os._exit(CRASH_EXIT_STATUS)

    def recovered(self) -> bool:
        """True once the tables are rebuilt from their changelogs and the agent runs."""
        manager: Any = self.app.tables  # the recovery service is not in faust's type stubs
        return bool(manager.recovery.completed.is_set())
