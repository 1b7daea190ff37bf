"""Everything the worker writes to Kafka leaves through one librdkafka producer.

Outputs (`joined`, `unmatched`, `deadletter`, rerouted inputs) and the tables'
changelog records all go through one `Outbox`: an idempotent confluent-kafka
producer (acks=all, murmur2 like Java clients and the SDK). One producer keeps, per
key, the order in which rows were written to RocksDB and in which records were
emitted. It is written in C and batches in its own thread: handing it a record costs
a few microseconds, where faust's producer path (its buffer, then aiokafka's
Python batch builder and response parsing) cost most of the worker's time per input.

Epochs. The records handed over between two marks (`mark`: at each commit's cut, and
when the sweep drains) form an `Epoch`, which counts its delivery reports and keeps,
per changelog partition, the offset of its last record Kafka took. A commit waits
for the epochs it covers, not for the producer to be empty, so batches applied after
its cut go on being sent meanwhile; and each table database stores with its writes
the offset of the last changelog record of *its* commit (`streams.worker.tables`),
not a later one that may already be in Kafka.

With `at_least_once` what is sent waits here, in order, until the end of the reader's
batch (`push`, from `poll`) or the next mark, and is handed to librdkafka at once: a
few large requests per batch, as the transactions of `exactly_once` make them.

The event loop's thread serves the producer's delivery reports (`poll`, `settle`),
so an epoch's counts have one writer, and a commit runs its blocking part in the
commit thread (`in_thread`) only once its epochs are settled: that part then has no
delivery report to serve. (A report served in another thread would wait for the GIL,
up to 5 ms each while the reader applies a batch: a commit of a few hundred records
took 100-200 ms that way under load.)

The safety rule (see `streams.worker.checkpoint`): before input offsets are committed,
every record of the epochs the commit covers is in Kafka. A delivery that fails for
good (after librdkafka's own retries) is not skipped over: `settle()` and `drain()`
raise `DeliveryFailed`, and the worker stops before the commit, so the inputs are read
again after a restart.

With `exactly_once` the producer is transactional: the first record after a commit begins
a transaction, and `commit_transaction` ends it together with the input offsets
(`send_offsets_to_transaction` with the consumer's group metadata, so a worker whose
partitions have moved is fenced, KIP-447). While a commit is under way (`hold`), what is
sent waits here, in order, and goes to the next transaction once the commit is done
(`release`): librdkafka takes no record between `commit_transaction` and the next
`begin_transaction`. The calls that reach the broker retry what Kafka calls retriable
(a broker away, a timeout); an error that requires an abort is the checkpoint's to
handle, which replaces the producer (`renew`: nothing of the open transaction reaches a
`read_committed` reader); a fenced or failed producer raises `Fenced`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from streams.kafka_config import REBOOTSTRAP

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes]]
# (changelog topic, partition) -> the offset of its last record Kafka has taken.
Offsets = dict[tuple[str, int], int]


T = TypeVar("T")
# The partition argument of `Producer.produce` that lets the partitioner choose.
UNASSIGNED = -1
Sent = tuple[str, bytes | None, bytes | None, int | None, Headers | None]

# A transaction spans one commit (tens of ms). The broker aborts one left open this long,
# and librdkafka caps the delivery timeout of a transactional producer's records at it:
# a broker away for less than this is ridden out without an abort. What it costs: a
# worker that dies and is not restarted on its data directory (which fences its open
# transaction at once) holds `read_committed` readers of the partitions its open
# transaction wrote to for this long.
TRANSACTION_TIMEOUT_MS = 60_000
TRANSACTION_CALL_TIMEOUT = 30.0
RETRY_BACKOFF_SECONDS = 1.0
WAIT_POLL_SECONDS = 0.001  # how often `settle` and `drain` serve the delivery reports
# Delivery errors an aborted transaction may clear (a broker away); any other (a record
# the broker refuses, say for its size) would fail again: the worker stops instead.
TRANSIENT_DELIVERY_ERRORS = frozenset(
    {
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
    }
)


# What an aborted transaction's records report: not a failure.
PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})


class DeliveryFailed(RuntimeError):
    """Kafka did not take a record after the producer's retries: the batch must not be acked."""


class Fenced(RuntimeError):
    """The transactional producer cannot go on (fenced, or failed for good): the worker stops."""


