"""Reading what the worker wrote: `streams.consume_joined(group_id=...)`, `streams tail`.

At least once, by this order: a record's offset is stored only when the caller comes
back for the next record (so it has handled this one), and librdkafka commits stored
offsets every second and on close. A reader that stops or crashes while handling a
record reads that record again next time. Reads are `read_committed`: records of
aborted or still-open transactions are never yielded.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Generator
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException

from streams.errors import BrokerUnreachable
from streams.kafka_config import auth_failure, librdkafka_config, list_topics
from streams.records import Record
from streams.settings import Settings
from streams.topics import JOINED

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0


def consume_joined(
    group_id: str,
    from_beginning: bool = False,
    timeout: float | None = None,
    settings: Settings | None = None,
    **consumer_config: Any,
) -> Generator[Record, None, None]:
    """Yield joined records (dicts, `joined/v1`) as the worker writes them.

    A refused login or TLS handshake raises `AuthenticationFailed` within seconds.
    `group_id` names the consumer group: readers in one group share the partitions
    and resume where the group left off. `from_beginning` applies when the group has
    no committed offset yet (else only new records). `timeout` ends the iteration after
    that many seconds without a record; None waits forever. Topic names come from
    `settings` (default: `Settings.from_env()`); extra keywords are librdkafka settings.
    """
    settings = Settings.from_env() if settings is None else settings
    return read_topic(
        settings,
        settings.topic(JOINED),
        group_id=group_id,
        from_beginning=from_beginning,
        idle_timeout=timeout,
        **consumer_config,
    )


def read_topic(
    settings: Settings,
    topic: str,
    *,
    group_id: str | None = None,
    from_beginning: bool = False,
    idle_timeout: float | None = None,
    down_timeout: float | None = None,
    **consumer_config: Any,
) -> Generator[Record, None, None]:
    """Yield the JSON records of `topic` (its full name), `read_committed`.

    With a `group_id`, offsets are committed as described above. Without one (`streams
    tail`), a throwaway group reads and commits nothing. `idle_timeout` ends the
    iteration after that many seconds without a record; None waits forever.
    `down_timeout` raises `BrokerUnreachable` once every broker has been down that
    many seconds (and a metadata request confirms it); None (the default) waits for the
    brokers to come back. Each kind of Kafka error is logged once.
    """
    said: set[int] = set()  # error codes logged: a reconnect's text differs by its timing
    down: list[float] = []  # when librdkafka said every broker was down

    def on_error(error: KafkaError) -> None:
        failure = auth_failure(settings, error)
        if failure is not None:
            raise failure  # a refused login or TLS handshake: out of poll(), at once
        if error.code() == KafkaError._ALL_BROKERS_DOWN and not down:
            down.append(time.monotonic())
        if error.code() not in said:
            said.add(error.code())
            log.warning("kafka_error topic=%s error=%s", topic, error.str())

    config: dict[str, Any] = {
        **librdkafka_config(settings),
        "error_cb": on_error,
        "group.id": group_id or f"streams-reader-{uuid.uuid4()}",
        "isolation.level": "read_committed",  # librdkafka's default; said out loud (TRAPS.md)
        "auto.offset.reset": "earliest" if from_beginning else "latest",
        "enable.auto.commit": group_id is not None,
        "enable.auto.offset.store": False,  # we store each offset once the caller is done
        "auto.commit.interval.ms": 1000,
        "logger": log,
        **consumer_config,
    }
    consumer = Consumer(config)
    consumer.subscribe([topic])
    log.info("read_topic_start topic=%s group_id=%s", topic, config["group.id"])
    try:
        last = time.monotonic()
        while True:
            if down and down_timeout is not None and time.monotonic() - down[0] >= down_timeout:
                _confirm_down(consumer, topic, settings, down_timeout)
                down.clear()  # they came back without a record to show it
            wait = POLL_SECONDS
            if idle_timeout is not None:
                wait = min(wait, max(0.0, last + idle_timeout - time.monotonic()))
            message = consumer.poll(wait)
            if message is None:
                if idle_timeout is not None and time.monotonic() - last >= idle_timeout:
                    return
                continue
            error = message.error()
            if error is not None:
                if error.fatal():
                    raise KafkaException(error)
                log.warning("consume_error topic=%s error=%s", topic, error.str())
                continue
            down.clear()
            last = time.monotonic()
            record = _decode(message.value())
            if record is None:
                # Not written by the worker; reported, then passed over.
                log.error(
                    "undecodable_record topic=%s partition=%s offset=%s",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                )
            else:
                yield record
            if group_id is not None:
                consumer.store_offsets(message)
    finally:
        consumer.close()


def _confirm_down(consumer: Consumer, topic: str, settings: Settings, waited: float) -> None:
    """Raise `BrokerUnreachable` unless a broker answers a metadata request within 5 s."""
    try:
        list_topics(consumer, 5.0, topic)
    except KafkaException:
        raise BrokerUnreachable(
            f"no Kafka broker answered at STREAMS_BOOTSTRAP_SERVERS={settings.bootstrap_servers} "
            f"for {waited:g} s: is it running?"
        ) from None


def _decode(value: bytes | str | None) -> Record | None:
    if value is None:
        return None
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None
