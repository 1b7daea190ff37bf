"""Feedback aggregates without a broker: what each row counts for, and how inputs move it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_join import APP, DAY, KEY, MEMORY, RETENTION, T0, TTL, Input, interleavings

from streams.worker import feedback_stats
from streams.worker.feedback_stats import MINUTE_MS, SHARE_PREFIX
from streams.worker.state import JOURNAL_KEY, PENDING_KEY, Moved, apply_input, decode_row

pytestmark = pytest.mark.unit

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "stats.v1.json").read_text())


class Db(dict[bytes, bytes]):
    """A table as a dict that logs its writes; `del` of a missing key does nothing (RocksDB)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.writes: list[tuple[bytes, bytes | None]] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.writes.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.writes.append((key, None))
        self.pop(key, None)

    def replay_writes(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        for key, value in writes:
            if value is None:
                self.pop(key, None)
            else:
                self[key] = value


def version_of(event_id: str) -> str:
    return f"v{event_id}"


def minute_of(event_id: str) -> int:
    """Each prediction event_id has its own minute, so a replacement moves the counts."""
    return T0 + int(event_id.lstrip("p") or 0) * MINUTE_MS + 17


class Tables:
    def __init__(self) -> None:
        self.state, self.due = Db(), Db()
        self.published: dict[bytes, bytes | None] = {}

    @classmethod
    def after(cls, inputs: list[Input]) -> Tables:
        """Tables that applied `inputs`, in order."""
        tables = cls()
        for item in inputs:
            tables.apply(item)
        return tables

    def copy(self) -> Tables:
        other = Tables()
        other.state, other.due = Db(self.state), Db(self.due)
        return other

    def apply(self, item: Input, now: int = T0) -> Moved:
        fields = dict(item.fields)
        if item.kind == "p":
            record: dict[str, Any] = {
                "schema": "prediction/v1",
                "application": APP,
                "join_key": KEY,
                "event_id": item.event_id,
                "version": version_of(item.event_id),
                "inputs": {},
                "outputs": {},
            }
            if fields:
                record["feedback"] = fields
            ts = minute_of(item.event_id)
        else:
            record = {
                "schema": "feedback/v1",
                "application": APP,
                "join_key": KEY,
                "event_id": item.event_id,
                "feedback": fields,
            }
            ts = now
        _, _, moved = apply_input(
            self.state,
            self.due,
            record,
            is_prediction=item.kind == "p",
            event_ts=ts,
            src=item.src,
            now=now,
            retention_ms=RETENTION,
            pending_ttl_ms=TTL,
            expired_memory_ms=MEMORY,
        )
        self.published.update(moved)
        return moved

    def totals(self) -> dict[tuple[Any, ...], list[Any]]:
        """The shares in the table, as (application, version, field, minute) -> counts."""
        return shares(self.state)

    def rows(self) -> list[bytes]:
        return [v for k, v in self.state.items() if not k.startswith(SHARE_PREFIX)]

    def seen_by_readers(self) -> dict[tuple[Any, ...], list[Any]]:
        """What a reader of `feedback-stats` holds: the latest published share per key."""
        return shares(self.published)


def shares(
    table: dict[bytes, bytes] | dict[bytes, bytes | None],
) -> dict[tuple[Any, ...], list[Any]]:
    found = {}
    for key, raw in table.items():
        if key.startswith(SHARE_PREFIX) and key not in (PENDING_KEY, JOURNAL_KEY):
            totals = feedback_stats.decode_totals(raw)
            if totals[0]:
                found[tuple(orjson.loads(key[len(SHARE_PREFIX) :]))] = totals
    return found


def counted_by_rows(tables: Tables) -> dict[tuple[Any, ...], list[Any]]:
    """The aggregates recomputed from scratch: each stored row's merged feedback."""
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for raw in tables.rows():
        for (version, name, minute), value in feedback_stats.contribution(decode_row(raw)).items():
            current = sums.setdefault((APP, version, name, minute), [0, 0, 0, 0, 0])
            for i, amount in enumerate(feedback_stats.counts(value)):
                current[i] += amount
    return sums


@settings(max_examples=400, deadline=None)
@given(interleavings())
def test_aggregates_equal_what_the_rows_count_for_after_any_interleaving(
    inputs: list[Input],
) -> None:
    """Invariant: each prediction counts once, with its latest merged value, where it is now."""
    tables = Tables.after(inputs)
    assert tables.totals() == counted_by_rows(tables)
    # What was handed out for publishing, latest per key, is what the table holds.
    assert tables.seen_by_readers() == tables.totals()


@settings(max_examples=300, deadline=None)
@given(interleavings(), st.data())
def test_a_crash_and_replay_leaves_the_aggregates_of_a_clean_run(
    inputs: list[Input], data: st.DataObject
) -> None:
    """Invariant: rows and aggregates restored together (one partition's databases) and the
    inputs replayed from the last commit give the clean run's aggregates, and a reader of
    what was published before the commit and during the replay sees them too."""
    clean = Tables.after(inputs)
    crash = data.draw(st.integers(0, len(inputs)))
    commit = data.draw(st.integers(0, crash))
    restored_at = data.draw(st.integers(commit, crash))
    restored = Tables.after(inputs[:restored_at])
    restored.published = dict(Tables.after(inputs[:commit]).published)
    for item in inputs[commit:]:
        restored.apply(item)
    assert restored.totals() == clean.totals()
    assert restored.seen_by_readers() == clean.totals()


@settings(max_examples=300, deadline=None)
@given(interleavings(), st.data())
def test_an_input_whose_writes_were_cut_short_is_not_counted_twice(
    inputs: list[Input], data: st.DataObject
) -> None:
    """Invariant: a crash in the middle of an input's writes leaves, in the database or the
    changelog partition, a prefix of them (shares first, then the row); replaying from the
    last commit gives the clean run's aggregates."""
    clean = Tables.after(inputs)
    if not inputs:
        return
    torn = data.draw(st.integers(0, len(inputs) - 1))
    commit = data.draw(st.integers(0, torn))
    run = Tables.after(inputs[:torn])
    before = run.copy()
    run.state.writes.clear()
    run.apply(inputs[torn])
    kept = data.draw(st.integers(0, len(run.state.writes)))
    before.state.replay_writes(run.state.writes[:kept])
    for item in inputs[commit:]:
        before.apply(item)
    assert before.totals() == clean.totals()


def _thumbs(tables: Tables, *values: bool) -> None:
    for i, value in enumerate(values):
        tables.apply(Input("f", f"f{i}", (("thumbs_up", value),), f"f0:{i}"))  # type: ignore[arg-type]


def test_a_thumbs_up_changed_to_a_thumbs_down_moves_one_count() -> None:
    tables = Tables()
    tables.apply(Input("p", "p1", (), "p0:0"))
    _thumbs(tables, True)
    key = (APP, "vp1", "thumbs_up", minute_of("p1") // MINUTE_MS * MINUTE_MS)
    assert tables.totals() == {key: [1, 1, 0, 0, 0]}
    _thumbs(tables, True, False)
    assert tables.totals() == {key: [1, 0, 1, 0, 0]}


def test_numbers_are_summed_and_other_values_only_counted() -> None:
    tables = Tables()
    tables.apply(Input("p", "p1", (), "p0:0"))
    tables.apply(Input("f", "f1", (("score", 4), ("label", "cat")), "f0:0"))  # type: ignore[arg-type]
    tables.apply(Input("f", "f2", (("score", 2.5),), "f0:1"))  # type: ignore[arg-type]
    minute = minute_of("p1") // MINUTE_MS * MINUTE_MS
    assert tables.totals() == {
        (APP, "vp1", "score", minute): [1, 0, 0, 1, 2.5],
        (APP, "vp1", "label", minute): [1, 0, 0, 0, 0],
    }


def test_a_replaced_prediction_takes_its_feedback_to_its_own_version_and_minute() -> None:
    tables = Tables()
    tables.apply(Input("p", "p1", (), "p0:0"))
    _thumbs(tables, True)
    tables.apply(Input("p", "p2", (), "p0:1"))
    minute = minute_of("p2") // MINUTE_MS * MINUTE_MS
    assert tables.totals() == {(APP, "vp2", "thumbs_up", minute): [1, 1, 0, 0, 0]}
    old = feedback_stats.stats_key(APP, "vp1", "thumbs_up", minute - MINUTE_MS)
    assert feedback_stats.stats_value(old, tables.published[old], 0, T0) is None, "a tombstone"


def test_an_expired_prediction_keeps_counting() -> None:
    """Aggregates are history: expiry and a replacement that arrives expired change nothing."""
    tables = Tables()
    tables.apply(Input("p", "p1", (), "p0:0"))
    _thumbs(tables, True)
    before = tables.totals()
    late = T0 + RETENTION + DAY
    assert tables.apply(Input("p", "p2", (), "p0:1"), now=late) == {}
    assert tables.apply(Input("f", "f9", (("thumbs_up", False),), "f0:9"), now=late) == {}  # type: ignore[arg-type]
    assert tables.totals() == before


def test_a_replay_republishes_the_current_shares_without_moving_them() -> None:
    tables = Tables()
    tables.apply(Input("p", "p1", (), "p0:0"))
    _thumbs(tables, True)
    before = dict(tables.state)
    moved = tables.apply(Input("f", "f0", (("thumbs_up", True),), "f0:0"))  # type: ignore[arg-type]
    assert moved == {
        k: v for k, v in before.items() if k.startswith(SHARE_PREFIX) and k != JOURNAL_KEY
    }
    assert dict(tables.state) == before
    # A producer's duplicate (same event_id, another offset) is neither counted nor republished.
    assert tables.apply(Input("f", "f0", (("thumbs_up", True),), "f0:5")) == {}  # type: ignore[arg-type]


@given(
    st.one_of(st.none(), st.text(max_size=5), st.integers(-5, 5)),
    st.text(min_size=1, max_size=10),
    st.integers(0, 2**40),
    st.integers(0, 31),
    st.lists(st.integers(0, 5), min_size=3, max_size=3),
    st.integers(-100, 100) | st.floats(-1e6, 1e6),
)
def test_published_records_match_the_schema_and_key(
    version: Any, name: str, minute: int, partition: int, flags: list[int], total: Any
) -> None:
    minute = minute // MINUTE_MS * MINUTE_MS
    stored = feedback_stats.stats_key(APP, version, name, minute)
    true, false, numbers = flags
    raw = orjson.dumps([true + false + numbers + 1, true, false, numbers, total, "f0:1"])
    value = feedback_stats.stats_value(stored, raw, partition, T0)
    assert value is not None
    record = orjson.loads(value)
    jsonschema.validate(record, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert orjson.loads(feedback_stats.published_key(stored, partition)) == [
        APP,
        version,
        name,
        record["minute"],
        partition,
    ]
    assert set(record) == set(SCHEMA["required"])
    assert feedback_stats.stats_value(stored, None, partition, T0) is None
    emptied = feedback_stats.merge(
        raw, [-(true + false + numbers + 1), -true, -false, -numbers, -total], "f0:2"
    )
    assert feedback_stats.stats_value(stored, emptied, partition, T0) is None


TOTALS = st.lists(st.integers(-5, 5), min_size=5, max_size=5)


@given(st.one_of(st.none(), st.tuples(TOTALS, st.sampled_from(["f0:1", "f0:2"]))), TOTALS)
def test_merge_once_moves_a_share_once_per_input(
    stored: tuple[list[int], str] | None, delta: list[int]
) -> None:
    raw = None if stored is None else orjson.dumps([*stored[0], stored[1]])

    merged = feedback_stats.merge_once(raw, delta, "f0:1")

    if feedback_stats.moved_by(raw) == "f0:1":
        assert merged is None
    else:
        assert merged == feedback_stats.merge(raw, delta, "f0:1")


def test_versions_equal_in_python_but_not_in_json_are_distinct_aggregates() -> None:
    keys = {feedback_stats.stats_key(APP, version, "f", 0) for version in (1, 1.0, "1", None)}

    assert len(keys) == 4
    assert feedback_stats.stats_key(APP, 1.0, "f", 0).endswith(b',1.0,"f",0]')
