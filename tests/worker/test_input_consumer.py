"""The input consumer notices when librdkafka knows no broker at all, and is replaced.

A broker shutting down can answer metadata with no broker; librdkafka 2.16 then forgets
every broker and never goes back to `bootstrap.servers` (librdkafka #5301), so the
consumer would never rejoin its group. Seen after a broker restart in
tests/worker/test_broker_restart.py; here the statistics that show it are fed by hand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from streams.settings import Settings
from streams.worker.consumer import STRANDED_SECONDS, InputConsumer
from streams.worker.metrics import Metrics

pytestmark = pytest.mark.unit


def statistics(*sources: str) -> str:
    """librdkafka's statistics naming brokers of these sources (learned, configured, logical)."""
    brokers = {f"b{i}": {"source": source, "nodeid": i} for i, source in enumerate(sources)}
    return orjson.dumps({"brokers": brokers, "topics": {}}).decode()


@pytest.fixture
def inputs() -> Iterator[InputConsumer]:
    # Nothing listens on port 1: the consumer never reaches a broker, and needs none here.
    consumer = InputConsumer(
        Settings(bootstrap_servers="localhost:1"), {"t.predictions": "predictions"}, Metrics()
    )
    yield consumer
    consumer.close()


def noop(consumer: Any, partitions: Any) -> None:
    """A rebalance callback that does nothing."""


def test_a_consumer_that_knows_a_broker_is_never_stranded(inputs: InputConsumer) -> None:
    inputs._on_statistics(statistics("learned", "logical"))
    assert inputs.brokerless_since is None
    assert not inputs.stranded()


def test_knowing_no_broker_for_a_while_strands_it_until_one_is_known_again(
    inputs: InputConsumer,
) -> None:
    inputs._on_statistics(statistics("logical"))  # the group coordinator's stand-in only
    assert inputs.brokerless_since is not None
    assert not inputs.stranded()  # librdkafka's own re-bootstrap gets its chance first
    inputs.brokerless_since -= STRANDED_SECONDS
    assert inputs.stranded()
    inputs._on_statistics(statistics("configured", "logical"))  # re-bootstrapped after all
    assert not inputs.stranded()


def test_renew_replaces_the_consumer_and_starts_watching_afresh(inputs: InputConsumer) -> None:
    inputs.subscribe(noop, noop, noop)
    inputs._on_statistics(statistics())
    assert inputs.brokerless_since is not None
    inputs.brokerless_since -= STRANDED_SECONDS
    old = inputs.consumer
    inputs.renew()
    assert inputs.consumer is not old
    assert inputs.brokerless_since is None
    assert not inputs.stranded()
