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
    """MD5 of a text written by hand (for dicts plain `json` writes like Gantry)."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


def test_known_vectors() -> None:
    assert JoinKey.from_dict({}) == by_hand("{}")
    assert JoinKey.from_dict({"b": 2, "a": "x"}) == by_hand('{"a": "x", "b": 2}')
    nested = {"user": {"id": 7, "tags": ["x", "é"]}, "score": 0.5, "ok": True, "none": None}
    text = '{"none": null, "ok": true, "score": 0.5, "user": {"id": 7, "tags": ["x", "\\u00e9"]}}'
    assert JoinKey.from_dict(nested) == by_hand(text)


# Gantry's SDK (gantry 0.6.14, gantry/logger/utils.py and gantry/serializers.py):
# JoinKey.from_dict(d) = md5(json.dumps(d, sort_keys=True, cls=EventEncoder)).hexdigest(),
# and EventEncoder.default writes a uuid.UUID as str(u); a datetime as isoformat(), plus
# "Z" when it is naive (aware ones keep their offset, no "Z"); and numpy float32, float64,
# int32, int64 and bool_ as float, int and bool. Each vector below is the text those rules
# write, written by hand, and its MD5 from `printf '%s' TEXT | md5sum`, not from our code.
ID = uuid.UUID("12345678-1234-5678-1234-567812345678")
GANTRY_VECTORS = [
    (
        {"id": ID},
        '{"id": "12345678-1234-5678-1234-567812345678"}',
        "cd09c810bfec1d9260f0d5f853d5f532",
    ),
    (
        {"at": datetime(2024, 5, 6, 7, 8, 9)},  # noqa: DTZ001  naive: Gantry appends Z
        '{"at": "2024-05-06T07:08:09Z"}',
        "a6756e4f8bdfca33da6461df09321bbc",
    ),
    (
        {"at": datetime(2024, 5, 6, 7, 8, 9, 500)},  # noqa: DTZ001
        '{"at": "2024-05-06T07:08:09.000500Z"}',
        "96a031ff6c2866d9305bc412e98b281c",
    ),
    (
        {"at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)},
        '{"at": "2024-05-06T07:08:09+00:00"}',
        "1e26d7809b21796d85f4fa923e6592ba",
    ),
    (
        {
            "i": np.int64(3),
            "j": np.int32(-7),
            "f": np.float32(0.1),  # float(np.float32(0.1)): its exact binary value
            "d": np.float64(2.5),
            "b": np.bool_(True),
        },
        '{"b": true, "d": 2.5, "f": 0.10000000149011612, "i": 3, "j": -7}',
        "9feed67583de08a67c1413e3a9aaba72",
    ),
    (
        {
            "user": {
                "id": uuid.UUID("00000000-0000-4000-8000-000000000001"),
                "seen": [datetime(1999, 12, 31, 23, 59, 59)],  # noqa: DTZ001
            },
            "scores": [np.float32(1.5), np.int64(2), np.bool_(False)],
        },
        '{"scores": [1.5, 2, false], "user": {"id": "00000000-0000-4000-8000-000000000001", '
        '"seen": ["1999-12-31T23:59:59Z"]}}',
        "f125972d02501a2756a6656daf535bfd",
    ),
]


@pytest.mark.parametrize(("given", "text", "digest"), GANTRY_VECTORS)
def test_gantry_vectors(given: dict[str, Any], text: str, digest: str) -> None:
    assert by_hand(text) == digest, "the vector's text and digest agree"
    assert JoinKey.from_dict(given) == digest


def test_aware_datetimes_keep_their_offset_and_dates_are_our_extension() -> None:
    plus_two = datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    assert JoinKey.from_dict({"local": plus_two}) == by_hand(
        '{"local": "2024-05-06T07:08:09+02:00"}'
    )
    # Gantry raises on a date; we write it, which changes no key Gantry could make.
    assert JoinKey.from_dict({"day": date(2024, 5, 6)}) == by_hand('{"day": "2024-05-06"}')


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
def test_plain_json_dicts_hash_as_gantrys_json_dumps_writes_them(d: dict[str, Any]) -> None:
    expected = hashlib.md5(json.dumps(d, sort_keys=True).encode("utf-8")).hexdigest()
    assert JoinKey.from_dict(d) == expected
    assert JoinKey.from_dict(json.loads(json.dumps(d))) == expected


@given(dicts, dicts)
def test_different_dicts_give_different_keys(a: dict[str, Any], b: dict[str, Any]) -> None:
    if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
        assert JoinKey.from_dict(a) != JoinKey.from_dict(b)
