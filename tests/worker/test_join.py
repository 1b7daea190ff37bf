"""The join rules, without a broker: examples, a reference model, and replays after crashes."""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.records import dumps, validate
from streams.worker import join
from streams.worker.state import apply_input, row_key

pytestmark = pytest.mark.unit

APP = "loans"
KEY = "k-1"
T0 = 1_800_000_000_000
DAY = 86_400_000
RETENTION = 90 * DAY
TTL = DAY
MEMORY = DAY


def prediction(
    event_id: str = "p1", feedback: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    record = {
        "schema": "prediction/v1",
        "application": APP,
        "join_key": KEY,
        "event_id": event_id,
        "inputs": {"x": event_id},
        "outputs": {"y": 1},
        "version": "3",
        "tags": {"env": "test"},
        **extra,
    }
    if feedback is not None:
        record["feedback"] = feedback
    return record


def feedback(event_id: str, fields: dict[str, Any], application: str = APP) -> dict[str, Any]:
    return {
        "schema": "feedback/v1",
        "application": application,
        "join_key": KEY,
        "event_id": event_id,
        "feedback": fields,
    }


def joined(result: join.Result) -> list[dict[str, Any]]:
    """The joined records emitted, as written to the topic."""
    records = [orjson.loads(dumps(e.record)) for e in result.emits if e.topic == "joined"]
    for record in records:
        validate("joined", record)
    return records


def test_feedback_for_live_prediction_joins_with_everything_it_needs() -> None:
    stored = join.on_prediction(None, prediction(), T0, "p0:1", T0, RETENTION)
    result = join.on_feedback(
        stored.row, feedback("f1", {"thumbs_up": True}), T0 + 5, "f0:1", T0 + 10, TTL
    )
    [record] = joined(result)
    assert result.outcome == "joined"
    assert record["id"] == join.joined_id(APP, KEY, "f1")
    assert record["inputs"] == {"x": "p1"} and record["outputs"] == {"y": 1}
    assert record["version"] == "3" and record["tags"] == {"env": "test"}
    assert record["feedback"] == {"thumbs_up": True} and record["feedback_revision"] == 1
    assert record["prediction_timestamp"] == "2027-01-15T08:00:00.000Z"
    assert record["feedback_timestamp"] == "2027-01-15T08:00:00.005Z"
    assert record["joined_at"] == "2027-01-15T08:00:00.010Z"


def test_joined_id_is_fixed_across_versions() -> None:
    # Downstream readers deduplicate by id: this value must never change.
    assert join.joined_id(APP, KEY, "f1") == "5d25756e-455c-59f8-a073-765b83458744"


NAME_PART = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)


@given(NAME_PART, NAME_PART, NAME_PART)
def test_joined_id_is_the_uuid5_of_application_key_and_event_id(
    application: str, join_key: str, event_id: str
) -> None:
    name = f"{application}\x00{join_key}\x00{event_id}"

    assert join.joined_id(application, join_key, event_id) == str(
        uuid.uuid5(join.JOINED_NAMESPACE, name)
    )


def test_later_fields_overwrite_and_revision_counts() -> None:
    row = join.on_prediction(None, prediction(), T0, "p0:1", T0, RETENTION).row
    first = join.on_feedback(
        row, feedback("f1", {"thumbs_up": True, "note": "ok"}), T0, "f0:1", T0, TTL
    )
    second = join.on_feedback(first.row, feedback("f2", {"thumbs_up": False}), T0, "f0:2", T0, TTL)
    [record] = joined(second)
    assert record["feedback"] == {"thumbs_up": False, "note": "ok"}
    assert record["feedback_revision"] == 2


def test_inline_feedback_joins_when_stored() -> None:
    result = join.on_prediction(
        None, prediction(feedback={"correct": True}), T0, "p0:1", T0, RETENTION
    )
    [record] = joined(result)
    assert record["id"] == join.joined_id(APP, KEY, "p1")
    assert record["feedback"] == {"correct": True}


def test_feedback_first_waits_then_joins_when_the_prediction_arrives() -> None:
    waiting = join.on_feedback(None, feedback("f1", {"a": 1}), T0, "f0:1", T0, TTL)
    assert waiting.outcome == "pending" and waiting.emits == []
    assert join.next_due(waiting.row, MEMORY) == T0 + TTL
    result = join.on_prediction(waiting.row, prediction(), T0, "p0:1", T0 + 1000, RETENTION)
    [record] = joined(result)
    assert record["feedback"] == {"a": 1}
    assert result.row is not None and result.row["pend"] == []


