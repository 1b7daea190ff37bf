"""How rows and the expiry index are laid out in the worker's two RocksDB tables.

`state` holds one row per (application, join_key). `due` is an index ordered by time:
its keys are `due time (8 bytes, big-endian ms) + row key`, so the sweep reads only
the entries that are due, whatever the number of stored rows. A row keeps exactly
one index entry, at `join.next_due(row)`; an entry whose time no longer matches its
row is stale and is simply dropped by the sweep.
"""

from __future__ import annotations

import struct
from typing import Protocol

import orjson

from streams import join
from streams.join import Row
from streams.records import Record

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
) -> None:
    """Store `row` (None deletes it) and move its index entry from `old_due` to `new_due`.

    `old_due` must be read before the join rules ran: they update rows in place.
    """
    if row is not None:
        state[key] = encode_row(row)
    elif existed:
        del state[key]
    if old_due != new_due:
        if old_due is not None:
            del due[due_key(old_due, key)]
        if new_due is not None:
            due[due_key(new_due, key)] = b""


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
) -> tuple[join.Result, int]:
    """Apply one valid input to its stored row: read, run the rule, write row and index.

    Returns the rule's result and how much feedback was waiting before it ran.
    """
    key = row_key(record["application"], record["join_key"])
    row = decode_row(state.get(key))
    # The rules update the row in place: note what it was before them.
    old_due = join.next_due(row, expired_memory_ms) if row else None
    waiting = len(row["pend"]) if row else 0
    if is_prediction:
        result = join.on_prediction(row, record, event_ts, src, now, retention_ms)
    else:
        result = join.on_feedback(row, record, event_ts, src, now, pending_ttl_ms)
    after = result.row
    write_row(
        state,
        due,
        key,
        existed=row is not None,
        old_due=old_due,
        row=after,
        new_due=join.next_due(after, expired_memory_ms) if after else None,
    )
    return result, waiting
