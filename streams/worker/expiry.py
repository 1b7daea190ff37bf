"""The expiry sweep: predictions past retention, pending feedback past its TTL, old markers.

Every second the worker commits (`streams.worker.checkpoint`: its pending writes reach
RocksDB; the reader goes on meanwhile), then, for each partition it owns and has
restored, the sweep reads the persisted `due` index (`streams.worker.state`) up to
now, from where the last sweep could start (from its start every `FULL_SCAN_EVERY`th
sweep): only what is due, so its cost follows what expires, not what is stored. It
works in chunks; for each chunk, under the lock the agent's batches also hold, so no
row changes under it:

1. apply `join.expire_due` to each due row (stale index entries are dropped);
2. send the `unmatched` records that produced, and wait until Kafka has them (with
   `exactly_once` they are in the rows' transaction: both reach readers, or neither);
3. write the rows (deleted, or reduced to an `expired` marker) and index entries
   (`write_chunk`) to the tables and send their changelog records (tombstones for
   deletes) to the changelog partition, through the outbox the agent also uses
   (`streams.worker.outbox`: one producer, so per key the changelog keeps the order of the
   writes). They reach RocksDB at the next commit, as the agent's writes do.

A crash after 2 and before 3 leaves the rows as they were: the next sweep sends the
same `unmatched` records again (at least once). A crash after 3 before the commit
leaves the rows as the changelog has them; a row whose deletion did not reach Kafka
comes back with its index entry, so the next sweep deletes it again.

Joins go on during a long sweep: the lock is released between chunks, a chunk stops
after `CHUNK` entries or `CHUNK_SECONDS`, and after each chunk the sweep waits until
Kafka has its changelog records (no backlog builds up in the producer ahead of the
joined records), then pauses `PAUSE_RATIO` times as long as the chunk took, so it
never has more than about a quarter of the event loop. The next chunk resumes after
the last index key handled, so a sweep reads each due entry once however many chunks
it takes, and the next sweep starts where this one ended, past the tombstones it left
in the index (RocksDB drops them only when it compacts).

The sweep core (`plan_chunk`, `write_chunk`, `sweep_partition`) works over a
`SweepStore`: one partition's two tables and their changelogs. The worker (`Sweeper`,
over `streams.worker.tables`) and the benchmark (`bench.sweep`, over `PartitionStore`)
both run it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import rocksdict
from prometheus_client import Counter

from streams.clock import Clock
from streams.records import dumps
from streams.worker import join
from streams.worker.metrics import Metrics
from streams.worker.outbox import Outbox
from streams.worker.state import (
    JOURNAL_KEY,
    PENDING_KEY,
    decode_row,
    due_key,
    due_upper_bound,
    encode_row,
    journal_done,
    moved_pending,
    split_due_key,
)

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 1.0
CHUNK = 20  # index entries per chunk, at most: the lock is held for one chunk
CHUNK_SECONDS = 0.002  # a chunk stops early once it has held the lock this long
# Pause after a chunk, as a multiple of the time the chunk took. With 1.0 the p99 join
# latency during a 25,000-row sweep was 2.0-2.8x the p99 without; with 3.0, 1.3-1.5x
# (`python -m bench.sweep --latency`), at about 1,500 rows a second.
PAUSE_RATIO = 3.0
FULL_SCAN_EVERY = 60  # sweeps; the others start where the last one ended

Changelog = Callable[[bytes, bytes | None], None]


class Readable(Protocol):
    """A table partition as the sweep reads rows from it."""

    def get(self, key: bytes, /) -> bytes | None:
        """The stored value, or None."""
        ...


class SweepStore(Protocol):
    """One partition's two tables as the sweep core reads and writes them.

    `PartitionStore` (databases written directly: the benchmark, unit tests) and the
    worker's `streams.worker.tables.PartitionTables` (writes held until the commit).
    """

    @property
    def state(self) -> Readable:
        """The `state` table."""
        ...

    def due_keys(self, start: bytes | None, bound: bytes, limit: int) -> list[bytes]:
        """Up to `limit` index keys from `start` (None: the first) and below `bound`."""
        ...

    def write_index(self, puts: list[bytes], deletes: list[bytes]) -> None:
        """Add and drop index entries."""
        ...

    def write_rows(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        """Store and delete rows."""
        ...


class WorkerStore(SweepStore, Protocol):
    """The worker's partition tables: a sweep store that also estimates its rows."""

    def estimated_rows(self) -> int:
        """RocksDB's estimate of the keys in `state`."""
        ...