def test_pending_feedback_times_out_to_unmatched() -> None:
    waiting = join.on_feedback(None, feedback("f1", {"a": 1}), T0, "f0:1", T0, TTL)
    early = join.expire_due(waiting.row, T0 + TTL - 1, MEMORY)
    assert early.emits == [] and early.row == waiting.row
    late = join.expire_due(waiting.row, T0 + TTL, MEMORY)
    [emit] = late.emits
    assert emit.topic == "unmatched" and emit.record["reason"] == "no_prediction"
    assert emit.record["feedback"] == feedback("f1", {"a": 1})
    validate("unmatched", emit.record)
    assert (
        late.row is not None
        and late.row["pend"] == []
        and late.row["done"] == {"f1": ["f0:1", T0 + TTL + MEMORY]}
    ), "remembered, so that a replay is not taken for new feedback"
    assert join.expire_due(late.row, T0 + TTL + MEMORY, MEMORY).row is None


def test_expired_prediction_sends_feedback_to_unmatched_before_and_after_the_sweep() -> None:
    row = join.on_prediction(None, prediction(), T0, "p0:1", T0, 1000).row
    inside = join.on_feedback(
        copy.deepcopy(row), feedback("f1", {"a": 1}), T0, "f0:1", T0 + 999, TTL
    )
    assert inside.outcome == "joined"
    unswept = join.on_feedback(
        copy.deepcopy(row), feedback("f1", {"a": 1}), T0, "f0:1", T0 + 1000, TTL
    )
    assert unswept.outcome == "unmatched" and unswept.emits[0].record["reason"] == "expired"
    swept = join.expire_due(row, T0 + 1000, MEMORY)
    assert swept.row is not None and swept.row["pred"] is None and swept.row["gone"] == T0 + 1000
    after = join.on_feedback(
        swept.row, feedback("f2", {"a": 1}), T0, "f0:2", T0 + 1000 + MEMORY - 1, TTL
    )
    assert after.outcome == "unmatched" and after.emits[0].record["reason"] == "expired"
    forgotten = join.expire_due(swept.row, T0 + 1000 + MEMORY, MEMORY)
    assert forgotten.row is None


def test_prediction_arriving_expired_is_never_joined() -> None:
    result = join.on_prediction(None, prediction(), T0, "p0:1", T0 + RETENTION, RETENTION)
    assert result.outcome == "expired" and result.row is not None and result.row["pred"] is None
    late = join.on_feedback(result.row, feedback("f1", {"a": 1}), T0, "f0:1", T0 + RETENTION, TTL)
    assert late.outcome == "unmatched" and late.emits[0].record["reason"] == "expired"


def test_prediction_retry_changes_nothing_and_new_event_id_replaces() -> None:
    row = join.on_prediction(None, prediction(), T0, "p0:1", T0, RETENTION).row
    row = join.on_feedback(row, feedback("f1", {"a": 1}), T0, "f0:1", T0, TTL).row
    retry = join.on_prediction(copy.deepcopy(row), prediction(), T0, "p0:2", T0, RETENTION)
    assert retry.outcome == "duplicate" and retry.row == row and retry.emits == []
    replaced = join.on_prediction(row, prediction("p2"), T0, "p0:3", T0, RETENTION)
    after = join.on_feedback(replaced.row, feedback("f2", {"b": 2}), T0, "f0:2", T0, TTL)
    [record] = joined(after)
    assert record["inputs"] == {"x": "p2"} and record["prediction_event_id"] == "p2"
    assert record["feedback"] == {"a": 1, "b": 2} and record["feedback_revision"] == 2


def test_feedback_seen_twice_yields_one_joined_record() -> None:
    row = join.on_prediction(None, prediction(), T0, "p0:1", T0, RETENTION).row
    first = join.on_feedback(row, feedback("f1", {"a": 1}), T0, "f0:1", T0, TTL)
    again = join.on_feedback(first.row, feedback("f1", {"a": 1}), T0, "f0:7", T0, TTL)
    assert again.outcome == "duplicate" and again.emits == []


def test_applications_never_join_across() -> None:
    """Rule 1 through the state layer: the same join_key in two applications are two rows."""
    assert row_key("ab", "c") != row_key("a", "bc")
    state: dict[bytes, bytes] = {}
    due: dict[bytes, bytes] = {}

    def apply(record: dict[str, Any], src: str) -> join.Result:
        result, _, _ = apply_input(
            state,  # type: ignore[arg-type]
            due,  # type: ignore[arg-type]
            record,
            is_prediction=record["schema"] == "prediction/v1",
            event_ts=T0,
            src=src,
            now=T0,
            retention_ms=RETENTION,
            pending_ttl_ms=TTL,
            expired_memory_ms=MEMORY,
        )
        return result

    assert apply(prediction(), "p0:1").outcome == "stored"  # loans
    other = apply(feedback("f1", {"a": 1}, application="chat"), "f0:1")
    assert other.outcome == "pending" and other.emits == [], "chat's feedback waits for chat's"
    [record] = joined(apply(feedback("f2", {"b": 2}, application=APP), "f0:2"))
    assert record["application"] == APP and record["feedback"] == {"b": 2}
    assert record["feedback_revision"] == 1, "chat's feedback is not merged into loans'"


