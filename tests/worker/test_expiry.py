"""Retention and expiry as a user sees them: real workers, real broker, short real retentions.

CONTRACT.md section 5. Retentions here are seconds; the rules at day scale are in
`test_expiry_rules.py`, on a manual clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from harness import (
    RawProducer,
    WorkerProcess,
    feedback,
    metric,
    prediction,
    read_topic,
    topic_latest,
    wait_for,
)
from rocksdict import Options, Rdict

from streams.records import format_ts
from streams.worker.join import joined_id
from streams.worker.state import row_key, split_due_key

pytestmark = pytest.mark.integration

Start = Callable[..., WorkerProcess]


def ts_ago(delta: timedelta) -> str:
    return format_ts(int((datetime.now(UTC) - delta).timestamp() * 1000))


def topic_configs(bootstrap: str, names: list[str]) -> dict[str, dict[str, str]]:
    """The configuration of each topic, as the broker reports it."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, n) for n in names])
    return {
        resource.name: {key: entry.value for key, entry in future.result(10).items()}
        for resource, future in futures.items()
    }


def compacted_bytes(data_dir: Path, table: str) -> int:
    """Bytes of SST files a stopped worker's table holds once RocksDB has compacted it fully."""
    total = 0
    for path in sorted(data_dir.glob(f"**/tables/{table}-*.db")):
        db = Rdict(str(path), Options(raw_mode=True))
        try:
            db.flush()
            db.compact_range(None, None)
            total += int(db.property_int_value("rocksdb.total-sst-files-size") or 0)
        finally:
            db.close()
    assert total or list(data_dir.glob(f"**/tables/{table}-*.db")), f"no {table} table found"
    return total


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_retention_per_application_up_to_90_days_decides_what_joins(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str, guarantee: str
) -> None:
    """A prediction joins from its own timestamp until timestamp + retention, and never after."""
    worker = workers(
        STREAMS_PROCESSING_GUARANTEE=guarantee,
        STREAMS_RETENTION="90d",  # the cap (more is refused at start)
        STREAMS_RETENTION_BY_APPLICATION="short=8s",
        STREAMS_PENDING_TTL="1h",
    )
    preds = {
        "inside": prediction("short", "inside", timestamp=ts_ago(timedelta(seconds=2))),
        "arrived-old": prediction("short", "arrived-old", timestamp=ts_ago(timedelta(seconds=9))),
        "swept": prediction("short", "swept"),
        "day-89": prediction("long", "day-89", timestamp=ts_ago(timedelta(days=89))),
        "day-91": prediction("long", "day-91", timestamp=ts_ago(timedelta(days=91))),
        # Another application's retention does not apply: 90 days here.
        "other-app": prediction("long", "swept"),
    }
    for record in preds.values():
        producer.send("predictions", record)
    producer.flush()
    now = [
        feedback(p["application"], p["join_key"], {"ok": True})
        for name, p in preds.items()
        if name != "swept"
    ]
    for record in now:
        producer.send("feedback", record)
    producer.flush()
    # `swept`: feedback only once the sweep has expired it (metrics), so from the marker.
    wait_for(
        lambda: metric(worker.metrics(), "streams_expired_total") >= 2, 30, "the sweep"
    )  # `swept` and `inside`
    late = feedback("short", "swept", {"ok": True})
    producer.send("feedback", late)
    producer.flush()
    unmatched = read_topic(bootstrap, topic_prefix + "unmatched", 3, settle=1.0)
    joined = read_topic(bootstrap, topic_prefix + "joined", 3, settle=1.0)
    key_of = {r["event_id"]: (r["application"], r["join_key"]) for r in [*now, late]}
    assert sorted(key_of[r.value["feedback_event_id"]] for r in joined) == [
        ("long", "day-89"),
        ("long", "swept"),
        ("short", "inside"),
    ]
    assert sorted(
        (key_of[r.value["feedback"]["event_id"]], r.value["reason"]) for r in unmatched
    ) == [
        (("long", "day-91"), "expired"),
        (("short", "arrived-old"), "expired"),
        (("short", "swept"), "expired"),
    ]
    assert all("retention ended at" in r.value["detail"] for r in unmatched)
    samples = worker.metrics()
    assert metric(samples, "streams_outcomes_total", topic="predictions", outcome="expired") == 2
    assert metric(samples, "streams_unmatched_total", reason="expired") == 3


