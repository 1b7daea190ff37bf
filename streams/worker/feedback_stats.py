"""Feedback aggregates (CONTRACT.md section 8): what each joined prediction counts for.

A prediction with feedback counts once in each aggregate (application, version,
feedback field, minute of the prediction's timestamp) for which its merged feedback
has a value: in `count`, and in `true` / `false` (booleans) or `numbers` / `sum`
(numbers). What a row counts for is a function of the row alone (`contribution`),
so when a rule changes a row, the aggregates move by the difference between what it
counted for before and after: a thumbs-up changed to a thumbs-down moves one count
from `true` to `false`, and a prediction replaced by another (rule 6) moves its
feedback to the new prediction's version and minute.

Aggregates are history: a prediction that expires, or a row that becomes a marker,
keeps counting where it counted. Only a row that still holds a prediction moves them.

Each partition keeps its share of every aggregate in the `state` table, beside the
rows (keys start with two zero bytes, which no row key does: an application name is
never empty), and the worker publishes the shares it changed to `feedback-stats`,
keyed by [application, version, field, minute, partition]; readers add the
partitions up (`streams.stats.query`).

Why in `state`: a row and the shares it moves are written to one database and one
changelog partition: the partition's journal entry, the shares, then the row
(`streams.worker.state.apply_input`). After a crash only a prefix of those writes may
have reached the database or the changelog. Each share remembers the input that last
moved it (`src`), so a share is never moved twice by one input; and the journal lets
the next write after a restart undo what an input cut short had moved
(`streams.worker.state.settle_journal`), whatever is read first.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from streams.records import format_ts
from streams.worker.join import Row

MINUTE_MS = 60_000
SHARE_PREFIX = b"\x00\x00"
# A share's counts: [count, true, false, numbers, sum]; stored with the `src` of the
# input that last moved it appended.
Totals = list[Any]
# (version, field, minute in ms) -> the row's value of the field.
Contribution = dict[tuple[Any, str, int], Any]


def contribution(row: Row | None) -> Contribution:
    """What a row counts for: each field of its merged feedback, at its prediction's minute."""
    if row is None or row["pred"] is None or not row["fbs"]:
        return {}
    merged: dict[str, Any] = {}
    for entry in row["fbs"]:
        merged.update(entry["f"])
    pred = row["pred"]
    minute = pred["ts"] // MINUTE_MS * MINUTE_MS
    return {(pred["version"], name, minute): value for name, value in merged.items()}


def counts(value: Any) -> Totals:
    """What one value adds to a share."""
    if value is True or value is False:
        return [1, int(value), int(not value), 0, 0]
    if isinstance(value, int | float):
        return [1, 0, 0, 1, value]
    return [1, 0, 0, 0, 0]


@lru_cache(maxsize=4096, typed=True)  # typed: version 1, 1.0 and "1" are three aggregates
def stats_key(application: str, version: Any, field: str, minute_ms: int) -> bytes:
    """The `state` table key of one partition's share of an aggregate."""
    return SHARE_PREFIX + orjson.dumps([application, version, field, minute_ms])


def _fields(stored_key: bytes) -> list[Any]:
    fields: list[Any] = orjson.loads(stored_key[len(SHARE_PREFIX) :])
    return fields


def changes(application: str, before: Contribution, after: Contribution) -> dict[bytes, Totals]:
    """How each aggregate moves when a row goes from `before` to `after` (no entry: it stays)."""
    moves: dict[bytes, Totals] = {}
    for sign, these, others in ((-1, before, after), (1, after, before)):
        for agg, value in these.items():
            if agg in others and _same(others[agg], value):
                continue
            key = stats_key(application, *agg)
            count, true, false, numbers, total = counts(value)
            current = moves.get(key)
            if current is None:
                moves[key] = [sign * count, sign * true, sign * false, sign * numbers, sign * total]
            else:
                current[0] += sign * count
                current[1] += sign * true
                current[2] += sign * false
                current[3] += sign * numbers
                current[4] += sign * total
    return moves


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def decode_totals(raw: bytes | None) -> Totals:
    """A stored share's counts ([0, 0, 0, 0, 0] when absent)."""
    if raw is None:
        return [0, 0, 0, 0, 0]
    stored: list[Any] = orjson.loads(raw)
    return stored[:5]


def moved_by(raw: bytes | None) -> str | None:
    """The `src` of the input that last moved a stored share or count (stored last)."""
    return None if raw is None else orjson.loads(raw)[-1]


def merge(raw: bytes | None, delta: Totals, src: str) -> bytes:
    """A stored share moved by `delta` by the input at `src` (kept at zero: it remembers `src`)."""
    totals = [a + b for a, b in zip(decode_totals(raw), delta, strict=True)]
    return orjson.dumps([*totals, src])


def merge_once(raw: bytes | None, delta: Totals, src: str) -> bytes | None:
    """`merge(raw, delta, src)`, or None when the input at `src` already moved the share."""
    if raw is None:
        return orjson.dumps([*delta, src])
    stored = orjson.loads(raw)
    if stored[-1] == src:
        return None
    count, true, false, numbers, total = delta
    return orjson.dumps(
        [
            stored[0] + count,
            stored[1] + true,
            stored[2] + false,
            stored[3] + numbers,
            stored[4] + total,
            src,
        ]
    )


def published_key(stored_key: bytes, partition: int) -> bytes:
    """The `feedback-stats` key of a share: [application, version, field, minute, partition]."""
    application, version, field, minute = _fields(stored_key)
    return orjson.dumps([application, version, field, format_ts(minute), partition])


def stats_value(stored_key: bytes, raw: bytes | None, partition: int, now_ms: int) -> bytes | None:
    """The `stats/v1` record of one partition's share (None: a tombstone, nothing counts)."""
    count, true, false, numbers, total = decode_totals(raw)
    if count <= 0:
        return None
    application, version, field, minute = _fields(stored_key)
    return orjson.dumps(
        {
            "schema": "stats/v1",
            "application": application,
            "version": version,
            "field": field,
            "minute": format_ts(minute),
            "partition": partition,
            "count": count,
            "true": true,
            "false": false,
            "numbers": numbers,
            "sum": total,
            "updated_at": format_ts(now_ms),
        }
    )
