"""Which input partitions this worker owns, and what happens when the group moves them.

librdkafka calls these handlers inside `InputConsumer.read`, on the event loop's thread,
between two batches: no batch is half applied and no sweep chunk half written then
(the reader holds the worker's lock around the call).

- Assigned: partition p of both inputs (`range` gives them together; a half pair is
  refused: paused, never applied, logged). Its tables are opened and it stays paused
  while they are restored from their changelogs in a thread
  (`streams.worker.restore`); then it is resumed. The other partitions go on meanwhile.
- Revoked: before the handler returns (after that the partitions may be another
  worker's), everything applied is committed (`Checkpoint.commit_now`: the commit
  under way is finished, then the rest: flush, commit offsets, persist), so the next
  owner restores complete changelogs and reads on from the committed offsets.
  Restores under way are cancelled. The databases stay open in case the partitions
  come back (a restore from the checkpoint catches up whatever
  another owner wrote meanwhile); the next assignment closes the others.
- Lost (the session timed out: the partitions are already another worker's): nothing
  more is committed (`Checkpoint.abandon`: the commit under way ends; with
  `exactly_once` a new producer ends the open transaction, and the reader waits for
  it); the pending writes are dropped and the databases closed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from functools import partial
from typing import Any, NoReturn, Protocol

from confluent_kafka import TopicPartition

from streams.worker.checkpoint import Checkpoint
from streams.worker.consumer import InputConsumer
from streams.worker.metrics import Metrics
from streams.worker.restore import Restored, restore_partition
from streams.worker.tables import Tables

log = logging.getLogger(__name__)


class RebalanceHost(Protocol):
    """What partition ownership needs of the worker (`streams.worker.app.JoinApp`)."""

    inputs: InputConsumer
    tables: Tables
    checkpoint: Checkpoint
    metrics: Metrics
    connection: dict[str, str]

    def stop_on(self, reason: str) -> NoReturn:
        """Exit at once with the crash status."""
        ...


class Partitions:
    """The input partitions this worker owns: restoring, then ready."""

    def __init__(self, host: RebalanceHost) -> None:
        self.host = host
        self.ready: set[int] = set()
        self.restoring: dict[int, tuple[threading.Event, concurrent.futures.Future[Restored]]] = {}
        self.assigned_once = False
        self.executor = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="restore")

    def settled(self) -> bool:
        """Assigned at least once, and no partition is being restored."""
        return self.assigned_once and not self.restoring

    def on_assign(self, consumer: Any, assigned: list[TopicPartition]) -> None:
        """Open and restore the tables of each new partition; it is read once restored."""
        host = self.host
        consumer.assign(assigned)
        numbers: dict[int, set[str]] = {}
        for tp in assigned:
            numbers.setdefault(tp.partition, set()).add(tp.topic)
        whole = sorted(p for p, topics in numbers.items() if len(topics) == len(host.inputs.topics))
        half = sorted(set(numbers) - set(whole))
        if half:
            # `range` never does this with equal partition counts: refuse to apply them.
            log.error("assignment_half_pair partitions=%s paused", half)
            consumer.pause([tp for tp in assigned if tp.partition in half])
        for partition in set(host.tables.open_partitions) - set(whole):
            host.tables.close(partition)
        host.metrics.consumer_lag.clear()  # partitions it no longer owns drop out
        host.inputs.pause(whole)
        for partition in whole:
            self._restore(partition)
        self.assigned_once = True
        log.info("assigned partitions=%s", whole)

    def _restore(self, partition: int) -> None:
        host = self.host
        tables = host.tables.open(partition)
        cancelled = threading.Event()
        gauge = host.metrics.restore_remaining.labels(str(partition))
        counted = [0]

        def progress(read: int, left: int) -> None:
            host.metrics.restored.inc(read - counted[0])
            counted[0] = read
            gauge.set(left)

        future = self.executor.submit(
            restore_partition, host.connection, tables, cancelled, progress
        )
        self.restoring[partition] = (cancelled, future)
        host.metrics.restoring.set(len(self.restoring))
        loop = asyncio.get_running_loop()
        future.add_done_callback(
            lambda done: loop.call_soon_threadsafe(partial(self._restored, partition, done))
        )

    def _restored(self, partition: int, future: concurrent.futures.Future[Restored]) -> None:
        # On the event loop, between batches.
        current = self.restoring.get(partition)
        if current is None or current[1] is not future:
            return  # cancelled by a revocation: a later assignment restores again
        del self.restoring[partition]
        self.host.metrics.restoring.set(len(self.restoring))
        error = future.exception()
        if error is not None:
            self.host.stop_on(f"restore of partition {partition} failed: {error!r}")
        restored = future.result()
        self.ready.add(partition)
        self.host.inputs.resume([partition])
        log.info(
            "restored partition=%d records=%d seconds=%.3f",
            partition,
            restored.records,
            restored.seconds,
        )

    def on_revoke(self, consumer: Any, revoked: list[TopicPartition]) -> None:
        """Commit everything applied before the partitions go; stop restores under way."""
        self._cancel_restores()
        self.host.checkpoint.commit_now()  # nothing to do when nothing was applied
        log.info("revoked partitions=%s", sorted(self.ready))
        self.ready.clear()

    def on_lost(self, consumer: Any, lost: list[TopicPartition]) -> None:
        """The partitions are already another worker's: commit nothing, drop pending writes."""
        self._cancel_restores()
        partitions = {tp.partition for tp in lost}
        log.warning("lost partitions=%s", sorted(partitions))
        self.host.checkpoint.abandon()  # librdkafka loses the whole assignment at once
        self.host.tables.close_all()
        self.ready.clear()

    def suspend(self) -> list[int]:
        """Stop applying every ready partition (a reset): paused, out of the ready set."""
        suspended = sorted(self.ready)
        self.host.inputs.pause(suspended)
        self.ready.clear()
        return suspended

    def reload(self, partitions: list[int]) -> None:
        """Restore suspended partitions from their changelogs; each is read again once done.

        The restore reads each changelog from the database's checkpoint to its end, so
        the tables hold exactly what Kafka committed, whatever became of the writes a
        reset dropped.
        """
        for partition in partitions:
            if partition in self.host.tables.open_partitions:
                self._restore(partition)
        log.info("reloading partitions=%s", partitions)

    def _cancel_restores(self) -> None:
        for cancelled, future in self.restoring.values():
            cancelled.set()
            concurrent.futures.wait([future])  # a write batch at most: it checks between them
        self.restoring.clear()
        self.host.metrics.restoring.set(0)

    def close(self) -> None:
        """Stop restores under way (at shutdown)."""
        self._cancel_restores()
        self.executor.shutdown(wait=False)