def test_expired_predictions_leave_rocksdb_and_the_changelog_and_never_come_back(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Invariant: once swept and forgotten, a prediction is in no table, disk or changelog."""
    short = [f"s{i}" for i in range(1500)]
    long = [f"l{i}" for i in range(50)]
    config = {
        "STREAMS_RETENTION_BY_APPLICATION": "short=20s",
        "STREAMS_EXPIRED_MEMORY": "2s",
        "STREAMS_PENDING_TTL": "3s",
    }
    data_dir = Path(env["STREAMS_DATA_DIR"])
    first = workers("w1", **config)
    for app, keys in (("short", short), ("long", long)):
        for key in keys:
            # About 4 KB each, incompressible: the disk must show where they went.
            producer.send(
                "predictions", prediction(app, key, inputs={"blob": os.urandom(2000).hex()})
            )
    producer.flush()
    wait_for(
        lambda: (
            metric(first.metrics(), "streams_outcomes_total", topic="predictions", outcome="stored")
            == len(short) + len(long)
        ),
        60,
        "every prediction stored",
    )
    first.stop()
    stored_bytes = compacted_bytes(data_dir, "state")
    assert stored_bytes > len(short) * 3000

    # The same worker again, on its own data: it sweeps, then forgets the markers.
    again = workers("w1-again", STREAMS_DATA_DIR=str(data_dir), **config)
    wait_for(
        lambda: metric(again.metrics(), "streams_forgotten_rows_total") >= len(short),
        60,
        "the expired predictions swept and forgotten",
    )
    assert metric(again.metrics(), "streams_expired_total") == len(short)
    again.stop()
    swept_bytes = compacted_bytes(data_dir, "state")
    print(f"state table after full compaction: {stored_bytes} B stored, {swept_bytes} B swept")
    assert swept_bytes < stored_bytes / 10, (stored_bytes, swept_bytes)

    app_id = env["STREAMS_APP_ID"]
    # Retention settings that match: inputs keep a prediction a day past the longest
    # retention (90 days here); changelogs drop superseded values within a day.
    configs = topic_configs(
        bootstrap,
        [topic_prefix + "predictions", topic_prefix + "feedback", f"{app_id}-state-changelog"],
    )
    for name in ("predictions", "feedback"):
        assert configs[topic_prefix + name]["cleanup.policy"] == "delete"
        assert configs[topic_prefix + name]["retention.ms"] == str(91 * 86_400_000)
    changelog = configs[f"{app_id}-state-changelog"]
    assert changelog["cleanup.policy"] == "compact"
    assert changelog["max.compaction.lag.ms"] == changelog["delete.retention.ms"] == "86400000"
    state = topic_latest(bootstrap, f"{app_id}-state-changelog")
    assert all(state[row_key("short", k)] is None for k in short), "a tombstone per expired row"
    assert all(state[row_key("long", k)] is not None for k in long)
    due = topic_latest(bootstrap, f"{app_id}-due-changelog")
    live_index = {split_due_key(k)[1] for k, v in due.items() if v is not None}
    assert live_index == {row_key("long", k) for k in long}

    # A new worker with an empty data directory rebuilds from the changelogs.
    rebuilt = workers("w2", STREAMS_DATA_DIR=str(tmp_path / "empty"), **config)
    events = [feedback("short", k, {"late": True}) for k in short[:20]]
    events += [feedback("long", k, {"ok": True}) for k in long[:20]]
    for event in events:
        producer.send("feedback", event)
    producer.flush()
    joined = read_topic(bootstrap, topic_prefix + "joined", 20, settle=1.0)
    assert sorted(r.value["id"] for r in joined) == sorted(
        joined_id("long", k, e["event_id"]) for k, e in zip(long[:20], events[20:], strict=True)
    )
    unmatched = read_topic(bootstrap, topic_prefix + "unmatched", 20, timeout=30, settle=1.0)
    # Forgotten (STREAMS_EXPIRED_MEMORY passed): the rebuilt worker has never heard of them.
    assert sorted((r.value["reason"], r.key) for r in unmatched) == sorted(
        ("no_prediction", k.encode()) for k in short[:20]
    )
    assert (
        metric(rebuilt.metrics(), "streams_outcomes_total", topic="feedback", outcome="joined")
        == 20
    )


def test_pending_feedback_times_out_on_a_rebuilt_worker_and_leaves_the_changelog(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """Pending feedback is state like a prediction: restored, timed out once, then deleted."""
    first = workers("w1", STREAMS_PENDING_TTL="20s")
    orphans = [feedback("loans", f"o{i}", {"thumbs_up": i % 2 == 0}) for i in range(5)]
    for record in orphans:
        producer.send("feedback", record)
    producer.flush()
    wait_for(lambda: metric(first.metrics(), "streams_pending") == 5, 20, "five pending")
    first.stop()
    assert read_topic(bootstrap, topic_prefix + "unmatched", 1, timeout=2) == []

    rebuilt = workers("w2", STREAMS_DATA_DIR=str(tmp_path / "empty"), STREAMS_PENDING_TTL="20s")
    # The count of pending feedback is kept with the rows: the rebuilt worker reports it.
    assert metric(rebuilt.metrics(), "streams_pending") == 5
    unmatched = read_topic(bootstrap, topic_prefix + "unmatched", 5, timeout=50, settle=2.0)
    assert sorted(
        (r.value["reason"], r.value["feedback"]["event_id"]) for r in unmatched
    ) == sorted(("no_prediction", o["event_id"]) for o in orphans)
    assert metric(rebuilt.metrics(), "streams_forgotten_rows_total") == 5
    assert metric(rebuilt.metrics(), "streams_pending") == 0
    # A prediction after the timeout is stored and joins nothing.
    producer.send("predictions", prediction("loans", "o0"))
    producer.flush()
    wait_for(
        lambda: (
            metric(
                rebuilt.metrics(), "streams_outcomes_total", topic="predictions", outcome="stored"
            )
            == 1
        ),
        20,
        "the late prediction stored",
    )
    assert read_topic(bootstrap, topic_prefix + "joined", 1, timeout=2) == []
    state = topic_latest(bootstrap, f"{env['STREAMS_APP_ID']}-state-changelog")
    assert all(state[row_key("loans", f"o{i}")] is None for i in range(1, 5))
