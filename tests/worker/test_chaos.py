"""Kill a worker with SIGKILL mid-stream: no joined record is lost, a repeat carries the same id."""

from __future__ import annotations

import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from harness import (
    AFTER_CRASH_TIMEOUT,
    RawProducer,
    Start,
    all_joined,
    assert_joined_once_by_id,
    feedback,
    prediction,
    read_topic,
    stats_totals,
    wait_until_equal,
)

pytestmark = pytest.mark.chaos


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


@pytest.mark.parametrize(
    ("guarantee", "lose_local_state"),
    [("at_least_once", False), ("at_least_once", True), ("exactly_once", False)],
    ids=["same-data-dir", "rebuilt-from-changelog", "exactly-once"],
)
def test_sigkill_mid_stream_loses_no_joined_record(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    env: dict[str, str],
    guarantee: str,
    lose_local_state: bool,
) -> None:
    """Invariant: each feedback for a live prediction is in joined, by id; repeats are identical."""
    worker = workers("w1", STREAMS_PROCESSING_GUARANTEE=guarantee)
    keys = [f"c{i}" for i in range(600)]
    events: list[dict[str, object]] = []
    sender = threading.Thread(target=lambda: events.extend(produce_stream(producer, keys, 6.0)))
    sender.start()
    time.sleep(2.5)
    worker.kill()
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
    check_joined_and_aggregates(bootstrap, topic_prefix, out, events, guarantee)


def check_joined_and_aggregates(
    bootstrap: str,
    topic_prefix: str,
    out: list[Any],
    events: list[dict[str, object]],
    guarantee: str,
) -> None:
    """Every expected joined record is there (none at all repeated with exactly_once), and the
    thumbs_up aggregates on feedback-stats count each prediction once."""
    assert_joined_once_by_id(out, events)
    repeats = len(out) - len({r.value["id"] for r in out})
    if guarantee == "exactly_once":
        # One Kafka transaction per commit: a read_committed reader sees no repeat at all.
        assert repeats == 0, f"{repeats} repeated joined records"
    # However often an input was read again, each prediction counts once in the aggregates:
    # rebuilt from the changelogs, and on the worker's own data directory too (its
    # databases hold exactly their changelogs up to a checkpoint, see streams.worker.tables).
    thumbs = [bool(event["feedback"]["thumbs_up"]) for event in events]  # type: ignore[index]
    topic = topic_prefix + "feedback-stats"

    def thumbs_up_totals() -> list[Any]:
        summed = [0, 0, 0, 0, 0]
        for (_, _, field, _), share in stats_totals(bootstrap, topic).items():
            if field == "thumbs_up":
                summed = [a + b for a, b in zip(summed, share, strict=True)]
        return summed

    expected = [len(thumbs), sum(thumbs), len(thumbs) - sum(thumbs), 0, 0]
    wait_until_equal(thumbs_up_totals, expected, timeout=60)
    print(f"{guarantee}: {repeats} repeated joined records")


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_three_sigkills_under_load_lose_nothing_and_count_exactly(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    env: dict[str, str],
    guarantee: str,
) -> None:
    """Invariant: killed three times while 20,000 feedback flow (restarted on its own data
    directory twice, on an empty one once), the worker joins each feedback (exactly once for
    a read_committed reader with exactly_once), and the aggregates count each once."""
    worker = workers("w1", STREAMS_PROCESSING_GUARANTEE=guarantee)
    keys = [f"k{i}" for i in range(20_000)]
    events: list[dict[str, object]] = []
    sender = threading.Thread(target=lambda: events.extend(produce_stream(producer, keys, 90.0)))
    sender.start()
    for lose_local_state in (False, False, True):
        time.sleep(4.0)  # joining, with transactions open
        worker.kill()
        if lose_local_state:
            shutil.rmtree(Path(env["STREAMS_DATA_DIR"]))
        worker.start(wait=False)
        worker.wait_healthy(timeout=AFTER_CRASH_TIMEOUT)  # the killed one's session ended
    sender.join()
    out = read_topic(
        bootstrap,
        topic_prefix + "joined",
        len(keys),
        timeout=AFTER_CRASH_TIMEOUT,
        settle=2.0,
        until=all_joined(events),
    )
    check_joined_and_aggregates(bootstrap, topic_prefix, out, events, guarantee)


def test_a_paused_worker_whose_partitions_moved_is_fenced(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    """Invariant (exactly_once): a worker frozen past its session timeout adds nothing later.

    It is frozen (SIGSTOP) while records flow, likely inside an open transaction; its
    partitions go to another worker; once thawed (SIGCONT) it can commit nothing (its
    transaction timed out, its group generation is gone), so a read_committed reader sees
    every joined record exactly once, and the thawed worker exits (70) or goes on cleanly.
    """
    eos = {"STREAMS_PROCESSING_GUARANTEE": "exactly_once"}
    first = workers("w1", **eos)
    assert first.process is not None
    keys = [f"z{i}" for i in range(600)]
    events: list[dict[str, object]] = []
    sender = threading.Thread(
        target=lambda: events.extend(produce_stream(producer, keys[:400], 4.0))
    )
    sender.start()
    time.sleep(2.0)
    first.process.send_signal(signal.SIGSTOP)
    try:
        sender.join()
        second = workers("w2", wait=False, **eos)
        second.wait_healthy(timeout=AFTER_CRASH_TIMEOUT)  # once the first one's session ended
        read_topic(
            bootstrap,
            topic_prefix + "joined",
            len(events),
            timeout=AFTER_CRASH_TIMEOUT,
            until=all_joined(events),
        )
    finally:
        first.process.send_signal(signal.SIGCONT)
    events.extend(produce_stream(producer, keys[400:], 2.0))
    out = read_topic(
        bootstrap,
        topic_prefix + "joined",
        len(keys),
        timeout=AFTER_CRASH_TIMEOUT,
        settle=5.0,
        until=all_joined(events),
    )
    assert_joined_once_by_id(out, events)
    assert len(out) == len(keys), f"{len(out) - len(keys)} repeated joined records"
    assert first.process.poll() in (None, 70), first.log_tail()
