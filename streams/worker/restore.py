"""Restore one partition's tables from their changelogs, from the checkpoint to the end.

A database holds its changelog up to its checkpoint (`streams.worker.tables`), so a
partition is brought up to date by reading each changelog partition from the record
after the checkpoint to the end (all of it into an empty data directory), and applying
the records in write batches, each with the checkpoint moved on. It reads with
`isolation.level=read_committed`: a record of an aborted transaction never comes back.

It runs in a thread, with a consumer of its own that joins no group, while the input
partition it belongs to stays paused; the worker's other partitions go on. Like Kafka
Streams' `StoreChangelogReader`, it reads to the end offset the changelog had when the
restore began: the worker that owns the partition is the only writer, and it has
handed over what it wrote before the partition came here.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import rocksdict
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from streams.worker.memory import RESTORE_QUEUE
from streams.worker.tables import CHECKPOINT_KEY, PartitionTables, TablePartition

log = logging.getLogger(__name__)

READ_BATCH = 2000
WATERMARK_TIMEOUT = 10.0


@dataclass
class Restored:
    """What one restore read."""

    partition: int
    records: int
    seconds: float
    cancelled: bool = False


class RestoreCancelled(Exception):
    """The partition was taken away while it was being restored."""


def restore_partition(
    connection: Mapping[str, str],
    tables: PartitionTables,
    cancelled: threading.Event,
    progress: Callable[[int, int], None],
) -> Restored:
    """Bring both tables of a partition up to their changelogs' end; in a worker thread.

    `connection`: address and security (`streams.kafka_config.librdkafka_config`);
    `progress(records read, records left)` is called after each write batch.
    """
    started = time.perf_counter()
    consumer = Consumer(
        {
            **connection,
            "group.id": f"restore-{uuid.uuid4().hex}",  # never joined: assign() only
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            **RESTORE_QUEUE,
        }
    )
    total = 0
    try:
        todo: dict[tuple[str, int], tuple[TablePartition, int]] = {}
        position: dict[tuple[str, int], int] = {}
        starts: list[TopicPartition] = []
        for table in tables.tables:
            checkpoint = table.checkpoint()
            tp = TopicPartition(table.topic, tables.partition)
            low, high = consumer.get_watermark_offsets(tp, timeout=WATERMARK_TIMEOUT)
            start = low if checkpoint is None else max(low, checkpoint + 1)
            if start >= high:
                continue
            todo[(table.topic, tables.partition)] = (table, high)
            position[(table.topic, tables.partition)] = start
            starts.append(
                TopicPartition(
                    table.topic, tables.partition, OFFSET_BEGINNING if checkpoint is None else start
                )
            )
        progress(0, sum(high - position[w] for w, (_, high) in todo.items()))
        if todo:
            consumer.assign(starts)
        while todo:
            if cancelled.is_set():
                raise RestoreCancelled
            messages = consumer.consume(READ_BATCH, 0.5)
            batches: dict[tuple[str, int], rocksdict.WriteBatch] = {}
            last: dict[tuple[str, int], int] = {}
            done: set[tuple[str, int]] = set()
            for message in messages:
                where = (message.topic() or "", message.partition() or 0)
                if where not in todo:
                    continue
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        done.add(where)
                        continue
                    raise RuntimeError(f"restore of {where}: {error}")
                offset = message.offset() or 0
                batch = batches.get(where)
                if batch is None:
                    batch = batches[where] = rocksdict.WriteBatch(raw_mode=True)
                key, value = message.key() or b"", message.value()
                if value is None:
                    batch.delete(key)
                else:
                    batch.put(key, value)
                last[where] = offset
                total += 1
                if offset + 1 >= todo[where][1]:
                    done.add(where)
            for where, batch in batches.items():
                batch.put(CHECKPOINT_KEY, str(last[where]).encode())
                todo[where][0].db.write(batch)
                position[where] = last[where] + 1
            for where in done:
                todo.pop(where, None)
            progress(total, sum(max(0, high - position[w]) for w, (_, high) in todo.items()))
    except RestoreCancelled:
        return Restored(tables.partition, total, time.perf_counter() - started, cancelled=True)
    finally:
        consumer.close()
    return Restored(tables.partition, total, time.perf_counter() - started)
