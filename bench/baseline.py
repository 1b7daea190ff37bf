"""The benchmark's baseline: the same join as a plain confluent-kafka loop in one process.

What it reuses from the project, so the worker's ratio to it measures the framework
(faust, its tables, changelogs and agent), not the rules: `records.decode_input` (the
same validation), `state.apply_input` (the same keys, rows, join rules and due index
as the worker's agent), and `deadletter.deadletter_record`. What it leaves out: the
changelog topics (its state survives only on the local disk), the expiry sweep
(nothing expires during a benchmark), rerouting (one process owns every partition)
and metrics. Like every contender it writes when it read its first input record to
`STREAMS_DATA_DIR/first-read-ms`.

Commit order, as the worker's: every batch's outputs are handed to the producer; every
second (or 1,000 records) the producer is flushed, then the consumed offsets are
committed, so a committed offset means its outputs are in Kafka.

Run with the worker's STREAMS_* variables: `python -m bench.baseline`.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from types import FrameType
from typing import Any

from confluent_kafka import Consumer, Message, Producer
from rocksdict import Options, Rdict

from bench.proc import mark_first_read
from streams.errors import RecordError
from streams.kafka_config import librdkafka_config
from streams.records import decode_input, dumps, parse_ts
from streams.settings import Settings
from streams.topics import DEADLETTER, FEEDBACK, FEEDBACK_STATS, PREDICTIONS
from streams.worker import feedback_stats
from streams.worker.deadletter import deadletter_record
from streams.worker.state import apply_input

log = logging.getLogger(__name__)

BATCH = 500
COMMIT_EVERY_RECORDS = 1000
COMMIT_EVERY_SECONDS = 1.0
SCHEMA_OF = {PREDICTIONS: "prediction", FEEDBACK: "feedback"}


class BaselineJoin:
    """One consumer, one producer, two rocksdict databases (rows and aggregates, the due index)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kind_of = {settings.topic(kind): kind for kind in (PREDICTIONS, FEEDBACK)}
        self.pending_ttl_ms = int(settings.pending_ttl.total_seconds() * 1000)
        self.expired_memory_ms = int(settings.expired_memory.total_seconds() * 1000)
        self.consumer = Consumer(
            {
                **librdkafka_config(settings),
                "group.id": settings.app_id,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            }
        )
        self.producer = Producer(
            {
                **librdkafka_config(settings),
                "partitioner": "murmur2_random",  # one join_key, one partition of joined
                "enable.idempotence": True,
                "linger.ms": 2,
                "compression.type": "lz4",
            }
        )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        self.state = Rdict(str(settings.data_dir / "state"), options)
        self.due = Rdict(str(settings.data_dir / "due"), options)
        self.stats_unpublished: dict[tuple[int, bytes], bytes | None] = {}
        self.running = True
        self.first_read_marked = False

    def run(self) -> None:
        """Consume, join and produce until SIGTERM/SIGINT; then flush, commit and close."""
        self.consumer.subscribe(list(self.kind_of))
        uncommitted, last_commit = 0, time.monotonic()
        try:
            while self.running:
                # consume() alone would wait out its timeout for a full batch.
                first = self.consumer.poll(0.05)
                messages = [] if first is None else [first, *self.consumer.consume(BATCH - 1, 0)]
                if messages and not self.first_read_marked:
                    mark_first_read(self.settings.data_dir)
                    self.first_read_marked = True
                for message in messages:
                    if message.error() is None:
                        self.process(message)
                uncommitted += len(messages)
                self.producer.poll(0)
                if uncommitted and (
                    uncommitted >= COMMIT_EVERY_RECORDS
                    or time.monotonic() - last_commit >= COMMIT_EVERY_SECONDS
                ):
                    self.commit()
                    uncommitted, last_commit = 0, time.monotonic()
            self.commit()
        finally:
            self.consumer.close()
            self.state.close()
            self.due.close()

    def commit(self) -> None:
        """Flush the outputs, then commit what was consumed: never an offset before its output."""
        now = time.time_ns() // 1_000_000
        for (partition, key), raw in self.stats_unpublished.items():
            self.producer.produce(
                self.settings.topic(FEEDBACK_STATS),
                feedback_stats.stats_value(key, raw, partition, now),
                feedback_stats.published_key(key, partition),
            )
        self.stats_unpublished.clear()
        self.producer.flush(30)
        try:
            self.consumer.commit(asynchronous=False)
        except Exception as error:  # nothing consumed yet: librdkafka says "no offset"
            log.debug("commit_skipped error=%s", error)

    def process(self, message: Message[Any, Any]) -> None:
        """Decode one input, apply its rule, store the row and index entry, produce the emits."""
        topic = message.topic() or ""
        kind = self.kind_of[topic]
        now = time.time_ns() // 1_000_000
        kafka_ts = message.timestamp()[1]
        key, value = message.key(), message.value()
        try:
            record = decode_input(SCHEMA_OF[kind], key, value, self.settings.max_record_bytes)
            event_ts = parse_ts(record["timestamp"]) if record.get("timestamp") else kafka_ts
        except (RecordError, ValueError) as error:
            failure = (
                error
                if isinstance(error, RecordError)
                else RecordError("schema_violation", f"timestamp: {error}")
            )
            dead = deadletter_record(
                failure,
                topic=topic,
                partition=message.partition() or 0,
                offset=message.offset() or 0,
                timestamp_ms=kafka_ts,
                key=key,
                value=value,
                now_ms=now,
            )
            self.producer.produce(self.settings.topic(DEADLETTER), dumps(dead), key)
            return
        retention = self.settings.retention_for(record["application"]).total_seconds()
        result, _, moved = apply_input(
            self.state,
            self.due,
            record,
            is_prediction=kind == PREDICTIONS,
            event_ts=event_ts,
            src=f"{kind[0]}{message.partition()}:{message.offset()}",
            now=now,
            retention_ms=int(retention * 1000),
            pending_ttl_ms=self.pending_ttl_ms,
            expired_memory_ms=self.expired_memory_ms,
        )
        for emit in result.emits:
            self.producer.produce(self.settings.topic(emit.topic), dumps(emit.record), key)
        for stats_key, share in moved.items():
            self.stats_unpublished[(message.partition() or 0, stats_key)] = share

    def stop(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: finish the current batch, then stop."""
        self.running = False


def main() -> int:
    """Run the baseline with the settings from STREAMS_* variables."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    baseline = BaselineJoin(Settings.from_env())
    signal.signal(signal.SIGTERM, baseline.stop)
    signal.signal(signal.SIGINT, baseline.stop)
    log.info("baseline_started app_id=%s", baseline.settings.app_id)
    baseline.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
