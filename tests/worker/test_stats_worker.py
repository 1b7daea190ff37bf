"""The worker publishes feedback aggregates to `feedback-stats`; `streams stats` reads them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from harness import RawProducer, Start, feedback, prediction, stats_totals, wait_until_equal

from streams.records import format_ts

pytestmark = pytest.mark.integration


def minute_of(ts: datetime) -> str:
    return format_ts(int(ts.timestamp()) // 60 * 60_000)


def test_each_prediction_counts_once_with_its_latest_feedback(
    workers: Start, producer: RawProducer, bootstrap: str, topic_prefix: str, env: dict[str, str]
) -> None:
    """Invariant: per (application, version, field, minute of the prediction), the shares on
    `feedback-stats` add up to the predictions whose latest merged feedback has the field."""
    worker = workers()
    now = datetime.now(UTC)
    minutes = [now - timedelta(minutes=9), now - timedelta(minutes=4)]
    latest: dict[int, dict[str, Any]] = {}
    where: dict[int, tuple[Any, str]] = {}
    for i in range(40):
        key, version, ts = f"k{i}", (i % 2) + 1, minutes[i % 3 == 0]
        where[i] = (version, minute_of(ts))
        fields: dict[str, Any] = {"thumbs_up": i % 4 == 0}
        if i % 7 == 0:
            fields["score"] = i / 2
        first = feedback("chat", key, fields)
        if i % 10 == 0:  # feedback before its prediction: counted once it is joined
            producer.send("feedback", first)
        producer.send(
            "predictions",
            prediction(
                "chat", key, version=version, timestamp=format_ts(int(ts.timestamp() * 1000))
            ),
        )
        if i % 10 != 0:
            producer.send("feedback", first)
        latest[i] = dict(fields)
        if i % 5 == 0:  # a thumbs-up changed to a thumbs-down, and back
            producer.send("feedback", feedback("chat", key, {"thumbs_up": i % 4 != 0}))
            latest[i]["thumbs_up"] = i % 4 != 0
    producer.send("predictions", prediction("chat", "no-feedback", version=1))
    producer.flush()

    expected: dict[tuple[Any, ...], list[Any]] = {}
    for i, fields in latest.items():
        version, minute = where[i]
        for name, value in fields.items():
            share = expected.setdefault(("chat", version, name, minute), [0, 0, 0, 0, 0])
            share[0] += 1
            if isinstance(value, bool):
                share[1 if value else 2] += 1
            else:
                share[3] += 1
                share[4] += value
    topic = topic_prefix + "feedback-stats"
    wait_until_equal(lambda: stats_totals(bootstrap, topic), expected, timeout=60)

    # The worker's page and the command add the shares up per bucket and version.
    status, body = worker.http("/stats?application=chat&field=thumbs_up&every=1m&by_version=1")
    assert status == 200, body
    page = orjson.loads(body)
    by_page = {
        (r["version"], r["bucket"]): [r["count"], r["true"], r["false"]] for r in page["rows"]
    }
    assert by_page == {
        (version, minute): share[:3]
        for (_, version, name, minute), share in expected.items()
        if name == "thumbs_up"
    }
    for row in page["rows"]:
        assert row["positive_pct"] == pytest.approx(100 * row["true"] / row["count"])
    command = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams.cli",
            "stats",
            "--application",
            "chat",
            "--field",
            "score",
            "--every",
            "36500d",  # one bucket, whatever the day
            "--format",
            "json",
        ],
        env={**os.environ, **env},
        capture_output=True,
        timeout=60,
        check=True,
    )
    (row,) = orjson.loads(command.stdout)["rows"]
    scores = [fields["score"] for fields in latest.values() if "score" in fields]
    assert (row["count"], row["numbers"], row["mean"]) == (
        len(scores),
        len(scores),
        pytest.approx(sum(scores) / len(scores)),
    )
    status, body = worker.http("/stats?application=chat")
    assert status == 400 and b"field" in body, body
    status, body = worker.http("/stats?application=chat&field=thumbs_up&evry=1h")
    assert status == 400 and b"evry: unknown parameter" in body, body
    status, body = worker.http("/stats?application=chats&field=thumbs_up")
    assert status == 404 and b"applications: chat" in body, body
