"""How rows and the expiry index are laid out in the worker's two RocksDB tables.

`state` holds one row per (application, join_key). `due` is an index ordered by time:
its keys are `due time (8 bytes, big-endian ms) + row key`, so the sweep reads only
the entries that are due, whatever the number of stored rows. A row keeps exactly
one index entry, at `join.next_due(row)`; an entry whose time no longer matches its
row is stale and is simply dropped by the sweep.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

import orjson

from streams.records import Record
from streams.worker import feedback_stats, join
from streams.worker.join import Row

_DUE = struct.Struct(">Q")


class Writable(Protocol):
    """What rows live in: a faust table (the worker) or a rocksdict database (the baseline)."""

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...

    def __delitem__(self, key: bytes, /) -> None: ...

    def get(self, key: bytes, /) -> bytes | None:
        """The stored value, or None."""
        ...


def row_key(application: str, join_key: str) -> bytes:
    """The state-table key: length-prefixed application, then the join key (both UTF-8)."""
    app = application.encode("utf-8")
    return struct.pack(">H", len(app)) + app + join_key.encode("utf-8")


def encode_row(row: Row) -> bytes:
    """A row as stored."""
    return orjson.dumps(row)


def decode_row(raw: bytes | None) -> Row | None:
    """A stored row, or None."""
    if raw is None:
        return None
    row: Row = orjson.loads(raw)
    return row


def due_key(due_ms: int, key: bytes) -> bytes:
    """The index key of a row due at `due_ms`."""
    return _DUE.pack(due_ms) + key


def split_due_key(index_key: bytes) -> tuple[int, bytes]:
    """(due time in ms, row key) of an index key."""
    return _DUE.unpack_from(index_key)[0], index_key[_DUE.size :]


def due_upper_bound(now_ms: int) -> bytes:
    """The first index key that is not yet due at `now_ms`."""
    return _DUE.pack(now_ms + 1)


def write_row(
    state: Writable,
    due: Writable,
    key: bytes,
    *,
    existed: bool,
    old_due: int | None,
    row: Row | None,
    new_due: int | None,
    reindex: bool = False,
) -> None:
    """Store `row` (None deletes it) and move its index entry from `old_due` to `new_due`.

    `old_due` must be read before the join rules ran: they update rows in place.
    `reindex` writes the entry at `new_due` even where it should already be: the row
    and its entry are in two tables (and two changelogs), so a crash between the two
    writes can leave the row without it; the input is then read again, as a replay.
    """
    if row is not None:
        state[key] = encode_row(row)
    elif existed:
        del state[key]
    if old_due != new_due and old_due is not None:
        del due[due_key(old_due, key)]
    if new_due is not None and (old_due != new_due or reindex):
        due[due_key(new_due, key)] = b""


# The aggregate shares an input changed: `state` key -> the stored share (None: absent).
Moved = dict[bytes, bytes | None]
# A row's list of every aggregate [version, field, minute] it has counted in, so that
# a replayed input can publish again what it moved.
AGGREGATES = "agg"
# The partition's count of feedback waiting for its prediction, [count, src of the input
# that last moved it], kept beside the rows and shares like a share (keys starting with
# two zero bytes are never rows; shares go on with "["), so it moves with the partition.
PENDING_KEY = feedback_stats.SHARE_PREFIX + b"pending"


def pending_count(raw: bytes | None) -> int:
    """The stored count of pending feedback (0 when absent)."""
    return 0 if raw is None else int(orjson.loads(raw)[0])


def moved_pending(raw: bytes | None, delta: int, src: str | None = None) -> bytes:
    """The stored count moved by `delta`; `src` None (the sweep) keeps the input's mark.

    Never below zero: feedback stored before the count existed (an upgrade) is not in
    it, and its timing out must not take the count below what is really waiting.
    """
    mark = src if src is not None else feedback_stats.moved_by(raw)
    return orjson.dumps([max(0, pending_count(raw) + delta), mark])


def _live(row: Row | None, now: int) -> bool:
    """Whether the row holds a prediction within its retention (only those move aggregates)."""
    return row is not None and row["pred"] is not None and now < row["pred"]["exp"]


def apply_input(
    state: Writable,
    due: Writable,
    record: Record,
    *,
    is_prediction: bool,
    event_ts: int,
    src: str,
    now: int,
    retention_ms: int,
    pending_ttl_ms: int,
    expired_memory_ms: int,
) -> tuple[join.Result, int, Moved]:
    """Apply one valid input to its stored row: read, run the rule, write row, index, aggregates.

    Returns the rule's result, how much feedback was waiting before it ran, and the
    aggregates it moved (for a replay: every aggregate the row ever counted in, as they
    are, so that they are published again).
    """
    application = record["application"]
    key = row_key(application, record["join_key"])
    row = decode_row(state.get(key))
    # The rules update the row in place: note what it was before them.
    old_due = join.next_due(row, expired_memory_ms) if row else None
    waiting = len(row["pend"]) if row else 0
    counted = feedback_stats.contribution(row) if _live(row, now) else {}
    counted_in: list[list[Any]] = row.get(AGGREGATES, []) if row else []
    if is_prediction:
        result = join.on_prediction(
            row, record, event_ts, src, now, retention_ms, expired_memory_ms
        )
    else:
        result = join.on_feedback(
            row, record, event_ts, src, now, pending_ttl_ms, expired_memory_ms
        )
    after = result.row
    moves: dict[bytes, feedback_stats.Totals] = {}
    if after is not None and not result.replay:
        # Aggregates are history: only a row that holds a live prediction moves them (an
        # expired prediction, swept or not, or one replaced by a marker, keeps counting).
        counts = feedback_stats.contribution(after) if _live(after, now) else None
        if counts is not None:
            moves = feedback_stats.changes(application, counted, counts)
        counted_in_after = counted_in + [
            list(agg) for agg in counts or () if list(agg) not in counted_in
        ]
        if counted_in_after:  # rows without feedback carry no list
            after[AGGREGATES] = counted_in_after
    if result.replay:
        # What this input moved before the crash may not have been published: publish
        # every aggregate the row ever counted in again, as it is now.
        again = [feedback_stats.stats_key(application, *agg) for agg in counted_in]
        moved: Moved = {share: state.get(share) for share in again}
    else:
        # Shares and the pending count first, then the row (see `streams.worker.feedback_stats`).
        moved = {}
        for share, delta in moves.items():
            stored = state.get(share)
            if feedback_stats.moved_by(stored) != src:
                stored = state[share] = feedback_stats.merge(stored, delta, src)
            # Already moved by this input before a crash cut its writes short: not moved
            # again, but published again (what it published may not have left).
            moved[share] = stored
        waiting_after = len(after["pend"]) if after is not None else 0
        if waiting_after != waiting:
            stored = state.get(PENDING_KEY)
            if feedback_stats.moved_by(stored) != src:
                state[PENDING_KEY] = moved_pending(stored, waiting_after - waiting, src)
    write_row(
        state,
        due,
        key,
        existed=row is not None,
        old_due=old_due,
        row=after,
        new_due=join.next_due(after, expired_memory_ms) if after else None,
        reindex=result.replay,
    )
    return result, waiting, moved
