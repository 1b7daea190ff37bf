"""From one `Application.log` call to the Kafka records it sends, or the error it raises.

Pure functions, no Kafka: the call's shape is checked first, then each row is built and
checked (the error names the field: `inputs[3]`, `row_tags[1]['env']`, `timestamps[0]`),
then every record is serialized and its size checked. Only a batch that passed all of
it is returned, so a wrong call sends nothing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import repeat
from typing import Any

import orjson

from streams.errors import StreamsError
from streams.records import Record, dumps, format_ts, to_ms

MAX_JOIN_KEY_CHARS = 512
MAX_FEEDBACK_FIELDS = 1000  # as schemas/feedback.v1.json: each field is an aggregate
CLOCK_SKEW_MS = 5 * 60 * 1000  # how far in the future a timestamp may be: clocks drift
PREDICTION, FEEDBACK = "prediction", "feedback"
_VERSION_4 = bytes((byte & 0x0F) | 0x40 for byte in range(256))
_VARIANT_RFC = bytes((byte & 0x3F) | 0x80 for byte in range(256))
_HEX_POSITIONS = [p for p in range(36) if p not in (8, 13, 18, 23)]  # where a UUID has digits


class LogError(StreamsError, ValueError):
    """A `log` call was given something it cannot send; the message names the field."""

    reason = "log"

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class LogTypeError(LogError, TypeError):
    """A `log` argument has the wrong type (a row that is not a dict, a tag that is not str)."""


@dataclass(frozen=True)
class Batch:
    """What one `log` call sends: records of one kind (`prediction` or `feedback`)."""

    kind: str
    batch_id: str | None
    join_keys: list[str]
    keys: list[bytes]  # the Kafka keys: join keys as UTF-8
    values: list[bytes]  # the records as JSON (`streams.records.dumps`)


def new_uuids(count: int) -> list[str]:
    """`count` random UUID4 strings from one `os.urandom` call (`uuid4()` costs µs each).

    The hex digits are laid out with C-level slice assignments, one per digit position
    for all rows at once; a few rows take the plain way.
    """
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_RFC)
    digits = raw.hex()
    if count < 16:
        return [
            "-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
            for h in (digits[start : start + 32] for start in range(0, 32 * count, 32))
        ]
    text = digits.encode("ascii")
    out = bytearray(b"-" * (37 * count))
    for digit, position in enumerate(_HEX_POSITIONS):
        out[position::37] = text[digit::32]
    out[36::37] = b" " * count
    return out.decode("ascii").split()


def check_join_key(value: object, field: str) -> str:
    """Return `value` if it is a join key (a str of 1 to 512 characters); else raise naming it."""
    if not isinstance(value, str):
        raise LogTypeError(field, f"a join key is a str, not {type(value).__name__}")
    if not 0 < len(value) <= MAX_JOIN_KEY_CHARS:
        raise LogError(
            field, f"a join key has 1 to {MAX_JOIN_KEY_CHARS} characters, not {len(value)}"
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            raise LogError(field, f"not valid Unicode ({error.reason})") from None
    return value


def check_dict(value: object, field: str) -> Mapping[str, Any]:
    """Return `value` if it is a dict (any Mapping); else raise naming `field`."""
    if isinstance(value, dict):
        return value
    if not isinstance(value, Mapping):
        raise LogTypeError(field, f"a dict is needed, not {type(value).__name__}")
    return dict(value)


def check_tags(value: object, field: str) -> dict[str, str]:
    """Return `value` as tags (str: str); else raise naming the offending tag."""
    tags = check_dict(value, field)
    for name, text in tags.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise LogTypeError(
                f"{field}[{name!r}]", f"tags are str: str, not {type(text).__name__}"
            )
    return dict(tags)


def check_version(value: object) -> str | int | None:
    """Return `value` if it is a version (str, int or None); else raise naming `version`."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(2**63) <= value < 2**64:
            raise LogError("version", f"{value} does not fit in 64 bits")
        return value
    raise LogTypeError("version", f"a version is a str, an int or None, not {type(value).__name__}")


