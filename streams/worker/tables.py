"""The worker's two tables, a partition at a time: RocksDB written directly, logged via the Outbox.

faust declares the tables (`state`, `due`): it owns their RocksDB databases (one per
partition, rocksdict), creates their compacted changelog topics, rebuilds a partition
from its changelog when this worker is given it, and keeps standbys. The worker reads
and writes a partition's database itself and sends each write's changelog record (a
tombstone for a delete) to the same partition of the changelog through the `Outbox`.
That is what `Table.__setitem__` does, without faust's per-record producer path.

Once Kafka has the changelog records sent so far, `persist` stores the offset of the last
one in each database, as faust does after each changelog send, so a restart on the
same data directory reads only the changelog written after it.
"""

from __future__ import annotations

from typing import Any

from faust.types import TP

from streams.worker.expiry import PartitionStore
from streams.worker.outbox import Offsets, Outbox


def partition_db(table: Any, partition: int) -> Any:
    """The rocksdict database faust keeps for one partition of a table (opened if need be)."""
    return table.data._db_for_partition(partition)


class LoggedDb:
    """One partition's database of one table; every write also goes to its changelog partition."""

    __slots__ = ("db", "outbox", "partition", "topic")

    def __init__(self, db: Any, outbox: Outbox, topic: str, partition: int) -> None:
        self.db = db
        self.outbox = outbox
        self.topic = topic
        self.partition = partition

    def get(self, key: bytes, /) -> bytes | None:
        """The stored value, or None."""
        value: bytes | None = self.db.get(key)
        return value

    def __setitem__(self, key: bytes, value: bytes, /) -> None:
        self.db.put(key, value)
        self.outbox.send(self.topic, key, value, self.partition)

    def __delitem__(self, key: bytes, /) -> None:
        self.db.delete(key)
        self.outbox.send(self.topic, key, None, self.partition)

    def log(self, key: bytes, value: bytes | None) -> None:
        """Send the changelog record of a write made in a batch (see `PartitionStore`)."""
        self.outbox.send(self.topic, key, value, self.partition)


class Tables:
    """The `state` and `due` tables of one worker, with the outbox their changelogs go through."""

    def __init__(self, state: Any, due: Any, outbox: Outbox) -> None:
        self.state = state
        self.due = due
        self.outbox = outbox
        self.state_topic: str = state.changelog_topic.get_topic_name()
        self.due_topic: str = due.changelog_topic.get_topic_name()
        self.topics = {self.state_topic: state, self.due_topic: due}
        outbox.changelogs.update(self.topics)

    def partition(self, partition: int) -> tuple[LoggedDb, LoggedDb]:
        """(state, due) of one partition, writes logged.

        Asked each time, not kept: faust closes and reopens databases on rebalances.
        """
        return (
            LoggedDb(partition_db(self.state, partition), self.outbox, self.state_topic, partition),
            LoggedDb(partition_db(self.due, partition), self.outbox, self.due_topic, partition),
        )

    def store(self, partition: int) -> PartitionStore:
        """One partition as the expiry sweep works on it."""
        state, due = self.partition(partition)
        return PartitionStore(
            state=state.db, due=due.db, state_changelog=state.log, due_changelog=due.log
        )

    def persist(self, offsets: Offsets) -> None:
        """Record in each database the offset of its last changelog record that Kafka has."""
        for (topic, partition), offset in offsets.items():
            self.topics[topic].data.set_persisted_offset(TP(topic, partition), offset)
