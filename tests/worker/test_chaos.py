"""Kill a worker with SIGKILL while it holds applied inputs not yet committed, then restart it.

Each variant states its invariant and checks it against a reference computed here:

- same-data-dir (at_least_once, restarted on its own RocksDB): every feedback's joined
  record is in `joined` (by id), a repeat is the same record but `joined_at`, the restart
  replayed inputs (`streams_replays_total` > 0); the thumbs-up aggregates on
  `feedback-stats` are exact (the databases hold exactly their changelogs up to a
  checkpoint, so the restart is as exact as a rebuild).
- rebuilt-from-changelog (at_least_once, local state deleted): the same, and the
  aggregates on `feedback-stats` are exact.
- exactly-once: every feedback's joined record exactly once, no repeat at all for a
  read_committed reader, and the aggregates exact.

In every variant the restarted worker reads again inputs it had applied before the kill
(at least once: as replays, since their changelog records had reached Kafka).
"""

from __future__ import annotations

import shutil
import signal
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from harness import (
    AFTER_CRASH_TIMEOUT,
    QUICK_FAILOVER,
    RawProducer,
    Start,
    WorkerProcess,
    assert_joined_once_by_id,
    feedback,
    metric,
    prediction,
    read_joined,
    stats_totals,
    wait_for,
    wait_until_equal,
)

from streams.worker.consumer import input_group

pytestmark = pytest.mark.chaos

INPUTS = ("predictions", "feedback")


def produce_stream(
    producer: RawProducer,
    keys: list[str],
    seconds: float,
    events: list[dict[str, object]] | None = None,
) -> list[dict[str, object]]:
    """Predictions then feedback for each key, spread over `seconds`.

    Each feedback is appended to `events` (returned) as it is sent, so another thread
    can follow the stream's progress.
    """
    events = [] if events is None else events
    pause = seconds / len(keys)
    for key in keys:
        producer.send("predictions", prediction("loans", key))
        fb = feedback("loans", key, {"thumbs_up": len(key) % 2 == 0})
        producer.send("feedback", fb)
        events.append(fb)
        producer.producer.poll(0)
        time.sleep(pause)
    producer.flush()
    return events


def inputs_read(worker: WorkerProcess) -> int:
    """The input records this worker process read (and applied), from /metrics."""
    samples = worker.metrics()
    return int(sum(metric(samples, "streams_records_in_total", topic=t) for t in INPUTS))


def sent_and_joining(worker: WorkerProcess, events: list[dict[str, object]], sent: int) -> bool:
    """Whether `sent` feedback were sent and the worker applied inputs since it started."""
    return len(events) >= sent and inputs_read(worker) >= 100


def committed_inputs(env: dict[str, str]) -> int:
    """How many input records the worker's group has committed (all partitions)."""
    consumer = Consumer(
        {
            "bootstrap.servers": env["STREAMS_BOOTSTRAP_SERVERS"],
            "group.id": input_group(env["STREAMS_APP_ID"]),
            # The offsets committed so far: read_committed would wait for those of an
            # open transaction, which a frozen worker never finishes.
            "isolation.level": "read_uncommitted",
        }
    )
    try:
        partitions = [
            TopicPartition(env["STREAMS_TOPIC_PREFIX"] + topic, p)
            for topic in INPUTS
            for p in range(int(env["STREAMS_PARTITIONS"]))
        ]
        return sum(max(tp.offset, 0) for tp in consumer.committed(partitions, timeout=10))
    finally:
        consumer.close()


