"""The worker's two tables, `state` and `due`: one rocksdict database per table and partition.

The worker owns its state. For each input partition it is given it opens
`<STREAMS_DATA_DIR>/tables/state-<p>.db` and `due-<p>.db`; every write also goes to
partition p of the table's compacted changelog (`<app id>-state-changelog`,
`<app id>-due-changelog`) through the `Outbox`.

Writes do not reach RocksDB at once. They go to an in-memory overlay per table
partition (reads look there first), and their changelog records are handed to the
outbox at the end of each batch, in the order of the writes. A commit
(`streams.worker.checkpoint`) sets the overlays aside (`cut`: reads still see them,
new writes go to a fresh overlay) and, once Kafka has every changelog record of the
commit and the input offsets are committed, writes each one to its database in ONE
write batch together with the checkpoint: the offset of the partition's last changelog
record of that commit (`write_cut`, in the commit thread; `persist` does all three at
once). So a database always holds exactly its changelog up to its
checkpoint, never a write whose record may not have reached Kafka, and a restart (or
a worker given the partition) reads only the changelog after the checkpoint
(`streams.worker.restore`). A batch that is never committed leaves no trace on disk:
what exactly-once needs to drop an aborted transaction's writes.

Every database shares one block cache and one write buffer manager (charged to that
cache), so memory stays bounded however many partitions a worker holds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rocksdict

from streams.topics import TopicSpec
from streams.worker.expiry import read_due_keys
from streams.worker.outbox import Outbox

log = logging.getLogger(__name__)

STATE = "state"
DUE = "due"
# The key of the checkpoint in each database: faust's, so that a data directory of the
# faust-table worker resumes from where it was. It sorts after every `due` key (they
# start with a big-endian time) and is never a row key (no application is that long).
CHECKPOINT_KEY = b"__faust\x00offset__"
# One cache and one memtable budget for all databases (TRAPS: RocksDB's defaults per
# database would reserve gigabytes across 2 tables x 8 partitions).
BLOCK_CACHE_BYTES = 64 * 1024**2
WRITE_BUFFER_BYTES = 32 * 1024**2
MEMTABLE_BYTES = 4 * 1024**2
_ABSENT = object()
# Changelogs are compacted: the latest row per key survives, deleted rows (expired
# predictions, timed-out feedback) leave as tombstones, which compaction removes a day
# later. Hour-long segments let compaction reach rows within the hour, instead of
# waiting for a 7-day segment to close; `max.compaction.lag.ms` makes it come within a
# day even when little else changed, so an expired prediction's inputs and outputs
# leave the changelog within about a day of its expiry (the input topics keep records
# a day past the longest retention).
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "segment.ms": str(3_600_000),
    "delete.retention.ms": str(86_400_000),
    "max.compaction.lag.ms": str(86_400_000),
    "min.cleanable.dirty.ratio": "0.2",
}


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic of a table: `<app id>-<table>-changelog`."""
    return f"{app_id}-{table}-changelog"


def changelog_specs(app_id: str, partitions: int) -> list[TopicSpec]:
    """The two changelog topics, partitioned like the inputs."""
    return [
        TopicSpec(changelog_topic(app_id, table), partitions, CHANGELOG_CONFIG)
        for table in (STATE, DUE)
    ]


class RocksOptions:
    """RocksDB options for every table database of one process: one cache, one memtable budget."""

    def __init__(self) -> None:
        self.cache = rocksdict.Cache(BLOCK_CACHE_BYTES)
        self.write_buffers = rocksdict.WriteBufferManager.new_write_buffer_manager_with_cache(
            WRITE_BUFFER_BYTES, False, self.cache
        )
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.cache)
        # Most reads of a row miss (a new join key): without a filter each one searched
        # every level-0 file's index and a data block. At 7,200 inputs/s the reader spent
        # a fifth of its time in those reads, and the median join latency went from 162
        # to 36 ms with the filter. About 10 bits (1.2 bytes) per key.
        table.set_bloom_filter(10, False)
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(MEMTABLE_BYTES)
        options.set_max_write_buffer_number(2)
        options.set_max_open_files(256)
        self.options = options

    def open(self, path: Path) -> Any:
        """Open (creating if need be) one database."""
        path.parent.mkdir(parents=True, exist_ok=True)
        return rocksdict.Rdict(str(path), self.options)


