"""The worker's input consumer: one confluent-kafka consumer reads `predictions` and `feedback`.

- Its own group, `<app id>-inputs`: faust's consumer joins the group `<app id>` with
  faust's assignor protocol, and two protocols in one group fail
  (INCONSISTENT_GROUP_PROTOCOL).
- `partition.assignment.strategy=range`: with equal partition counts, partition p of
  both topics goes to the same member (co-partitioning: the row of a join key lives in
  the tables of the partition its records arrive on). `on_assign` checks it.
- Nothing is committed automatically: `take_applied` hands `streams.worker.checkpoint`,
  for each partition, the offset after the last record applied, and it commits them
  (`commit_offsets`, or in the transaction) when it says so.
- `isolation.level=read_committed`: an aborted transaction's inputs are never read.
- `STREAMS_SESSION_TIMEOUT` (`group_timing`) is how long a worker that died without
  leaving keeps its partitions, in this group and in faust's.

librdkafka prefetches in its own threads; `read` takes what has arrived without waiting
(`consume(n, timeout=0)`), so the event loop never blocks on it. Rebalance callbacks
run inside that call, on the event loop's thread, between two batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

from streams.kafka_config import REBOOTSTRAP, librdkafka_config
from streams.settings import Settings
from streams.worker.memory import INPUT_QUEUE
from streams.worker.metrics import Metrics

log = logging.getLogger(__name__)

Callback = Callable[[Any, list[TopicPartition]], None]
STATISTICS_INTERVAL_MS = 2000
# The clients' default heartbeat; shorter only where the session timeout needs it (a third).
HEARTBEAT_SECONDS = 3.0


def heartbeat_seconds(settings: Settings) -> float:
    """How often both group members of a worker send heartbeats."""
    return min(HEARTBEAT_SECONDS, settings.session_timeout.total_seconds() / 3)


def group_timing(settings: Settings) -> dict[str, int]:
    """The input consumer's session timeout and heartbeat, in librdkafka's names."""
    return {
        "session.timeout.ms": round(settings.session_timeout.total_seconds() * 1000),
        "heartbeat.interval.ms": round(heartbeat_seconds(settings) * 1000),
    }


def faust_group_timing(settings: Settings) -> dict[str, Any]:
    """The same for faust's consumer (group `<app id>`), in faust's names.

    A restarted worker starts its reader only once faust's group has settled, so a dead
    member's session delays it as much. faust refuses a session timeout longer than its
    request timeout (90 s by default).
    """
    session = settings.session_timeout.total_seconds()
    return {
        "broker_session_timeout": session,
        "broker_heartbeat_interval": heartbeat_seconds(settings),
        "broker_request_timeout": max(90.0, session),
    }


COMMITTED_TIMEOUT = 30.0
# How long the input consumer may know no broker before it is replaced (`stranded`):
# longer than librdkafka's own re-bootstrap (`REBOOTSTRAP`), which ends most outages.
STRANDED_SECONDS = 15.0


def _at(tp: TopicPartition) -> tuple[str, int]:
    return tp.topic, tp.partition


def _close_quietly(consumer: Consumer) -> None:
    try:
        consumer.close()
    except (KafkaException, RuntimeError) as error:
        log.warning("retired_consumer_close_failed error=%s", error)


def input_group(app_id: str) -> str:
    """The input consumer's group id, apart from faust's own group `<app id>`."""
    return f"{app_id}-inputs"


class InputConsumer:
    """The consumer of the input topics, and the offsets applied but not yet committed."""

    def __init__(self, settings: Settings, kind_of: dict[str, str], metrics: Metrics) -> None:
        self.kind_of = kind_of  # full input topic name -> predictions | feedback
        self.topics = list(kind_of)
        self.metrics = metrics
        # What every consumer of the group's offsets is built with (`renew`, `committed_positions`).
        self.config: dict[str, Any] = {
            **librdkafka_config(settings),
            **REBOOTSTRAP,
            "group.id": input_group(settings.app_id),
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
        }
        self.timing = group_timing(settings)
        self.consumer = self._new_consumer()
        self.callbacks: tuple[Callback, Callback, Callback] | None = None
        # Since when the consumer knows no broker (its statistics), or None.
        self.brokerless_since: float | None = None
        # (topic, partition) -> the offset after the last record applied, not yet committed.
        self.applied: dict[tuple[str, int], int] = {}
        self.closed = False

    def _new_consumer(self) -> Consumer:
        # The callbacks of a consumer replaced since (`renew`) are not this one's any more.
        def on_statistics(raw: str) -> None:
            if consumer is self.consumer:
                self._on_statistics(raw)

        def on_error(error: Any) -> None:
            if consumer is self.consumer:
                self._on_error(error)

        consumer = Consumer(
            {
                **self.config,
                **self.timing,
                "partition.assignment.strategy": "range",
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                **INPUT_QUEUE,
                "statistics.interval.ms": STATISTICS_INTERVAL_MS,
                "stats_cb": on_statistics,
                "error_cb": on_error,
            }
        )
        return consumer

    def subscribe(self, on_assign: Callback, on_revoke: Callback, on_lost: Callback) -> None:
        """Join the group; the callbacks run inside `read`."""
        self.callbacks = (on_assign, on_revoke, on_lost)
        self._subscribe()

    def _subscribe(self) -> None:
        assert self.callbacks is not None

        def only_current(callback: Callback) -> Callback:
            def call(consumer: Any, partitions: list[TopicPartition]) -> None:
                if consumer is self.consumer:  # not a replaced one closing (`renew`)
                    callback(consumer, partitions)

            return call

        on_assign, on_revoke, on_lost = (only_current(c) for c in self.callbacks)
        self.consumer.subscribe(
            self.topics, on_assign=on_assign, on_revoke=on_revoke, on_lost=on_lost
        )

    def stranded(self) -> bool:
        """The consumer has known no broker for `STRANDED_SECONDS` and owns no partition.

        librdkafka (2.16) forgets every broker a metadata response leaves out, and a
        broker shutting down can answer with none at all; the client then knows no
        broker and never goes back to `bootstrap.servers` (librdkafka issue #5301): it
        would never rejoin the group. Its partitions are lost once its session times
        out (`on_lost`); from then on only a new consumer (`renew`) reads again.
        """
        since = self.brokerless_since
        if since is None or time.monotonic() - since < STRANDED_SECONDS:
            return False
        return not self.consumer.assignment()

    def renew(self) -> None:
        """Replace a stranded consumer (`stranded`) with a new one that joins the group again.

        The old one is closed in a thread of its own (a consumer that knows no broker
        may never finish closing); its callbacks do nothing any more.
        """
        old = self.consumer
        since = self.brokerless_since
        log.warning(
            "input_consumer_renewed reason=no_broker_known seconds=%.0f (librdkafka #5301); "
            "joining the group again with a new consumer",
            time.monotonic() - since if since is not None else 0.0,
        )
        self.brokerless_since = None
        self.consumer = self._new_consumer()
        self._subscribe()
        threading.Thread(target=_close_quietly, args=(old,), name="retired", daemon=True).start()

    def read(self, limit: int) -> list[Message[Any, Any]]:
        """What has arrived, up to `limit` records, without waiting."""
        return self.consumer.consume(limit, 0)

    def mark_applied(self, topic: str, partition: int, offset: int) -> None:
        """Record that the input at `offset` was applied (committed at the next commit)."""
        self.applied[(topic, partition)] = offset + 1

    def uncommitted(self) -> bool:
        """Whether records were applied since the last commit."""
        return bool(self.applied)

    def commit_offsets(self, offsets: list[TopicPartition]) -> bool:
        """Commit `offsets`; blocking (the commit thread). False when they were refused.

        A commit the group refuses (the partitions moved in a rebalance) is logged:
        the records are read again by their new owner, as after a crash.
        """
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            log.warning("commit_refused partitions=%d error=%s", len(offsets), error)
            return False
        return True

    def take_applied(self) -> list[TopicPartition]:
        """The offsets to commit for the records applied, forgotten here."""
        applied, self.applied = self.applied, {}
        return [TopicPartition(t, p, o) for (t, p), o in applied.items()]

    def give_back(self, offsets: list[TopicPartition]) -> None:
        """Offsets whose commit was refused: the next commit tries them, unless applied past."""
        for tp in offsets:
            self.applied.setdefault((tp.topic, tp.partition), tp.offset)

    def group_metadata(self) -> Any:
        """The consumer's group metadata, for `send_offsets_to_transaction`."""
        return self.consumer.consumer_group_metadata()

    def committed_positions(self, offsets: list[TopicPartition]) -> list[TopicPartition]:
        """Where these partitions' committed offsets are (an aborted transaction rewinds there).

        Blocking (the commit thread): asks again while the broker does not answer.
        """
        if not offsets:
            return []
        asked = [TopicPartition(tp.topic, tp.partition) for tp in offsets]
        while True:
            # A consumer of its own each time (it joins no group): the input consumer may
            # be stranded after a broker restart (see `stranded`), and is not read meanwhile.
            reader = Consumer(self.config)
            try:
                committed = reader.committed(asked, timeout=COMMITTED_TIMEOUT)
                break
            except KafkaException as error:
                log.warning("committed_offsets_retry error=%s", error)
                time.sleep(1.0)
            finally:
                reader.close()
        positions = []
        for tp in committed:
            start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            positions.append(TopicPartition(tp.topic, tp.partition, start))
        return positions

    def seek(self, positions: list[TopicPartition]) -> None:
        """Read these partitions again from these offsets (on the event loop, between reads)."""
        for tp in positions:
            log.info("rewind topic=%s partition=%d offset=%d", tp.topic, tp.partition, tp.offset)
            try:
                self.consumer.seek(tp)
            except KafkaException as error:  # no longer assigned: its new owner reads it
                log.warning("rewind_skipped topic=%s partition=%d error=%s", *_at(tp), error)

    def forget(self, partitions: set[int]) -> None:
        """Drop the applied offsets of lost partitions (this worker never commits them)."""
        for where in [w for w in self.applied if w[1] in partitions]:
            del self.applied[where]

    def pause(self, partitions: list[int]) -> None:
        """Stop fetching these partitions of both topics."""
        if partitions:
            self.consumer.pause(self.partitions_of(partitions))

    def resume(self, partitions: list[int]) -> None:
        """Fetch these partitions of both topics again."""
        if partitions:
            self.consumer.resume(self.partitions_of(partitions))

    def partitions_of(self, partitions: list[int]) -> list[TopicPartition]:
        """These partition numbers of both input topics."""
        return [TopicPartition(topic, p) for topic in self.topics for p in partitions]

    def close(self) -> None:
        """Leave the group at once (the partitions go to the others without a session timeout)."""
        if not self.closed:
            self.closed = True
            self.consumer.close()

    def _on_statistics(self, raw: str) -> None:
        # librdkafka's statistics (every STATISTICS_INTERVAL_MS, inside `read`): the lag.
        try:
            stats = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        brokers = stats.get("brokers", {}).values()
        if any(b.get("source") in ("learned", "configured") for b in brokers):
            self.brokerless_since = None
        elif self.brokerless_since is None:
            self.brokerless_since = time.monotonic()
            log.warning("consumer_knows_no_broker")
        gauge = self.metrics.consumer_lag
        for topic in self.topics:
            partitions = stats.get("topics", {}).get(topic, {}).get("partitions", {})
            for number, partition in partitions.items():
                lag = partition.get("consumer_lag", -1)
                if number != "-1" and lag >= 0:
                    gauge.labels(self.kind_of[topic], number).set(lag)

    def _on_error(self, error: Any) -> None:
        log.warning("consumer_error error=%s", error)
