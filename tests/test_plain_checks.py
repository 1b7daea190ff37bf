"""The straight-line checks of input records agree with the validator and with jsonschema.

`streams.records.read_input` passes the usual record with `plain_check` and `plain_ts`
and asks the compiled validator only about the others. On generated records, valid and
not, its verdict (the record and its time, or the reason and the detail naming the
field) must be the validator's alone, and whether it takes a record must be what the
reference validator (jsonschema, plus the calendar: `datetime` must read the timestamp)
says of the schema.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams import records
from streams.errors import RecordError
from streams.records import format_ts, load_schema, parse_ts, plain_ts, read_input, to_ms

pytestmark = pytest.mark.unit

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=6)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 1),  # noqa: DTZ001 - the zone is added below
    max_value=datetime(9999, 12, 31, 23, 59, 59),  # noqa: DTZ001
    timezones=st.just(UTC),
)
CANONICAL = MOMENTS.map(lambda moment: format_ts(to_ms(moment)))  # as the SDK writes them
VALID_TIMESTAMPS = CANONICAL | MOMENTS.map(lambda moment: moment.isoformat())


@st.composite
def one_character_changed(draw: st.DrawFn) -> str:
    text = draw(CANONICAL)
    at = draw(st.integers(0, len(text) - 1))
    return text[:at] + draw(st.characters(exclude_categories=("Cs",))) + text[at + 1 :]


TIMESTAMPS = st.one_of(
    VALID_TIMESTAMPS,
    one_character_changed(),
    one_character_changed(),
    # The shape the plain check reads, with any digits (ASCII or not): 02-30, 24:00, 60 s.
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z\Z"),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}[Zz]\Z"),
    st.from_regex(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})\Z"),
    TEXT,
)


def text_of(low: int, high: int) -> st.SearchStrategy[str]:
    """Valid text: any, and at the schema's bounds."""
    return st.text(st.characters(exclude_categories=("Cs",)), min_size=low, max_size=6) | (
        st.sampled_from([low, high]).map(lambda n: "k" * n)
    )


def not_text_of(low: int, high: int) -> st.SearchStrategy[Any]:
    """Just outside the bounds, or not text."""
    return st.sampled_from([max(0, low - 1), high + 1]).map(lambda n: "k" * n) | JSON


OBJECTS = st.dictionaries(TEXT, JSON, max_size=3)
FIELDS = st.dictionaries(TEXT, JSON, min_size=1, max_size=3) | st.just(
    {f"f{i}": True for i in range(1000)}
)
BAD_FIELDS = st.sampled_from([{}, {f"f{i}": True for i in range(1001)}]) | JSON
# Per field: (valid values, values that may not be valid).
COMMON = {
    "application": (text_of(1, 256), not_text_of(1, 256)),
    "join_key": (text_of(1, 512), not_text_of(1, 512)),
    "event_id": (text_of(1, 256), not_text_of(1, 256)),
    "timestamp": (VALID_TIMESTAMPS, TIMESTAMPS | JSON),
    "tags": (
        st.dictionaries(TEXT, TEXT, max_size=3),
        st.dictionaries(TEXT, JSON, min_size=1, max_size=3) | JSON,
    ),
    "batch_id": (st.none() | TEXT, JSON),
}
FIELDS_OF = {
    "prediction": {
        **COMMON,
        "inputs": (OBJECTS, JSON),
        "outputs": (OBJECTS, JSON),
        "version": (
            st.none() | TEXT | st.integers(-(2**63), 2**63 - 1) | st.just(2.0),
            st.sampled_from([True, False, 1.5]) | JSON,
        ),
        "feedback": (FIELDS, BAD_FIELDS),
    },
    "feedback": {**COMMON, "feedback": (FIELDS, BAD_FIELDS)},
}
REQUIRED = {
    "prediction": ("application", "join_key", "event_id", "inputs", "outputs"),
    "feedback": ("application", "join_key", "event_id", "feedback"),
}


def valid_records(name: str) -> st.SearchStrategy[dict[str, Any]]:
    fields = FIELDS_OF[name]
    return st.fixed_dictionaries(
        {"schema": st.just(f"{name}/v1"), **{f: fields[f][0] for f in REQUIRED[name]}},
        optional={f: valid for f, (valid, _) in fields.items() if f not in REQUIRED[name]},
    )


