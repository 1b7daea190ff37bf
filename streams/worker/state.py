"""How rows and the expiry index are laid out in the worker's two RocksDB tables.

`state` holds one row per (application, join_key). `due` is an index ordered by time:
its keys are `due time (8 bytes, big-endian ms) + row key`, so the sweep reads only
the entries that are due, whatever the number of stored rows. A row keeps exactly
one index entry, at `join.next_due(row)`; an entry whose time no longer matches its
row is stale and is simply dropped by the sweep.
"""

from __future__ import annotations

import struct
from functools import lru_cache
from typing import Any, Protocol

import orjson

from streams.records import RawJson, Record, dumps
from streams.worker import feedback_stats, join
from streams.worker.join import Row

_DUE = struct.Struct(">Q")


class Readable(Protocol):
    """A table partition read by key."""

    def get(self, key: bytes, /) -> bytes | None:
        """The stored value, or None."""
        ...


class Writable(Protocol):
    """What rows live in: a faust table (the worker) or a rocksdict database (the baseline)."""

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...

    def __delitem__(self, key: bytes, /) -> None: ...

    def get(self, key: bytes, /) -> bytes | None:
        """The stored value, or None."""
        ...


def row_key(application: str, join_key: str) -> bytes:
    """The state-table key: length-prefixed application, then the join key (both UTF-8)."""
    return _application_prefix(application) + join_key.encode("utf-8")


@lru_cache(maxsize=1024)
def _application_prefix(application: str) -> bytes:
    app = application.encode("utf-8")
    return struct.pack(">H", len(app)) + app


# A row with a prediction is stored as three lines: the row without the prediction's
# inputs and outputs (JSON), then the inputs, then the outputs (each JSON, never
# parsed again: `RawJson`). orjson never writes a raw newline, so the lines split
# cleanly; a row stored as one JSON object (no prediction, or an older worker's) reads too.


def encode_row(row: Row) -> bytes:
    """A row as stored."""
    pred = row["pred"]
    if pred is None:
        return dumps(row)
    head = pred.copy()
    inputs, outputs = head.pop("inputs"), head.pop("outputs")
    top = row.copy()
    top["pred"] = head
    return b"\n".join(
        (
            dumps(top),
            inputs.text if type(inputs) is RawJson else orjson.dumps(inputs),
            outputs.text if type(outputs) is RawJson else orjson.dumps(outputs),
        )
    )


def decode_row(raw: bytes | None) -> Row | None:
    """A stored row, or None; a prediction's inputs and outputs come as `RawJson`."""
    if raw is None:
        return None
    end = raw.find(b"\n")
    if end < 0:
        row: Row = orjson.loads(raw)
        return row
    row = orjson.loads(memoryview(raw)[:end])
    middle = raw.index(b"\n", end + 1)
    pred = row["pred"]
    pred["inputs"], pred["outputs"] = RawJson(raw[end + 1 : middle]), RawJson(raw[middle + 1 :])
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


# The partition's journal: what the last input that moved shares or the pending count
# moved, written before them: [src, row key, [[share key, delta], ...], pending delta]
# (keys as latin-1 text). Its row then carries `JOURNALED` = src. An input is applied
# only after the one before it, so after a crash only the journal's input can have been
# cut short; `settle_journal` undoes what it moved before anything else moves.
JOURNAL_KEY = feedback_stats.SHARE_PREFIX + b"journal"
JOURNALED = "jsrc"


def _journal(state: Readable) -> tuple[Any, bool] | None:
    """The journal entry, and whether its input's row was written (None: no journal)."""
    raw = state.get(JOURNAL_KEY)
    if raw is None:
        return None
    entry = orjson.loads(raw)
    row = state.get(entry[1].encode("latin-1"))
    # The row's first field is `JOURNALED` (`_journaled`): no need to decode the row.
    return entry, row is not None and row.startswith(_journaled_prefix(entry[0]))


def _journaled_prefix(src: str) -> bytes:
    return b'{"' + JOURNALED.encode() + b'":' + orjson.dumps(src)


def _journaled(row: join.Row, src: str) -> join.Row:
    """The row with `JOURNALED` = src as its first field (see `_journal`)."""
    if JOURNALED not in row:
        return {JOURNALED: src, **row}
    if next(iter(row)) == JOURNALED:
        row[JOURNALED] = src  # already first: a new value keeps its place
        return row
    return {JOURNALED: src, **{k: v for k, v in row.items() if k != JOURNALED}}


def settle_journal(state: Writable) -> Moved:
    """Undo the shares and pending count moved by an input a crash cut short before its row.

    Returns the shares it put back (to publish). Shares it had not reached, or that
    another input moved since (not possible before this runs), are left as they are.
    """
    found = _journal(state)
    if found is None or found[1]:
        return {}  # no journal, or its input's row was written: nothing was cut short
    src, _, moves, pending_delta = found[0]
    undone: Moved = {}
    for text, delta in moves:
        share = text.encode("latin-1")
        stored = state.get(share)
        if feedback_stats.moved_by(stored) == src:
            undone[share] = state[share] = feedback_stats.merge(stored, [-d for d in delta], "")
    if pending_delta:
        stored = state.get(PENDING_KEY)
        if feedback_stats.moved_by(stored) == src:
            state[PENDING_KEY] = moved_pending(stored, -pending_delta, "")
    del state[JOURNAL_KEY]
    return undone


def journal_done(state: Readable) -> bool:
    """Whether a journal is there and its input was written whole (the sweep may drop it)."""
    found = _journal(state)
    return found is not None and found[1]


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
    journal_settled: bool = False,
    stored_row: tuple[bytes, bytes | None] | None = None,
) -> tuple[join.Result, int, Moved]:
    """Apply one valid input to its stored row: read, run the rule, write row, index, aggregates.

    Returns the rule's result, how much feedback was waiting before it ran, and the
    aggregates it moved (for a replay: every aggregate the row ever counted in, as they
    are, so that they are published again).

    `journal_settled`: the caller knows that every input applied to `state` since it
    was opened went through whole, and that the journal was settled before the first:
    only an input cut short leaves a journal to settle, so there is none to look at.
    `stored_row`: the row's key and stored value, when the caller has read them already
    (settling the journal never writes a row).
    """
    undone = {} if journal_settled else settle_journal(state)
    application = record["application"]
    if stored_row is None:
        key = row_key(application, record["join_key"])
        row = decode_row(state.get(key))
    else:
        key, raw = stored_row
        row = decode_row(raw)
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
    if after is not None and row is not None and JOURNALED in row and JOURNALED not in after:
        after = _journaled(after, row[JOURNALED])  # the rules may make a new row (a marker)
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
        # The journal, the shares and the pending count, then the row (see
        # `streams.worker.feedback_stats`).
        moved = {}
        waiting_after = len(after["pend"]) if after is not None else 0
        if after is not None and (moves or waiting_after != waiting):
            entry = [
                src,
                key.decode("latin-1"),
                [[k.decode("latin-1"), d] for k, d in moves.items()],
            ]
            state[JOURNAL_KEY] = orjson.dumps([*entry, waiting_after - waiting])
            after = _journaled(after, src)
        for share, delta in moves.items():
            stored = state.get(share)
            merged = feedback_stats.merge_once(stored, delta, src)
            if merged is not None:
                stored = state[share] = merged
            # Already moved by this input before a crash cut its writes short: not moved
            # again, but published again (what it published may not have left).
            moved[share] = stored
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
    result.row = after
    return result, waiting, {**undone, **moved}
