"""Straight-line checks of the usual input records, before the compiled validator is asked.

A record `PLAIN_CHECKS[name]` passes is valid `<name>/v1`, and a timestamp `plain_ts`
reads passes the schemas' `pattern` and `format: date-time` and reads as `parse_ts`
reads it; any other record goes to the validator, which names the failing field
(`streams.records.read_input`). The validator interprets nothing at run time either
(fastjsonschema compiles it), but it is generic: these checks are a third of its
cost on the records every producer sends. tests/test_plain_checks.py compares the
verdicts, with and without these checks, on generated valid and invalid records, and
with the reference validator (jsonschema).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

Record = dict[str, Any]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# What each check was written from: its schema, hashed (`streams.records.schema_hash`).
# A schema changed since turns its check off until the check is brought in line.
PLAIN_CHECKED = {
    "prediction": "0f6a2b4b66bcde059f44bc8e4175f130a8280e443c514cd1d6d558569e8d787e",
    "feedback": "cf7585bcb0ee05e634f27a91dcbda42296aa2f9ccc9d77c6a0290050153cd66b",
}
_PREDICTION_REQUIRED = frozenset(
    ("schema", "application", "join_key", "event_id", "inputs", "outputs")
)
_PREDICTION_FIELDS = _PREDICTION_REQUIRED | {"timestamp", "version", "feedback", "tags", "batch_id"}
_FEEDBACK_REQUIRED = frozenset(("schema", "application", "join_key", "event_id", "feedback"))
_FEEDBACK_FIELDS = _FEEDBACK_REQUIRED | {"timestamp", "tags", "batch_id"}


def _common_fields_plain(record: Record) -> bool:
    """application, join_key, event_id, tags and batch_id as the two input schemas have them."""
    application, join_key, event_id = record["application"], record["join_key"], record["event_id"]
    if not (
        type(application) is str
        and 0 < len(application) <= 256
        and type(join_key) is str
        and 0 < len(join_key) <= 512
        and type(event_id) is str
        and 0 < len(event_id) <= 256
    ):
        return False
    if "tags" in record:
        tags = record["tags"]
        if type(tags) is not dict or any(type(v) is not str for v in tags.values()):
            return False
    batch_id = record.get("batch_id")
    return batch_id is None or type(batch_id) is str


def _plain_prediction(record: Record) -> bool:
    keys = record.keys()
    if not (keys >= _PREDICTION_REQUIRED and keys <= _PREDICTION_FIELDS):
        return False
    if record["schema"] != "prediction/v1" or not _common_fields_plain(record):
        return False
    if type(record["inputs"]) is not dict or type(record["outputs"]) is not dict:
        return False
    version = record.get("version")
    if not (version is None or type(version) is str or type(version) is int):
        return False
    if "feedback" in keys:
        inline = record["feedback"]
        return type(inline) is dict and 0 < len(inline) <= 1000
    return True


def _plain_feedback(record: Record) -> bool:
    keys = record.keys()
    if not (keys >= _FEEDBACK_REQUIRED and keys <= _FEEDBACK_FIELDS):
        return False
    if record["schema"] != "feedback/v1" or not _common_fields_plain(record):
        return False
    fields = record["feedback"]
    return type(fields) is dict and 0 < len(fields) <= 1000


def never(record: Record) -> bool:
    """The check of a schema that has none: the validator decides."""
    return False


PLAIN_CHECKS: dict[str, Callable[[Record], bool]] = {
    "prediction": _plain_prediction,
    "feedback": _plain_feedback,
}


@lru_cache(maxsize=4096)
def _plain_second(text: str) -> int | None:
    """Epoch seconds of ASCII `YYYY-MM-DDTHH:MM:SS` in UTC; None when it is not a valid one."""
    if not (text[4] == text[7] == "-" and text[10] == "T" and text[13] == text[16] == ":"):
        return None
    if not (text[:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:]).isdigit():
        return None
    try:
        moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        return None
    delta = moment - _EPOCH
    return delta.days * 86_400 + delta.seconds


def plain_ts(text: str) -> int | None:
    """`parse_ts` of a timestamp as `format_ts` writes it, else None (ask `parse_ts`).

    A timestamp it reads passes the schemas' `pattern` and `format: date-time` too.
    """
    if len(text) != 24 or text[23] != "Z" or text[19] != "." or not text.isascii():
        return None
    millis = text[20:23]
    if not millis.isdigit():
        return None
    seconds = _plain_second(text[:19])
    return None if seconds is None else seconds * 1000 + int(millis)
