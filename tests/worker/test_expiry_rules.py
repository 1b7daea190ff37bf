"""Expiry without a broker and without waiting: the rules and the sweep core on a ManualClock.

The sweep core runs over real rocksdict databases in a temporary directory, with the
changelogs recorded in lists, so what a rebuilt worker would restore can be checked.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from rocksdict import Options, Rdict

from streams.clock import ManualClock
from streams.worker import join
from streams.worker.expiry import PartitionStore, plan_chunk, sweep_partition, write_chunk
from streams.worker.state import (
    PENDING_KEY,
    decode_row,
    due_key,
    encode_row,
    moved_pending,
    pending_count,
    row_key,
    split_due_key,
)

pytestmark = pytest.mark.unit

SECOND = 1000
DAY = 86_400 * SECOND
RETENTION = 10 * SECOND
TTL = 5 * SECOND
MEMORY = DAY  # the contract: feedback for a swept prediction says `expired` for a day


def prediction(key: str, event_id: str | None = None, app: str = "loans") -> dict[str, Any]:
    return {
        "schema": "prediction/v1",
        "application": app,
        "join_key": key,
        "event_id": event_id or f"p-{key}",
        "inputs": {"text": "x" * 200},
        "outputs": {"label": "yes"},
    }


def feedback(key: str, event_id: str, app: str = "loans") -> dict[str, Any]:
    return {
        "schema": "feedback/v1",
        "application": app,
        "join_key": key,
        "event_id": event_id,
        "feedback": {"thumbs_up": True},
    }


class Partition:
    """One partition as the worker keeps it: two databases, their changelogs, the agent's writes."""

    def __init__(self, path: Path, clock: ManualClock, memory: int = MEMORY) -> None:
        options = Options(raw_mode=True)
        self.state = Rdict(str(path / "state"), options)
        self.due = Rdict(str(path / "due"), options)
        self.changelog: dict[str, list[tuple[bytes, bytes | None]]] = {"state": [], "due": []}
        self.reads = 0
        self.clock = clock
        self.memory = memory
        self.offset = 0

    def store(self) -> PartitionStore:
        partition = self

        class CountingState:
            """The state database, counting reads: the sweep must read only due rows."""

            def get(self, key: bytes) -> bytes | None:
                partition.reads += 1
                value: bytes | None = partition.state.get(key)
                return value

            def write(self, batch: Any) -> None:
                partition.state.write(batch)

        return PartitionStore(
            state=CountingState(),
            due=self.due,
            state_changelog=lambda k, v: self.changelog["state"].append((k, v)),
            due_changelog=lambda k, v: self.changelog["due"].append((k, v)),
        )

    def row(self, key: str, app: str = "loans") -> join.Row | None:
        return decode_row(self.state.get(row_key(app, key)))

    def index(self) -> list[tuple[int, bytes]]:
        cursor = self.due.iter()
        cursor.seek_to_first()
        entries = []
        while cursor.valid():
            entries.append(split_due_key(cursor.key()))
            cursor.next()
        return entries

    def apply(self, result: join.Result, before: join.Row | None, key: bytes) -> join.Result:
        """Write a rule's result as the agent does (`JoinApp._write`)."""
        old = join.next_due(before, self.memory) if before else None
        new = join.next_due(result.row, self.memory) if result.row else None
        if result.row is None:
            self.state.delete(key)
            self.changelog["state"].append((key, None))
        else:
            self.state.put(key, encode_row(result.row))
            self.changelog["state"].append((key, encode_row(result.row)))
        if old != new:
            if old is not None:
                self.due.delete(due_key(old, key))
                self.changelog["due"].append((due_key(old, key), None))
            if new is not None:
                self.due.put(due_key(new, key), b"")
                self.changelog["due"].append((due_key(new, key), b""))
        return result

    def predict(self, key: str, ts: int | None = None, retention: int = RETENTION) -> join.Result:
        record = prediction(key)
        rk = row_key(record["application"], key)
        before = decode_row(self.state.get(rk))
        self.offset += 1
        now = self.clock.now_ms()
        result = join.on_prediction(
            copy.deepcopy(before),
            record,
            now if ts is None else ts,
            f"p0:{self.offset}",
            now,
            retention,
        )
        return self.apply(result, before, rk)

    def feedback(self, key: str, event_id: str) -> join.Result:
        record = feedback(key, event_id)
        rk = row_key(record["application"], key)
        before = decode_row(self.state.get(rk))
        self.offset += 1
        now = self.clock.now_ms()
        result = join.on_feedback(copy.deepcopy(before), record, now, f"f0:{self.offset}", now, TTL)
        return self.apply(result, before, rk)

    def sweep(self) -> Any:
        return sweep_partition(self.store(), self.clock.now_ms(), self.memory, limit=3)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def part(tmp_path: Path, clock: ManualClock) -> Partition:
    return Partition(tmp_path, clock)


