"""Everything the worker writes to Kafka leaves through one librdkafka producer.

Outputs (`joined`, `unmatched`, `deadletter`, rerouted inputs) and the tables'
changelog records all go through one `Outbox`: an idempotent confluent-kafka
producer (acks=all, murmur2 like Java clients and the SDK). One producer keeps, per
key, the order in which rows were written to RocksDB and in which records were
emitted. It is written in C and batches in its own thread: handing it a record costs
a few microseconds, where faust's producer path (its buffer, then aiokafka's
Python batch builder and response parsing) cost most of the worker's time per input.

The safety rule (see `streams.worker.checkpoint`): before input offsets are committed,
`drain()` waits until Kafka has every record handed to the outbox so far. A delivery
that fails for good (after librdkafka's own retries) is not skipped over: `drain()`
and `flush()` raise, and the worker stops before the commit, so the inputs are read
again after a restart.

With `exactly_once` the producer is transactional: the first record after a commit begins
a transaction, and `commit_transaction` ends it together with the input offsets
(`send_offsets_to_transaction` with the consumer's group metadata, so a worker whose
partitions have moved is fenced, KIP-447). A transaction that fails is aborted:
nothing of it reaches a `read_committed` reader.

From the delivery reports the outbox keeps, per changelog partition, the offset of the
last record Kafka took (`delivered`): the checkpoint each table database stores with
its writes (`streams.worker.tables`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer, TopicPartition

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
# (changelog topic, partition) -> the offset of its last record Kafka has taken.
Offsets = dict[tuple[str, int], int]


# The partition argument of `Producer.produce` that lets the partitioner choose.
UNASSIGNED = -1
# A transaction spans one commit interval (0.1 s); a dead worker's open one is aborted by
# the broker after this long when no restart on its data directory fences it sooner.
TRANSACTION_TIMEOUT_MS = 10_000
TRANSACTION_CALL_TIMEOUT = 30.0


class DeliveryFailed(RuntimeError):
    """Kafka did not take a record after the producer's retries: the batch must not be acked."""


class Outbox:
    """One idempotent producer for every record the worker writes; see the module docstring."""

    def __init__(
        self,
        connection: Mapping[str, str],
        changelogs: set[str] | None = None,
        transactional_id: str | None = None,
    ) -> None:
        """`connection`: address and security, from `streams.kafka_config.librdkafka_config`."""
        self.changelogs: set[str] = changelogs if changelogs is not None else set()
        config: dict[str, Any] = {
            **connection,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
            "linger.ms": 2,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "error_cb": self._on_error,
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
            config["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
        self.producer = Producer(config)
        self.transactional = transactional_id is not None
        self.in_transaction = False
        if self.transactional:
            self.producer.init_transactions(TRANSACTION_CALL_TIMEOUT)
        self.failures: list[str] = []
        self.delivered: Offsets = {}
        self._on_delivery: Callable[[KafkaError | None, Message], None] = self._delivered

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record (value None: a tombstone); `drain()` waits until Kafka has it."""
        if self.transactional and not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True
        # Positional arguments: librdkafka's keyword parsing cost more than the produce.
        where = UNASSIGNED if partition is None else partition
        while True:
            try:
                if headers:
                    self.producer.produce(
                        topic, value, key, where, self._on_delivery, headers=cast(Any, headers)
                    )
                else:
                    self.producer.produce(topic, value, key, where, self._on_delivery)
                return
            except BufferError:  # the local queue is full: let deliveries make room
                self.producer.poll(0.05)

    def send_many(
        self, topic: str, partition: int, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        """`send` each (key, value) to one partition of `topic`, in order (changelog records)."""
        if not records:
            return
        if self.transactional and not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True
        produce, on_delivery = self.producer.produce, self._on_delivery
        for key, value in records:
            while True:
                try:
                    produce(topic, value, key, partition, on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries make room
                    self.producer.poll(0.05)

    def _delivered(self, error: KafkaError | None, message: Message) -> None:
        # Runs in whichever thread serves the producer (drain's executor thread).
        topic = message.topic() or ""
        if error is not None:
            self.failures.append(f"{topic}[{message.partition()}]: {error}")
        elif topic in self.changelogs:
            self.delivered[(topic, message.partition() or 0)] = message.offset() or 0

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.failures.append(f"fatal producer error: {error}")
        log.warning("producer_error error=%s", error)

    async def drain(self) -> None:
        """Wait until Kafka has every record sent so far.

        The waiting happens in a thread, so the event loop goes on meanwhile. Raises
        `DeliveryFailed` when a record could not be delivered.
        """
        loop = asyncio.get_running_loop()
        self.producer.poll(0)  # cheap: serve the deliveries that are already in
        while len(self.producer):
            await loop.run_in_executor(None, self.producer.flush, 0.5)
        self._raise_failures()

    def flush(self) -> None:
        """As `drain`, blocking: for a rebalance callback, which must not return first."""
        while len(self.producer):
            self.producer.flush(0.5)
        self.producer.poll(0)
        self._raise_failures()

    def commit_transaction(self, offsets: list[TopicPartition], group: Any) -> None:
        """Commit the transaction with the input `offsets`; blocking (call it from a thread).

        Raises `KafkaException`: `txn_requires_abort()` says whether `abort_transaction`
        recovers; any other error (fenced, fatal) means this worker must stop.
        """
        if not self.in_transaction:
            if not offsets:
                return
            self.producer.begin_transaction()
            self.in_transaction = True
        if offsets:
            self.producer.send_offsets_to_transaction(offsets, group, TRANSACTION_CALL_TIMEOUT)
        self.producer.commit_transaction(TRANSACTION_CALL_TIMEOUT)
        self.in_transaction = False
        self._raise_failures()

    def abort_transaction(self) -> None:
        """Abort the open transaction: none of its records reaches a `read_committed` reader."""
        if self.in_transaction:
            self.producer.abort_transaction(TRANSACTION_CALL_TIMEOUT)
            self.in_transaction = False
        self.failures.clear()

    def _raise_failures(self) -> None:
        if self.failures:  # kept: every later call fails too, the worker must stop
            raise DeliveryFailed("; ".join(self.failures[:10]))
