"""The record codec: timestamps, decode_input's reasons, and dead-letter values."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.errors import RecordError
from streams.records import (
    DEADLETTER_VALUE_LIMIT,
    decode_input,
    dumps,
    format_ts,
    from_base64,
    load_schema,
    parse_ts,
    text_or_base64,
    to_ms,
)

pytestmark = pytest.mark.unit

MAX_BYTES = 10_000
# Years 0001 to 9999: what RFC 3339 (and datetime) can write.
FIRST_MS = -62_135_596_800_000
LAST_MS = 253_402_300_799_999
OUTPUT_TS = re.compile(load_schema("joined")["properties"]["joined_at"]["pattern"])


def prediction(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": "prediction/v1",
        "application": "loans",
        "join_key": "key-1",
        "event_id": "ev-1",
        "inputs": {"amount": 1200},
        "outputs": {"approved": True},
    }
    record.update(changes)
    return {name: value for name, value in record.items() if value is not None}


def feedback(**changes: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "schema": "feedback/v1",
        "application": "loans",
        "join_key": "key-1",
        "event_id": "fb-1",
        "feedback": {"correction_accepted": True},
    }
    record.update(changes)
    return {name: value for name, value in record.items() if value is not None}


def reason_of(expected: str, key: bytes | None, value: bytes | None) -> RecordError:
    with pytest.raises(RecordError) as raised:
        decode_input(expected, key, value, MAX_BYTES)
    return raised.value


# format_ts / parse_ts


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1_795_829_797_123, "2026-11-28T01:36:37.123Z"),
        (1_795_829_797_001, "2026-11-28T01:36:37.001Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
        (LAST_MS, "9999-12-31T23:59:59.999Z"),
        (FIRST_MS, "0001-01-01T00:00:00.000Z"),
    ],
)
def test_format_ts(ms: int, text: str) -> None:
    assert format_ts(ms) == text
    assert parse_ts(text) == ms


@given(st.integers(min_value=FIRST_MS, max_value=LAST_MS))
def test_format_ts_agrees_with_datetime(ms: int) -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)

    assert format_ts(ms) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-11-28T01:36:37.123Z", 1_795_829_797_123),
        ("2026-11-28T01:36:37.123z", 1_795_829_797_123),
        ("2026-11-28T02:36:37.123+01:00", 1_795_829_797_123),
        ("2026-11-27T20:36:37.123-05:00", 1_795_829_797_123),
        ("2026-11-28T01:36:37Z", 1_795_829_797_000),
        ("2026-11-28T01:36:37.1Z", 1_795_829_797_100),
        ("2026-11-28T01:36:37.123456789Z", 1_795_829_797_123),
        ("2026-11-28T01:36:37.1235Z", 1_795_829_797_124),
        ("2026-11-28T01:36:37.1234999Z", 1_795_829_797_123),
        ("1969-12-31T23:59:59.9994Z", -1),
        # Float epoch seconds truncated these to the millisecond below.
        ("1970-01-02T12:32:25.993Z", 131_545_993),
        ("1970-01-07T03:46:00.683Z", 531_960_683),
    ],
)
def test_parse_ts(text: str, ms: int) -> None:
    assert parse_ts(text) == ms


@pytest.mark.parametrize(
    "text", ["2026-11-28T01:36:37.123", "2026-11-28", "yesterday", "", "2026-11-28T25:00:00Z"]
)
def test_parse_ts_refuses_what_is_not_an_aware_time(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - datetime's own errors, any message
        parse_ts(text)


@given(st.integers(min_value=FIRST_MS, max_value=LAST_MS))
def test_parse_ts_inverts_format_ts(ms: int) -> None:
    text = format_ts(ms)

    assert OUTPUT_TS.fullmatch(text)
    assert parse_ts(text) == ms


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 2),  # noqa: DTZ001 - hypothesis adds the zone below
        max_value=datetime(2200, 1, 1),  # noqa: DTZ001
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_parse_ts_agrees_with_datetime(moment: datetime) -> None:
    exact = to_ms(moment.replace(microsecond=moment.microsecond // 1000 * 1000))

    assert parse_ts(moment.isoformat(timespec="milliseconds")) == exact


def test_to_ms_refuses_a_naive_datetime() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_ms(datetime(2026, 11, 28))  # noqa: DTZ001 - the point of the test


# decode_input: the records that pass


def test_a_valid_prediction_is_returned_as_is() -> None:
    record = prediction(timestamp="2026-11-28T01:36:37.123Z", tags={"region": "eu"})

    assert decode_input("prediction", b"key-1", dumps(record), MAX_BYTES) == record


def test_a_valid_feedback_is_returned_as_is() -> None:
    record = feedback()

    assert decode_input("feedback", b"key-1", json.dumps(record).encode(), MAX_BYTES) == record


def test_a_non_ascii_join_key_matches_its_utf8_key() -> None:
    record = prediction(join_key="clé-✓-😀")

    decoded = decode_input("prediction", "clé-✓-😀".encode(), dumps(record), MAX_BYTES)

    assert decoded["join_key"] == "clé-✓-😀"


def test_a_value_of_exactly_max_bytes_is_accepted() -> None:
    record = prediction(inputs={"text": ""})
    padding = MAX_BYTES - len(dumps(record))
    record["inputs"]["text"] = "x" * padding

    assert len(dumps(record)) == MAX_BYTES
    assert decode_input("prediction", b"key-1", dumps(record), MAX_BYTES) == record


# decode_input: each reason


def test_oversized() -> None:
    record = prediction(inputs={"text": "x" * MAX_BYTES})

    error = reason_of("prediction", b"key-1", dumps(record))

    assert error.reason == "oversized"
    assert str(len(dumps(record))) in error.detail
    assert "STREAMS_MAX_RECORD_BYTES" in error.detail


def test_oversized_is_checked_before_anything_else() -> None:
    assert reason_of("prediction", None, b"\xff" * (MAX_BYTES + 1)).reason == "oversized"


@pytest.mark.parametrize(
    ("value", "position"),
    [(b"\xff{}", 0), (b'{"a": "\xc3"}', 7), (b'{"a": "\xed\xa0\x80"}', 7)],
)
def test_invalid_utf8(value: bytes, position: int) -> None:
    error = reason_of("prediction", b"key-1", value)

    assert error.reason == "invalid_utf8"
    assert f"byte {position}" in error.detail


@pytest.mark.parametrize(
    "value", [b"{not json", b"", b"{'a': 1}", b'{"a": 1,}', b"NaN", b'{"a": 1} trailing', None]
)
def test_invalid_json(value: bytes | None) -> None:
    error = reason_of("prediction", b"key-1", value)

    assert error.reason == "invalid_json"
    assert error.detail.startswith("value:")


@pytest.mark.parametrize(
    ("expected", "record"),
    [
        ("prediction", prediction(schema="feedback/v1")),
        ("prediction", prediction(schema="prediction/v2")),
        ("prediction", {key: v for key, v in prediction().items() if key != "schema"}),
        ("feedback", feedback(schema="prediction/v1")),
        ("feedback", feedback(schema=1)),
    ],
)
def test_unknown_schema(expected: str, record: dict[str, Any]) -> None:
    error = reason_of(expected, b"key-1", dumps(record))

    assert error.reason == "unknown_schema"
    assert error.detail.startswith("schema:")
    assert f"{expected}/v1" in error.detail


@pytest.mark.parametrize(
    ("expected", "record", "field"),
    [
        ("prediction", prediction(application=42), "application"),
        ("prediction", prediction(inputs=["a"]), "inputs"),
        ("prediction", prediction(outputs=None), "outputs"),
        ("prediction", prediction(tags={"region": 3}), "tags.region"),
        ("prediction", prediction(join_key="k" * 513), "join_key"),
        ("prediction", prediction(join_key=7), "join_key"),
        ("prediction", prediction(timestamp="28 Nov 2026"), "timestamp"),
        ("prediction", prediction(colour="blue"), "colour"),
        ("feedback", feedback(feedback={}), "feedback"),
        ("feedback", feedback(event_id=None), "event_id"),
        # The schema's date-time check lets a leap second through; datetime cannot read it.
        ("feedback", feedback(timestamp="2026-12-31T23:59:60Z"), "timestamp"),
    ],
)
def test_schema_violation_names_the_field(
    expected: str, record: dict[str, Any], field: str
) -> None:
    error = reason_of(expected, b"key-1", dumps(record))

    assert error.reason == "schema_violation"
    # A field's own error starts with its name; a missing or extra one is the record's.
    named = error.detail.startswith(f"{field}:")
    assert named or (error.detail.startswith("(record):") and field in error.detail)


@pytest.mark.parametrize("value", [b"[1, 2]", b'"text"', b"42", b"null"])
def test_a_value_that_is_not_an_object_is_a_schema_violation(value: bytes) -> None:
    error = reason_of("prediction", b"key-1", value)

    assert error.reason == "schema_violation"
    assert error.detail.startswith("(record)")


def test_missing_join_key_when_the_kafka_record_has_no_key() -> None:
    error = reason_of("prediction", None, dumps(prediction()))

    assert error.reason == "missing_join_key"
    assert error.detail.startswith("key:")


@pytest.mark.parametrize("record", [prediction(join_key=""), prediction(join_key=None)])
def test_missing_join_key_when_the_record_has_none(record: dict[str, Any]) -> None:
    error = reason_of("prediction", b"key-1", dumps(record))

    assert error.reason == "missing_join_key"
    assert error.detail.startswith("join_key:")


def test_missing_join_key_in_feedback() -> None:
    assert reason_of("feedback", b"", dumps(feedback(join_key=""))).reason == "missing_join_key"


@pytest.mark.parametrize(
    "key",
    [
        b"key-2",
        b'"key-1"',  # the join key serialized as JSON: different bytes, different partition
        b"KEY-1",
        b"key-1 ",
        b"",
        b"\xffkey",
    ],
)
def test_key_mismatch(key: bytes) -> None:
    error = reason_of("prediction", key, dumps(prediction()))

    assert error.reason == "key_mismatch"
    assert error.detail.startswith("key:")
    assert "key-1" in error.detail


def test_reasons_are_deadletter_reasons() -> None:
    reasons = set(load_schema("deadletter")["properties"]["reason"]["enum"])
    seen = {
        reason_of("prediction", b"k", b"x" * (MAX_BYTES + 1)).reason,
        reason_of("prediction", b"k", b"\xff").reason,
        reason_of("prediction", b"k", b"{").reason,
        reason_of("prediction", b"k", dumps(prediction(schema="x"))).reason,
        reason_of("prediction", b"k", dumps(prediction(inputs=1))).reason,
        reason_of("prediction", None, dumps(prediction())).reason,
        reason_of("prediction", b"k", dumps(prediction())).reason,
    }

    assert seen == {
        "oversized",
        "invalid_utf8",
        "invalid_json",
        "unknown_schema",
        "schema_violation",
        "missing_join_key",
        "key_mismatch",
    }
    assert seen <= reasons


# text_or_base64


def test_text_or_base64_of_none() -> None:
    assert text_or_base64(None) == (None, "utf-8", False)


@pytest.mark.parametrize("text", ["", "hello", '{"a": 1}', "clé ✓ 😀"])
def test_valid_utf8_stays_text(text: str) -> None:
    assert text_or_base64(text.encode()) == (text, "utf-8", False)


@pytest.mark.parametrize("raw", [b"\xff", b"\x80abc", b"ok\xc3", bytes(range(256))])
def test_invalid_utf8_becomes_base64(raw: bytes) -> None:
    value, encoding, truncated = text_or_base64(raw)

    assert encoding == "base64"
    assert truncated is False
    assert value is not None
    assert from_base64(value) == raw


def test_exactly_64_kib_is_not_truncated() -> None:
    raw = b"a" * DEADLETTER_VALUE_LIMIT

    assert DEADLETTER_VALUE_LIMIT == 64 * 1024
    assert text_or_base64(raw) == (raw.decode(), "utf-8", False)


def test_text_over_64_kib_is_cut() -> None:
    value, encoding, truncated = text_or_base64(b"a" * (DEADLETTER_VALUE_LIMIT + 1))

    assert (value, encoding, truncated) == ("a" * DEADLETTER_VALUE_LIMIT, "utf-8", True)


@pytest.mark.parametrize(
    ("char", "overhang"),
    [(char, overhang) for char in "é✓😀" for overhang in range(1, len(char.encode()))],
)
def test_the_cut_never_splits_a_character(char: str, overhang: int) -> None:
    # The character straddles the limit: `overhang` of its bytes lie past it.
    prefix = "a" * (DEADLETTER_VALUE_LIMIT - len(char.encode()) + overhang)
    raw = (prefix + char + "tail").encode()

    value, encoding, truncated = text_or_base64(raw)

    assert (value, encoding, truncated) == (prefix, "utf-8", True)


def test_invalid_utf8_over_64_kib_is_cut_base64() -> None:
    raw = b"\xff" * (DEADLETTER_VALUE_LIMIT + 10)

    value, encoding, truncated = text_or_base64(raw)

    assert (encoding, truncated) == ("base64", True)
    assert value is not None
    assert from_base64(value) == raw[:DEADLETTER_VALUE_LIMIT]


@given(st.text(max_size=200), st.integers(min_value=4, max_value=300))
def test_text_or_base64_keeps_a_whole_prefix(text: str, limit: int) -> None:
    raw = text.encode()

    value, encoding, truncated = text_or_base64(raw, limit)

    assert encoding == "utf-8"
    assert value is not None
    assert text.startswith(value)
    assert truncated == (len(raw) > limit)
    size = len(value.encode())
    assert size == len(raw) if not truncated else limit - 3 <= size <= limit


@given(st.binary(max_size=300), st.integers(min_value=4, max_value=300))
def test_text_or_base64_never_loses_the_kept_bytes(raw: bytes, limit: int) -> None:
    value, encoding, truncated = text_or_base64(raw, limit)

    assert value is not None
    kept = value.encode() if encoding == "utf-8" else base64.b64decode(value)
    assert raw.startswith(kept)
    assert truncated == (len(raw) > limit)


def test_from_base64_refuses_what_is_not_base64() -> None:
    with pytest.raises(ValueError, match="not base64"):
        from_base64("not base64!")


def test_feedback_with_more_fields_than_the_limit_is_a_schema_violation() -> None:
    wide = {f"f{n}": True for n in range(1001)}
    for kind, record in (
        ("feedback", feedback(feedback=wide)),
        ("prediction", prediction(feedback=wide)),
    ):
        with pytest.raises(RecordError) as raised:
            decode_input(kind, b"key-1", dumps(record), 1_000_000)
        assert raised.value.reason == "schema_violation"
        assert raised.value.detail.startswith("feedback:")
    del wide["f1000"]
    assert decode_input("feedback", b"key-1", dumps(feedback(feedback=wide)), 1_000_000)