def rebuilt(changelog: list[tuple[bytes, bytes | None]]) -> dict[bytes, bytes]:
    """What a worker with an empty data directory restores: the latest record per key."""
    table: dict[bytes, bytes] = {}
    for key, value in changelog:
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


# -- the rules -----------------------------------------------------------------------


def test_next_due_is_the_earliest_of_expiry_pending_timeout_and_forgetting() -> None:
    row = join.new_row("loans", "k")
    assert join.next_due(row, MEMORY) is None
    live = join.on_prediction(None, prediction("k"), 1000, "p0:1", 1000, RETENTION).row
    assert live is not None and join.next_due(live, MEMORY) == 1000 + RETENTION
    waiting = join.on_feedback(None, feedback("k", "f1"), 50, "f0:1", 100, TTL).row
    assert waiting is not None and join.next_due(waiting, MEMORY) == 100 + TTL
    marker = {**row, "gone": 7000}
    assert join.next_due(marker, MEMORY) == 7000 + MEMORY


def test_a_prediction_is_live_from_its_timestamp_until_timestamp_plus_retention(
    clock: ManualClock,
) -> None:
    ts = clock.now_ms() - 4 * SECOND  # logged 4 s ago: 6 s of its 10 s retention left
    row = join.on_prediction(None, prediction("k"), ts, "p0:1", clock.now_ms(), RETENTION).row
    assert row is not None and row["pred"]["exp"] == ts + RETENTION
    clock.advance(6 * SECOND - 1)
    inside = join.on_feedback(copy.deepcopy(row), feedback("k", "f1"), 0, "f0:1", clock.ms, TTL)
    assert inside.outcome == "joined"
    clock.advance(1)
    outside = join.on_feedback(copy.deepcopy(row), feedback("k", "f1"), 0, "f0:1", clock.ms, TTL)
    assert outside.outcome == "unmatched"
    assert [e.record["reason"] for e in outside.emits] == ["expired"]


def test_a_prediction_older_than_its_retention_on_arrival_is_never_joined(
    clock: ManualClock,
) -> None:
    ts = clock.now_ms() - RETENTION
    arrived = join.on_prediction(None, prediction("k"), ts, "p0:1", clock.ms, RETENTION)
    assert arrived.outcome == "expired" and arrived.row is not None
    assert arrived.row["pred"] is None and arrived.row["gone"] == ts + RETENTION
    late = join.on_feedback(arrived.row, feedback("k", "f1"), 0, "f0:1", clock.ms, TTL)
    assert late.outcome == "unmatched" and late.emits[0].record["reason"] == "expired"
    assert not [e for e in late.emits if e.topic == "joined"]


def test_expired_marker_keeps_no_inputs_and_answers_expired_for_the_whole_memory(
    clock: ManualClock,
) -> None:
    row = join.on_prediction(None, prediction("k"), clock.ms, "p0:1", clock.ms, RETENTION).row
    row = join.on_feedback(row, feedback("k", "f1"), 0, "f0:1", clock.ms, TTL).row
    assert row is not None
    clock.advance(RETENTION - 1)
    assert join.expire_due(row, clock.ms, MEMORY).row == row  # not yet
    clock.advance(1)
    marker = join.expire_due(row, clock.ms, MEMORY).row
    assert marker is not None
    assert marker["pred"] is None and marker["fbs"] == [] and marker["gone"] == clock.ms
    assert "x" * 200 not in encode_row(marker).decode()  # inputs are gone from the row
    clock.advance(MEMORY - 1)
    late = join.on_feedback(copy.deepcopy(marker), feedback("k", "f2"), 0, "f0:2", clock.ms, TTL)
    assert late.outcome == "unmatched" and late.emits[0].record["reason"] == "expired"
    assert join.expire_due(marker, clock.ms, MEMORY).row == marker
    clock.advance(1)
    assert join.expire_due(marker, clock.ms, MEMORY).row is None