def check_timestamp(value: object, field: str, now_ms: int) -> str:
    """An aware, not-future datetime as the record's RFC 3339 text; else raise naming `field`."""
    if not isinstance(value, datetime):
        raise LogTypeError(field, f"a timestamp is a datetime, not {type(value).__name__}")
    if value.utcoffset() is None:
        raise LogError(field, "naive datetime: give a timezone (e.g. datetime.now(UTC))")
    ms = to_ms(value)
    if ms > now_ms + CLOCK_SKEW_MS:
        raise LogError(field, f"{value.isoformat()} is in the future (now is {format_ts(now_ms)})")
    return format_ts(ms)


def _rows(field: str, value: object, single: bool) -> list[Any] | None:
    if value is None:
        return None
    if single:
        return [value]
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise LogTypeError(field, f"give a list (one item per row), not {type(value).__name__}")
    return list(value)


def _serializable(record: Record) -> bool:
    try:
        dumps(record)
    except orjson.JSONEncodeError:
        return False
    return True


def _culprit(record: Record, names: Mapping[str, str]) -> str:
    """The first field of `record` that orjson cannot write, named as the caller gave it."""
    for part, given in names.items():
        for name, value in (record.get(part) or {}).items():
            try:
                dumps({name: value})
            except orjson.JSONEncodeError:
                return f"{given}[{name!r}]"
    return names["inputs" if "inputs" in record else "feedback"]


