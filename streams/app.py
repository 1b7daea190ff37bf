"""The faust app: one agent reads `predictions` and `feedback`, two RocksDB tables keep state.

The agent stays thin: for each input record it decodes it (or dead-letters it),
checks its partition (or reroutes it), calls the join rule, writes the row and its
index entry, and sends what the rule emitted.

Why this is safe (at least once, exactly once in effect downstream):
1. Each row and index entry is written to its partition's RocksDB database and its
   changelog record is handed to the outbox (`streams.tables`) before the records
   the rule emitted are handed to the same outbox (`streams.outbox`). All of this
   happens before the agent asks faust for the next event, which is when faust
   counts this one as acknowledged.
2. Before faust commits any offset it calls the sensor `FlushBeforeCommit`, which
   waits until Kafka has every record in the outbox (`Outbox.flush`); faust computes
   the offsets to commit right after, from the events acknowledged by then. So a
   committed offset means its changelog and output records are in Kafka.
3. A crash before that makes the worker read the inputs again; the join rules
   recognise a replay by its source offset and emit the same records again, with
   the same ids (see `streams.join`). A record Kafka refuses for good stops the
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
from datetime import UTC, datetime
from functools import partial
from typing import Any, NamedTuple, NoReturn

import faust
from aiokafka.partitioner import murmur2

from streams import feedback_stats, join
from streams.clock import Clock, SystemClock
from streams.deadletter import deadletter_record
from streams.errors import RecordError, StreamsError
from streams.expiry import SWEEP_INTERVAL_SECONDS, Sweeper
from streams.metrics import Metrics
from streams.outbox import DeliveryFailed, Outbox
from streams.records import decode_input, dumps, parse_ts
from streams.settings import Settings
from streams.state import PENDING_KEY, apply_input, pending_count
from streams.stats_query import StatsQuery, format_series, read_feedback_stats
from streams.tables import Tables, partition_db
from streams.topics import DEADLETTER, FEEDBACK, FEEDBACK_STATS, JOINED, PREDICTIONS, UNMATCHED

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
REROUTED_HEADER = "streams-rerouted-from"
# A crashed fetcher stops consumption while the process lives on; exit so a
# supervisor restarts the worker (the restart is as safe as a kill, see above).
WATCHDOG_SECONDS = 2.0
CRASH_EXIT_STATUS = 70
# `GET /stats` reads `feedback-stats` to its end on each request, in a thread.
STATS_PAGE_TIMEOUT = 10.0
SCHEMA_OF = {PREDICTIONS: "prediction", FEEDBACK: "feedback"}


class Outgoing(NamedTuple):
    """One record to send: to an output topic, or back to an input topic's right partition."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


def partition_for(key: bytes, partitions: int) -> int:
    """The partition murmur2 gives a key, as Java clients and aiokafka compute it."""
    return int((murmur2(key) & 0x7FFFFFFF) % partitions)


