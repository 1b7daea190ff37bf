"""The SDK's Kafka side: one idempotent confluent-kafka producer and its delivery reports.

Records are queued with key = join key (UTF-8) and value = the JSON, partitioned with
murmur2 like Java clients and aiokafka, so the worker finds a prediction and its
feedback on the same partition number.

Delivery is asynchronous. librdkafka reports only failures (`delivery.report.only.error`);
their join keys are kept until `flush()` or `close()` raises `DeliveryError` with them.
When `flush` runs out of time it purges what is still queued, so those keys are
reported too and nothing is sent behind the caller's back after the error.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as KafkaProducer

from streams.clock import Clock, SystemClock
from streams.errors import DeliveryError, StreamsError
from streams.kafka_config import AuthenticationFailed, auth_failure, librdkafka_config
from streams.sdk.records import FEEDBACK, PREDICTION
from streams.settings import Settings
from streams.topics import FEEDBACK as FEEDBACK_TOPIC
from streams.topics import PREDICTIONS as PREDICTIONS_TOPIC

log = logging.getLogger(__name__)

PRODUCER_DEFAULTS: dict[str, Any] = {
    "partitioner": "murmur2_random",  # as Java clients, aiokafka and faust (TRAPS.md)
    "enable.idempotence": True,
    "compression.type": "lz4",
    "linger.ms": 5,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 1_000_000,
    "delivery.report.only.error": True,  # a report per success would cost a Python call each
    # librdkafka logs each connection failure that `error_cb` also reports: keep one.
    "log_level": 2,
}
FLUSH_SLICE_SECONDS = 0.5
# An error said again within this many seconds is not logged again.
REPEAT_SECONDS = 60.0
_TIMING = re.compile(r" \(after \d+ms in state \w+\)")
_PURGED = (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT)


class Producer(Protocol):
    """What the SDK needs of a producer: confluent-kafka's, or a fake in unit tests."""

    def produce(self, topic: str, value: bytes, key: bytes) -> None: ...  # noqa: D102
    def poll(self, timeout: float) -> int: ...  # noqa: D102
    def flush(self, timeout: float) -> int: ...  # noqa: D102
    def purge(self, in_queue: bool, in_flight: bool, blocking: bool) -> None: ...  # noqa: D102
    def __len__(self) -> int: ...


