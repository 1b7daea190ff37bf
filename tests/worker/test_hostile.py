"""Hostile producers: what no SDK would send goes to deadletter, and the worker stays small.

Invariant: every hostile record ends in `deadletter` with its reason, the worker keeps
joining, and its resident memory stays bounded while it reads them.
"""

from __future__ import annotations

import string
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from harness import RawProducer, Start, feedback, prediction, read_topic

pytestmark = pytest.mark.integration

# What a few thousand hostile records may add to the worker's resident memory.
RSS_GROWTH_LIMIT = 150 * 1024**2
# Room under the producers' 1 MB message limit for a record over the worker's limit.
MAX_BYTES = 900_000
ALPHABET = string.ascii_letters + string.digits


def field_name(n: int) -> str:
    """Three characters for each of 100,000 fields keep the record under MAX_BYTES."""
    return "".join(ALPHABET[(n // 62**i) % 62] for i in range(3))


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_hostile_records_go_to_deadletter_and_memory_stays_bounded(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str
) -> None:
    """Oversized, 10,000-deep, 100,000-field, long-key and non-UTF-8-key records."""
    worker = workers(STREAMS_MAX_RECORD_BYTES=str(MAX_BYTES))
    assert worker.process is not None
    app = "hostile"
    # Predictions for the wide feedback to land on: it must reach the join, not wait.
    targets = [f"wide-{i}" for i in range(10)]
    for key in targets:
        producer.send("predictions", prediction(app, key))
    producer.flush()
    read_topic(bootstrap, topic_prefix + "deadletter", 1, timeout=3)  # let the worker settle
    before = rss_bytes(worker.process.pid)

    expected: Counter[str] = Counter()
    base = orjson.dumps(feedback(app, "k", {"ok": True}))
    for _ in range(10):
        producer.send(
            "feedback", base[:-1] + b',"pad":"' + b"x" * (MAX_BYTES + 50_000) + b'"}', key="k"
        )
        expected["oversized"] += 1
    for i in range(500):
        deep = base.replace(b'{"ok":true}', b'{"deep":' + nested(10_000) + b"}")
        producer.send("feedback", deep, key=f"deep-{i}")
        expected["invalid_json"] += 1
    for key in targets:
        wide = feedback(app, key, {field_name(n): n % 2 for n in range(100_000)})
        assert len(orjson.dumps(wide)) < MAX_BYTES
        producer.send("feedback", wide)
        expected["schema_violation"] += 1
    for i in range(1000):
        long_key = f"{i}-" + "k" * 600
        producer.send("feedback", feedback(app, long_key, {"ok": True}))
        expected["schema_violation"] += 1
    for i in range(1000):
        record = feedback(app, f"utf8-{i}", {"ok": True})
        producer.send("feedback", record, key=b"\xff\xfe" + str(i).encode())
        expected["key_mismatch"] += 1  # never equal to a JSON string's UTF-8 bytes
    producer.flush()

    total = sum(expected.values())
    dead = read_topic(bootstrap, topic_prefix + "deadletter", total, timeout=180)
    assert Counter(r.value["reason"] for r in dead) == expected
    wide_dead = [r.value for r in dead if r.value["key"] in targets]
    assert all("feedback" in r["detail"] for r in wide_dead), wide_dead[:1]
    grown = rss_bytes(worker.process.pid) - before
    assert grown < RSS_GROWTH_LIMIT, f"the worker grew by {grown / 1024**2:.0f} MiB"

    # And it still joins.
    key = f"after-{uuid.uuid4().hex}"
    producer.send("predictions", prediction(app, key))
    producer.send("feedback", feedback(app, key, {"thumbs_up": True}))
    producer.flush()
    joined = read_topic(
        bootstrap,
        topic_prefix + "joined",
        1,
        timeout=60,
        until=lambda found: any(r.value["join_key"] == key for r in found),
    )
    assert any(r.value["join_key"] == key for r in joined)
    assert worker.process.poll() is None, worker.log_tail()
