"""When a commit is safe: the one place that decides it, and in which order it goes.

Between two commits the worker applies batches of input records: each batch's outputs
(`joined`, `unmatched`, `deadletter`, rerouted records) and, at its end, the changelog
records of the rows and index entries it wrote are handed to the one producer
(`streams.worker.outbox`); the writes themselves wait in memory (`streams.worker.tables`).
A commit (every `COMMIT_INTERVAL_SECONDS` or `COMMIT_EVERY_RECORDS` inputs, before
each expiry sweep, when partitions are revoked, and at shutdown) then goes:

1. hand the changelog records of the writes still pending to the producer;
2. publish the `feedback-stats` shares changed since the last commit;
3. flush the producer: wait until Kafka has every record above (in a thread; the
   event loop goes on). A record Kafka refuses for good stops the worker with exit
   status 70 here, before anything is committed: its inputs are read again;
4. commit the input offsets of every record applied;
5. write each partition's pending writes to RocksDB, in one write batch with the
   offset of its last changelog record (its checkpoint).

Why it is safe. After 3, whatever a committed input produced is in Kafka. A crash
before 4 leaves the inputs uncommitted: they are read again and the join rules
recognise a replay by its source offset (`streams.worker.join`), emitting the same
records with the same ids. A crash between 4 and 5 leaves the databases at their
previous checkpoint: the restore reads the changelog from there, which holds the
writes of 3. A database never holds a write whose changelog record Kafka may not
have, so local state and changelog never disagree (the gap the faust-table worker had).

Nothing else runs meanwhile: the worker's lock is held from 1 to 5, so no batch is
applied and no sweep chunk written between the flush and the RocksDB write.

With `exactly_once` (`STREAMS_PROCESSING_GUARANTEE`) everything between two commits
is one Kafka transaction of the outbox's transactional producer, and 4 becomes
`send_offsets_to_transaction` (with the input consumer's group metadata: a worker whose
partitions moved is fenced) and `commit_transaction`. A transaction Kafka refuses is
aborted: its records never reach a `read_committed` reader, the pending writes are
discarded (`Tables.discard`: they never reached RocksDB) and the inputs are rewound to
their committed offsets, so the batch is applied again. Commits come every
`EXACTLY_ONCE_COMMIT_INTERVAL_SECONDS` then: a `read_committed` reader sees a joined
record only once its transaction is committed, so the interval bounds the latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaException, TopicPartition

from streams.worker.outbox import Outbox
from streams.worker.tables import Tables

log = logging.getLogger(__name__)

COMMIT_INTERVAL_SECONDS = 1.0
EXACTLY_ONCE_COMMIT_INTERVAL_SECONDS = 0.1
COMMIT_EVERY_RECORDS = 20_000


class OffsetCommitter(Protocol):
    """What a commit needs of the input consumer (`streams.worker.consumer.InputConsumer`)."""

    def uncommitted(self) -> bool:
        """Whether records were applied since the last commit."""
        ...

    def commit_applied(self) -> None:
        """Commit the offsets of the records applied (blocking)."""
        ...

    def take_applied(self) -> list[TopicPartition]:
        """The offsets to commit for the records applied, forgotten here."""
        ...

    def group_metadata(self) -> Any:
        """The consumer's group metadata, for `send_offsets_to_transaction`."""
        ...

    def rewind(self, offsets: list[TopicPartition]) -> None:
        """Read these partitions again from their committed offsets."""
        ...


class Checkpoint:
    """Decides when to commit and commits in the order of the module docstring."""

    def __init__(
        self,
        outbox: Outbox,
        tables: Tables,
        inputs: OffsetCommitter,
        publish_stats: Callable[[], None],
        discard_stats: Callable[[], None],
    ) -> None:
        self.outbox = outbox
        self.tables = tables
        self.inputs = inputs
        self.publish_stats = publish_stats
        self.discard_stats = discard_stats
        self.applied = 0  # inputs applied since the last commit
        self.last = time.monotonic()
        self.interval = (
            EXACTLY_ONCE_COMMIT_INTERVAL_SECONDS
            if outbox.transactional
            else COMMIT_INTERVAL_SECONDS
        )

    def due(self) -> bool:
        """Time for a commit: the interval passed with something to commit, or many records."""
        if self.applied >= COMMIT_EVERY_RECORDS:
            return True
        return time.monotonic() - self.last >= self.interval and self.pending()

    def pending(self) -> bool:
        """Anything applied or written since the last commit."""
        return self.applied > 0 or self.inputs.uncommitted() or self.tables.changed()

    async def commit(self) -> None:
        """Commit without blocking the event loop; the caller holds the worker's lock."""
        self.tables.log_changes()
        self.publish_stats()
        await self.outbox.drain()
        loop = asyncio.get_running_loop()
        if self.outbox.transactional:
            offsets = self.inputs.take_applied()
            commit = partial(self.outbox.commit_transaction, offsets, self.inputs.group_metadata())
            try:
                await loop.run_in_executor(None, commit)
            except KafkaException as error:
                self._abort(error, offsets)
        else:
            await loop.run_in_executor(None, self.inputs.commit_applied)
        self.tables.persist()
        self._done()

    def commit_now(self) -> None:
        """As `commit`, blocking: inside a rebalance callback, which must not return before."""
        self.tables.log_changes()
        self.publish_stats()
        self.outbox.flush()
        if self.outbox.transactional:
            offsets = self.inputs.take_applied()
            try:
                self.outbox.commit_transaction(offsets, self.inputs.group_metadata())
            except KafkaException as error:
                self._abort(error, offsets)
        else:
            self.inputs.commit_applied()
        self.tables.persist()
        self._done()

    def _abort(self, error: KafkaException, offsets: list[TopicPartition]) -> None:
        if not error.args[0].txn_requires_abort():
            raise error  # fenced or fatal: this worker must stop
        log.warning("transaction_aborted error=%s", error)
        self.outbox.abort_transaction()
        self.tables.discard()
        self.discard_stats()
        self.inputs.rewind(offsets)

    def _done(self) -> None:
        self.applied = 0
        self.last = time.monotonic()
