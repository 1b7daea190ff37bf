"""Join keys: the string that ties a prediction to its feedback.

`JoinKey.from_dict` computes the key exactly as Gantry's SDK does (hex MD5 of the
dict as `json.dumps(..., sort_keys=True)`), so keys made before a migration still
join with feedback logged after it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any


def _gantry_default(value: Any) -> Any:
    """Encode what plain `json` cannot, the way Gantry's encoder does."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        # Gantry marks a naive datetime as UTC by appending "Z"; aware ones keep their offset.
        text = value.isoformat()
        return text if value.utcoffset() is not None else f"{text}Z"
    if isinstance(value, dt.date):
        # Gantry cannot hash dates at all; ours is an extension that breaks no old key.
        return value.isoformat()
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        # numpy scalars (int64, float32, bool_) as their Python value, as Gantry did.
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def canonical_json(dict_: dict[Any, Any]) -> str:
    """The text that `JoinKey.from_dict` hashes: Gantry's `json.dumps(d, sort_keys=True)`."""
    return json.dumps(dict_, sort_keys=True, default=_gantry_default)


class JoinKey(str):
    """A join key; `JoinKey.from_dict(d)` makes the same key as Gantry's SDK."""

    __slots__ = ()

    @classmethod
    def from_dict(cls, dict_: dict[Any, Any]) -> JoinKey:
        """Hex MD5 of `dict_` as sorted JSON (UUIDs and datetimes as strings).

        Raises `TypeError` when `dict_` is not a dict or holds a value JSON cannot
        write, exactly where Gantry's SDK raises.
        """
        if not isinstance(dict_, dict):
            raise TypeError(f"JoinKey.from_dict needs a dict, not {type(dict_).__name__}")
        digest = hashlib.md5(canonical_json(dict_).encode("utf-8")).hexdigest()
        return cls(digest)
