"""The expiry sweep: predictions past retention, pending feedback past its TTL, old markers.

Every second, for each partition this worker owns (active, not standby), the sweep
reads the `due` index from its start up to now: only what is due, so its cost
follows what expires, not what is stored. It works in chunks; for each chunk, under
the lock the agent also takes, so no row changes under it:

1. apply `join.expire_due` to each due row (stale index entries are dropped);
2. send the `unmatched` records that produced, and wait until Kafka has them;
3. write the rows (deleted, or reduced to an `expired` marker) and index entries to
   RocksDB and hand their changelog records (tombstones for deletes) to the producer.

A crash after 2 and before 3 leaves the rows as they were: the next sweep sends the
same `unmatched` records again (at least once). A crash after 3 before the changelog
is flushed leaves a rebuilt worker with rows this one deleted; their index entries
come back with them, so the next sweep deletes them again. Between chunks the lock is
released, so joins go on during a long sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from streams import join
from streams.records import dumps
from streams.state import decode_row, due_key, due_upper_bound, encode_row, split_due_key

if TYPE_CHECKING:
    from streams.app import JoinApp

log = logging.getLogger(__name__)

SWEEP_INTERVAL_SECONDS = 1.0
CHUNK = 500


@dataclass
class Change:
    """What the sweep does to one index entry and its row."""

    index_key: bytes
    key: bytes
    stale: bool = False  # the entry no longer matches its row: drop the entry only
    row: join.Row | None = None  # the row to keep; None deletes it
    due: int | None = None  # the kept row's next due time


class Sweeper:
    """Runs `expire_due` over the due part of the index, partition by partition."""

    def __init__(self, join_app: JoinApp) -> None:
        self.join_app = join_app

    def active_partitions(self) -> list[int]:
        """Partitions of the input topics this worker processes now (not standbys)."""
        app = self.join_app.app
        if app.rebalancing or not self.join_app.recovered():
            return []
        predictions = self.join_app.topic_names["predictions"]
        return sorted(
            tp.partition for tp in app.assignor.assigned_actives() if tp.topic == predictions
        )

    async def sweep(self) -> int:
        """Sweep every active partition once; return the number of rows changed."""
        started = time.perf_counter()
        changed = 0
        rows = 0
        for partition in self.active_partitions():
            try:
                changed += await self.sweep_partition(partition)
                rows += self._estimate_rows(partition)
            except (
                Exception
            ):  # a revoked partition mid-sweep; the next tick sees the new assignment
                log.exception("sweep_failed partition=%d", partition)
        self.join_app.metrics.stored_predictions.set(rows)
        self.join_app.metrics.sweep_seconds.observe(time.perf_counter() - started)
        if changed:
            log.info("swept rows=%d seconds=%.3f", changed, time.perf_counter() - started)
        return changed

    async def sweep_partition(self, partition: int) -> int:
        """Apply everything due in one partition, a chunk at a time."""
        changed = 0
        while True:
            async with self.join_app.lock:
                now = self.join_app.clock.now_ms()
                due_entries = self._due_entries(partition, now)
                if not due_entries:
                    return changed
                changed += await self._apply_chunk(partition, due_entries, now)
            await asyncio.sleep(0)

    def _db(self, table: Any, partition: int) -> Any:
        return table.data._db_for_partition(partition)

    def _estimate_rows(self, partition: int) -> int:
        value = self._db(self.join_app.state, partition).property_int_value(
            "rocksdb.estimate-num-keys"
        )
        return int(value or 0)

    def _due_entries(self, partition: int, now: int) -> list[bytes]:
        bound = due_upper_bound(now)
        found: list[bytes] = []
        cursor = self._db(self.join_app.due, partition).iter()
        cursor.seek_to_first()
        while cursor.valid() and len(found) < CHUNK:
            key = cursor.key()
            if key >= bound:
                break
            found.append(key)
            cursor.next()
        return found

    async def _apply_chunk(self, partition: int, due_entries: list[bytes], now: int) -> int:
        ja = self.join_app
        state_db = self._db(ja.state, partition)
        changes: list[Change] = []
        emits: list[tuple[bytes, join.Emit]] = []
        for index_key in due_entries:
            due, key = split_due_key(index_key)
            row = decode_row(state_db.get(key))
            if row is None or join.next_due(row, ja.expired_memory_ms) != due:
                changes.append(Change(index_key, key, stale=True))
                continue
            result = join.expire_due(row, now, ja.expired_memory_ms)
            kept = result.row
            next_due = join.next_due(kept, ja.expired_memory_ms) if kept else None
            changes.append(Change(index_key, key, row=kept, due=next_due))
            emits.extend((row["key"].encode("utf-8"), emit) for emit in result.emits)
            if row["pred"] is not None and (kept is None or kept["pred"] is None):
                ja.metrics.expired.inc()
            waited = len(row["pend"]) - (len(kept["pend"]) if kept else 0)
            if waited:
                ja.metrics.pending_resolved.labels("unmatched").inc(waited)
                ja.metrics.pending.dec(waited)
        for join_key, emit in emits:
            ja.metrics.unmatched.labels(emit.record["reason"]).inc()
            await ja.outputs[emit.topic].send(key=join_key, value=dumps(emit.record))
        if emits:
            await ja.app.producer.flush()
        for change in changes:
            self._delete(ja.due, partition, change.index_key)
            if change.stale:
                continue
            if change.row is None:
                self._delete(ja.state, partition, change.key)
                continue
            self._put(ja.state, partition, change.key, encode_row(change.row))
            if change.due is not None:
                self._put(ja.due, partition, due_key(change.due, change.key), b"")
        return sum(1 for change in changes if not change.stale)

    def _put(self, table: Any, partition: int, key: bytes, value: bytes) -> None:
        self._db(table, partition).put(key, value)
        table.send_changelog(partition, key, value)

    def _delete(self, table: Any, partition: int, key: bytes) -> None:
        self._db(table, partition).delete(key)
        table.send_changelog(partition, key, None, value_serializer="raw")