def test_pending_feedback_times_out_to_no_prediction_after_the_ttl(clock: ManualClock) -> None:
    waiting = join.on_feedback(None, feedback("k", "f1"), 0, "f0:1", clock.ms, TTL).row
    assert waiting is not None
    clock.advance(TTL - 1)
    assert join.expire_due(waiting, clock.ms, MEMORY).emits == []
    clock.advance(1)
    timed_out = join.expire_due(waiting, clock.ms, MEMORY)
    assert timed_out.row is not None and timed_out.row["pend"] == []
    assert [(e.topic, e.record["reason"]) for e in timed_out.emits] == [
        ("unmatched", "no_prediction")
    ]
    # Remembered for STREAMS_EXPIRED_MEMORY: read again after a crash it is a replay, not
    # new pending feedback (a second outcome); sent again by a producer, a duplicate.
    replayed = join.on_feedback(timed_out.row, feedback("k", "f1"), 0, "f0:1", clock.ms, TTL)
    assert replayed.replay and replayed.emits == [] and replayed.row is not None
    assert replayed.row["pend"] == []
    retried = join.on_feedback(timed_out.row, feedback("k", "f1"), 0, "f0:9", clock.ms, TTL)
    assert retried.outcome == "duplicate"
    assert join.next_due(timed_out.row, MEMORY) == clock.ms + MEMORY
    assert join.expire_due(timed_out.row, clock.ms + MEMORY, MEMORY).row is None
    # A prediction arriving after the timeout is stored but joins nothing.
    late = join.on_prediction(timed_out.row, prediction("k"), clock.ms, "p0:1", clock.ms, RETENTION)
    assert late.outcome == "stored" and late.emits == []


# -- the sweep core ---------------------------------------------------------------------


def test_sweep_expires_then_forgets_and_the_changelog_never_brings_them_back(
    part: Partition, clock: ManualClock
) -> None:
    for i in range(10):
        part.predict(f"old{i}")
    clock.advance(5 * SECOND)
    for i in range(5):
        part.predict(f"new{i}")
    assert part.sweep().rows == 0
    clock.advance(RETENTION - 5 * SECOND)  # old* due now, new* in 5 s
    part.reads = 0
    totals = part.sweep()
    assert (totals.rows, totals.expired, totals.forgotten) == (10, 10, 0)
    assert part.reads == 10  # only the due rows were read
    for i in range(10):
        marker = part.row(f"old{i}")
        assert marker is not None and marker["pred"] is None and marker["gone"] is not None
    assert all((part.row(f"new{i}") or {}).get("pred") for i in range(5))
    late = part.feedback("old3", "f-late")
    assert late.emits[0].record["reason"] == "expired"
    clock.advance(MEMORY)
    totals = part.sweep()
    assert totals.forgotten == 10 and totals.expired == 5  # markers gone, new* expired
    assert all(part.row(f"old{i}") is None for i in range(10))
    state = rebuilt(part.changelog["state"])
    due = rebuilt(part.changelog["due"])
    assert {row_key("loans", f"old{i}") for i in range(10)}.isdisjoint(state)
    assert dict(part.state.items()) == state  # the changelog says what RocksDB holds
    assert dict(part.due.items()) == due
    assert {key for _, key in map(split_due_key, due)} == {
        row_key("loans", f"new{i}") for i in range(5)
    }


def test_sweep_reads_each_due_entry_once_across_chunks(part: Partition, clock: ManualClock) -> None:
    for i in range(50):
        part.predict(f"k{i:02d}")
    clock.advance(RETENTION)
    store = part.store()
    seen: list[bytes] = []
    start = None
    while True:
        chunk = plan_chunk(store, clock.ms, MEMORY, start, limit=7)
        if not chunk.changes:
            break
        seen.extend(change.index_key for change in chunk.changes)
        write_chunk(store, chunk)
        start = chunk.next_start
    assert len(seen) == len(set(seen)) == 50
    assert part.reads == 50


def test_sweep_times_out_pending_feedback_with_its_join_key(
    part: Partition, clock: ManualClock
) -> None:
    part.feedback("orphan", "f1")
    part.feedback("orphan", "f2")
    part.state.put(PENDING_KEY, moved_pending(None, 3, "f0:2"))  # as the worker keeps it
    clock.advance(TTL)
    totals = part.sweep()
    assert totals.timed_out == 2 and totals.forgotten == 0
    assert orjson.loads(part.state.get(PENDING_KEY)) == [1, "f0:2"], "counted down, mark kept"
    assert (PENDING_KEY, part.state.get(PENDING_KEY)) in part.changelog["state"]
    assert [(key, e.record["reason"]) for key, e in totals.emits] == [
        (b"orphan", "no_prediction"),
        (b"orphan", "no_prediction"),
    ]
    # The row remembers the two for STREAMS_EXPIRED_MEMORY (a replay is no new input), then goes.
    assert sorted(part.row("orphan")["done"]) == ["f1", "f2"]
    clock.advance(MEMORY)
    assert part.sweep().forgotten == 1
    assert part.row("orphan") is None and part.index() == []
    assert part.changelog["state"][-1] == (row_key("loans", "orphan"), None)


