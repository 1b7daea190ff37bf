"""The outbox: a batch is acked only once Kafka has its records; faust's bookkeeping follows."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from harness import (
    AFTER_CRASH_TIMEOUT,
    QUICK_FAILOVER,
    RawProducer,
    Start,
    feedback,
    prediction,
    read_topic,
    wait_for,
)
from rocksdict import AccessType, Options, Rdict

from streams.worker.join import joined_id

pytestmark = pytest.mark.integration

CRASH_EXIT_STATUS = 70
FAUST_OFFSET_KEY = b"__faust\x00offset__"


def _set_topic_config(bootstrap: str, topic: str, name: str, value: str | None) -> None:
    entry = ConfigEntry(
        name,
        value,
        incremental_operation=AlterConfigOpType.SET if value else AlterConfigOpType.DELETE,
    )
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[entry])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=30)


def test_a_record_kafka_refuses_stops_the_worker_before_its_input_is_acknowledged(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    """Invariant: a joined record Kafka would not take is joined after a restart, not lost."""
    worker = workers(**QUICK_FAILOVER)  # it exits without leaving its groups
    joined = topic_prefix + "joined"
    _set_topic_config(bootstrap, joined, "max.message.bytes", "200")  # smaller than any join
    # Hex of random bytes: lz4 cannot shrink it below the limit.
    padding = uuid.uuid4().hex * 40
    producer.send("predictions", prediction("loans", "big", inputs={"text": padding}))
    producer.send("feedback", fb := feedback("loans", "big", {"thumbs_up": True}))
    producer.flush()
    assert worker.process is not None
    status = wait_for(lambda: worker.process.poll(), 90, "the worker to stop")  # type: ignore[union-attr]
    assert status == CRASH_EXIT_STATUS, worker.log_tail()
    assert "delivery_failed" in worker.log_path.read_text()
    _set_topic_config(bootstrap, joined, "max.message.bytes", None)
    worker.start()
    out = read_topic(bootstrap, joined, 1, timeout=AFTER_CRASH_TIMEOUT, settle=1.0)
    assert {r.value["id"] for r in out} == {joined_id("loans", "big", fb["event_id"])}
    assert out[0].value["inputs"] == {"text": padding}


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ends-{uuid.uuid4().hex}"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def test_each_database_remembers_its_last_changelog_offset(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    env: dict[str, str],
) -> None:
    """After a clean stop, each RocksDB database's persisted offset is its changelog's last.

    That offset is where a restart on the same data directory resumes reading the
    changelog; the worker writes its tables itself, so it must keep it as faust would.
    """
    worker = workers()
    keys = [f"p{i}" for i in range(60)]
    for key in keys:
        producer.send("predictions", prediction("loans", key))
        producer.send("feedback", feedback("loans", key, {"thumbs_up": True}))
    producer.flush()
    read_topic(bootstrap, topic_prefix + "joined", len(keys), timeout=60)
    assert worker.stop() == 0
    partitions = int(env["STREAMS_PARTITIONS"])
    app_id = env["STREAMS_APP_ID"]
    checked = 0
    for table in ("state", "due"):
        ends = _end_offsets(bootstrap, f"{app_id}-{table}-changelog", partitions)
        assert sum(ends.values()) > 0
        for partition, end in ends.items():
            (path,) = Path(env["STREAMS_DATA_DIR"]).rglob(f"{table}-{partition}.db")
            db = Rdict(str(path), Options(raw_mode=True), access_type=AccessType.read_only())
            try:
                stored = db.get(FAUST_OFFSET_KEY)
            finally:
                db.close()
            if end == 0:
                assert stored is None
            else:
                assert stored is not None and int(stored) == end - 1, (table, partition)
                checked += 1
    assert checked == 2 * partitions  # every database: each partition of both tables