# -- a reference model over any interleaving ---------------------------------------


@dataclass(frozen=True)
class Input:
    kind: str  # "p" or "f"
    event_id: str
    fields: tuple[tuple[str, int], ...]
    src: str


def run(
    inputs: list[Input], row: join.Row | None = None
) -> tuple[join.Row | None, list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    for item in inputs:
        fields = dict(item.fields)
        if item.kind == "p":
            result = join.on_prediction(
                row, prediction(item.event_id, fields or None), T0, item.src, T0, RETENTION
            )
        else:
            result = join.on_feedback(row, feedback(item.event_id, fields), T0, item.src, T0, TTL)
        row = result.row
        out.extend(joined(result))
    return row, out


def reference(inputs: list[Input]) -> list[tuple[str, int, dict[str, Any]]]:
    """What must come out: (id, revision, merged feedback), computed the simple way."""
    seen_feedback: set[str] = set()
    seen_predictions: set[str] = set()
    waiting: list[Input] = []
    order: list[tuple[str, dict[str, int]]] = []
    for item in inputs:
        if item.kind == "p":
            if item.event_id in seen_predictions:
                continue
            seen_predictions.add(item.event_id)
            if item.fields and item.event_id not in seen_feedback:
                seen_feedback.add(item.event_id)
                order.append((item.event_id, dict(item.fields)))
            order.extend((w.event_id, dict(w.fields)) for w in waiting)
            waiting = []
        elif item.event_id not in seen_feedback:
            seen_feedback.add(item.event_id)
            if seen_predictions:
                order.append((item.event_id, dict(item.fields)))
            else:
                waiting.append(item)
    expected, merged = [], {}
    for revision, (event_id, fields) in enumerate(order, 1):
        merged = {**merged, **fields}
        expected.append((join.joined_id(APP, KEY, event_id), revision, merged))
    return expected


field_sets = st.lists(
    st.tuples(st.sampled_from("abc"), st.integers(0, 3)), min_size=1, max_size=3
).map(tuple)


@st.composite
def interleavings(draw: st.DrawFn) -> list[Input]:
    predictions = [
        ("p", f"p{draw(st.integers(1, 2))}", draw(st.one_of(st.just(()), field_sets)))
        for _ in range(draw(st.integers(0, 3)))
    ]
    feedbacks = [
        ("f", f"f{draw(st.integers(1, 4))}", draw(field_sets))
        for _ in range(draw(st.integers(0, 6)))
    ]
    # The same event_id always carries the same content: it is one logged record, sent again.
    content: dict[str, tuple[tuple[str, int], ...]] = {}
    items = [
        (kind, event_id, content.setdefault(event_id, fields))
        for kind, event_id, fields in predictions + feedbacks
    ]
    ordered = draw(st.permutations(items))
    return [
        Input(kind, event_id, fields, f"{kind}0:{offset}")
        for offset, (kind, event_id, fields) in enumerate(ordered)
    ]


@settings(max_examples=400, deadline=None)
@given(interleavings())
def test_any_interleaving_gives_the_reference_joined_records(inputs: list[Input]) -> None:
    _, out = run(inputs)
    assert [(r["id"], r["feedback_revision"], r["feedback"]) for r in out] == reference(inputs)
    assert len({r["id"] for r in out}) == len(out), "one joined record per feedback event_id"


@settings(max_examples=400, deadline=None)
@given(interleavings(), st.data())
def test_a_crash_and_replay_loses_nothing_and_repeats_only_same_ids(
    inputs: list[Input], data: st.DataObject
) -> None:
    """Invariant: after a crash at any point, restored state anywhere between the last commit
    and the crash, and a replay from the commit, every joined record of a crash-free run
    is emitted, and any extra one repeats an id with the same content but `joined_at`."""
    _, clean = run(inputs)
    crash = data.draw(st.integers(0, len(inputs)))  # inputs before `crash` were applied
    commit = data.draw(st.integers(0, crash))
    restored_at = data.draw(st.integers(commit, crash))
    # Only what inputs before the commit emitted is surely in Kafka; the rest may be lost.
    _, delivered = run(inputs[:commit])
    row_at_restore, _ = run(inputs[:restored_at])
    _, replayed = run(inputs[commit:], row_at_restore)
    emitted = delivered + replayed
    as_seen = {r["id"]: but_joined_at(r) for r in clean}
    assert {r["id"] for r in emitted} >= set(as_seen)
    for record in emitted:
        assert but_joined_at(record) == as_seen[record["id"]], "a repeat differs"


def but_joined_at(record: dict[str, Any]) -> dict[str, Any]:
    """A joined record without `joined_at`: what a repeat must carry unchanged."""
    return {name: value for name, value in record.items() if name != "joined_at"}
