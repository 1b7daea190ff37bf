"""The per-input path (`Processor`) on real table partitions, without a broker."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import orjson
import pytest

from streams.clock import ManualClock
from streams.records import format_ts
from streams.settings import Settings
from streams.worker import feedback_stats, join, state
from streams.worker.metrics import Metrics
from streams.worker.outbox import Outbox
from streams.worker.processing import Outgoing, Processor, partition_for
from streams.worker.tables import Tables

pytestmark = pytest.mark.unit

APP = "loans"
T0 = 1_800_000_000_000
KINDS = {"predictions": "predictions", "feedback": "feedback"}


class Message:
    """An input record with confluent-kafka's accessors."""

    def __init__(
        self, topic: str, record: dict[str, Any], offset: int, partition: int | None = None
    ) -> None:
        self._topic, self._offset = topic, offset
        self._key = record["join_key"].encode()
        self._value = orjson.dumps(record)
        self._partition = partition_for(self._key, 1) if partition is None else partition

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return (1, T0)


class NoKafka:
    """Where the tables hand their changelog records: nowhere (they are not under test)."""

    def __init__(self) -> None:
        self.changelogs: set[str] = set()
        self.delivered: dict[tuple[str, int], int] = {}

    def send_many(self, *args: Any) -> None:
        return None


@pytest.fixture
def processor(tmp_path: Path) -> Iterator[Processor]:
    settings = replace(Settings.from_env({}), partitions=1, data_dir=tmp_path)
    tables = Tables(tmp_path, "test", cast(Outbox, NoKafka()))
    tables.open(0)
    yield Processor(settings, ManualClock(T0), Metrics(), tables, KINDS)
    tables.discard()
    tables.close_all()


def prediction(key: str) -> dict[str, Any]:
    return {
        "schema": "prediction/v1",
        "application": APP,
        "join_key": key,
        "event_id": f"p-{key}",
        "timestamp": format_ts(T0),
        "version": "3",
        "inputs": {"x": 1},
        "outputs": {"y": 2},
    }


def feedback(key: str, event_id: str, thumbs_up: bool) -> dict[str, Any]:
    return {
        "schema": "feedback/v1",
        "application": APP,
        "join_key": key,
        "event_id": event_id,
        "timestamp": format_ts(T0),
        "feedback": {"thumbs_up": thumbs_up},
    }


class Feeder:
    def __init__(self, processor: Processor) -> None:
        self.processor = processor
        self.offsets = {"predictions": 0, "feedback": 0}

    def __call__(self, topic: str, record: dict[str, Any]) -> list[Outgoing]:
        self.offsets[topic] += 1
        return self.processor.process(Message(topic, record, self.offsets[topic]))


def thumbs_up_share(processor: Processor) -> list[Any]:
    key = feedback_stats.stats_key(APP, "3", "thumbs_up", T0 // 60_000 * 60_000)
    return feedback_stats.decode_totals(processor.tables.partition(0).state.get(key))


def test_an_input_that_fails_midway_is_undone_before_the_next(
    processor: Processor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Invariant: an input dead-lettered after it moved the aggregates but before its row
    was written counts nowhere; the next input settles the journal first."""
    feed = Feeder(processor)
    for key in ("a", "b", "c"):
        feed("predictions", prediction(key))
    assert [o.topic for o in feed("feedback", feedback("a", "f1", True))] == ["joined"]
    assert thumbs_up_share(processor)[:3] == [1, 1, 0]

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    with monkeypatch.context() as patch:
        patch.setattr(state, "write_row", broken)  # after the journal and the shares
        [failed] = feed("feedback", feedback("b", "f2", True))
    assert failed.topic == "deadletter"
    assert orjson.loads(failed.value)["reason"] == "processing_error"
    assert thumbs_up_share(processor)[:3] == [2, 2, 0]  # moved, not yet undone

    assert [o.topic for o in feed("feedback", feedback("c", "f3", False))] == ["joined"]
    assert thumbs_up_share(processor)[:3] == [2, 1, 1]  # f2's move undone, f3's made


def sampled(processor: Processor) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for m in processor.metrics.registry.collect()
        for s in m.samples
    }


def test_metrics_add_up_once_flushed(processor: Processor) -> None:
    """Invariant: every input counts once in records_in and once in an outcome, per batch."""
    feed = Feeder(processor)
    feed("predictions", prediction("a"))
    feed("predictions", prediction("a"))  # a retry
    feed("feedback", feedback("a", "f1", True))
    feed("feedback", feedback("nobody", "f2", True))  # waits
    feed("feedback", {"schema": "feedback/v1", "join_key": "a"})  # dead letter
    assert sampled(processor)[("streams_records_in_total", (("topic", "feedback"),))] == 0

    processor.flush_metrics()
    processor.flush_metrics()  # nothing twice
    samples = sampled(processor)

    def outcome(topic: str, name: str) -> float:
        return samples[("streams_outcomes_total", (("outcome", name), ("topic", topic)))]

    assert samples[("streams_records_in_total", (("topic", "predictions"),))] == 2
    assert samples[("streams_records_in_total", (("topic", "feedback"),))] == 3
    assert (outcome("predictions", "stored"), outcome("predictions", "duplicate")) == (1, 1)
    assert [outcome("feedback", o) for o in ("joined", "pending", "deadletter")] == [1, 1, 1]
    assert samples[("streams_joined_total", (("trigger", "feedback"),))] == 1
    assert samples[("streams_join_latency_seconds_count", ())] == 1


def test_a_joined_record_from_a_stored_row_is_the_json_of_the_parsed_one(
    processor: Processor,
) -> None:
    """The stored prediction's inputs and outputs are spliced in as stored (`RawJson`):
    the record is byte for byte the one built from the parsed prediction."""
    pred = {**prediction("a"), "inputs": {"x": [0.1, 2e-7, "é"]}, "tags": {"t": "1"}}
    fb = feedback("a", "f1", True)
    feed = Feeder(processor)
    feed("predictions", pred)
    [sent] = feed("feedback", fb)

    stored = join.on_prediction(None, pred, T0, "p0:1", T0, 90 * 86_400_000)
    [emit] = join.on_feedback(stored.row, fb, T0, "f0:1", T0, 86_400_000).emits
    assert isinstance(emit.record["inputs"], dict)
    assert sent.value == orjson.dumps(emit.record)


def test_a_misplaced_record_is_sent_on_and_a_placed_one_applied(tmp_path: Path) -> None:
    """A record on a partition its key does not hash to is rerouted, whether or not its
    key has a row where it hashes; nothing of it is applied where it was read."""
    settings = replace(Settings.from_env({}), partitions=2, data_dir=tmp_path)
    tables = Tables(tmp_path, "test", cast(Outbox, NoKafka()))
    home = partition_for(b"a", 2)
    for partition in (0, 1):
        tables.open(partition)
    processor = Processor(settings, ManualClock(T0), Metrics(), tables, KINDS)
    try:
        placed = processor.process(Message("predictions", prediction("a"), 1, home))
        elsewhere = Message("feedback", feedback("a", "f1", True), 1, 1 - home)
        [sent_on] = processor.process(elsewhere)
        [joined] = processor.process(Message("feedback", feedback("a", "f1", True), 2, home))
    finally:
        tables.discard()
        tables.close_all()
    assert placed == []
    assert (sent_on.topic, sent_on.partition, sent_on.value) == (
        "feedback",
        home,
        elsewhere.value(),
    )
    assert sent_on.headers == [("streams-rerouted-from", f"feedback/{1 - home}/1".encode())]
    assert joined.topic == "joined"
    assert processor.outcomes[("feedback", "rerouted")] == 1
