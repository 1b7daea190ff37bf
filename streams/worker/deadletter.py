"""Dead letters: an input record that cannot be read, with the reason and where it came from."""

from __future__ import annotations

from streams.errors import RecordError
from streams.records import Record, format_ts, text_or_base64


def deadletter_record(
    error: RecordError,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    now_ms: int,
) -> Record:
    """A `deadletter/v1` record for an input that failed with `error`."""
    key_text, key_encoding, _ = text_or_base64(key)
    value_text, value_encoding, truncated = text_or_base64(value)
    return {
        "schema": "deadletter/v1",
        "reason": error.reason,
        "detail": error.detail,
        "source": {
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "timestamp": None if timestamp_ms is None else format_ts(timestamp_ms),
        },
        "key": key_text,
        "key_encoding": key_encoding,
        "value": value_text,
        "value_encoding": value_encoding,
        "truncated": truncated,
        "dead_lettered_at": format_ts(now_ms),
    }
