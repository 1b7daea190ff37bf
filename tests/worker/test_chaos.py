"""Kill a worker with SIGKILL while it holds applied inputs not yet committed, then restart it.

Each variant states its invariant and checks it against a reference computed here:

- same-data-dir (at_least_once, restarted on its own RocksDB): every feedback's joined
  record is in `joined` (by id), a repeat is the same record but `joined_at`, the restart
  replayed inputs (`streams_replays_total` > 0); the thumbs-up aggregates never count a
  prediction twice and lack at most one count per replayed input (the known gap: README,
  Feedback analysis).
- rebuilt-from-changelog (at_least_once, local state deleted): the same, and the
  aggregates on `feedback-stats` are exact.
- exactly-once: every feedback's joined record exactly once, no repeat at all for a
  read_committed reader. Not built yet (#13): marked xfail(strict=True), so it fails the
  day it passes and the mark must go.
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from harness import (
    AFTER_CRASH_TIMEOUT,
    RawProducer,
    Start,
    WorkerProcess,
    all_joined,
    assert_joined_once_by_id,
    feedback,
    metric,
    prediction,
    read_topic,
    stats_totals,
    wait_for,
    wait_until_equal,
)

pytestmark = pytest.mark.chaos

INPUTS = ("predictions", "feedback")


def produce_stream(
    producer: RawProducer, keys: list[str], seconds: float
) -> list[dict[str, object]]:
    """Predictions then feedback for each key, spread over `seconds`."""
    events = []
    pause = seconds / len(keys)
    for key in keys:
        producer.send("predictions", prediction("loans", key))
        events.append(fb := feedback("loans", key, {"thumbs_up": len(key) % 2 == 0}))
        producer.send("feedback", fb)
        producer.producer.poll(0)
        time.sleep(pause)
    producer.flush()
    return events


def applied_not_committed(worker: WorkerProcess, env: dict[str, str]) -> tuple[int, int]:
    """(inputs the worker applied, of which not yet committed), from /metrics and the group."""
    samples = worker.metrics()
    applied = int(sum(metric(samples, "streams_records_in_total", topic=t) for t in INPUTS))
    consumer = Consumer(
        {"bootstrap.servers": env["STREAMS_BOOTSTRAP_SERVERS"], "group.id": env["STREAMS_APP_ID"]}
    )
    try:
        partitions = [
            TopicPartition(env["STREAMS_TOPIC_PREFIX"] + topic, p)
            for topic in INPUTS
            for p in range(int(env["STREAMS_PARTITIONS"]))
        ]
        committed = sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()
    return applied, applied - committed


def kill_holding_uncommitted_inputs(worker: WorkerProcess, env: dict[str, str]) -> int:
    """SIGKILL the worker once it has applied at least 20 inputs it has not committed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        applied, uncommitted = applied_not_committed(worker, env)
        if applied >= 100 and uncommitted >= 20:
            worker.kill()
            return uncommitted
        time.sleep(0.05)
    raise AssertionError("the worker never held 20 applied inputs uncommitted")


@pytest.mark.parametrize(
    ("guarantee", "lose_local_state"),
    [
        ("at_least_once", False),
        ("at_least_once", True),
        pytest.param(
            "exactly_once",
            False,
            marks=pytest.mark.xfail(
                strict=True, reason="exactly-once is not built yet (#13): repeats after a crash"
            ),
        ),
    ],
    ids=["same-data-dir", "rebuilt-from-changelog", "exactly-once"],
)
def test_sigkill_with_uncommitted_inputs(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    env: dict[str, str],
    guarantee: str,
    lose_local_state: bool,
) -> None:
    """Invariants: see the module docstring, per variant."""
    worker = workers("w1", STREAMS_PROCESSING_GUARANTEE=guarantee)
    keys = [f"c{i}" for i in range(600)]
    events: list[dict[str, object]] = []
    sender = threading.Thread(target=lambda: events.extend(produce_stream(producer, keys, 6.0)))
    sender.start()
    uncommitted = kill_holding_uncommitted_inputs(worker, env)
    if lose_local_state:
        shutil.rmtree(Path(env["STREAMS_DATA_DIR"]))
    sender.join()
    worker.start()
    out = read_topic(
        bootstrap,
        topic_prefix + "joined",
        len(keys),
        timeout=AFTER_CRASH_TIMEOUT,
        settle=2.0,
        until=all_joined(events),
    )
    assert_joined_once_by_id(out, events)
    repeats = len(out) - len({r.value["id"] for r in out})
    print(f"{guarantee}: killed with {uncommitted} inputs uncommitted; {repeats} repeats")
    # The restart read again inputs it had applied: that is what this test is about.
    replays = wait_for(
        lambda: metric(worker.metrics(), "streams_replays_total"), 30, "a replay after the restart"
    )
    if guarantee == "exactly_once":
        assert repeats == 0, f"{repeats} joined records repeated for a read_committed reader"

    # Aggregates: each prediction counts once, with its thumbs-up value.
    thumbs = [bool(event["feedback"]["thumbs_up"]) for event in events]  # type: ignore[index]
    expected = [len(thumbs), sum(thumbs), len(thumbs) - sum(thumbs), 0, 0]
    topic = topic_prefix + "feedback-stats"

    def thumbs_up_totals() -> list[Any]:
        summed = [0, 0, 0, 0, 0]
        for (_, _, field, _), share in stats_totals(bootstrap, topic).items():
            if field == "thumbs_up":
                summed = [a + b for a, b in zip(summed, share, strict=True)]
        return summed

    if lose_local_state:
        wait_until_equal(thumbs_up_totals, expected, timeout=60)
        return
    # Known gap on the same data directory (README, Feedback analysis): faust restores the
    # changelog's tail over newer local writes, which can leave a share short by the inputs
    # whose share records had not reached Kafka; never over.
    wait_for(lambda: thumbs_up_totals()[0] >= expected[0] - replays, 60, "the aggregates")
    time.sleep(2)  # what is still to be published, once the worker commits again
    totals = thumbs_up_totals()
    assert all(got <= want for got, want in zip(totals, expected, strict=True)), (totals, expected)
    assert totals[0] >= expected[0] - replays, (totals, expected, replays)
