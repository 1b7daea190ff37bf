"""Partitions moving between workers: rebalances under load, restores from the changelog tail."""

from __future__ import annotations

import re
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from harness import (
    RawProducer,
    Start,
    WorkerProcess,
    assert_joined_once_by_id,
    end_offsets,
    feedback,
    metric,
    prediction,
    read_joined,
    read_topic,
    wait_for,
)

from streams.settings import Settings
from streams.topics import create_topics
from streams.worker.processing import partition_for
from streams.worker.state import row_key
from streams.worker.tables import changelog_specs

pytestmark = pytest.mark.integration

# faust's log line: `[2026-12-02 06:53:59,113] [11424] [INFO] restored partition=0 ...`
LINE = re.compile(
    r"^\[(?P<at>[\d\- :,]+)\] \[\d+\] \[\w+\] (?P<event>\w+) partitions?=(?P<p>\[[^\]]*\]|\d+)"
)


def applying_intervals(worker: WorkerProcess) -> list[tuple[int, float, float]]:
    """(partition, from, to): when this worker applied each partition, from its log.

    From the moment a partition is restored until the commit that ends its ownership
    (revoked, lost, or released at shutdown) has returned.
    """
    started: dict[int, float] = {}
    intervals = []
    for line in worker.log_path.read_text(errors="replace").splitlines():
        match = LINE.match(line)
        if not match:
            continue
        at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
        event, partitions = match["event"], match["p"]
        if event == "restored":
            started[int(partitions)] = at
        elif event in ("revoked", "lost", "released"):
            for partition in [int(p) for p in re.findall(r"\d+", partitions)]:
                intervals.append((partition, started.pop(partition), at))
    now = time.time()
    intervals += [(partition, since, now) for partition, since in started.items()]
    return intervals


