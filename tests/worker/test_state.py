"""A row and its index entry, through crashes that cut an input's writes short."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_feedback_stats import Tables
from test_join import MEMORY, Input, interleavings

from streams.records import RawJson, dumps
from streams.worker import join
from streams.worker.feedback_stats import SHARE_PREFIX
from streams.worker.state import PENDING_KEY, decode_row, due_key, encode_row, pending_count

pytestmark = pytest.mark.unit

Write = tuple[str, bytes, bytes | None]


class Logged(Tables):
    """Tables whose writes to both databases go to one log, in the order they were made."""

    def __init__(self) -> None:
        super().__init__()
        self.log: list[Write] = []
        for name in ("state", "due"):
            getattr(self, name).writes = _Tap(self.log, name)


def restore(tables: Tables, writes: list[Write]) -> None:
    """Apply logged writes to `tables`, in their order."""
    for name, key, value in writes:
        getattr(tables, name).replay_writes([(key, value)])


class _Tap(list[tuple[bytes, bytes | None]]):
    """A table's write list that also appends to the shared log."""

    def __init__(self, log: list[Write], name: str) -> None:
        super().__init__()
        self.log, self.name = log, name

    def append(self, write: tuple[bytes, bytes | None]) -> None:
        self.log.append((self.name, *write))


def index_is_complete(tables: Tables) -> list[Any]:
    """Rows whose index entry is missing (each row with something due needs one)."""
    missing = []
    for key, raw in tables.state.items():
        if key.startswith(SHARE_PREFIX):
            continue
        row = decode_row(raw)
        assert row is not None
        due = join.next_due(row, MEMORY)
        if due is not None and due_key(due, key) not in tables.due:
            missing.append((key, due))
    return missing


@settings(max_examples=300, deadline=None)
@given(interleavings(), st.data())
def test_a_row_keeps_its_index_entry_after_writes_cut_short_and_a_replay(
    inputs: list[Input], data: st.DataObject
) -> None:
    """Invariant: whatever prefix of an input's writes (to the row, the aggregates and the
    index, across two tables) survived a crash, replaying from the last commit leaves
    every row that has something due with its index entry, so the sweep will find it."""
    if not inputs:
        return
    torn = data.draw(st.integers(0, len(inputs) - 1))
    commit = data.draw(st.integers(0, torn))
    run = Logged()
    for item in inputs[:torn]:
        run.apply(item)
    before = run.copy()
    run.log.clear()
    run.apply(inputs[torn])
    restore(before, run.log[: data.draw(st.integers(0, len(run.log)))])
    for item in inputs[commit:]:
        before.apply(item)
    assert index_is_complete(before) == []
    assert waiting(before) == waiting(Tables.after(inputs)), "the pending count, as a clean run's"


@settings(max_examples=300, deadline=None)
@given(interleavings())
def test_the_pending_count_is_the_feedback_waiting_in_the_rows(inputs: list[Input]) -> None:
    tables = Tables.after(inputs)
    assert waiting(tables) == sum(len(decode_row(raw)["pend"]) for raw in tables.rows())


def waiting(tables: Tables) -> int:
    return pending_count(tables.state.get(PENDING_KEY))


def test_a_row_reads_back_as_written_and_an_older_one_still_reads() -> None:
    row = join.on_prediction(
        None,
        {
            "schema": "prediction/v1",
            "application": "loans",
            "join_key": "k",
            "event_id": "p1",
            "inputs": {"a": [1.5, "x\n"]},
            "outputs": {"b": None},
        },
        0,
        "p0:1",
        0,
        1000,
    ).row
    assert row is not None

    stored = encode_row(row)
    again = decode_row(stored)

    assert again is not None
    assert isinstance(again["pred"]["inputs"], RawJson)
    assert encode_row(again) == stored
    assert orjson.loads(dumps(again)) == orjson.loads(orjson.dumps(row))
    assert decode_row(orjson.dumps(row)) == row  # one JSON object, as stored before
