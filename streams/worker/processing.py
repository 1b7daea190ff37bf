"""Per-record processing: decode an input, check its partition, apply the join rule.

`Processor.process` turns one input record (a confluent-kafka `Message`) into the
records to send, in order:
a dead letter for a record that cannot be read, the record itself back to the right
partition for a misplaced one, or what the join rule emitted. It also moves the
metrics and remembers the aggregate shares the input changed until they are published.
An unexpected error dead-letters the record (`processing_error`): a bug must not stop
the partition.
"""

from __future__ import annotations

import logging
import struct
from functools import cache
from typing import Any, NamedTuple

from streams.clock import Clock
from streams.errors import RecordError
from streams.records import decode_input, dumps, parse_ts
from streams.settings import Settings
from streams.topics import DEADLETTER, FEEDBACK, JOINED, PREDICTIONS
from streams.worker import join
from streams.worker.deadletter import deadletter_record
from streams.worker.metrics import OUTCOMES, Metrics
from streams.worker.state import apply_input
from streams.worker.tables import Tables

log = logging.getLogger(__name__)

REROUTED_HEADER = "streams-rerouted-from"
SCHEMA_OF = {PREDICTIONS: "prediction", FEEDBACK: "feedback"}


class Outgoing(NamedTuple):
    """One record to send: to an output topic, or back to an input topic's right partition."""

    topic: str
    key: bytes | None
    value: bytes
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None


_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


@cache
def _words(count: int) -> struct.Struct:
    return struct.Struct(f"<{count}I")


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 of `data` (Java clients' `Utils.murmur2`), as an unsigned 32-bit int.

    The same value as aiokafka's, in half the time: the words are unpacked at once.
    """
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    for k in _words(words).unpack_from(data):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra:
        base = words << 2
        if extra == 3:
            h ^= data[base + 2] << 16
        if extra >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition murmur2 gives a key, as Java clients and aiokafka compute it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Processor:
    """Applies input records to the tables; knows nothing of faust's streams."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
        tables: Tables,
        kind_of: dict[str, str],
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.tables = tables
        self.kind_of = kind_of  # full input topic name -> predictions | feedback
        self.expired_memory_ms = int(settings.expired_memory.total_seconds() * 1000)
        self.pending_ttl_ms = int(settings.pending_ttl.total_seconds() * 1000)
        # The metrics' children, looked up once: `labels()` costs more than the increment.
        self.records_in = {k: metrics.records_in.labels(k) for k in (PREDICTIONS, FEEDBACK)}
        self.outcome = {
            (k, o): metrics.outcomes.labels(k, o) for k in (PREDICTIONS, FEEDBACK) for o in OUTCOMES
        }
        self.joined_by = {
            PREDICTIONS: metrics.joined.labels("prediction"),
            FEEDBACK: metrics.joined.labels("feedback"),
        }
        # (partition, share key in `state`) -> the share as last written, until published.
        self.stats_unpublished: dict[tuple[int, bytes], bytes | None] = {}

    def process(self, message: Any) -> list[Outgoing]:
        """Handle one input record; return the records to send, in order."""
        kind = self.kind_of[message.topic()]
        self.records_in[kind].inc()
        now = self.clock.now_ms()
        kafka_ts = message.timestamp()[1]
        if kafka_ts <= 0:
            kafka_ts = now
        key, value = message.key(), message.value()
        try:
            record = decode_input(SCHEMA_OF[kind], key, value, self.settings.max_record_bytes)
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
        partition = message.partition()
        expected = partition_for(key, self.settings.partitions)
        if partition != expected:
            self.outcome[(kind, "rerouted")].inc()
            log.info(
                "rerouted topic=%s partition=%d offset=%d to=%d",
                message.topic(),
                partition,
                message.offset(),
                expected,
            )
            origin = f"{message.topic()}/{partition}/{message.offset()}".encode()
            return [Outgoing(kind, key, value, expected, [(REROUTED_HEADER, origin)])]
        try:
            return self._apply(kind, record, message, event_ts, now, kafka_ts)
        except Exception as error:  # a bug must not stop the partition: dead-letter it
            log.exception(
                "processing_error topic=%s partition=%d offset=%d",
                message.topic(),
                partition,
                message.offset(),
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
        partition = message.partition()
        tables = self.tables.partition(partition)
        result, waiting_before, moved = apply_input(
            tables.state,
            tables.due,
            record,
            is_prediction=kind == PREDICTIONS,
            event_ts=event_ts,
            src=f"{kind[0]}{partition}:{message.offset()}",
            now=now,
            retention_ms=int(retention * 1000),
            pending_ttl_ms=self.pending_ttl_ms,
            expired_memory_ms=self.expired_memory_ms,
        )
        self._count(kind, result, waiting_before, now, kafka_ts)
        if result.replay:
            log.debug(
                "replayed topic=%s partition=%d offset=%d outcome=%s emits=%d",
                message.topic(),
                partition,
                message.offset(),
                result.outcome,
                len(result.emits),
            )
        for key, share in moved.items():
            self.stats_unpublished[(partition, key)] = share
        join_key = message.key()
        return [Outgoing(emit.topic, join_key, dumps(emit.record)) for emit in result.emits]

    def _count(
        self, kind: str, result: join.Result, waiting_before: int, now: int, kafka_ts: int
    ) -> None:
        m = self.metrics
        self.outcome[(kind, result.outcome)].inc()
        if result.replay:
            m.replays.inc()
        for emit in result.emits:
            if emit.topic == JOINED:
                self.joined_by[kind].inc()
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
        self.outcome[(kind, "deadletter")].inc()
        self.metrics.deadletter.labels(kind, error.reason).inc()
        log.info(
            "deadletter topic=%s partition=%d offset=%d reason=%s",
            message.topic(),
            message.partition(),
            message.offset(),
            error.reason,
        )
        record = deadletter_record(
            error,
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
            timestamp_ms=kafka_ts,
            key=message.key(),
            value=message.value(),
            now_ms=now,
        )
        return Outgoing(DEADLETTER, message.key(), dumps(record))