def test_stale_index_entries_are_dropped_without_touching_the_row(
    part: Partition, clock: ManualClock
) -> None:
    part.predict("k")
    rk = row_key("loans", "k")
    stale = due_key(clock.ms + 1, rk)  # an entry left behind by a crash between two writes
    part.due.put(stale, b"")
    clock.advance(1)
    before = part.row("k")
    assert before is not None
    totals = part.sweep()
    assert totals.rows == 0 and part.row("k") == before
    assert part.index() == [(before["pred"]["exp"], rk)]


def test_a_prediction_older_than_retention_and_memory_leaves_nothing_behind(
    part: Partition, clock: ManualClock
) -> None:
    # Its marker is due in the past on arrival: the next sweep must still find it.
    part.predict("ancient", ts=clock.ms - RETENTION - MEMORY - SECOND)
    assert part.row("ancient") is not None
    assert part.sweep().forgotten == 1
    assert part.row("ancient") is None and part.index() == []


def test_a_sweep_with_nothing_due_reads_no_row(part: Partition, clock: ManualClock) -> None:
    for i in range(100):
        part.predict(f"k{i}")
    clock.advance(RETENTION - 1)
    part.reads = 0
    assert part.sweep().rows == 0 and part.reads == 0


@pytest.mark.parametrize("crash_after", [1, 2])
def test_a_crash_between_the_writes_of_a_chunk_loses_no_row(
    part: Partition, clock: ManualClock, crash_after: int
) -> None:
    """Invariant: whatever write a crash interrupts, every row still expires and is forgotten."""
    for i in range(10):
        part.predict(f"k{i}")
    clock.advance(RETENTION)
    store = part.store()
    writes = 0

    class Crash(Exception):
        pass

    def crashing(write: Any) -> Any:
        def run(batch: Any) -> None:
            nonlocal writes
            if writes == crash_after:
                raise Crash
            writes += 1
            write(batch)

        return run

    class CrashingState:
        def get(self, key: bytes) -> bytes | None:
            value: bytes | None = part.state.get(key)
            return value

        write = staticmethod(crashing(part.state.write))

    class CrashingDue:
        iter = staticmethod(part.due.iter)
        write = staticmethod(crashing(part.due.write))

    store = PartitionStore(
        CrashingState(), CrashingDue(), store.state_changelog, store.due_changelog
    )
    with pytest.raises(Crash):
        sweep_partition(store, clock.ms, MEMORY)
    part.sweep()  # the restarted worker
    clock.advance(MEMORY)
    part.sweep()
    assert [part.row(f"k{i}") for i in range(10)] == [None] * 10
    assert part.index() == []


def test_the_next_sweep_starts_where_the_last_ended_and_a_full_one_finds_the_rest(
    part: Partition, clock: ManualClock
) -> None:
    for i in range(20):
        part.predict(f"k{i}")
    clock.advance(RETENTION)
    first = sweep_partition(part.store(), clock.ms, MEMORY)
    assert first.expired == 20 and first.floor is not None
    for i in range(5):
        part.predict(f"later{i}")
    clock.advance(RETENTION)
    # From the floor: only what fell due since, none of the 20 tombstones before it.
    part.reads = 0
    second = sweep_partition(part.store(), clock.ms, MEMORY, start=first.floor)
    assert second.expired == 5 and part.reads == 5
    # An entry below the floor (an ancient prediction's marker) waits for a full sweep.
    part.predict("ancient", ts=clock.ms - RETENTION - MEMORY - SECOND)
    assert sweep_partition(part.store(), clock.ms, MEMORY, start=second.floor).rows == 0
    assert sweep_partition(part.store(), clock.ms, MEMORY).forgotten == 1
    assert part.row("ancient") is None


def test_the_pending_count_never_goes_below_zero() -> None:
    """Feedback stored before the count existed times out without taking it negative."""
    assert pending_count(moved_pending(moved_pending(None, 1, "f0:1"), -3)) == 0
    assert pending_count(None) == 0