def read_due_keys(db: Any, start: bytes | None, bound: bytes, limit: int) -> list[bytes]:
    """Up to `limit` keys of a `due` database from `start` (None: the first), below `bound`."""
    cursor = db.iter()
    if start is None:
        cursor.seek_to_first()
    else:
        cursor.seek(start)
    found: list[bytes] = []
    while cursor.valid() and len(found) < limit:
        key: bytes = cursor.key()
        if key >= bound:
            break
        found.append(key)
        cursor.next()
    return found


@dataclass
class PartitionStore:
    """One partition's `state` and `due` databases (rocksdict `Rdict`) and their changelogs.

    A changelog callback takes a key and a value, None for a tombstone.
    """

    state: Any
    due: Any
    state_changelog: Changelog
    due_changelog: Changelog

    def due_keys(self, start: bytes | None, bound: bytes, limit: int) -> list[bytes]:
        """Up to `limit` index keys from `start` (None: the first) and below `bound`."""
        return read_due_keys(self.due, start, bound, limit)

    def write_index(self, puts: list[bytes], deletes: list[bytes]) -> None:
        """Add and drop index entries in one RocksDB write; hand their records to the changelog."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key in puts:
            batch.put(key, b"")
            self.due_changelog(key, b"")
        for key in deletes:
            batch.delete(key)
            self.due_changelog(key, None)
        self.due.write(batch)

    def write_rows(self, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        """Store and delete rows in one RocksDB write; hand their records to the changelog."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in puts:
            batch.put(key, value)
            self.state_changelog(key, value)
        for key in deletes:
            batch.delete(key)
            self.state_changelog(key, None)
        self.state.write(batch)


@dataclass
class Change:
    """What the sweep does to one index entry and its row."""

    index_key: bytes
    key: bytes
    stale: bool = False  # the entry no longer matches its row: drop the entry only
    row: join.Row | None = None  # the row to keep; None deletes it
    due: int | None = None  # the kept row's next due time


@dataclass
class Chunk:
    """The plan for one chunk of due index entries, and what it amounts to."""

    bound: bytes  # the first index key not due when the chunk was planned
    changes: list[Change] = field(default_factory=list)
    emits: list[tuple[bytes, join.Emit]] = field(default_factory=list)  # (join_key, record)
    expired: int = 0  # predictions that expired
    timed_out: int = 0  # pending feedback that timed out
    forgotten: int = 0  # rows deleted

    @property
    def next_start(self) -> bytes:
        """Where the next chunk starts: just past the chunk's last index key."""
        return self.changes[-1].index_key + b"\x00" if self.changes else self.bound

    @property
    def rows(self) -> int:
        """Rows changed (stale index entries left out)."""
        return sum(1 for change in self.changes if not change.stale)


def plan_chunk(
    store: SweepStore,
    now: int,
    expired_memory_ms: int,
    start: bytes | None = None,
    limit: int = CHUNK,
    budget_seconds: float | None = None,
) -> Chunk:
    """Read up to `limit` due index entries from `start` and decide what happens to each row.

    Reads only; `write_chunk` applies the plan. With `budget_seconds` the chunk stops
    early once planning has taken that long.
    """
    started = time.perf_counter()
    chunk = Chunk(due_upper_bound(now))
    for index_key in store.due_keys(start, chunk.bound, limit):
        due, key = split_due_key(index_key)
        row = decode_row(store.state.get(key))
        if row is None or join.next_due(row, expired_memory_ms) != due:
            # The row's own entry is put again: the `due` and `state` changelogs are two
            # topics, so a rebuild can hold this entry's removal but not the row it went with.
            repair = join.next_due(row, expired_memory_ms) if row is not None else None
            chunk.changes.append(Change(index_key, key, stale=True, due=repair))
        else:
            result = join.expire_due(row, now, expired_memory_ms)
            kept = result.row
            next_due = join.next_due(kept, expired_memory_ms) if kept else None
            chunk.changes.append(Change(index_key, key, row=kept, due=next_due))
            chunk.emits.extend((row["key"].encode("utf-8"), emit) for emit in result.emits)
            if row["pred"] is not None and (kept is None or kept["pred"] is None):
                chunk.expired += 1
            chunk.timed_out += len(row["pend"]) - (len(kept["pend"]) if kept else 0)
            chunk.forgotten += int(kept is None)
        if budget_seconds is not None and time.perf_counter() - started >= budget_seconds:
            break
    return chunk


