"""JoinKey.from_dict: the same key as Gantry's SDK for the same dict."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams import JoinKey

pytestmark = pytest.mark.unit

# JSON-shaped values as Gantry users log them: nested dicts and lists of scalars.
scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
dicts = st.dictionaries(st.text(), values, max_size=8)


def by_hand(text: str) -> str:
    """The reference: MD5 of the exact text Gantry's json.dumps(sort_keys=True) writes."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def test_known_vectors() -> None:
    assert JoinKey.from_dict({}) == by_hand("{}")
    assert JoinKey.from_dict({"b": 2, "a": "x"}) == by_hand('{"a": "x", "b": 2}')
    assert JoinKey.from_dict({"a": 1}) == "42b7b4f2921788ea14dac5566e6f06d0"
    nested = {"user": {"id": 7, "tags": ["x", "é"]}, "score": 0.5, "ok": True, "none": None}
    text = '{"none": null, "ok": true, "score": 0.5, "user": {"id": 7, "tags": ["x", "\\u00e9"]}}'
    assert JoinKey.from_dict(nested) == by_hand(text)


def test_uuids_and_datetimes_are_written_as_gantry_writes_them() -> None:
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    aware = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    plus_two = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    naive = datetime(2024, 5, 6, 7, 8, 9)  # noqa: DTZ001  Gantry marks a naive one with Z
    d = {"id": ident, "at": aware, "local": plus_two, "naive": naive, "day": date(2024, 5, 6)}
    expected = (
        '{"at": "2024-05-06T07:08:09.123456+00:00", "day": "2024-05-06", '
        '"id": "12345678-1234-5678-1234-567812345678", "local": "2024-05-06T07:08:09+02:00", '
        '"naive": "2024-05-06T07:08:09Z"}'
    )
    assert JoinKey.from_dict(d) == by_hand(expected)


def test_numpy_scalars_hash_as_their_python_values() -> None:
    assert JoinKey.from_dict({"n": np.int64(3), "f": np.float32(0.5), "b": np.bool_(True)}) == (
        JoinKey.from_dict({"n": 3, "f": 0.5, "b": True})
    )


@pytest.mark.parametrize("not_a_dict", [None, "abc", ["a", 1], 3, ("a", 1)])
def test_not_a_dict_is_a_type_error(not_a_dict: Any) -> None:
    with pytest.raises(TypeError, match="needs a dict"):
        JoinKey.from_dict(not_a_dict)


def test_values_json_cannot_write_raise_type_error() -> None:
    with pytest.raises(TypeError, match="set"):
        JoinKey.from_dict({"a": {1, 2}})


def test_is_a_str() -> None:
    key = JoinKey.from_dict({"a": 1})
    assert isinstance(key, str)
    assert len(key) == 32
    assert int(key, 16) >= 0


@given(dicts, st.randoms())
def test_insertion_order_does_not_matter(d: dict[str, Any], random: Any) -> None:
    items = list(d.items())
    random.shuffle(items)
    assert JoinKey.from_dict(dict(items)) == JoinKey.from_dict(d)


@given(dicts)
def test_stable_and_equal_to_an_independent_computation(d: dict[str, Any]) -> None:
    expected = hashlib.md5(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()
    assert JoinKey.from_dict(d) == expected
    assert JoinKey.from_dict(json.loads(json.dumps(d))) == expected


@given(dicts, dicts)
def test_different_dicts_give_different_keys(a: dict[str, Any], b: dict[str, Any]) -> None:
    if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
        assert JoinKey.from_dict(a) != JoinKey.from_dict(b)