def producer_config(
    settings: Settings, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The confluent-kafka configuration: our defaults, then `overrides` (`a_b` means `a.b`)."""
    config: dict[str, Any] = {**librdkafka_config(settings), **PRODUCER_DEFAULTS}
    # Room for the largest record we let through, plus the batch framing.
    config["message.max.bytes"] = max(1_000_000, settings.max_record_bytes + 65_536)
    for name, value in (overrides or {}).items():
        config[name if "." in name or name.endswith("_cb") else name.replace("_", ".")] = value
    return config


class Client:
    """One producer and its delivery bookkeeping; `streams.init()` makes the process-wide one."""

    def __init__(
        self,
        settings: Settings,
        config: Mapping[str, Any] | None = None,
        *,
        producer: Producer | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.closed = False
        self.topics = {
            PREDICTION: settings.topic(PREDICTIONS_TOPIC),
            FEEDBACK: settings.topic(FEEDBACK_TOPIC),
        }
        self._lock = threading.Lock()
        self._failed: list[tuple[str, str]] = []
        # Set when the broker refused the login or TLS failed: nothing will be delivered.
        self.auth_failed: AuthenticationFailed | None = None
        self._said: dict[str, float] = {}  # error (timing left out) -> when it was last logged
        if producer is None:
            full = producer_config(settings, config)
            full.update(on_delivery=self.on_delivery, error_cb=self.on_error, logger=log)
            producer = KafkaProducer(full)
        self.producer = producer

    def on_delivery(self, error: KafkaError | None, message: Message[Any, Any]) -> None:
        """Delivery report: keep the join key of every record that failed."""
        if error is None:
            return
        key = message.key()
        shown = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        text = error.str()
        if error.code() in _PURGED:
            text = f"not delivered before flush() timed out ({text})"
        with self._lock:
            self._failed.append((shown, text))

    def on_error(self, error: KafkaError) -> None:
        """A client error: a refused login or failed TLS stops the client; the rest is logged once.

        librdkafka reports every reconnect attempt; the same error within
        `REPEAT_SECONDS` is not logged again.
        """
        failure = auth_failure(self.settings, error)
        if failure is not None:
            if self.auth_failed is None:
                log.error("kafka_auth_failed error=%s", failure)
                self.auth_failed = failure
            return
        text, now = error.str(), time.monotonic()
        same = _TIMING.sub("", text)  # a reconnect's text differs only by its timing
        if now - self._said.get(same, -REPEAT_SECONDS) < REPEAT_SECONDS:
            return
        self._said[same] = now
        log.warning("kafka_error error=%s fatal=%s", text, error.fatal())

    def send(self, kind: str, keys: Sequence[bytes], values: Sequence[bytes]) -> None:
        """Queue records of one kind; blocks only while the queue is full."""
        if self.auth_failed is not None:
            raise self.auth_failed
        if self.closed:
            raise StreamsError("this SDK client is closed: call streams.init() again")
        topic, produce, poll = self.topics[kind], self.producer.produce, self.producer.poll
        for key, value in zip(keys, values, strict=True):
            while True:
                try:
                    produce(topic, value, key)
                    break
                except BufferError:
                    poll(0.05)  # librdkafka's queue is full: serve it until there is room
        poll(0)

    def flush(self, timeout: float | None = None) -> None:
        """Wait up to `timeout` s for delivery; raise `DeliveryError` naming what was not sent.

        `timeout` defaults to STREAMS_FLUSH_TIMEOUT (`init(flush_timeout=...)`), 30 s. A
        refused login or TLS handshake ends the wait at once: retrying will not help.
        """
        if timeout is None:
            timeout = self.settings.flush_timeout.total_seconds()
        deadline = time.monotonic() + timeout
        left = self.producer.flush(min(timeout, FLUSH_SLICE_SECONDS))
        while left and self.auth_failed is None and time.monotonic() < deadline:
            left = self.producer.flush(min(FLUSH_SLICE_SECONDS, deadline - time.monotonic()))
        if left and self.auth_failed is not None:
            self.producer.purge(in_queue=True, in_flight=True, blocking=True)
            self.producer.flush(1.0)  # serves the purged records' delivery reports
            with self._lock:
                self._failed = [(key, str(self.auth_failed)) for key, _ in self._failed]
            # Let go of the producer: librdkafka would go on retrying, and logging, forever.
            self.closed = True
            self.producer = _Stopped()
        elif left:
            self.producer.purge(in_queue=True, in_flight=True, blocking=True)
            self.producer.flush(5.0)  # serves the purged records' delivery reports
        with self._lock:
            failed, self._failed = self._failed, []
        if left and not failed:
            why = self.auth_failed or f"{left} record(s) still queued after {timeout} s"
            failed = [("(unknown)", str(why))]
        if failed:  # the error is the report: whoever called says it, once
            raise DeliveryError([key for key, _ in failed], [error for _, error in failed])

    def close(self, timeout: float | None = None) -> None:
        """Flush and stop taking records; raises like `flush`."""
        self.closed = True
        self.flush(timeout)


class _Stopped:
    """Stands in for a producer let go of after a refused login: holds and sends nothing."""

    def produce(self, topic: str, value: bytes, key: bytes) -> None:
        raise StreamsError("this SDK client stopped: the broker refused it")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def purge(self, in_queue: bool, in_flight: bool, blocking: bool) -> None:
        return None

    def __len__(self) -> int:
        return 0