class Epoch:
    """The records handed to the producer between two marks, and their delivery reports."""

    __slots__ = ("changelogs", "delivered", "done", "failures", "latest", "number", "sent")

    def __init__(
        self, number: int, changelogs: set[str], latest: Offsets, failures: list[KafkaError]
    ) -> None:
        self.number = number
        self.changelogs = changelogs
        self.sent = 0
        self.done = 0  # delivery reports served
        self.delivered: Offsets = {}  # per changelog partition, its last record's offset
        self.latest = latest  # the outbox's, over every epoch
        self.failures = failures  # the outbox's

    def on_delivery(self, error: KafkaError | None, message: Message) -> None:
        """The delivery report of one record (in whichever thread serves the producer)."""
        self.done += 1
        if error is not None:
            if error.code() in PURGED:
                return  # its transaction was aborted: it never counted
            if not self.failures:  # the first one: an outage fails thousands alike
                log.warning(
                    "delivery_failed topic=%s partition=%s error=%s",
                    message.topic(),
                    message.partition(),
                    error,
                )
            self.failures.append(error)
            return
        topic = message.topic() or ""
        if topic in self.changelogs:
            where = (topic, message.partition() or 0)
            self.delivered[where] = self.latest[where] = message.offset() or 0

    @property
    def settled(self) -> bool:
        """Every record of this epoch has its delivery report."""
        return self.done >= self.sent


def delivered_offsets(epochs: list[Epoch]) -> Offsets:
    """Per changelog partition, the offset of the last record of `epochs` (in the order sent)."""
    merged: Offsets = {}
    for epoch in epochs:
        merged.update(epoch.delivered)
    return merged


