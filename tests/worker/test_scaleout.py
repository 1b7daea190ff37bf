"""Several worker processes share the partitions, and hand them over when one stops."""

from __future__ import annotations

import pytest
from harness import (
    RawProducer,
    Start,
    assert_joined_once_by_id,
    feedback,
    metric,
    prediction,
    read_joined,
    wait_for,
)

pytestmark = pytest.mark.integration


def stored(*workers: object) -> float:
    return sum(
        metric(w.metrics(), "streams_outcomes_total", topic="predictions", outcome="stored")
        for w in workers
    )  # type: ignore[attr-defined]


def test_two_workers_share_partitions_and_one_takes_over_the_others_table(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    """Invariant: each feedback sent after a worker stops is joined, by id; repeats identical."""
    first = workers("w1")
    second = workers("w2")
    keys = [f"s{i}" for i in range(200)]
    for key in keys:
        producer.send("predictions", prediction("loans", key))
    producer.flush()
    wait_for(lambda: stored(first, second) == len(keys), 60, "every prediction stored")
    assert stored(first) > 0 and stored(second) > 0, "both workers own partitions"
    assert second.stop() == 0
    events = [feedback("loans", key, {"thumbs_up": True}) for key in keys]
    for event in events:
        producer.send("feedback", event)
    producer.flush()
    out = read_joined(bootstrap, topic_prefix, events, timeout=40, settle=1.0)
    assert_joined_once_by_id(out, events)
