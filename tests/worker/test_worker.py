"""The join worker as a user runs it: `streams worker` against the real broker, RocksDB tables."""

from __future__ import annotations

import subprocess
import sys
import uuid
import zlib
from typing import Any

import jsonschema
import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from harness import (
    RawProducer,
    Start,
    by_id,
    feedback,
    key_on_partition,
    metric,
    prediction,
    processing_errors,
    read_topic,
    read_until_ids,
    wait_for,
)

from streams.records import load_schema
from streams.settings import Settings
from streams.topics import create_topics
from streams.worker.join import joined_id
from streams.worker.processing import partition_for

pytestmark = pytest.mark.integration


def check(schema: str, records: list[Any]) -> None:
    validator = jsonschema.Draft202012Validator(load_schema(schema))
    for record in records:
        validator.validate(record.value)


def test_feedback_joins_merges_and_inline_feedback_joins_on_store(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    workers()
    pred = prediction("loans", "k1", version="7", tags={"team": "risk"})
    first = feedback("loans", "k1", {"thumbs_up": True, "note": "fine"})
    second = feedback("loans", "k1", {"thumbs_up": False})
    inline = prediction("loans", "k2", feedback={"correction_accepted": True})
    producer.send("predictions", pred)
    producer.send("predictions", inline)
    producer.flush()
    wait_for(
        lambda: read_topic(bootstrap, topic_prefix + "joined", 1, timeout=2), 30, "the inline join"
    )
    producer.send("feedback", first)
    producer.flush()
    wait_for(
        lambda: len(read_topic(bootstrap, topic_prefix + "joined", 2, timeout=2)) >= 2,
        30,
        "first join",
    )
    producer.send("feedback", second)
    producer.flush()
    out = read_topic(bootstrap, topic_prefix + "joined", 3, settle=1.0)
    check("joined", out)
    records = by_id(out)
    assert len(out) == 3 == len(records)
    one = records[joined_id("loans", "k1", first["event_id"])]
    two = records[joined_id("loans", "k1", second["event_id"])]
    assert one["feedback"] == {"thumbs_up": True, "note": "fine"} and one["feedback_revision"] == 1
    assert two["feedback"] == {"thumbs_up": False, "note": "fine"} and two["feedback_revision"] == 2
    for record in (one, two):
        assert record["inputs"] == pred["inputs"] and record["outputs"] == pred["outputs"]
        assert record["version"] == "7" and record["tags"] == {"team": "risk"}
        assert record["prediction_timestamp"] == pred["timestamp"]
    assert two["feedback_timestamp"] == second["timestamp"]
    assert records[joined_id("loans", "k2", inline["event_id"])]["feedback"] == {
        "correction_accepted": True
    }
    # Rule 9: one join_key, one partition of `joined`, in processing order.
    k1 = [r for r in out if r.value["join_key"] == "k1"]
    assert {r.partition for r in k1} == {partition_for(b"k1", 4)}
    assert [r.value["feedback_revision"] for r in sorted(k1, key=lambda r: r.offset)] == [1, 2]


def test_feedback_before_its_prediction_waits_then_joins_or_times_out(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    worker = workers(STREAMS_PENDING_TTL="4s", STREAMS_RETENTION="6s")
    early = feedback("loans", "late-pred", {"thumbs_up": True})
    orphan = feedback("loans", "never", {"thumbs_up": False})
    producer.send("feedback", early)
    producer.send("feedback", orphan)
    producer.flush()
    wait_for(lambda: metric(worker.metrics(), "streams_pending") == 2, 20, "two pending")
    producer.send("predictions", prediction("loans", "late-pred"))
    producer.flush()
    joined = read_topic(bootstrap, topic_prefix + "joined", 1, settle=0.5)
    assert [r.value["id"] for r in joined] == [joined_id("loans", "late-pred", early["event_id"])]
    unmatched = read_topic(bootstrap, topic_prefix + "unmatched", 1, timeout=30, settle=0.5)
    check("unmatched", unmatched)
    assert [(r.value["reason"], r.value["feedback"]) for r in unmatched] == [
        ("no_prediction", orphan)
    ]
    assert unmatched[0].key == b"never"
    samples = worker.metrics()
    assert metric(samples, "streams_pending_resolved_total", outcome="joined") == 1
    assert metric(samples, "streams_pending_resolved_total", outcome="unmatched") == 1
    # The prediction stored after its feedback still expires on time: its index entry moved.
    wait_for(lambda: metric(worker.metrics(), "streams_expired_total") == 1, 20, "the sweep")


def test_scope_retries_replacements_and_duplicates(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    worker = workers(STREAMS_PENDING_TTL="3s")
    pred = prediction("loans", "common-key")
    producer.send("predictions", pred)
    # A key on the same partition, for a sentinel feedback sent after what must not appear.
    near = key_on_partition(partition_for(b"common-key", 4), 4)
    producer.send("predictions", prediction("loans", near))
    producer.send("feedback", other_app := feedback("chat", "common-key", {"thumbs_up": True}))
    producer.flush()
    # Same key, other application: never joined; it times out as no_prediction.
    unmatched = read_topic(bootstrap, topic_prefix + "unmatched", 1, timeout=30)
    assert unmatched[0].value["feedback"] == other_app
    retry = {**pred, "inputs": {"text": "a retry must not change anything"}}
    producer.send("predictions", retry)
    producer.flush()
    first = feedback("loans", "common-key", {"a": 1})
    producer.send("feedback", first)
    producer.send("feedback", first)  # the same feedback twice
    sentinel = feedback("loans", near, {"sentinel": True})
    producer.send("feedback", sentinel)  # same partition, after both: joined after them
    producer.flush()
    out = read_until_ids(
        bootstrap, topic_prefix + "joined", {joined_id("loans", near, sentinel["event_id"])}
    )
    out = [r for r in out if r.value["join_key"] == "common-key"]
    assert len(out) == 1 and out[0].value["inputs"] == pred["inputs"]
    replacement = prediction("loans", "common-key", inputs={"text": "replaced"})
    producer.send("predictions", replacement)
    producer.flush()
    # The two topics are read independently: wait until the replacement is stored.
    wait_for(
        lambda: (
            metric(
                worker.metrics(), "streams_outcomes_total", topic="predictions", outcome="stored"
            )
            == 3  # the first prediction, the sentinel's, the replacement
        ),
        20,
        "the replacement stored",
    )
    second = feedback("loans", "common-key", {"b": 2})
    producer.send("feedback", second)
    producer.flush()
    out = read_until_ids(
        bootstrap, topic_prefix + "joined", {joined_id("loans", "common-key", second["event_id"])}
    )
    out = [r for r in out if r.value["join_key"] == "common-key"]
    assert len(out) == 2
    latest = by_id(out)[joined_id("loans", "common-key", second["event_id"])]
    assert latest["inputs"] == {"text": "replaced"} and latest["feedback"] == {"a": 1, "b": 2}
    assert latest["feedback_revision"] == 2


def test_worker_refuses_topics_with_different_partition_counts(
    env: dict[str, str], topic_prefix: str
) -> None:
    admin = AdminClient({"bootstrap.servers": env["STREAMS_BOOTSTRAP_SERVERS"]})
    futures = admin.create_topics(
        [NewTopic(topic_prefix + "predictions", 4, 1), NewTopic(topic_prefix + "feedback", 2, 1)]
    )
    for future in futures.values():
        future.result(30)
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "worker"],
        env={**_os_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "4 partitions" in result.stderr and "has 2" in result.stderr, result.stderr


def _os_env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _misplaced_keys(count: int, partitions: int) -> list[str]:
    """Keys librdkafka's default partitioner (CRC32) puts elsewhere than murmur2 does."""
    keys = []
    while len(keys) < count:
        key = uuid.uuid4().hex
        if zlib.crc32(key.encode()) % partitions != partition_for(key.encode(), partitions):
            keys.append(key)
    return keys


def test_records_on_the_wrong_partition_are_still_joined(
    workers: Start, bootstrap: str, topic_prefix: str, producer: RawProducer
) -> None:
    worker = workers()
    crc32 = RawProducer(bootstrap, topic_prefix, partitioner="consistent_random")
    keys = _misplaced_keys(6, 4)
    events = []
    for i, key in enumerate(keys):
        # Half the predictions and half the feedback misplaced, in every combination.
        (crc32 if i % 2 else producer).send("predictions", prediction("loans", key))
        events.append(fb := feedback("loans", key, {"ok": True}))
        (crc32 if i % 3 else producer).send("feedback", fb)
    crc32.flush()
    producer.flush()
    out = read_topic(bootstrap, topic_prefix + "joined", len(keys), settle=1.0)
    assert sorted(r.value["id"] for r in out) == sorted(
        joined_id("loans", e["join_key"], e["event_id"]) for e in events
    )
    for record in out:
        assert record.partition == partition_for(record.key or b"", 4)
    samples = worker.metrics()
    assert metric(samples, "streams_outcomes_total", topic="feedback", outcome="rerouted") == 4
    assert metric(samples, "streams_outcomes_total", topic="predictions", outcome="rerouted") == 3


BAD = [
    ("invalid_json", b"{not json", "k-json", "value"),
    ("invalid_utf8", b'{"schema": "\xff\xfe"}', "k-utf8", "value"),
    ("schema_violation", None, "k-schema", "feedback"),
    ("missing_join_key", None, None, "key: the Kafka record has no key"),
    ("key_mismatch", None, "other-key", "key: 'other-key' differs from join_key 'k-mismatch'"),
    ("oversized", b"x" * 5000, "k-big", "STREAMS_MAX_RECORD_BYTES"),
    ("unknown_schema", None, "k-unknown", "schema"),
]


def _bad_value(reason: str, key: str | None) -> bytes | dict[str, Any]:
    good = feedback(
        "loans", "k-mismatch" if reason == "key_mismatch" else (key or "no-key"), {"ok": True}
    )
    if reason == "schema_violation":
        return {**good, "feedback": {}}
    if reason == "missing_join_key":
        return good
    if reason == "unknown_schema":
        return {**good, "schema": "feedback/v9"}
    return good


def test_bad_input_goes_to_deadletter_and_the_worker_keeps_joining(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    worker = workers(STREAMS_MAX_RECORD_BYTES="4096")
    for reason, raw, key, _ in BAD:
        value = raw if raw is not None else _bad_value(reason, key)
        producer.send("feedback", value, key=key, null_key=key is None)
    good = prediction("loans", "good")
    good_feedback = feedback("loans", "good", {"thumbs_up": True})
    producer.send("predictions", good)
    producer.send("feedback", good_feedback)
    producer.flush()
    joined = read_topic(bootstrap, topic_prefix + "joined", 1, settle=0.5)
    assert [r.value["id"] for r in joined] == [
        joined_id("loans", "good", good_feedback["event_id"])
    ]
    dead = read_topic(bootstrap, topic_prefix + "deadletter", len(BAD), settle=1.0)
    check("deadletter", dead)
    reasons = {r.value["reason"]: r.value for r in dead}
    assert sorted(reasons) == sorted(reason for reason, *_ in BAD)
    for reason, raw, key, field in BAD:
        record = reasons[reason]
        assert field in record["detail"], (reason, record["detail"])
        assert record["source"]["topic"] == topic_prefix + "feedback"
        assert record["key"] == key
        if raw is not None and reason == "invalid_utf8":
            assert record["value_encoding"] == "base64"
        elif raw is not None:
            assert record["value"] == raw.decode()
    assert worker.process is not None and worker.process.poll() is None
    samples = worker.metrics()
    assert sum(
        metric(samples, "streams_deadletter_total", topic="feedback", reason=reason)
        for reason, *_ in BAD
    ) == len(BAD)


def test_health_and_metrics_add_up(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    """Invariant: every input record is counted once in records_in and once in an outcome."""
    # faust's own unprefixed variables must not reach the worker: STREAMS_* alone configure it.
    worker = workers(STREAMS_PENDING_TTL="3s", WEB_PORT="1", BROKER_COMMIT_EVERY="1")
    assert worker.http("/health")[0] == 200
    crc32 = RawProducer(bootstrap, topic_prefix, partitioner="consistent_random")
    keys = [f"m{i}" for i in range(40)]
    for key in keys[:30]:
        producer.send("predictions", prediction("loans", key))
    producer.send("predictions", prediction("loans", "m0", event_id="retry"))
    producer.send("predictions", prediction("loans", "m0", event_id="retry"))  # a retry
    producer.flush()
    # The worker reads both topics independently: let it take every prediction first so
    # that exactly the 10 unknown keys and the 3 misplaced ones are pending.
    wait_for(
        lambda: metric(worker.metrics(), "streams_records_in_total", topic="predictions") == 32,
        30,
        "the 32 predictions to be read",
    )
    sent_feedback = 0
    for key in keys:  # 30 joined, 10 wait then time out
        producer.send("feedback", fb := feedback("loans", key, {"thumbs_up": key.endswith("1")}))
        sent_feedback += 1
    producer.send("feedback", fb)  # duplicate
    for key in _misplaced_keys(3, 4):
        crc32.send("feedback", feedback("loans", key, {"x": 1}))
    producer.send("feedback", b"not json", key="bad")
    sent_feedback += 5
    producer.flush()
    crc32.flush()
    read_topic(bootstrap, topic_prefix + "unmatched", 13, timeout=40)

    def settled() -> dict[Any, float] | None:
        samples = worker.metrics()
        return samples if metric(samples, "streams_pending") == 0 else None

    samples = wait_for(settled, 30, "no pending feedback")
    outcomes = (
        "stored",
        "expired",
        "joined",
        "pending",
        "unmatched",
        "deadletter",
        "duplicate",
        "rerouted",
    )
    for topic, sent in (("predictions", 32), ("feedback", sent_feedback)):
        records_in = metric(samples, "streams_records_in_total", topic=topic)
        rerouted = metric(samples, "streams_outcomes_total", topic=topic, outcome="rerouted")
        assert records_in == sent + rerouted
        assert records_in == sum(
            metric(samples, "streams_outcomes_total", topic=topic, outcome=o) for o in outcomes
        )
    pending = metric(samples, "streams_outcomes_total", topic="feedback", outcome="pending")
    resolved = sum(
        metric(samples, "streams_pending_resolved_total", outcome=o)
        for o in ("joined", "unmatched")
    )
    assert pending == 13 == resolved + metric(samples, "streams_pending")
    joined = read_topic(bootstrap, topic_prefix + "joined", 30, settle=1.0)
    assert len(joined) == 30
    assert (
        sum(metric(samples, "streams_joined_total", trigger=t) for t in ("feedback", "prediction"))
        == 30
    )
    assert metric(samples, "streams_join_latency_seconds_count") == metric(
        samples, "streams_joined_total", trigger="feedback"
    )
    assert metric(samples, "streams_unmatched_total", reason="no_prediction") == 13
    assert metric(samples, "streams_deadletter_total", topic="feedback", reason="invalid_json") == 1
    assert metric(samples, "streams_outcomes_total", topic="predictions", outcome="duplicate") == 1
    assert ("streams_stored_rows", ()) in samples


def test_records_from_the_sdk_and_any_compression_are_joined(
    workers: Start, bootstrap: str, topic_prefix: str, settings: Any
) -> None:
    """The worker reads what real producers write: the SDK (lz4) and gzip, snappy, zstd."""
    import streams

    workers()
    streams.init(settings=settings)
    try:
        app = streams.get_application("loans")
        _, keys = app.log(
            inputs=[{"n": i} for i in range(10)], outputs=[{"y": i} for i in range(10)]
        )
        app.log(feedbacks=[{"thumbs_up": True}] * 10, join_keys=keys)
        streams.flush()
    finally:
        streams.close()
    expected = 10
    for codec in ("gzip", "snappy", "zstd"):
        raw = RawProducer(bootstrap, topic_prefix, compression=codec)
        raw.send("predictions", prediction("loans", codec))
        raw.send("feedback", feedback("loans", codec, {"thumbs_up": False}))
        raw.flush()
        expected += 1
    out = read_topic(bootstrap, topic_prefix + "joined", expected, settle=1.0)
    assert len({r.value["id"] for r in out}) == expected


def test_processing_errors_are_read_from_the_deadletter_topic(
    env: dict[str, str], producer: RawProducer, topic_prefix: str
) -> None:
    """The check every worker test ends with (`workers` fixture) finds a processing_error."""
    create_topics(Settings.from_env(env))
    for reason in ("invalid_json", "processing_error"):
        producer.send("deadletter", {"reason": reason, "detail": "x"}, key="k")
    producer.flush()
    found = processing_errors(env["STREAMS_BOOTSTRAP_SERVERS"], topic_prefix + "deadletter")
    assert [record["reason"] for record in found] == ["processing_error"]
