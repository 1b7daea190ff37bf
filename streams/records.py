"""The record codec: timestamps, schema validation and decoding of input records.

`schemas/*.v1.json` are the single source of each record's shape; they are compiled
once (fastjsonschema) and every record read or written is checked against them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from streams.errors import RecordError
from streams.plain import PLAIN_CHECKED, PLAIN_CHECKS, never, plain_ts

Record = dict[str, Any]
SCHEMA_NAMES = (
    "prediction",
    "feedback",
    "joined",
    "unmatched",
    "deadletter",
    "stats",
    "version",
    "release",
)
DEADLETTER_VALUE_LIMIT = 64 * 1024


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    """Epoch seconds as RFC 3339 UTC without the offset: `2026-11-28T01:36:37`."""
    # Integer arithmetic: a float of epoch seconds loses the millisecond in some years.
    return (_EPOCH + timedelta(seconds=seconds)).isoformat(timespec="seconds")[:-6]


def format_ts(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 UTC with milliseconds: `2026-11-28T01:36:37.123Z`."""
    # A joined record writes three of these: the second's text is cached (records and
    # the clock come in bursts within a second), only the milliseconds are formatted.
    seconds, millis = divmod(ms, 1000)
    return f"{_second_text(seconds)}.{millis:03d}Z"


def parse_ts(text: str) -> int:
    """RFC 3339 (any offset, any fraction) to epoch milliseconds, rounding half a ms up."""
    moment = datetime.fromisoformat(text.replace("z", "Z"))
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    # Exact: `moment.timestamp() * 1000` is a float and truncates to the ms below in
    # about one case in 200.
    delta = moment - _EPOCH
    micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return (micros + 500) // 1000


def to_ms(moment: datetime) -> int:
    """An aware datetime as epoch milliseconds."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a timezone (e.g. datetime.now(UTC))")
    return round(moment.timestamp() * 1000)


def schema_dir() -> Path:
    """Where the JSON Schema files are: shipped in the wheel, or the checkout's schemas/."""
    shipped = resources.files("streams") / "_schemas"
    if shipped.is_dir():
        return Path(str(shipped))
    return Path(__file__).resolve().parent.parent / "schemas"


@cache
def load_schema(name: str) -> dict[str, Any]:
    """The parsed JSON Schema of `<name>/v1`."""
    with (schema_dir() / f"{name}.v1.json").open("rb") as handle:
        loaded: dict[str, Any] = json.load(handle)
    return loaded


@cache
def validator(name: str) -> Callable[[Any], Any]:
    """A compiled validator for `<name>/v1`; raises fastjsonschema's error naming the field."""
    # A copy: compile() rewrites `$ref`s in place, which would change what load_schema returns.
    compiled: Callable[[Any], Any] = fastjsonschema.compile(copy.deepcopy(load_schema(name)))
    return compiled


def validate(name: str, record: Record) -> None:
    """Check a record against `<name>/v1`; raise `RecordError` naming the field if it fails."""
    try:
        validator(name)(record)
    except fastjsonschema.JsonSchemaValueException as error:
        # fastjsonschema names the record `data`: `data.tags.metadata` is `tags.metadata`.
        name = error.name or "data"
        field = name.removeprefix("data.") if name.startswith("data.") else "(record)"
        raise RecordError("schema_violation", f"{field}: {error.message}") from None


def schema_hash(name: str) -> str:
    """A hash of the contents of `<name>/v1` (key order and layout aside)."""
    return hashlib.sha256(orjson.dumps(load_schema(name), option=orjson.OPT_SORT_KEYS)).hexdigest()


@cache
def plain_check(name: str) -> Callable[[Record], bool]:
    """`streams.plain`'s check of `<name>/v1`, or one that passes nothing if the schema changed."""
    check = PLAIN_CHECKS.get(name)
    return check if check is not None and PLAIN_CHECKED.get(name) == schema_hash(name) else never


_ABSENT = object()


def decode_input(expected: str, key: bytes | None, value: bytes | None, max_bytes: int) -> Record:
    """Decode one `predictions` or `feedback` record, or raise `RecordError` with its reason.

    Checks, in order: size, UTF-8, JSON, the `schema` field, the schema, the join key
    against the Kafka key. The returned record is valid `<expected>/v1`.
    """
    return read_input(expected, key, value, max_bytes)[0]


