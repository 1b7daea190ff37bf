"""The benchmark's reference: the join as a lean durable loop in one process.

What Python can do on one core for this job (BENCHMARK.md, contender 2). No project
code (it imports nothing from `streams`) and no faust: a confluent-kafka consumer read
in batches, one rocksdict database written with one `WriteBatch` per batch, one
changelog record per row written (a compacted topic, the row's input partition),
orjson, one idempotent producer.

Configured like the worker: STREAMS_BOOTSTRAP_SERVERS, STREAMS_TOPIC_PREFIX (reads
`<prefix>predictions` and `<prefix>feedback`, writes `<prefix>joined`), STREAMS_APP_ID
(consumer group; the changelog is `<app id>-lean-rows-changelog`), STREAMS_DATA_DIR.

The join, per (application, join_key) row: a prediction is stored (a retry with the same
event_id changes nothing) and joins the feedback waiting for it; a feedback joins the
stored prediction with every feedback so far merged (`feedback_revision` counts them), or
waits for its prediction; a feedback event_id seen before is ignored. Left out: expiry,
the pending TTL, inline feedback, dead letters (a record that is not JSON is skipped),
restoring from the changelog (a restart reads the local database).

Order per batch, so a committed offset means its outputs and rows are safe: produce the
joined and changelog records, flush the producer, write the batch to RocksDB, commit
the offsets. A crash before the commit replays the batch: its joins are already in Kafka,
and a replayed feedback whose row was written is ignored as a duplicate.

The wall-clock ms of the first input record read goes to `STREAMS_DATA_DIR/first-read-ms`.
Run: `python bench/lean_loop.py` with the variables above.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic  # the admin module does not re-export it for mypy
from rocksdict import Options, Rdict, WriteBatch

JOINED_NAMESPACE = uuid.UUID("6f3c1a5e-9a43-4c1b-8d8e-2b7f0c1d4e21")  # as streams/join.py
BATCH = 500
Row = dict[str, Any]


def rfc3339(ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with milliseconds."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def joined_record(row: Row, now: str) -> dict[str, Any]:
    """The joined/v1 record for the row's latest feedback, every feedback so far merged."""
    pred, feedback = row["p"], row["f"]
    merged: dict[str, Any] = {}
    for _, _, fields in feedback:
        merged.update(fields)
    event_id, feedback_ts, _ = feedback[-1]
    application, key = pred["application"], pred["join_key"]
    return {
        "schema": "joined/v1",
        "id": str(uuid.uuid5(JOINED_NAMESPACE, f"{application}\x00{key}\x00{event_id}")),
        "application": application,
        "join_key": key,
        "version": pred.get("version"),
        "inputs": pred["inputs"],
        "outputs": pred["outputs"],
        "tags": pred.get("tags") or {},
        "prediction_event_id": pred["event_id"],
        "feedback_event_id": event_id,
        "prediction_timestamp": pred["timestamp"],
        "feedback_timestamp": feedback_ts,
        "feedback": merged,
        "feedback_revision": len(feedback),
        "joined_at": now,
    }