def test_rebalance_under_load_loses_nothing_and_never_shares_a_partition(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    """Invariant: a second worker joins and leaves three times while feedback flows.

    Every feedback is joined (by id), a repeated joined record is identical, and no
    partition is applied by two workers at the same time.
    """
    first = workers("w1")
    keys = [f"r{i}" for i in range(1500)]
    events: list[dict[str, object]] = []

    def produce() -> None:
        for i, key in enumerate(keys):
            producer.send("predictions", prediction("loans", key))
            events.append(fb := feedback("loans", key, {"thumbs_up": i % 2 == 0}))
            producer.send("feedback", fb)
            producer.producer.poll(0)
            time.sleep(0.015)
        producer.flush()

    sender = threading.Thread(target=produce)
    sender.start()
    seconds = []
    for round_ in range(3):
        time.sleep(1.5)
        second = workers(f"w2-{round_}")
        time.sleep(2.0)
        assert second.stop() == 0, second.log_tail()
        seconds.append(second)
    sender.join()
    out = read_joined(bootstrap, topic_prefix, events, timeout=90)
    assert_joined_once_by_id(out, events)
    assert read_topic(bootstrap, topic_prefix + "unmatched", 1, timeout=2) == []
    intervals = [(w, *i) for w in (first, *seconds) for i in applying_intervals(w)]
    assert {p for _, p, _, _ in intervals} == set(range(4)), "every partition was applied"
    assert any(w is not first for w, *_ in intervals), "the second worker took partitions"
    for worker, partition, since, until in intervals:
        for other, other_partition, other_since, other_until in intervals:
            if other is worker or other_partition != partition:
                continue
            assert until <= other_since or other_until <= since, (
                f"partition {partition} applied by two workers at once"
            )


def test_a_restart_reads_only_the_changelog_tail(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A worker restarted on its own data directory reads only what others wrote since it left."""
    app_id = env["STREAMS_APP_ID"]
    changelogs = [f"{app_id}-state-changelog", f"{app_id}-due-changelog"]

    def changelog_records() -> int:
        return sum(end_offsets(bootstrap, topic, 4) for topic in changelogs)

    def stored(worker: WorkerProcess) -> float:
        samples = worker.metrics()
        return metric(samples, "streams_outcomes_total", topic="predictions", outcome="stored")

    def store(worker: WorkerProcess, keys: list[str]) -> None:
        for key in keys:
            producer.send("predictions", prediction("loans", key))
        producer.flush()
        wait_for(lambda: stored(worker) == len(keys), 60, "the predictions stored")
        assert worker.stop() == 0

    first = workers("w1")
    early = [f"e{i}" for i in range(100)]
    store(first, early)
    when_it_left = changelog_records()

    # Another worker, on an empty data directory, rebuilds everything and writes more.
    other = workers("w2", STREAMS_DATA_DIR=str(tmp_path / "other"))
    assert metric(other.metrics(), "streams_restored_records_total") == when_it_left
    late = [f"l{i}" for i in range(50)]
    store(other, late)
    tail = changelog_records() - when_it_left
    assert tail > 0

    again = workers("w1-again", STREAMS_DATA_DIR=env["STREAMS_DATA_DIR"])
    assert metric(again.metrics(), "streams_restored_records_total") == tail
    events = [feedback("loans", key, {"thumbs_up": True}) for key in early + late]
    for event in events:
        producer.send("feedback", event)
    producer.flush()
    out = read_joined(bootstrap, topic_prefix, events, timeout=30, settle=1.0)
    assert_joined_once_by_id(out, events)

    def lag_and_batches() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        samples = again.metrics()
        lag = {k: v for k, v in samples.items() if k[0] == "streams_consumer_lag"}
        # Both inputs, 4 partitions each, everything read (librdkafka's statistics, every 2 s).
        return samples if len(lag) == 8 and not any(lag.values()) else None

    samples = wait_for(lag_and_batches, 20, "no lag on every input partition")
    assert metric(samples, "streams_batch_size_count") >= 1
    assert metric(samples, "streams_batch_size_sum") == len(events)


# Enough that partition 0's restore outlasts the other partitions' joins with room to spare:
# 300,000 rows took 2.2 s here once restores no longer queued 64 MiB each (too close), and
# 1,000,000 took 2.8 s.
FILLER_ROWS = 2_000_000


def test_restoring_one_partition_does_not_stop_the_others(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str, env: dict[str, str]
) -> None:
    """While partition 0's long changelog is read, records of partitions 1-3 are joined."""
    settings = Settings.from_env(env)
    create_topics(settings)
    create_topics(settings, changelog_specs(settings.app_id, 4))
    filler = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1_000_000})
    changelog = f"{settings.app_id}-state-changelog"
    for i in range(FILLER_ROWS):  # rows of an application nobody queries
        while True:
            try:
                filler.produce(changelog, b"x" * 40, row_key("filler", f"f{i}"), partition=0)
                break
            except BufferError:
                filler.poll(0.05)
    assert filler.flush(60) == 0
    worker = workers("w1", wait=False)
    candidates = (f"o{i}-{uuid.uuid4().hex[:6]}" for i in range(200))
    keys = [key for key in candidates if partition_for(key.encode(), 4) != 0][:20]
    events = [feedback("loans", key, {"thumbs_up": True}) for key in keys]
    for key, event in zip(keys, events, strict=True):
        producer.send("predictions", prediction("loans", key))
        producer.send("feedback", event)
    producer.flush()

    def joined_and_restoring() -> tuple[float, float] | None:
        try:
            samples = worker.metrics()
        except OSError:
            return None
        joined = metric(samples, "streams_joined_total", trigger="feedback")
        joined += metric(samples, "streams_joined_total", trigger="prediction")
        if joined < len(keys):
            return None
        return joined, metric(samples, "streams_restoring_partitions")

    _, restoring = wait_for(joined_and_restoring, 60, "the other partitions' joins")
    assert restoring == 1, "partition 0 was still being restored"
    worker.wait_healthy()
    assert metric(worker.metrics(), "streams_restored_records_total") >= FILLER_ROWS