def read_input(
    expected: str, key: bytes | None, value: bytes | None, max_bytes: int, *, plain: bool = True
) -> tuple[Record, int | None]:
    """`decode_input`, and the record's `timestamp` in epoch ms (None: it has none).

    `plain=False`: the compiled validator checks every record (the verdict is the same).
    """
    if value is None:
        raise RecordError("invalid_json", "value: the record has no value (null)")
    if len(value) > max_bytes:
        raise RecordError(
            "oversized", f"value: {len(value)} bytes is over STREAMS_MAX_RECORD_BYTES={max_bytes}"
        )
    try:
        # orjson refuses invalid UTF-8 too: the text is checked on its own only to tell
        # that reason apart, so a valid record is read once.
        record = orjson.loads(value)
    except orjson.JSONDecodeError as error:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise RecordError("invalid_utf8", f"value: not UTF-8 at byte {bad.start}") from None
        raise RecordError("invalid_json", f"value: {error}") from None
    if type(record) is not dict:
        raise RecordError(
            "schema_violation", f"(record): a JSON object is needed, not {type(record).__name__}"
        )
    declared = record.get("schema")
    if declared != f"{expected}/v1":
        raise RecordError(
            "unknown_schema",
            f"schema: {declared!r} is not {expected}/v1 (the only schema this topic takes)",
        )
    join_key = record.get("join_key")
    if join_key is None or join_key == "":
        raise RecordError("missing_join_key", "join_key: missing or empty")
    timestamp = record.get("timestamp", _ABSENT)
    if timestamp is _ABSENT:
        timestamp = event_ms = None
        checked = True
    else:
        event_ms = plain_ts(timestamp) if plain and type(timestamp) is str else None
        checked = event_ms is not None
    if not (plain and checked and plain_check(expected)(record)):
        validate(expected, record)
        if timestamp is not None:
            # The schema's date-time check lets through what datetime cannot read (23:59:60).
            try:
                event_ms = parse_ts(timestamp)
            except ValueError:
                raise RecordError(
                    "schema_violation", f"timestamp: {timestamp!r} is not a valid date-time"
                ) from None
    if key is None:
        raise RecordError(
            "missing_join_key", "key: the Kafka record has no key (it must be the join_key)"
        )
    if key != join_key.encode("utf-8"):
        shown = key[:80].decode("utf-8", "replace")
        raise RecordError("key_mismatch", f"key: {shown!r} differs from join_key {join_key[:80]!r}")
    return record, event_ms


def text_or_base64(
    raw: bytes | None, limit: int = DEADLETTER_VALUE_LIMIT
) -> tuple[str | None, str, bool]:
    """Bytes as (text, encoding, truncated): UTF-8 text when valid, else base64; cut at `limit`."""
    if raw is None:
        return None, "utf-8", False
    truncated = len(raw) > limit
    cut = raw[:limit]
    # A cut may split the last character of valid text: drop up to 3 trailing bytes.
    for trim in range(4 if truncated else 1):
        try:
            return cut[: len(cut) - trim].decode("utf-8"), "utf-8", truncated
        except UnicodeDecodeError:
            continue
    return base64.b64encode(cut).decode("ascii"), "base64", truncated


def from_base64(text: str) -> bytes:
    """Inverse of the base64 branch of `text_or_base64`, for readers of dead letters."""
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise ValueError(f"not base64: {error}") from None


class RawJson:
    """JSON text kept as the bytes it was written as, and written into records as is.

    A stored prediction's inputs and outputs are only stored and copied into joined
    records: kept as bytes, they are neither parsed when the row is read nor written
    again when it is (`streams.worker.state`); `fragment` splices them into a record
    unchanged (`dumps`), so a record holding them is the same JSON as one holding
    the parsed values.
    """

    __slots__ = ("fragment", "text")

    def __init__(self, text: bytes) -> None:
        self.text = text
        self.fragment = orjson.Fragment(text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RawJson) and self.text == other.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"RawJson({self.text!r})"

    def __deepcopy__(self, memo: dict[int, Any]) -> RawJson:
        return self  # immutable


def _fragment(value: Any) -> orjson.Fragment:
    if type(value) is RawJson:
        return value.fragment
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def spliced(value: Any) -> Any:
    """`value` to put in a record: a `RawJson`'s fragment, else itself."""
    return value.fragment if type(value) is RawJson else value


def dumps(record: Record) -> bytes:
    """Serialize a record the one way this project writes JSON (`RawJson` spliced in as is)."""
    return orjson.dumps(record, default=_fragment)