class TablePartition:
    """One partition of one table: its database, the overlay of writes not yet persisted."""

    __slots__ = ("committing", "db", "outbox", "overlay", "partition", "topic", "unlogged")

    def __init__(self, db: Any, outbox: Outbox, topic: str, partition: int) -> None:
        self.db = db
        self.outbox = outbox
        self.topic = topic
        self.partition = partition
        self.overlay: dict[bytes, bytes | None] = {}  # written, not yet persisted
        self.committing: dict[bytes, bytes | None] = {}  # set aside by a commit under way
        # Every write since the last `log_changes`, in order: the changelog gets each one,
        # not only the last per key, so that a crash leaves a prefix of the writes in it
        # (what `streams.worker.feedback_stats` relies on to count a replayed input once).
        self.unlogged: list[tuple[bytes, bytes | None]] = []

    def get(self, key: bytes, /) -> bytes | None:
        """The value as last written (None: absent or deleted)."""
        value = self.overlay.get(key, _ABSENT)
        if value is _ABSENT:
            value = self.committing.get(key, _ABSENT) if self.committing else _ABSENT
            if value is _ABSENT:
                return self.db.get(key)  # type: ignore[no-any-return]
        return value  # type: ignore[return-value]

    def __setitem__(self, key: bytes, value: bytes, /) -> None:
        self.overlay[key] = value
        self.unlogged.append((key, value))

    def __delitem__(self, key: bytes, /) -> None:
        self.overlay[key] = None
        self.unlogged.append((key, None))

    def log_changes(self) -> None:
        """Hand the changelog records of the writes since the last call to the outbox."""
        if not self.unlogged:
            return
        self.outbox.send_many(self.topic, self.partition, self.unlogged)
        self.unlogged = []

    @property
    def changed(self) -> bool:
        """Anything written and not yet persisted."""
        return bool(self.overlay)

    def checkpoint(self) -> int | None:
        """The offset of the last changelog record the database holds (None: none)."""
        raw = self.db.get(CHECKPOINT_KEY)
        return None if raw is None else int(raw)

    def persist(self, offset: int | None) -> None:
        """Write the overlay and the checkpoint `offset` to the database in one write batch.

        Only once Kafka has every changelog record in the overlay (`offset` is the
        last one's): see the module docstring.
        """
        layer = self.cut()
        self.write(layer, offset)
        self.drop(layer)

    def cut(self) -> dict[bytes, bytes | None]:
        """Set the overlay aside for a commit (reads still see it) and begin a new one."""
        assert not self.unlogged, "log_changes() before a commit"
        assert not self.committing, "one commit at a time"
        layer, self.overlay = self.overlay, {}
        self.committing = layer
        return layer

    def write(self, layer: dict[bytes, bytes | None], offset: int | None) -> None:
        """Write a layer set aside and the checkpoint `offset` in one write batch.

        RocksDB's write releases the GIL: in the commit thread, the reader goes on.
        """
        if not layer:
            return
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in layer.items():
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        if offset is not None:
            batch.put(CHECKPOINT_KEY, str(offset).encode())
        self.db.write(batch)

    def drop(self, layer: dict[bytes, bytes | None]) -> None:
        """Stop reading a layer that is now in the database."""
        if self.committing is layer:
            self.committing = {}

    def discard(self) -> None:
        """Forget what was not persisted (an aborted batch; the changelog may not have it)."""
        self.unlogged = []
        self.overlay = {}
        self.committing = {}


# What a commit set aside: each table partition with its layer.
Cut = list[tuple[TablePartition, dict[bytes, bytes | None]]]