def faust_app(settings: Settings) -> faust.App:
    """The worker's faust app as configured from `settings` (no agents, tables or pages yet)."""
    return faust.App(
        settings.app_id,
        broker=[f"kafka://{server.strip()}" for server in settings.bootstrap_servers.split(",")],
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_port=settings.web_port,
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
        self.expired_memory_ms = int(settings.expired_memory.total_seconds() * 1000)
        self.pending_ttl_ms = int(settings.pending_ttl.total_seconds() * 1000)
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
        self.outbox = Outbox(settings.bootstrap_servers)
        self.tables = Tables(self.state, self.due, self.outbox)
        self.stats_topic = settings.topic(FEEDBACK_STATS)
        # (partition, share key in `state`) -> the share as last written, until published.
        self.stats_unpublished: dict[tuple[int, bytes], bytes | None] = {}
        self.app.sensors.add(FlushBeforeCommit(self))
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)
        self.app.on_partitions_assigned.connect(self._on_partitions_assigned)
        # Held by the agent while it reads and writes a row, and by the sweep per chunk.
        self.lock = asyncio.Lock()
        self.sweeper = Sweeper(self)
        self.app.agent(self.inputs, name="join")(self._agent)
        self.app.timer(SWEEP_INTERVAL_SECONDS, name="expiry-sweep")(self.sweeper.sweep)
        self.app.timer(WATCHDOG_SECONDS, name="watchdog")(self._watchdog)
        self._pending_seen = 0
        self.metrics.pending.set_function(self.pending_now)
        self._install_pages()

    # -- the agent ---------------------------------------------------------------

    async def _agent(self, stream: Any) -> None:
        async for event in stream.events():
            async with self.lock:
                for out in self.process(event.message):
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
        if not self.stats_unpublished:
            return
        unpublished, self.stats_unpublished = self.stats_unpublished, {}
        now = self.clock.now_ms()
        for (partition, key), raw in unpublished.items():
            self.outbox.send(
                self.stats_topic,
                feedback_stats.published_key(key, partition),
                feedback_stats.stats_value(key, raw, partition, now),
            )

    async def _on_partitions_revoked(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        # The partitions may go to another worker: what this one wrote for them must be
        # in Kafka before it rebuilds them from the changelogs and publishes their shares.
        # Under the lock: a sweep chunk is never half written, and the sweep stops at the
        # next chunk (its partitions are no longer active).
        async with self.lock:
            self.publish_stats()
            await self.drain()

    async def _on_partitions_assigned(
        self, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
    ) -> None:
        consumer: Any = self.app.consumer
        if getattr(consumer, "_streams_rewinds", False):
            return
        seek_to_committed = consumer.perform_seek

        async def perform_seek() -> None:
            await seek_to_committed()
            await self._rewind_uncommitted(consumer)

        consumer.perform_seek = perform_seek
        consumer._streams_rewinds = True

    async def _rewind_uncommitted(self, consumer: Any) -> None:
        """Read input partitions without a committed offset from their first record.

        After recovery faust seeks each partition to its committed offset, but aiokafka
        seeks only where that offset is above 0 (`seek_to_committed`). Records fetched
        while the tables were recovering and dropped when faust suspended the flow are
        then skipped for good: in a new group, the first records of a partition that
        were processed and not committed before a crash were never read again.
        """
        inputs = set(self.topic_names.values())
        tps = [
            tp
            for tp in consumer.assignment()
            if tp.topic in inputs and not consumer._committed_offset.get(tp)
        ]
        if not tps:
            return
        earliest = await consumer.earliest_offsets(*tps)
        for tp in tps:
            offset = earliest.get(tp, 0)
            log.info("rewind topic=%s partition=%d offset=%d", tp.topic, tp.partition, offset)
            await consumer.seek(tp, offset)

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

    def process(self, message: Any) -> list[Outgoing]:
        """Handle one input message; return (output topic, key, value) to send, in order."""
        kind = self.kind_of[message.topic]
        self.metrics.records_in.labels(kind).inc()
        now = self.clock.now_ms()
        kafka_ts = int(message.timestamp * 1000) if message.timestamp else now
        try:
            record = decode_input(
                SCHEMA_OF[kind], message.key, message.value, self.settings.max_record_bytes
            )
            event_ts = parse_ts(record["timestamp"]) if record.get("timestamp") else kafka_ts
        except RecordError as error:
            return [self._deadletter(kind, message, error, kafka_ts, now)]
        except ValueError as error:
            return [
                self._deadletter(
                    kind,
                    message,
                    RecordError("schema_violation", f"timestamp: {error}"),
                    kafka_ts,
                    now,
                )
            ]
        expected = partition_for(message.key, self.settings.partitions)
        if message.partition != expected:
            self.metrics.outcomes.labels(kind, "rerouted").inc()
            log.info(
                "rerouted topic=%s partition=%d offset=%d to=%d",
                message.topic,
                message.partition,
                message.offset,
                expected,
            )
            origin = f"{message.topic}/{message.partition}/{message.offset}".encode()
            return [
                Outgoing(kind, message.key, message.value, expected, [(REROUTED_HEADER, origin)])
            ]
        try:
            return self._apply(kind, record, message, event_ts, now, kafka_ts)
        except Exception as error:  # a bug must not stop the partition: dead-letter it
            log.exception(
                "processing_error topic=%s partition=%d offset=%d",
                message.topic,
                message.partition,
                message.offset,
            )
            failure = RecordError("processing_error", f"{type(error).__name__}: {error}")
            return [self._deadletter(kind, message, failure, kafka_ts, now)]

    def _apply(
        self,
        kind: str,
        record: dict[str, Any],
        message: Any,
        event_ts: int,
        now: int,
        kafka_ts: int,
    ) -> list[Outgoing]:
        retention = self.settings.retention_for(record["application"]).total_seconds()
        state, due = self.tables.partition(message.partition)
        result, waiting_before, moved = apply_input(
            state,
            due,
            record,
            is_prediction=kind == PREDICTIONS,
            event_ts=event_ts,
            src=f"{kind[0]}{message.partition}:{message.offset}",
            now=now,
            retention_ms=int(retention * 1000),
            pending_ttl_ms=self.pending_ttl_ms,
            expired_memory_ms=self.expired_memory_ms,
        )
        self._count(kind, result, waiting_before, now, kafka_ts)
        log.debug(
            "applied topic=%s partition=%d offset=%d outcome=%s replay=%s emits=%d",
            message.topic,
            message.partition,
            message.offset,
            result.outcome,
            result.replay,
            len(result.emits),
        )
        for key, share in moved.items():
            self.stats_unpublished[(message.partition, key)] = share
        join_key = message.key
        return [Outgoing(emit.topic, join_key, dumps(emit.record)) for emit in result.emits]

    def _count(
        self, kind: str, result: join.Result, waiting_before: int, now: int, kafka_ts: int
    ) -> None:
        m = self.metrics
        m.outcomes.labels(kind, result.outcome).inc()
        if result.replay:
            m.replays.inc()
        for emit in result.emits:
            if emit.topic == JOINED:
                m.joined.labels("feedback" if kind == FEEDBACK else "prediction").inc()
                if kind == FEEDBACK:
                    m.join_latency.observe(max(0, now - kafka_ts) / 1000)
            else:
                m.unmatched.labels(emit.record["reason"]).inc()
        if result.replay:
            return
        if kind == PREDICTIONS and waiting_before and result.outcome in ("stored", "expired"):
            outcome = "joined" if result.outcome == "stored" else "unmatched"
            m.pending_resolved.labels(outcome).inc(waiting_before)

    def _deadletter(
        self, kind: str, message: Any, error: RecordError, kafka_ts: int, now: int
    ) -> Outgoing:
        self.metrics.outcomes.labels(kind, "deadletter").inc()
        self.metrics.deadletter.labels(kind, error.reason).inc()
        log.info(
            "deadletter topic=%s partition=%d offset=%d reason=%s",
            message.topic,
            message.partition,
            message.offset,
            error.reason,
        )
        record = deadletter_record(
            error,
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=kafka_ts,
            key=message.key,
            value=message.value,
            now_ms=now,
        )
        return Outgoing(DEADLETTER, message.key, dumps(record))

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

    # -- web ---------------------------------------------------------------------

    def _install_pages(self) -> None:
        metrics = self.metrics
        app = self.app

        @app.page("/health")
        async def health(web: Any, request: Any) -> Any:
            crashed = self.crashed()
            if crashed:
                return web.json({"status": "crashed", "reasons": crashed}, status=503)
            ready = self.recovered() and not app.should_stop
            return web.json({"status": "ok" if ready else "starting"}, status=200 if ready else 503)

        @app.page("/stats")
        async def stats_page(web: Any, request: Any) -> Any:
            try:
                query = StatsQuery.from_params(request.query)
            except ValueError as error:
                return web.json({"error": str(error)}, status=400)
            loop = asyncio.get_running_loop()
            try:
                latest = await loop.run_in_executor(
                    None, partial(read_feedback_stats, self.settings, STATS_PAGE_TIMEOUT)
                )
                series = query.series(latest.records, datetime.now(UTC))
            except StreamsError as error:
                return web.json({"error": str(error)}, status=503)
            except ValueError as error:
                return web.json({"error": str(error)}, status=400)
            if query.format == "json":
                return web.json(series.as_dict())
            return web.text(format_series(series, query.format))

        @app.page("/metrics")
        async def metrics_page(web: Any, request: Any) -> Any:
            # aiohttp refuses a charset here; the exposition format is ASCII.
            return web.bytes(metrics.render(), content_type="text/plain; version=0.0.4")