def _describe(errors: list[KafkaError]) -> str:
    return "; ".join(str(error) for error in errors[:10])


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
            **REBOOTSTRAP,
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "compression.type": "lz4",
            "linger.ms": 2,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
            config["transaction.timeout.ms"] = TRANSACTION_TIMEOUT_MS
        self.config = config
        self.retired: list[Producer] = []  # replaced (`renew`), kept: destroying one may block
        self.producer = self._new_producer()
        self.transactional = transactional_id is not None
        self.in_transaction = False
        self.holding = False  # a commit is under way: records wait in `held`
        self.held: list[Sent] = []
        self.queued: list[Sent] = []  # at_least_once: sent, not yet pushed (`push`)
        self.fatal: list[str] = []
        self.failures: list[KafkaError] = []  # kept: with at least once, the worker stops
        self.delivered: Offsets = {}  # per changelog partition, its last record Kafka took
        self._numbers = 0
        self.epoch = self._new_epoch()
        self.unsettled: deque[Epoch] = deque()  # marked, some report still missing
        self.uncommitted: list[Epoch] = []  # marked since the last commit's cut
        self.job: concurrent.futures.Future[Any] | None = None
        if self.transactional:
            self.call(self.producer.init_transactions, TRANSACTION_CALL_TIMEOUT)

    def _new_producer(self) -> Producer:
        # Errors of a producer replaced since (`renew`) are not this outbox's any more.
        def on_error(error: KafkaError) -> None:
            if producer is self.producer:
                self._on_error(error)

        producer = Producer({**self.config, "error_cb": on_error})
        return producer

    def renew(self) -> Producer:
        """A new transactional producer with the same id, initialised; blocking (commit thread).

        Its `init_transactions` fences the current producer and ends its open
        transaction (aborted, or committed if its commit had reached the broker).
        librdkafka can wedge a producer after a broker restart: it forgets the
        broker it cached as the group coordinator and `send_offsets_to_transaction`
        never returns (librdkafka issues #5456, #5511); only a new one recovers.
        """
        producer = self._new_producer()
        self.call(producer.init_transactions, TRANSACTION_CALL_TIMEOUT)
        return producer

    def adopt(self, producer: Producer) -> None:
        """Send through `producer` (from `renew`) from now on; the old one is left as it is."""
        self.retired.append(self.producer)
        self.producer = producer
        self.in_transaction = False

    def _new_epoch(self) -> Epoch:
        self._numbers += 1
        return Epoch(self._numbers, self.changelogs, self.delivered, self.failures)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record (value None: a tombstone); a commit waits until Kafka has it.

        With `at_least_once` the record waits here, in order, until the next `push`
        (at the end of the reader's batch, or at the next mark).
        """
        self._send([(topic, key, value, partition, headers)])

    def send_many(
        self, topic: str, partition: int, records: list[tuple[bytes, bytes | None]]
    ) -> None:
        """`send` each (key, value) to one partition of `topic`, in order (changelog records)."""
        self._send([(topic, key, value, partition, None) for key, value in records])

    def _send(self, records: list[Sent]) -> None:
        # at_least_once: queued until the next `push`; exactly_once: held while a
        # transaction commits, else produced in the open transaction (one begins if none).
        if not self.transactional:
            self.queued.extend(records)
        elif self.holding:
            self.held.extend(records)
        else:
            self._produce_in_transaction(records)

    def _produce_in_transaction(self, records: list[Sent]) -> None:
        if not self.in_transaction:
            self.producer.begin_transaction()
            self.in_transaction = True
        self._produce(records)

    def push(self) -> None:
        """Hand the records queued (`at_least_once`) to the producer, in order.

        Once per batch rather than one at a time: librdkafka then sends them in a few
        large requests instead of one every `linger.ms` while the batch is applied
        (`exactly_once` hands them over in bursts too, a transaction's at a time).
        Handed over one at a time, its broker threads took about twice the CPU per
        join. A record waits at most for the rest of its batch to be applied.
        """
        queued = self.queued
        if queued:
            self.queued = []
            self._produce(queued)

    def _produce(self, records: list[Sent]) -> None:
        # Positional arguments: librdkafka's keyword parsing cost more than the produce.
        epoch = self.epoch
        on_delivery = epoch.on_delivery
        producer = self.producer
        produce = producer.produce
        for topic, key, value, partition, headers in records:
            where = UNASSIGNED if partition is None else partition
            while True:
                try:
                    if headers:
                        produce(topic, value, key, where, on_delivery, headers=cast(Any, headers))
                    else:
                        produce(topic, value, key, where, on_delivery)
                    epoch.sent += 1
                    break
                except BufferError:  # the local queue is full: let deliveries make room
                    producer.poll(0.05)

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self.fatal.append(str(error))
        log.warning("producer_error error=%s", error)

    # -- delivery reports, and the commit thread ------------------------------------

    def poll(self) -> None:
        """Hand over what is queued and serve the delivery reports that are in (event loop)."""
        self.push()
        self.producer.poll(0)

    def in_thread(self, work: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        """Run `work(*args)` in a thread of its own: the blocking part of a commit or a reset.

        A daemon thread: a job wedged in librdkafka (see `renew`) can be left behind.
        """
        job: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                job.set_result(work(*args))
            except BaseException as error:  # handed to whoever waits for the job
                job.set_exception(error)

        threading.Thread(target=run, name="commit", daemon=True).start()
        self.job = job
        return job

    # -- epochs --------------------------------------------------------------------

    def mark(self) -> Epoch:
        """End the current epoch (a new one begins) and return it."""
        self.push()  # what was queued belongs to the epoch that ends
        ended, self.epoch = self.epoch, self._new_epoch()
        self.unsettled.append(ended)
        self.uncommitted.append(ended)
        return ended

    def take_uncommitted(self) -> list[Epoch]:
        """Mark, and return every epoch marked since the last call: what a commit covers."""
        self.mark()
        taken, self.uncommitted = self.uncommitted, []
        return taken

    def settled(self, epoch: Epoch) -> bool:
        """Every record of `epoch` and of the epochs before it has its delivery report.

        On the event loop's thread only (it alone drops settled epochs).
        """
        unsettled = self.unsettled
        while unsettled and unsettled[0].settled:
            unsettled.popleft()
        return not unsettled or unsettled[0].number > epoch.number

    async def settle(self, epochs: list[Epoch], given_up: Callable[[], bool] = bool) -> None:
        """Wait, serving the producer, until `epochs` are settled; the event loop goes on.

        Raises `DeliveryFailed` when a record could not be delivered (with
        `exactly_once` the transaction's commit reports it instead: it must abort).
        Returns early once `given_up()`: the producer that sent them may have been
        replaced (`renew`), whose reports nobody serves.
        """
        while not all(epoch.settled for epoch in epochs):
            if given_up():
                return
            self.producer.poll(0)
            await asyncio.sleep(WAIT_POLL_SECONDS)
        if not self.transactional:
            self._raise_failures()

    def settle_now(self, epochs: list[Epoch]) -> None:
        """As `settle`, blocking: in a rebalance callback, which must not return first."""
        while not all(epoch.settled for epoch in epochs):
            self.producer.poll(0.01)
        if not self.transactional:
            self._raise_failures()

    async def drain(self) -> None:
        """Wait until Kafka has every record sent so far, without blocking the event loop.

        Raises `DeliveryFailed` when a record could not be delivered. With
        `exactly_once` there is nothing to wait for: what was sent commits or aborts
        with everything else of its transaction, so no record is in Kafka before
        another one sent earlier.
        """
        if self.transactional:
            return
        epoch = self.mark()
        while not self.settled(epoch):
            self.producer.poll(0)
            await asyncio.sleep(WAIT_POLL_SECONDS)
        self._raise_failures()

    def _raise_failures(self) -> None:
        if self.fatal:
            raise Fenced("; ".join(self.fatal))
        if self.failures:  # kept: every later call fails too, the worker must stop
            raise DeliveryFailed(_describe(self.failures))

    # -- transactions (exactly_once) -----------------------------------------------

    def hold(self) -> None:
        """Keep what is sent from now on, in order, for the next transaction."""
        self.holding = True

    def release(self) -> None:
        """Send what was held (the commit is done; the first record begins a transaction)."""
        self.holding = False
        held, self.held = self.held, []
        if held:
            self._produce_in_transaction(held)

    def commit_transaction(self, offsets: list[TopicPartition], group: Any) -> None:
        """Commit the transaction with the input `offsets`; blocking (in the commit thread).

        Its records are settled first (`settle`), so librdkafka's flush inside
        `commit_transaction` has no delivery report left to serve in this thread.

        Retries what Kafka calls retriable. Raises `KafkaException` when the error
        requires aborting the transaction (`txn_requires_abort()`), `DeliveryFailed` when
        a record was refused for good, `Fenced` when this producer cannot go on.
        """
        producer = self.producer  # this one, even if `renew` replaces it meanwhile
        if not self.in_transaction:
            if not offsets:
                return
            producer.begin_transaction()
            self.in_transaction = True
        if offsets:
            self.call(
                producer.send_offsets_to_transaction, offsets, group, TRANSACTION_CALL_TIMEOUT
            )
        self.call(producer.commit_transaction, TRANSACTION_CALL_TIMEOUT)
        if producer is self.producer:
            self.in_transaction = False
        self._raise_failures()

    def abort_transaction(self) -> None:
        """Abort the open transaction; blocking (retries while the broker is away).

        None of its records reaches a `read_committed` reader. Raises `DeliveryFailed`
        when a record of it was refused for a reason an abort does not clear.
        """
        lasting = [e for e in self.failures if e.code() not in TRANSIENT_DELIVERY_ERRORS]
        if lasting:
            raise DeliveryFailed(_describe(lasting))
        if self.in_transaction:
            self.call(self.producer.abort_transaction, TRANSACTION_CALL_TIMEOUT)
            self.in_transaction = False

    def drop_held(self) -> None:
        """Forget the records held so far (their batches are dropped: an abort)."""
        self.held.clear()

    def forget(self) -> None:
        """Once aborted: what the transaction sent, and its failures, are gone; fresh epochs."""
        self.failures.clear()
        self.unsettled.clear()
        self.uncommitted = []
        self.epoch = self._new_epoch()

    def call(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Call a transactional API, again while Kafka says the error is retriable.

        Raises `Fenced` for a fatal error (the producer cannot go on) and the
        `KafkaException` for one that requires an abort.
        """
        warned = 0.0
        while True:
            try:
                return operation(*args)
            except KafkaException as exception:
                error: KafkaError = exception.args[0]
                if error.fatal() or error.code() in (
                    KafkaError._FENCED,
                    KafkaError.PRODUCER_FENCED,
                    KafkaError.INVALID_PRODUCER_EPOCH,
                ):
                    raise Fenced(
                        f"{operation.__name__}: {error}; the transactional producer is fenced "
                        "or failed (another worker with this data directory's transactional "
                        "id, or the transaction outlived transaction.timeout.ms): restart"
                    ) from exception
                if error.txn_requires_abort() or not error.retriable():
                    raise
                now = time.monotonic()
                if now - warned > 10:
                    warned = now
                    log.warning("transaction_retry call=%s error=%s", operation.__name__, error)
                time.sleep(RETRY_BACKOFF_SECONDS)