class LeanLoop:
    """One consumer, one producer, one rocksdict database and its changelog topic."""

    def __init__(self, env: dict[str, str]) -> None:
        bootstrap = env.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
        prefix = env.get("STREAMS_TOPIC_PREFIX", "")
        app_id = env.get("STREAMS_APP_ID", "streams-lean")
        self.inputs = {f"{prefix}predictions": True, f"{prefix}feedback": False}
        self.joined = f"{prefix}joined"
        self.changelog = f"{app_id}-lean-rows-changelog"
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": app_id,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "partition.assignment.strategy": "range",  # partition p of both topics together
            }
        )
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "partitioner": "murmur2_random",
                "compression.type": "lz4",
                "linger.ms": 2,
            }
        )
        self.make_changelog(bootstrap)
        data_dir = Path(env.get("STREAMS_DATA_DIR", "streams-data"))
        data_dir.mkdir(parents=True, exist_ok=True)
        self.first_read = data_dir / "first-read-ms"
        self.db = Rdict(str(data_dir / "rows"), Options(raw_mode=True))
        self.running = True

    def make_changelog(self, bootstrap: str) -> None:
        """Create the compacted changelog with as many partitions as the inputs, if missing."""
        admin = AdminClient({"bootstrap.servers": bootstrap})
        topic = next(iter(self.inputs))
        partitions = len(admin.list_topics(topic, timeout=30).topics[topic].partitions)
        future = admin.create_topics(
            [NewTopic(self.changelog, partitions, config={"cleanup.policy": "compact"})]
        )[self.changelog]
        try:
            future.result(30)
        except KafkaException as error:
            if error.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: a restart
                raise

    def run(self) -> None:
        """Read, join and write a batch at a time until SIGTERM or SIGINT."""
        self.consumer.subscribe(list(self.inputs))
        try:
            while self.running:
                # consume(n, timeout) waits out its timeout for n records: light traffic
                # would wait for a batch to fill. Wait for one record, then take what is there.
                first = self.consumer.poll(0.05)
                if first is None:
                    continue
                if not self.first_read.exists():
                    partial = self.first_read.with_suffix(".partial")
                    partial.write_text(str(time.time_ns() // 1_000_000))
                    partial.replace(self.first_read)
                self.apply([first, *self.consumer.consume(BATCH - 1, 0)])
        finally:
            self.consumer.close()
            self.db.close()

    def apply(self, messages: list[Any]) -> None:
        """Join one batch, then produce, flush, write RocksDB and commit, in that order."""
        rows: dict[bytes, Row] = {}  # rows this batch read or wrote
        written: dict[bytes, int] = {}  # row key -> input partition, for the changelog
        now = rfc3339(time.time_ns() // 1_000_000)
        for message in messages:
            if message.error() is not None:
                continue
            try:
                record = orjson.loads(message.value())
                row_key = f"{record['application']}\x00{record['join_key']}".encode()
            except (orjson.JSONDecodeError, TypeError, KeyError):
                continue  # the reference keeps no dead letters
            row = rows.get(row_key)
            if row is None:
                stored = self.db.get(row_key)
                row = orjson.loads(stored) if stored is not None else {"p": None, "f": [], "w": []}
                rows[row_key] = row
            if self.inputs[message.topic()]:
                changed = self.on_prediction(row, record, message, now)
            else:
                changed = self.on_feedback(row, record, message, now)
            if changed:
                written[row_key] = message.partition()
        batch = WriteBatch(raw_mode=True)
        for row_key, partition in written.items():
            value = orjson.dumps(rows[row_key])
            batch.put(row_key, value)
            self.producer.produce(self.changelog, value, row_key, partition=partition)
        self.producer.flush()
        self.db.write(batch)
        self.consumer.commit(asynchronous=False)

    def on_prediction(self, row: Row, record: dict[str, Any], message: Any, now: str) -> bool:
        """Store a prediction (not a retry) and join the feedback that waited for it."""
        if row["p"] is not None and row["p"]["event_id"] == record["event_id"]:
            return False
        record.setdefault("timestamp", rfc3339(message.timestamp()[1]))
        record.pop("feedback", None)
        row["p"] = record
        for waiting in row["w"]:
            row["f"].append(waiting)
            self.emit(row, message.key(), now)
        row["w"] = []
        return True

    def on_feedback(self, row: Row, record: dict[str, Any], message: Any, now: str) -> bool:
        """Join a feedback to its stored prediction, or keep it waiting; ignore a duplicate."""
        event_id = record["event_id"]
        if any(entry[0] == event_id for entry in row["f"]) or any(
            entry[0] == event_id for entry in row["w"]
        ):
            return False
        ts = record.get("timestamp") or rfc3339(message.timestamp()[1])
        entry = [event_id, ts, record["feedback"]]
        if row["p"] is None:
            row["w"].append(entry)
        else:
            row["f"].append(entry)
            self.emit(row, message.key(), now)
        return True

    def emit(self, row: Row, key: bytes, now: str) -> None:
        """Produce the joined record for the row's latest feedback."""
        self.producer.produce(self.joined, orjson.dumps(joined_record(row, now)), key)

    def stop(self, signum: int, frame: Any) -> None:
        """Signal handler: finish the batch in hand, then stop."""
        self.running = False


def main() -> int:
    """Run the loop with the STREAMS_* variables of the environment."""
    loop = LeanLoop(dict(os.environ))
    signal.signal(signal.SIGTERM, loop.stop)
    signal.signal(signal.SIGINT, loop.stop)
    print(f"lean_started changelog={loop.changelog}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