@st.composite
def input_records(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A valid record of `name`, or one with one field changed, dropped or added."""
    record: dict[str, Any] = draw(valid_records(name))
    change = draw(st.sampled_from(["none", "set", "set", "drop", "add"]))
    if change == "set":
        field = draw(st.sampled_from(sorted(FIELDS_OF[name])))
        record[field] = draw(FIELDS_OF[name][field][1])
    elif change == "drop":
        record.pop(draw(st.sampled_from(sorted(record))))
    elif change == "add":
        record[draw(TEXT)] = draw(JSON)
    return record


VALID_FEEDBACK = {
    "schema": "feedback/v1",
    "application": "loans",
    "join_key": "k",
    "event_id": "e",
    "feedback": {"thumbs_up": True},
}
Verdict = tuple[str, Any, Any]


def verdict(name: str, record: dict[str, Any], plain: bool = True) -> Verdict:
    key = record["join_key"].encode() if isinstance(record.get("join_key"), str) else b"k"
    try:
        decoded, ms = read_input(name, key, orjson.dumps(record), 10_000_000, plain=plain)
    except RecordError as error:
        return (error.reason, error.detail, None)
    return ("taken", decoded, ms)


def validator_alone(name: str, record: dict[str, Any]) -> Verdict:
    return verdict(name, record, plain=False)


def reference_takes(name: str, record: dict[str, Any]) -> bool:
    if list(jsonschema.Draft202012Validator(load_schema(name)).iter_errors(record)):
        return False
    try:
        parse_ts(record.get("timestamp") or format_ts(0))
    except ValueError:
        return False  # jsonschema checks `format: date-time` only with an optional package
    return True


@pytest.mark.parametrize("name", ["prediction", "feedback"])
def test_the_plain_checks_are_on(name: str) -> None:
    # Fails when schemas/<name>.v1.json changed: bring `streams.plain._plain_<name>` in line
    # with it, then update `streams.plain.PLAIN_CHECKED` (until then only the validator runs).
    assert records.plain_check(name) is not records.never


@pytest.mark.parametrize("name", ["prediction", "feedback"])
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_read_input_gives_the_validators_verdict(name: str, data: st.DataObject) -> None:
    """Invariant: with or without the plain checks, every record gets the same verdict
    (the same reason and detail naming the field), and a record is taken exactly when
    the reference validator finds it valid."""
    record = data.draw(input_records(name))

    found = verdict(name, record)

    assert found == validator_alone(name, record)
    assert (found[0] == "taken") == reference_takes(name, record), found


@pytest.mark.parametrize(
    ("name", "field"), [(name, field) for name, fields in FIELDS_OF.items() for field in fields]
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_each_field_out_of_bounds_gets_the_validators_verdict(
    name: str, field: str, data: st.DataObject
) -> None:
    """The same invariant, a valid record with one field given a value that may not be."""
    record = data.draw(valid_records(name))
    record[field] = data.draw(FIELDS_OF[name][field][1])

    found = verdict(name, record)

    assert found == validator_alone(name, record)
    assert (found[0] == "taken") == reference_takes(name, record), found


@given(MOMENTS)
def test_plain_ts_reads_what_format_ts_writes(moment: datetime) -> None:
    text = format_ts(to_ms(moment))

    assert plain_ts(text) == parse_ts(text)


@settings(max_examples=1000)
@given(TIMESTAMPS)
def test_a_timestamp_plain_ts_reads_is_valid_and_read_as_parse_ts_does(text: str) -> None:
    found = plain_ts(text)
    if found is not None:
        assert found == parse_ts(text)
        records.validate("feedback", {**VALID_FEEDBACK, "timestamp": text})


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-28T01:36:37.123Z",
        "2026-11-28T01:36:37,123Z",  # datetime reads the comma; the schema's pattern does not
        "2026-11-28T01:36:37.\u0661\u0662\u0663Z",  # \d matches other digits, datetime not
        "2026-11-28T01:36:\u0663\u0667.123Z",
        "2026-11-28T01:36:37.123z",
        "2026-12-31T23:59:60.000Z",  # a leap second: the schema takes it, datetime not
        "2027-02-29T00:00:00.000Z",
        "2028-02-29T00:00:00.000Z",
        "0000-01-01T00:00:00.000Z",
        "2026-11-28 01:36:37.123Z",
    ],
)
def test_tricky_timestamps_get_the_validators_verdict(text: str) -> None:
    record = {**VALID_FEEDBACK, "timestamp": text}

    assert verdict("feedback", record) == validator_alone("feedback", record)