def write_chunk(store: SweepStore, chunk: Chunk) -> None:
    """Apply a planned chunk: rows and index entries to RocksDB, their records to the changelogs.

    Three writes, in the order that a crash between any two leaves nothing lost: new
    index entries, then the rows, then the old index entries go. An index entry whose
    row did not follow is stale and dropped by a later sweep; every row keeps an entry.
    """
    new_entries = [
        due_key(change.due, change.key)
        for change in chunk.changes
        if change.due is not None and (change.stale or change.row is not None)
    ]
    store.write_index(new_entries, [])
    rows = [(c.key, encode_row(c.row)) for c in chunk.changes if not c.stale and c.row is not None]
    if chunk.timed_out:  # in the same write as the rows, after them in the changelog
        rows.append((PENDING_KEY, moved_pending(store.state.get(PENDING_KEY), -chunk.timed_out)))
    deletes = [c.key for c in chunk.changes if not c.stale and c.row is None]
    # A journal whose input was written whole goes before its row may (`state.settle_journal`).
    done = [JOURNAL_KEY] if deletes and journal_done(store.state) else []
    store.write_rows(rows, done + deletes)
    store.write_index([], [change.index_key for change in chunk.changes])


@dataclass
class SweepTotals:
    """What one sweep of one partition did."""

    rows: int = 0
    expired: int = 0
    timed_out: int = 0
    forgotten: int = 0
    chunks: int = 0
    emits: list[tuple[bytes, join.Emit]] = field(default_factory=list)
    floor: bytes | None = None  # where the next sweep may start (see `Sweeper`)

    def add(self, chunk: Chunk) -> None:
        """Count one applied chunk."""
        self.rows += chunk.rows
        self.expired += chunk.expired
        self.timed_out += chunk.timed_out
        self.forgotten += chunk.forgotten
        self.chunks += 1


def sweep_partition(
    store: SweepStore,
    now: int,
    expired_memory_ms: int,
    limit: int = CHUNK,
    start: bytes | None = None,
) -> SweepTotals:
    """Apply everything due at `now` in one partition, without a broker; emits are returned.

    `start`: the index key to start from (None: the first). The worker runs the same
    steps through `Sweeper`, sending the emits before each write.
    """
    totals = SweepTotals()
    while True:
        chunk = plan_chunk(store, now, expired_memory_ms, start, limit)
        if not chunk.changes:
            totals.floor = chunk.bound
            return totals
        write_chunk(store, chunk)
        totals.add(chunk)
        totals.emits.extend(chunk.emits)
        start = chunk.next_start


class SweepHost(Protocol):
    """What the sweep needs of the worker (`streams.worker.app.JoinApp`)."""

    clock: Clock
    metrics: Metrics
    lock: asyncio.Lock
    outbox: Outbox
    output_topics: dict[str, str]
    expired_memory_ms: int

    def active_partitions(self) -> list[int]:
        """Input partitions this worker owns and has restored."""
        ...

    def sweep_store(self, partition: int) -> WorkerStore:
        """One active partition's tables, as the sweep reads and writes them."""
        ...

    async def commit(self) -> None:
        """Commit everything applied so far (`streams.worker.checkpoint`); return once done."""
        ...

    async def drain(self) -> None:
        """Wait until Kafka has everything sent so far."""
        ...