def kill_holding_uncommitted_inputs(worker: WorkerProcess, env: dict[str, str]) -> tuple[int, int]:
    """SIGKILL the worker once it has applied at least 20 inputs it has not committed.

    Once the running worker looks so, it is frozen (SIGSTOP) and its group's committed
    offsets are read again: it may have committed in between, and a frozen worker
    commits nothing more, so what it holds is known when it is killed. Returns (inputs
    applied, of which not committed) as read before the kill.
    """
    assert worker.process is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        applied = inputs_read(worker)
        if applied >= 100 and applied - committed_inputs(env) >= 20:
            worker.process.send_signal(signal.SIGSTOP)
            time.sleep(0.5)  # a commit already on its way to the broker lands first
            uncommitted = applied - committed_inputs(env)
            if uncommitted >= 20:
                worker.kill()
                return applied, uncommitted
            worker.process.send_signal(signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the worker never held 20 applied inputs uncommitted")


@pytest.mark.parametrize(
    ("guarantee", "lose_local_state"),
    [
        ("at_least_once", False),
        ("at_least_once", True),
        ("exactly_once", False),
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
    worker = workers("w1", STREAMS_PROCESSING_GUARANTEE=guarantee, **QUICK_FAILOVER)
    # 1,000 inputs a second: with exactly_once a commit follows 20 ms after the last
    # began, so at 200 a second (600 keys) a quiet machine never held 20 uncommitted.
    keys = [f"c{i}" for i in range(3_000)]
    events: list[dict[str, object]] = []
    sender = threading.Thread(target=produce_stream, args=(producer, keys, 6.0, events))
    sender.start()
    applied, uncommitted = kill_holding_uncommitted_inputs(worker, env)
    if lose_local_state:
        shutil.rmtree(Path(env["STREAMS_DATA_DIR"]))
    sender.join()
    worker.start()
    out = read_joined(bootstrap, topic_prefix, events, timeout=AFTER_CRASH_TIMEOUT)
    check_joined_and_aggregates(bootstrap, topic_prefix, out, events, guarantee)
    # The restart read again inputs it had applied: that is what this test is about.
    read_again = metric(worker.metrics(), "streams_records_in_total", topic="predictions")
    read_again += metric(worker.metrics(), "streams_records_in_total", topic="feedback")
    assert read_again > 2 * len(keys) - applied, (read_again, applied, uncommitted)
    if guarantee == "at_least_once":
        # Their changelog records had reached Kafka: rows remember them, so they are replays
        # (the same joined records again). With exactly_once they were aborted with their
        # transaction and are applied afresh.
        assert metric(worker.metrics(), "streams_replays_total") > 0


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
    expected = [len(thumbs), sum(thumbs), len(thumbs) - sum(thumbs), 0, 0]
    topic = topic_prefix + "feedback-stats"

    def thumbs_up_totals() -> list[Any]:
        summed = [0, 0, 0, 0, 0]
        for (_, _, field, _), share in stats_totals(bootstrap, topic).items():
            if field == "thumbs_up":
                summed = [a + b for a, b in zip(summed, share, strict=True)]
        return summed

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
    a read_committed reader with exactly_once), and the aggregates count each once.

    The kills are spread over the stream: the n-th once n quarters of the feedback were
    sent and the worker (restarted) is joining again, with transactions open.
    """
    worker = workers("w1", STREAMS_PROCESSING_GUARANTEE=guarantee, **QUICK_FAILOVER)
    keys = [f"k{i}" for i in range(20_000)]
    events: list[dict[str, object]] = []
    sender = threading.Thread(target=produce_stream, args=(producer, keys, 60.0, events))
    sender.start()
    for kill, lose_local_state in enumerate((False, False, True), start=1):
        quarter = kill * len(keys) // 4
        wait_for(
            partial(sent_and_joining, worker, events, quarter),
            timeout=AFTER_CRASH_TIMEOUT,
            what=f"kill {kill}: {quarter} feedback sent and the worker joining",
        )
        worker.kill()
        assert len(events) < len(keys), f"kill {kill} came after the last feedback was sent"
        if lose_local_state:
            shutil.rmtree(Path(env["STREAMS_DATA_DIR"]))
        worker.start(wait=False)
        worker.wait_healthy(timeout=AFTER_CRASH_TIMEOUT)  # the killed one's session ended
    sender.join()
    out = read_joined(bootstrap, topic_prefix, events, timeout=AFTER_CRASH_TIMEOUT)
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
    eos = {"STREAMS_PROCESSING_GUARANTEE": "exactly_once", **QUICK_FAILOVER}
    first = workers("w1", **eos)
    assert first.process is not None
    keys = [f"z{i}" for i in range(600)]
    events: list[dict[str, object]] = []
    sender = threading.Thread(target=produce_stream, args=(producer, keys[:400], 4.0, events))
    sender.start()
    time.sleep(2.0)
    first.process.send_signal(signal.SIGSTOP)
    try:
        sender.join()
        second = workers("w2", wait=False, **eos)
        second.wait_healthy(timeout=AFTER_CRASH_TIMEOUT)  # once the first one's session ended
        read_joined(bootstrap, topic_prefix, events, timeout=AFTER_CRASH_TIMEOUT, settle=0.0)
    finally:
        first.process.send_signal(signal.SIGCONT)
    produce_stream(producer, keys[400:], 2.0, events)
    out = read_joined(bootstrap, topic_prefix, events, timeout=AFTER_CRASH_TIMEOUT, settle=5.0)
    assert_joined_once_by_id(out, events)
    assert len(out) == len(keys), f"{len(out) - len(keys)} repeated joined records"
    assert first.process.poll() in (None, 70), first.log_tail()


def test_a_killed_worker_is_back_within_its_session_timeout(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    """Invariant: what a crash costs is STREAMS_SESSION_TIMEOUT, in both of a worker's groups.

    Killed (it leaves neither group) and restarted, a worker with a 6 s session timeout
    joins on every partition again within 40 s, which the 45 s default could not: its
    input consumer's group and faust's (which its start waits for) both use the setting.
    """
    worker = workers("w1", **QUICK_FAILOVER)
    worker.kill()
    killed = time.monotonic()
    worker.start(wait=False)
    keys = [f"s{i}" for i in range(20)]  # every one of the 4 partitions
    events = []
    for key in keys:
        producer.send("predictions", prediction("loans", key))
        producer.send("feedback", fb := feedback("loans", key, {"thumbs_up": True}))
        events.append(fb)
    producer.flush()
    out = read_joined(bootstrap, topic_prefix, events, timeout=40 - (time.monotonic() - killed))
    assert_joined_once_by_id(out, events)
    print(f"joined again {time.monotonic() - killed:.1f} s after the kill")
