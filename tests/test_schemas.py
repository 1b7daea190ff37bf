"""schemas/*.v1.json: valid Draft 2020-12, and jsonschema agrees with the fast path on examples."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from streams.errors import RecordError
from streams.records import SCHEMA_NAMES, load_schema, validate, validator

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
DRAFT_2020_12 = "https://json-schema.org/draft/2020-12/schema"
TS = "2026-11-28T01:36:37.123Z"
JOINED_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "loans/key-1/fb-1"))
VERSION_ID = "0b9e5f4e-3c1a-4d2b-9f1e-2a3b4c5d6e7f"

VALID: dict[str, list[dict[str, Any]]] = {
    "prediction": [
        {
            "schema": "prediction/v1",
            "application": "loans",
            "join_key": "key-1",
            "event_id": "ev-1",
            "inputs": {"amount": 1200, "purpose": "car"},
            "outputs": {"approved": True},
        },
        {
            "schema": "prediction/v1",
            "application": "chat",
            "join_key": "k" * 512,
            "event_id": str(uuid.uuid4()),
            "timestamp": "2026-11-28T01:36:37+01:00",
            "version": 3,
            "inputs": {"prompt": "hi"},
            "outputs": {"text": "hello"},
            "feedback": {"thumbs_up": True},
            "tags": {"region": "eu"},
            "batch_id": None,
        },
        {
            "schema": "prediction/v1",
            "application": "chat",
            "join_key": "k",
            "event_id": "e",
            "timestamp": "2026-11-28T01:36:37.123456789Z",
            "version": None,
            "inputs": {},
            "outputs": {},
            "batch_id": "batch-7",
        },
    ],
    "feedback": [
        {
            "schema": "feedback/v1",
            "application": "loans",
            "join_key": "key-1",
            "event_id": "fb-1",
            "feedback": {"correction_accepted": True},
        },
        {
            "schema": "feedback/v1",
            "application": "loans",
            "join_key": "key-1",
            "event_id": "fb-2",
            "timestamp": TS,
            "feedback": {"score": 0.5, "label": "good"},
            "tags": {},
            "batch_id": "b",
        },
    ],
    "joined": [
        {
            "schema": "joined/v1",
            "id": JOINED_ID,
            "application": "loans",
            "join_key": "key-1",
            "version": "3",
            "inputs": {"amount": 1200},
            "outputs": {"approved": True},
            "tags": {"region": "eu"},
            "prediction_event_id": "ev-1",
            "feedback_event_id": "fb-1",
            "prediction_timestamp": TS,
            "feedback_timestamp": "2026-11-29T00:00:00.000Z",
            "feedback": {"correction_accepted": True},
            "feedback_revision": 1,
            "joined_at": "2026-11-29T00:00:00.042Z",
        }
    ],
    "unmatched": [
        {
            "schema": "unmatched/v1",
            "reason": "no_prediction",
            "detail": "no prediction for join_key key-9 within 1d",
            "feedback": {"schema": "feedback/v1", "join_key": "key-9"},
            "unmatched_at": TS,
        },
        {
            "schema": "unmatched/v1",
            "reason": "expired",
            "detail": "the prediction's retention ended at 2026-11-20T00:00:00.000Z",
            "feedback": {},
            "source": {"topic": "feedback", "partition": 3, "offset": 17, "timestamp": None},
            "unmatched_at": TS,
        },
    ],
    "deadletter": [
        {
            "schema": "deadletter/v1",
            "reason": "invalid_json",
            "detail": "value: unexpected character",
            "source": {"topic": "predictions", "partition": 0, "offset": 0, "timestamp": TS},
            "key": "key-1",
            "key_encoding": "utf-8",
            "value": "{not json",
            "value_encoding": "utf-8",
            "truncated": False,
            "dead_lettered_at": TS,
        },
        {
            "schema": "deadletter/v1",
            "reason": "invalid_utf8",
            "detail": "value: not UTF-8 at byte 0",
            "source": {"topic": "feedback", "partition": 7, "offset": 99, "timestamp": None},
            "key": None,
            "key_encoding": "base64",
            "value": "/w==",
            "value_encoding": "base64",
            "truncated": True,
            "dead_lettered_at": TS,
        },
    ],
    "stats": [
        {
            "schema": "stats/v1",
            "application": "chat",
            "version": "v2",
            "field": "thumbs_up",
            "minute": "2026-11-28T01:36:00.000Z",
            "partition": 3,
            "count": 12,
            "true": 9,
            "false": 3,
            "numbers": 0,
            "sum": 0,
            "updated_at": TS,
        },
        {
            "schema": "stats/v1",
            "application": "loans",
            "version": None,
            "field": "rating",
            "minute": "2026-11-28T00:00:00.000Z",
            "partition": 0,
            "count": 4,
            "true": 0,
            "false": 0,
            "numbers": 3,
            "sum": 11.5,
            "updated_at": TS,
        },
        {
            "schema": "stats/v1",
            "application": "chat",
            "version": 3,
            "field": "score",
            "minute": "2026-11-28T23:59:00.000Z",
            "partition": 0,
            "count": 2,
            "true": 0,
            "false": 0,
            "numbers": 2,
            "sum": -2.5,
            "updated_at": TS,
        },
    ],
    "version": [
        {
            "schema": "version/v1",
            "application": "chat",
            "version_id": VERSION_ID,
            "description": "shorter answers",
            "config": {
                "prompt": "Summarize for {{name}}: {{text}}",
                "prompt_inputs": ["name", "text"],
                "model": "gpt-4o-mini",
                "params": {"temperature": 0.2},
            },
            "created_at": TS,
        },
        {
            "schema": "version/v1",
            "application": "c",
            "version_id": str(uuid.uuid4()),
            "description": "",
            "config": {
                "prompt": "p",
                "prompt_inputs": [],
                "model": "m",
                "params": {},
                "vendor": "x",
            },
            "created_at": TS,
        },
    ],
    "release": [
        {
            "schema": "release/v1",
            "application": "chat",
            "env": "prod",
            "version_id": VERSION_ID,
            "version_number": 2,
            "released_at": TS,
        }
    ],
}

# The required fields CONTRACT.md section 3 promises, per record.
REQUIRED = {
    "prediction": {"schema", "application", "join_key", "event_id", "inputs", "outputs"},
    "feedback": {"schema", "application", "join_key", "event_id", "feedback"},
    "joined": {
        "schema",
        "id",
        "application",
        "join_key",
        "version",
        "inputs",
        "outputs",
        "tags",
        "prediction_event_id",
        "feedback_event_id",
        "prediction_timestamp",
        "feedback_timestamp",
        "feedback",
        "feedback_revision",
        "joined_at",
    },
    "unmatched": {"schema", "reason", "detail", "feedback", "unmatched_at"},
    "deadletter": {
        "schema",
        "reason",
        "detail",
        "source",
        "key",
        "key_encoding",
        "value",
        "value_encoding",
        "truncated",
        "dead_lettered_at",
    },
    "stats": {
        "schema",
        "application",
        "version",
        "field",
        "minute",
        "partition",
        "count",
        "true",
        "false",
        "numbers",
        "sum",
        "updated_at",
    },
    "version": {"schema", "application", "version_id", "description", "config", "created_at"},
    "release": {
        "schema",
        "application",
        "env",
        "version_id",
        "version_number",
        "released_at",
    },
}

_DROP = object()

# (schema, field path, value or _DROP): one change to the first valid example.
INVALID: list[tuple[str, str, Any]] = [
    # prediction/v1
    ("prediction", "application", _DROP),
    ("prediction", "join_key", _DROP),
    ("prediction", "event_id", _DROP),
    ("prediction", "inputs", _DROP),
    ("prediction", "outputs", _DROP),
    ("prediction", "schema", _DROP),
    ("prediction", "application", 42),
    ("prediction", "application", ""),
    ("prediction", "inputs", ["amount", 1200]),
    ("prediction", "outputs", "approved"),
    ("prediction", "version", 1.5),
    ("prediction", "version", ["3"]),
    ("prediction", "tags", {"region": 1}),
    ("prediction", "tags", "eu"),
    ("prediction", "batch_id", 7),
    ("prediction", "feedback", {}),
    ("prediction", "feedback", "thumbs_up"),
    ("prediction", "join_key", "k" * 513),
    ("prediction", "join_key", ""),
    ("prediction", "join_key", 17),
    ("prediction", "event_id", ""),
    ("prediction", "timestamp", "yesterday"),
    ("prediction", "timestamp", "2026-11-28T01:36:37"),
    ("prediction", "timestamp", "2026-11-28 01:36:37Z"),
    ("prediction", "timestamp", "2026-11-28T01:36:37.123+0100"),
    ("prediction", "timestamp", 1795829797123),
    ("prediction", "score", 0.9),
    ("prediction", "schema", "prediction/v2"),
    ("prediction", "schema", "feedback/v1"),
    # feedback/v1
    ("feedback", "feedback", _DROP),
    ("feedback", "application", _DROP),
    ("feedback", "join_key", _DROP),
    ("feedback", "event_id", _DROP),
    ("feedback", "feedback", {}),
    ("feedback", "feedback", None),
    ("feedback", "feedback", [{"thumbs_up": True}]),
    ("feedback", "join_key", "k" * 513),
    ("feedback", "application", None),
    ("feedback", "timestamp", "28/11/2026"),
    ("feedback", "timestamp", "2026-11-28"),
    ("feedback", "tags", {"n": None}),
    ("feedback", "inputs", {}),
    ("feedback", "schema", "prediction/v1"),
    ("feedback", "schema", "Feedback/V1"),
    # joined/v1
    ("joined", "id", _DROP),
    ("joined", "feedback_revision", _DROP),
    ("joined", "version", _DROP),
    # A version-4 UUID (ids are version 5); a fixed one, so that every process of a
    # pytest-xdist run collects the same test ids.
    ("joined", "id", "0b7f9c2e-4c1a-4d3e-9f2a-6c5b8e7d1a30"),
    ("joined", "id", "not-a-uuid"),
    ("joined", "feedback", {}),
    ("joined", "feedback_revision", 0),
    ("joined", "feedback_revision", "1"),
    ("joined", "join_key", "k" * 513),
    ("joined", "joined_at", "2026-11-28T01:36:37Z"),
    ("joined", "prediction_timestamp", "2026-11-28T01:36:37.123+00:00"),
    ("joined", "feedback_timestamp", None),
    ("joined", "batch_id", None),
    ("joined", "schema", "joined/v2"),
    # unmatched/v1
    ("unmatched", "reason", _DROP),
    ("unmatched", "feedback", _DROP),
    ("unmatched", "reason", "late"),
    ("unmatched", "detail", ""),
    ("unmatched", "feedback", "raw text"),
    ("unmatched", "unmatched_at", "now"),
    ("unmatched", "source", {"topic": "feedback", "partition": 0}),
    ("unmatched", "extra", True),
    ("unmatched", "schema", "deadletter/v1"),
    # deadletter/v1
    ("deadletter", "source", _DROP),
    ("deadletter", "truncated", _DROP),
    ("deadletter", "reason", "bad_vibes"),
    ("deadletter", "detail", ""),
    ("deadletter", "source.partition", -1),
    ("deadletter", "source.offset", "0"),
    ("deadletter", "source.timestamp", "2026-11-28"),
    ("deadletter", "source.leader", 1),
    ("deadletter", "value_encoding", "hex"),
    ("deadletter", "key", 1),
    ("deadletter", "truncated", "no"),
    ("deadletter", "dead_lettered_at", None),
    ("deadletter", "join_key", "key-1"),
    ("deadletter", "schema", "deadletter/v0"),
    # stats/v1
    ("stats", "partition", _DROP),
    ("stats", "updated_at", _DROP),
    ("stats", "application", ""),
    ("stats", "version", 1.5),
    ("stats", "version", ["3"]),
    ("stats", "minute", "2026-11-28T01:36:37.000Z"),
    ("stats", "minute", "2026-11-28T01:36:00Z"),
    ("stats", "partition", -1),
    ("stats", "count", -1),
    ("stats", "true", 1.5),
    ("stats", "false", "2"),
    ("stats", "numbers", None),
    ("stats", "sum", "4.5"),
    ("stats", "updated_at", "2026-11-28T01:37:00Z"),
    ("stats", "mean", 3.5),
    ("stats", "schema", "stats/v2"),
    # version/v1
    ("version", "version_id", _DROP),
    ("version", "config", _DROP),
    ("version", "config.prompt", _DROP),
    ("version", "config.params", _DROP),
    ("version", "config.prompt", ""),
    ("version", "config.prompt_inputs", "name"),
    ("version", "config.params", [0.2]),
    ("version", "version_id", str(uuid.uuid5(uuid.NAMESPACE_URL, "x"))),
    ("version", "version_number", 1),
    ("version", "created_at", "yesterday"),
    ("version", "application", ""),
    # release/v1
    ("release", "env", _DROP),
    ("release", "version_id", _DROP),
    ("release", "env", "latest"),
    ("release", "env", "pro d"),
    ("release", "env", ""),
    ("release", "version_number", 0),
    ("release", "version_number", "2"),
    ("release", "version_id", "v2"),
    ("release", "released_at", None),
    ("release", "schema", "version/v1"),
]


def changed(name: str, path: str, value: Any) -> dict[str, Any]:
    """The first valid example of `name` with one field (a dotted path) set or dropped."""
    record = copy.deepcopy(VALID[name][0])
    *parents, last = path.split(".")
    target = record
    for part in parents:
        target = target[part]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return record


def jsonschema_errors(name: str, record: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(load_schema(name))
    return [error.message for error in validator.iter_errors(record)]


def fast_path_error(name: str, record: Any) -> RecordError | None:
    try:
        validate(name, record)
    except RecordError as error:
        return error
    return None


def test_there_is_one_schema_file_per_record() -> None:
    assert sorted(path.name for path in SCHEMAS.glob("*.json")) == sorted(
        f"{name}.v1.json" for name in SCHEMA_NAMES
    )


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = json.loads((SCHEMAS / f"{name}.v1.json").read_text(encoding="utf-8"))

    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == DRAFT_2020_12
    assert jsonschema.validators.validator_for(schema) is jsonschema.Draft202012Validator
    assert schema["title"] == f"{name}/v1"
    assert schema["properties"]["schema"] == {"const": f"{name}/v1"}
    assert schema["additionalProperties"] is False
    assert schema == load_schema(name)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_compiling_leaves_the_loaded_schema_as_on_disk(name: str) -> None:
    # fastjsonschema rewrites `$ref`s in the dict it compiles (unmatched/v1 has one).
    validator(name)

    on_disk = json.loads((SCHEMAS / f"{name}.v1.json").read_text(encoding="utf-8"))
    assert load_schema(name) == on_disk


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_required_fields_are_the_contracts(name: str) -> None:
    assert set(load_schema(name)["required"]) == REQUIRED[name]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_has_examples(name: str) -> None:
    assert VALID[name]
    assert sum(1 for case in INVALID if case[0] == name) >= 8


@pytest.mark.parametrize(
    ("name", "record"),
    [(name, record) for name, records in VALID.items() for record in records],
)
def test_valid_examples_pass_both_validators(name: str, record: dict[str, Any]) -> None:
    assert jsonschema_errors(name, record) == []
    assert fast_path_error(name, record) is None


@pytest.mark.parametrize(
    ("name", "path", "value"),
    INVALID,
    ids=[
        f"{name}-{path}-{'drop' if value is _DROP else repr(value)[:20]}"
        for name, path, value in INVALID
    ],
)
def test_invalid_examples_fail_both_validators(name: str, path: str, value: Any) -> None:
    record = changed(name, path, value)

    assert jsonschema_errors(name, record), "jsonschema accepted it"
    error = fast_path_error(name, record)
    assert error is not None, "streams.records.validate accepted it"
    assert error.reason == "schema_violation"
    # The detail names the field: the top-level one is enough for nested paths.
    assert path.split(".")[0] in error.detail


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@pytest.mark.parametrize("record", [None, [], "text", 1])
def test_a_record_that_is_not_an_object_fails_both(name: str, record: Any) -> None:
    assert jsonschema_errors(name, record)
    error = fast_path_error(name, record)
    assert error is not None
    assert error.detail.startswith("(record)")


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_each_required_field_is_required_by_both(name: str) -> None:
    record = VALID[name][0]
    for field in sorted(REQUIRED[name]):
        without = {key: value for key, value in record.items() if key != field}
        assert jsonschema_errors(name, without), field
        error = fast_path_error(name, without)
        assert error is not None, field
        assert field in error.detail


def test_a_nested_field_is_named_in_full() -> None:
    error = fast_path_error("prediction", changed("prediction", "tags", {"metadata": 1}))

    assert error is not None
    assert error.detail.startswith("tags.metadata:")


@pytest.mark.parametrize("timestamp", ["2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z"])
def test_the_fast_path_also_checks_the_calendar(timestamp: str) -> None:
    # jsonschema checks `format: date-time` only with an optional package; the pattern
    # matches, so only the fast path can tell.
    record = changed("feedback", "timestamp", timestamp)

    error = fast_path_error("feedback", record)

    assert error is not None
    assert error.detail.startswith("timestamp:")