class Sweeper:
    """Runs the sweep core over each active partition of the worker's tables."""

    def __init__(self, join_app: SweepHost) -> None:
        self.join_app = join_app
        # Per partition, where the next sweep may start: everything due before it was
        # applied, and the tombstones the last sweep left there need not be read again.
        # The sweep reads the index as persisted, so it commits first, and the floor is
        # the time of that commit: every entry written after it falls due later. Only
        # a marker that is already past STREAMS_EXPIRED_MEMORY when its prediction
        # arrives (or a clock set back) gets an index entry below it: every
        # `FULL_SCAN_EVERY`th sweep, and after any change of assignment, starts from
        # the first entry.
        self.floors: dict[int, bytes] = {}
        self.sweeps = 0
        registry = join_app.metrics.registry
        self.forgotten = Counter(
            "streams_forgotten_rows",
            "Rows the sweep deleted (tombstones): expired markers past STREAMS_EXPIRED_MEMORY "
            "and rows left empty by timed-out feedback",
            registry=registry,
        )
        self.stale = Counter(
            "streams_sweep_stale_entries",
            "Index entries the sweep dropped because their row had moved on",
            registry=registry,
        )

    async def sweep(self) -> int:
        """Sweep every active partition once; return the number of rows changed."""
        ja = self.join_app
        started = time.perf_counter()
        started_ms = ja.clock.now_ms()
        changed = 0
        rows = 0
        # The index as the sweep reads it (persisted) holds every entry written before
        # `committed_ms`; the reader goes on meanwhile, and what it writes falls due later.
        committed_ms = ja.clock.now_ms()
        await ja.commit()
        partitions = ja.active_partitions()
        self.sweeps += 1
        if self.sweeps % FULL_SCAN_EVERY == 0 or set(partitions) != set(self.floors):
            self.floors.clear()
        for partition in partitions:
            try:
                changed += await self.sweep_partition(partition, self.floors.pop(partition, None))
                self.floors[partition] = due_upper_bound(committed_ms - 1)
                rows += ja.sweep_store(partition).estimated_rows()
            except Exception:  # a revoked partition mid-sweep: the next tick sees the new one
                log.exception("sweep_failed partition=%d", partition)
        ja.metrics.stored_predictions.set(rows)
        seconds = time.perf_counter() - started
        ja.metrics.sweep_seconds.observe(seconds)
        if changed:
            log.info("swept rows=%d started_ms=%d seconds=%.3f", changed, started_ms, seconds)
        return changed

    async def sweep_partition(self, partition: int, start: bytes | None = None) -> int:
        """Apply everything due in one partition, a chunk at a time; return the rows changed.

        `start`: the index key to start from (None: the first).
        """
        ja = self.join_app
        changed = 0
        while True:
            async with ja.lock:
                if partition not in ja.active_partitions():
                    return changed  # taken away (or a rebalance under way): not ours to write
                store = ja.sweep_store(partition)
                began = time.perf_counter()
                chunk = plan_chunk(
                    store,
                    ja.clock.now_ms(),
                    ja.expired_memory_ms,
                    start,
                    CHUNK,
                    CHUNK_SECONDS,
                )
                if not chunk.changes:
                    return changed
                for join_key, emit in chunk.emits:
                    ja.metrics.unmatched.labels(emit.record["reason"]).inc()
                    ja.outbox.send(ja.output_topics[emit.topic], join_key, dumps(emit.record))
                if chunk.emits:  # in Kafka before the rows they report on change
                    await ja.drain()
                write_chunk(store, chunk)
                self._count(chunk)
                changed += chunk.rows
                start = chunk.next_start
                took = time.perf_counter() - began
            # Let Kafka take this chunk before the next: a backlog in the producer
            # would hold back the joined records queued behind it.
            await ja.drain()
            await asyncio.sleep(took * PAUSE_RATIO)

    def forget_floors(self) -> None:
        """Sweep every partition from its first entry next time (a reset undid a sweep)."""
        self.floors.clear()

    def _count(self, chunk: Chunk) -> None:
        metrics = self.join_app.metrics
        metrics.expired.inc(chunk.expired)
        if chunk.timed_out:
            metrics.pending_resolved.labels("unmatched").inc(chunk.timed_out)
        self.forgotten.inc(chunk.forgotten)
        self.stale.inc(len(chunk.changes) - chunk.rows)