class PartitionTables:
    """The `state` and `due` table of one input partition."""

    __slots__ = ("due", "journal_settled", "partition", "state")

    def __init__(self, partition: int, state: TablePartition, due: TablePartition) -> None:
        self.partition = partition
        self.state = state
        self.due = due
        # Whether the last input applied here went through whole, so that the journal
        # needs no look before the next one (`streams.worker.state.apply_input`).
        self.journal_settled = False

    @property
    def tables(self) -> tuple[TablePartition, TablePartition]:
        """Both tables."""
        return (self.state, self.due)

    # -- the expiry sweep's store (`streams.worker.expiry.SweepStore`) -------------

    def due_keys(self, start: bytes | None, bound: bytes, limit: int) -> list[bytes]:
        """Up to `limit` persisted index keys from `start` (None: the first) and below `bound`.

        The sweep reads the index as persisted; the worker commits before each sweep
        (see `streams.worker.expiry.Sweeper`), so only entries written since then,
        which are due later, are not seen.
        """
        return read_due_keys(self.due.db, start, bound, limit)

    def write_index(self, puts: list[bytes], deletes: list[bytes]) -> None:
        """Add and drop index entries (persisted at the next commit)."""
        for key in puts:
            self.due[key] = b""
        for key in deletes:
            del self.due[key]
        self.due.log_changes()

    def write_rows(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        """Store and delete rows (persisted at the next commit)."""
        for key, value in puts:
            self.state[key] = value
        for key in deletes:
            del self.state[key]
        self.state.log_changes()

    def estimated_rows(self) -> int:
        """RocksDB's estimate of the keys in the persisted `state` database."""
        return int(self.state.db.property_int_value("rocksdb.estimate-num-keys") or 0)


class Tables:
    """Every open table partition of this worker process, and the RocksDB options they share."""

    def __init__(self, data_dir: Path, app_id: str, outbox: Outbox) -> None:
        self.directory = data_dir / "tables"
        self.outbox = outbox
        self.topics = {table: changelog_topic(app_id, table) for table in (STATE, DUE)}
        outbox.changelogs.update(self.topics.values())
        self.rocks = RocksOptions()
        self.open_partitions: dict[int, PartitionTables] = {}

    def path(self, table: str, partition: int) -> Path:
        """Where one table partition's database lives."""
        return self.directory / f"{table}-{partition}.db"

    def open(self, partition: int) -> PartitionTables:
        """The partition's tables, opened if need be."""
        found = self.open_partitions.get(partition)
        if found is None:
            state, due = (
                TablePartition(
                    self.rocks.open(self.path(table, partition)),
                    self.outbox,
                    self.topics[table],
                    partition,
                )
                for table in (STATE, DUE)
            )
            found = self.open_partitions[partition] = PartitionTables(partition, state, due)
        return found

    def partition(self, partition: int) -> PartitionTables:
        """An open partition's tables."""
        return self.open_partitions[partition]

    def close(self, partition: int) -> None:
        """Close a partition's databases; what was not persisted is dropped (see `persist`)."""
        tables = self.open_partitions.pop(partition, None)
        if tables is None:
            return
        for table in tables.tables:
            if table.changed or table.committing:
                log.warning("closing_unpersisted topic=%s partition=%d", table.topic, partition)
            table.db.close()

    def close_all(self) -> None:
        """Close every database."""
        for partition in list(self.open_partitions):
            self.close(partition)

    def log_changes(self) -> None:
        """Hand every table's pending changelog records to the outbox."""
        for tables in self.open_partitions.values():
            tables.state.log_changes()
            tables.due.log_changes()

    def changed(self) -> bool:
        """Anything written and not yet persisted, in any partition."""
        return any(t.changed for p in self.open_partitions.values() for t in p.tables)

    def persist(self, partitions: list[int] | None = None) -> None:
        """Persist each overlay with its changelog's last delivered offset (`TablePartition`)."""
        delivered = self.outbox.delivered
        for partition, tables in list(self.open_partitions.items()):
            if partitions is not None and partition not in partitions:
                continue
            for table in tables.tables:
                table.persist(delivered.get((table.topic, partition)))

    def cut(self) -> Cut:
        """Set every table's overlay aside for a commit (`TablePartition.cut`)."""
        return [
            (table, table.cut())
            for tables in self.open_partitions.values()
            for table in tables.tables
            if table.overlay
        ]

    @staticmethod
    def write_cut(cut: Cut, offsets: Mapping[tuple[str, int], int]) -> None:
        """Write each layer of `cut` with its changelog's offset in `offsets` (commit thread)."""
        for table, layer in cut:
            table.write(layer, offsets.get((table.topic, table.partition)))

    @staticmethod
    def drop_cut(cut: Cut) -> None:
        """Reads stop looking at the layers of `cut`: they are in the databases."""
        for table, layer in cut:
            table.drop(layer)

    def discard(self) -> None:
        """Forget every write not yet persisted."""
        for tables in self.open_partitions.values():
            tables.journal_settled = False
            for table in tables.tables:
                table.discard()
