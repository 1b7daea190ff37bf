"""Rebalance handling: what the worker does when faust takes or gives it partitions.

On revocation the partitions may go to another worker, so everything written for them
must be in Kafka first. On assignment the worker makes sure input partitions without a
committed offset are read from their first record (see `rewind_uncommitted`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

log = logging.getLogger(__name__)


class RebalanceHost(Protocol):
    """What rebalance handling needs of the worker (`streams.worker.app.JoinApp`)."""

    app: Any
    lock: asyncio.Lock
    topic_names: dict[str, str]

    def publish_stats(self) -> None:
        """Hand the changed aggregate shares to the producer."""
        ...

    async def drain(self) -> None:
        """Wait until Kafka has everything sent so far."""
        ...


async def on_partitions_revoked(
    join_app: RebalanceHost, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
) -> None:
    """Before partitions go: publish the aggregates and wait until Kafka has everything."""
    # The partitions may go to another worker: what this one wrote for them must be
    # in Kafka before it rebuilds them from the changelogs and publishes their shares.
    # Under the lock: a sweep chunk is never half written, and the sweep stops at the
    # next chunk (its partitions are no longer active).
    async with join_app.lock:
        join_app.publish_stats()
        await join_app.drain()


async def on_partitions_assigned(
    join_app: RebalanceHost, sender: Any, /, *args: Any, signal: Any, **kwargs: Any
) -> None:
    """Make faust's seek after recovery also rewind partitions that have no commit."""
    consumer: Any = join_app.app.consumer
    if getattr(consumer, "_streams_rewinds", False):
        return
    seek_to_committed = consumer.perform_seek

    async def perform_seek() -> None:
        await seek_to_committed()
        await rewind_uncommitted(join_app, consumer)

    consumer.perform_seek = perform_seek
    consumer._streams_rewinds = True


async def rewind_uncommitted(join_app: RebalanceHost, consumer: Any) -> None:
    """Read input partitions without a committed offset from their first record.

    After recovery faust seeks each partition to its committed offset, but aiokafka
    seeks only where that offset is above 0 (`seek_to_committed`). Records fetched
    while the tables were recovering and dropped when faust suspended the flow are
    then skipped for good: in a new group, the first records of a partition that
    were processed and not committed before a crash were never read again.
    """
    inputs = set(join_app.topic_names.values())
    tps = [
        tp
        for tp in consumer.assignment()
        if tp.topic in inputs and not consumer._committed_offset.get(tp)
    ]
    if not tps:
        return
    earliest = await consumer.earliest_offsets(*tps)
    for tp in tps:
        offset = earliest.get(tp, 0)
        log.info("rewind topic=%s partition=%d offset=%d", tp.topic, tp.partition, offset)
        await consumer.seek(tp, offset)