def _non_finite(value: object) -> list[object] | None:
    """The path (keys and indexes, innermost first) to a NaN or infinity in `value`, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else []
    items: Any = ()
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    for key, item in items:
        path = _non_finite(item)
        if path is not None:
            path.append(key)
            return path
    return None


def _refuse_non_finite(
    values: list[bytes], records: list[Record], envelope_nulls: int, names: Any
) -> None:
    """Raise naming the field where a record holds NaN or ±inf (orjson would write `null`).

    Cheap when there is none (one count in C over the batch, about 0.6 ns a byte): a
    record with no more `null`s than its envelope has cannot hold one; only the records
    with more (a None logged, "null" in a text) are walked.
    """
    if b"".join(values).count(b"null") == envelope_nulls * len(values):
        return
    for i, (value, record) in enumerate(zip(values, records, strict=True)):
        if value.count(b"null") == envelope_nulls:
            continue
        for part in ("inputs", "outputs", "feedback"):
            path = _non_finite(record.get(part))
            if path is not None:
                where = "".join(f"[{key!r}]" for key in reversed(path))
                raise LogError(
                    f"{names(part, i)}{where}", "NaN and infinity cannot be logged (JSON has none)"
                )


def build_batch(
    application: str,
    *,
    inputs: object = None,
    outputs: object = None,
    feedbacks: object = None,
    join_keys: object = None,
    timestamps: object = None,
    version: object = None,
    tags: object = None,
    row_tags: object = None,
    global_tags: object = None,
    now_ms: int,
    max_bytes: int,
) -> Batch:
    """Check one `log` call and build its records; raise `LogError` naming the field."""
    single = any(isinstance(rows, Mapping) for rows in (inputs, outputs, feedbacks))
    given: dict[str, list[Any] | None] = {
        "inputs": _rows("inputs", inputs, single),
        "outputs": _rows("outputs", outputs, single),
        "feedbacks": _rows("feedbacks", feedbacks, single),
        "join_keys": _rows("join_keys", join_keys, single),
        "timestamps": _rows("timestamps", timestamps, single),
        "row_tags": _rows("row_tags", row_tags, single),
    }
    ins, outs, fbs, keys = given["inputs"], given["outputs"], given["feedbacks"], given["join_keys"]
    if ins is None and outs is None and fbs is None:
        raise LogError("inputs", "nothing to log: give inputs and outputs, feedbacks, or all three")
    if (ins is None) != (outs is None):
        missing = "outputs" if outs is None else "inputs"
        raise LogError(missing, "inputs and outputs go together: give both, or feedbacks alone")
    first = "inputs" if ins is not None else "feedbacks"
    count = len(given[first] or [])
    for field, rows in given.items():
        if rows is not None and len(rows) != count:
            raise LogError(field, f"{len(rows)} rows, but {first} has {count}")
    if ins is None and keys is None:
        raise LogError("join_keys", "feedback needs the join keys of the predictions it is about")
    common = {**check_tags(tags or {}, "tags"), **check_tags(global_tags or {}, "global_tags")}
    checked_version = check_version(version)

    def name(field: str, index: int) -> str:
        return field if single else f"{field}[{index}]"

    # Check every row first: the serializing loop below then runs without checks.
    if keys is None:
        keys = new_uuids(count)
    else:
        keys = [check_join_key(key, name("join_keys", i)) for i, key in enumerate(keys)]
    for field, rows in (("inputs", ins), ("outputs", outs), ("feedbacks", fbs)):
        if rows is None or set(map(type, rows)) <= {dict}:  # the common case, checked in C
            continue
        for i, row in enumerate(rows):
            rows[i] = check_dict(row, name(field, i))
    if fbs is not None and not all(fbs):
        i = next(i for i, feedback in enumerate(fbs) if not feedback)
        raise LogError(name("feedbacks", i), "feedback is empty: give at least one field")
    for i, feedback in enumerate(fbs or ()):
        if len(feedback) > MAX_FEEDBACK_FIELDS:
            limit = f"the limit is {MAX_FEEDBACK_FIELDS} fields per feedback"
            raise LogError(name("feedbacks", i), f"{len(feedback)} fields: {limit}")
    times = given["timestamps"]
    if times is not None:
        times = [check_timestamp(t, name("timestamps", i), now_ms) for i, t in enumerate(times)]
    tag_rows = given["row_tags"]
    if tag_rows is not None:
        tag_rows = [
            {**common, **check_tags(t, name("row_tags", i))} for i, t in enumerate(tag_rows)
        ]
    batch_id = None if single else new_uuids(1)[0]
    columns = zip(
        keys,
        new_uuids(count),
        repeat(format_ts(now_ms)) if times is None else times,
        repeat(common) if tag_rows is None else tag_rows,
        ins or repeat({}),
        outs or repeat({}),
        strict=False,
    )
    # Comprehensions, not a loop of appends: this is the SDK's hot path.
    if ins is not None:
        kind, schema = PREDICTION, "prediction/v1"
        records = [
            {
                "schema": schema,
                "application": application,
                "join_key": key,
                "event_id": event_id,
                "timestamp": moment,
                "version": checked_version,
                "inputs": row_in,
                "outputs": row_out,
                "tags": row_tags_i,
                "batch_id": batch_id,
            }
            for key, event_id, moment, row_tags_i, row_in, row_out in columns
        ]
    else:
        kind, schema = FEEDBACK, "feedback/v1"
        records = [
            {
                "schema": schema,
                "application": application,
                "join_key": key,
                "event_id": event_id,
                "timestamp": moment,
                "tags": row_tags_i,
                "batch_id": batch_id,
            }
            for key, event_id, moment, row_tags_i, _, _ in columns
        ]
    if fbs is not None:
        for record, feedback in zip(records, fbs, strict=True):
            record["feedback"] = feedback
    try:
        values = list(map(dumps, records))
    except orjson.JSONEncodeError as error:
        i, record = next((i, r) for i, r in enumerate(records) if not _serializable(r))
        names = {"inputs": name("inputs", i), "outputs": name("outputs", i)}
        names["feedback"] = name("feedbacks", i)
        names["tags"] = "tags" if tag_rows is None else name("row_tags", i)
        raise LogTypeError(_culprit(record, names), f"JSON cannot hold it ({error})") from None
    # `null`s every record has whatever was logged: a null version and batch id.
    envelope_nulls = (batch_id is None) + (ins is not None and checked_version is None)
    _refuse_non_finite(
        values,
        records,
        envelope_nulls,
        lambda part, i: name("feedbacks" if part == "feedback" else part, i),
    )
    if values and max(map(len, values)) > max_bytes:
        i, size = next((i, len(v)) for i, v in enumerate(values) if len(v) > max_bytes)
        raise LogError(
            name("inputs" if ins is not None else "feedbacks", i),
            f"the record is {size} bytes, over STREAMS_MAX_RECORD_BYTES={max_bytes}",
        )
    return Batch(kind, batch_id, keys, list(map(str.encode, keys)), values)
