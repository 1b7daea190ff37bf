"""The broker goes away in the middle of a run and comes back: the worker waits and resumes.

The shared broker is never touched: this module starts a broker of its own from the same
jars (`scripts/kafka.sh` with its own state directory and ports) and overrides the
`bootstrap` fixture with it, so the worker, the producer and the readers all use it. Each
test stops that broker (SIGTERM, `kafka.sh down`) while predictions and feedback flow,
keeps it down for 10 s, starts it again on the same state directory, and checks, for both
guarantees, the same invariants as the SIGKILL chaos tests: every feedback's joined record
arrives (by id; none repeated for a read_committed reader with exactly_once), and the
thumbs_up totals on `feedback-stats` equal the feedback sent.

In both modes the worker waits and resumes by itself, without a restart (the test fails
if a feedback is not joined 90 s after the broker is back): with at_least_once librdkafka
keeps its queued records for 300 s; with exactly_once the transaction timeout (60 s, which
also caps the queued records' delivery timeout) outlasts the outage, the transactional
calls that time out meanwhile are retried, and a transaction that must be aborted, or
whose commit wedges (librdkafka 2.16 after a broker restart), is ended by a new producer,
the tables are restored from their changelogs and the inputs read again from the
committed offsets. The 10 s outage outlasts the 6 s session timeout, so the input
consumer loses its partitions on the way: with exactly_once a new producer ends the open
transaction then too. And a consumer left knowing no broker (a broker shutting down can
answer metadata with none, librdkafka #5301) is replaced and joins the group again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from harness import (
    QUICK_FAILOVER,
    RawProducer,
    Start,
    free_port_range,
    joined_ids,
    kafka_script,
    own_broker_env,
    read_joined,
)
from test_chaos import check_joined_and_aggregates, produce_stream

pytestmark = pytest.mark.chaos

OUTAGE_SECONDS = 10.0


class OwnBroker:
    """This module's broker: `down` and `up` again on the same state directory."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.address = env["KAFKA_ADDRESS"]

    def up(self) -> None:
        kafka_script("up", self.env)

    def down(self) -> None:
        kafka_script("down", self.env)


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnBroker]:
    broker = OwnBroker(own_broker_env(tmp_path_factory.mktemp("kafka-own"), free_port_range(2)))
    broker.up()
    try:
        yield broker
    finally:
        broker.down()


@pytest.fixture(scope="module")
def bootstrap(own_broker: OwnBroker) -> str:
    """Overrides the shared broker: everything in this module talks to `own_broker`."""
    return own_broker.address


class PatientProducer(RawProducer):
    """Its `flush` waits out the outage (librdkafka keeps queued records for 300 s)."""

    def flush(self) -> None:
        assert self.producer.flush(120) == 0, "records not delivered"


@pytest.fixture
def producer(bootstrap: str, topic_prefix: str) -> RawProducer:
    return PatientProducer(bootstrap, topic_prefix)


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
def test_broker_restart_mid_run_loses_nothing_and_counts_exactly(
    workers: Start,
    producer: RawProducer,
    bootstrap: str,
    topic_prefix: str,
    own_broker: OwnBroker,
    guarantee: str,
) -> None:
    """Invariant: the worker outlives a 10 s broker outage in the middle of 2,000 feedback
    and then joins each feedback (exactly once for a read_committed reader with
    exactly_once), and the aggregates count each once."""
    worker = workers("w1", STREAMS_PROCESSING_GUARANTEE=guarantee, **QUICK_FAILOVER)
    assert worker.process is not None
    keys = [f"b{i}" for i in range(2_000)]
    events: list[dict[str, object]] = []
    # The producer queues while the broker is away (librdkafka's message timeout is 300 s).
    sender = threading.Thread(target=produce_stream, args=(producer, keys, 15.0, events))
    sender.start()
    time.sleep(5.0)  # joining, with transactions open
    own_broker.down()
    time.sleep(OUTAGE_SECONDS)
    own_broker.up()
    assert worker.process.poll() is None, f"worker exited in the outage:\n{worker.log_tail()}"
    sender.join()
    assert len(events) == len(keys), "the producer did not get every record delivered"
    out = read_joined(bootstrap, topic_prefix, events, timeout=90.0)
    missing = len(joined_ids(events) - {read.value["id"] for read in out})
    assert missing == 0, f"{missing} feedback not joined after the outage:\n{worker.log_tail(200)}"
    check_joined_and_aggregates(bootstrap, topic_prefix, out, events, guarantee)
    assert worker.process.poll() is None, f"worker exited after the outage:\n{worker.log_tail()}"
