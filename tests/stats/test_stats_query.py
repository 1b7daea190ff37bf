"""`streams stats`: latest value per key, the series, its formats and chart; then on a broker."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer
from harness import RawProducer
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.records import format_ts, parse_ts, validate
from streams.settings import Settings
from streams.stats.chart import plot_png
from streams.stats.query import (
    LatestStats,
    StatsQuery,
    StatsSeries,
    format_csv,
    format_json,
    format_series,
    format_table,
    latest_stats,
    stats_series,
)
from streams.topics import FEEDBACK_STATS, create_topics, topic_specs

MINUTE = 60_000
HOUR = 60 * MINUTE
NOW_MS = 1_800_000_000_000  # 2027-01-15T08:00:00Z, a whole hour
NOW = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=NOW_MS)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def share(
    minute_ms: int,
    partition: int = 0,
    *,
    application: str = "chat",
    version: str | int | None = "v1",
    field: str = "thumbs_up",
    true: int = 0,
    false: int = 0,
    numbers: int = 0,
    total: float = 0,
    others: int = 0,
) -> dict[str, Any]:
    """One partition's share of one aggregate, valid `stats/v1`."""
    record = {
        "schema": "stats/v1",
        "application": application,
        "version": version,
        "field": field,
        "minute": format_ts(minute_ms),
        "partition": partition,
        "count": true + false + numbers + others,
        "true": true,
        "false": false,
        "numbers": numbers,
        "sum": total,
        "updated_at": format_ts(NOW_MS),
    }
    validate("stats", record)
    return record


def key_of(record: dict[str, Any]) -> bytes:
    fields = ("application", "version", "field", "minute", "partition")
    return orjson.dumps([record[name] for name in fields])


# --- latest value per key ----------------------------------------------------------------


@pytest.mark.unit
def test_a_later_value_replaces_an_earlier_one_and_a_tombstone_deletes() -> None:
    old, new = share(NOW_MS, true=1), share(NOW_MS, true=5)
    gone = share(NOW_MS, partition=1, false=3)

    latest = latest_stats(
        [
            (key_of(old), orjson.dumps(old)),
            (key_of(gone), orjson.dumps(gone)),
            (key_of(new), orjson.dumps(new)),
            (key_of(gone), None),
        ]
    )

    assert latest == LatestStats([new], 0)


@pytest.mark.unit
def test_a_value_after_a_tombstone_brings_the_key_back() -> None:
    record = share(NOW_MS, true=2)
    key = key_of(record)

    assert latest_stats([(key, b"{}"), (key, None), (key, orjson.dumps(record))]).records == [
        record
    ]


@pytest.mark.unit
@pytest.mark.parametrize(
    "value",
    [
        b"{not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        orjson.dumps({**share(NOW_MS), "schema": "stats/v2"}),
        orjson.dumps({**share(NOW_MS), "count": -1}),
        orjson.dumps({**share(NOW_MS), "minute": "2026-02-30T00:00:00.000Z"}),
    ],
)
def test_an_unreadable_latest_value_is_skipped_and_counted(value: bytes) -> None:
    good = share(NOW_MS, partition=1, true=1)

    latest = latest_stats([(b"bad", value), (key_of(good), orjson.dumps(good))])

    assert latest == LatestStats([good], 1)


@pytest.mark.unit
def test_an_unreadable_value_replaced_later_is_not_counted_and_a_keyless_one_is() -> None:
    record = share(NOW_MS, true=1)

    latest = latest_stats(
        [(key_of(record), b"{oops"), (key_of(record), orjson.dumps(record)), (None, b"{}")]
    )

    assert latest == LatestStats([record], 1)


keys = st.sampled_from([b"k1", b"k2", b"k3", b"k4"])
values = st.one_of(
    st.none(),
    st.just(b"garbage"),
    st.integers(0, 9).map(lambda n: orjson.dumps(share(NOW_MS, partition=n, true=n))),
)


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(keys, values), max_size=30))
def test_latest_stats_is_compaction(entries: list[tuple[bytes, bytes | None]]) -> None:
    """Invariant: the records are the last value of each key whose last value is readable."""
    compacted: dict[bytes, bytes | None] = {}
    for key, value in entries:
        compacted[key] = value
    readable = [orjson.loads(v) for v in compacted.values() if v is not None and v != b"garbage"]

    latest = latest_stats(entries)

    assert sorted(map(orjson.dumps, latest.records)) == sorted(map(orjson.dumps, readable))
    assert latest.skipped == sum(1 for v in compacted.values() if v == b"garbage")


# --- the series --------------------------------------------------------------------------


@st.composite
def shares(draw: st.DrawFn) -> dict[str, Any]:
    true, false, numbers, others = (draw(st.integers(0, 20)) for _ in range(4))
    return share(
        NOW_MS - draw(st.integers(0, 3 * 24 * 60)) * MINUTE,
        draw(st.integers(0, 7)),
        application=draw(st.sampled_from(["chat", "loans"])),
        version=draw(st.sampled_from([None, 1, 2, 10, "1", "v2"])),
        field=draw(st.sampled_from(["thumbs_up", "rating"])),
        true=true,
        false=false,
        numbers=numbers,
        total=draw(st.integers(-50, 50)) if numbers else 0,  # whole: sums compare exactly
        others=others,
    )


durations = st.sampled_from(
    [timedelta(minutes=1), timedelta(minutes=7), timedelta(hours=1), timedelta(days=1)]
)
SUMMED = ("count", "true", "false", "numbers")


def reference(
    records: list[dict[str, Any]], every: timedelta, cutoff_ms: int | None, by_version: bool
) -> dict[tuple[int, Any], list[float]]:
    """chat/thumbs_up totals [count, true, false, numbers, sum] per (bucket, version)."""
    every_ms = every // timedelta(milliseconds=1)
    totals: dict[tuple[int, Any], list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for record in records:
        minute = parse_ts(record["minute"])
        if (record["application"], record["field"]) != ("chat", "thumbs_up"):
            continue
        if cutoff_ms is not None and minute < cutoff_ms:
            continue
        group = (minute // every_ms * every_ms, record["version"] if by_version else None)
        for index, name in enumerate((*SUMMED, "sum")):
            totals[group][index] += record[name]
    return totals


def rows_as_totals(series: StatsSeries) -> dict[tuple[int, Any], list[float]]:
    return {
        (parse_ts(row.bucket), row.version): [row.count, row.true, row.false, row.numbers, row.sum]
        for row in series.rows
    }


@pytest.mark.unit
@settings(max_examples=300, deadline=None)
@given(
    st.lists(shares(), max_size=40),
    durations,
    st.one_of(st.none(), st.integers(1, 4 * 24 * 60).map(lambda m: timedelta(minutes=m))),
    st.booleans(),
)
def test_the_series_is_the_reference_model(
    records: list[dict[str, Any]], every: timedelta, since: timedelta | None, by_version: bool
) -> None:
    """Invariant: each row sums exactly the shares whose minute falls in its bucket."""
    cutoff = None if since is None else NOW_MS - since // timedelta(milliseconds=1)

    series = stats_series(
        records, "chat", "thumbs_up", every=every, since=since, by_version=by_version, now=NOW
    )

    assert rows_as_totals(series) == reference(records, every, cutoff, by_version)
    every_ms = every // timedelta(milliseconds=1)
    assert all(parse_ts(row.bucket) % every_ms == 0 for row in series.rows)
    if not by_version:
        assert all(row.version is None for row in series.rows)


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(st.lists(shares(), max_size=40), durations)
def test_splitting_by_version_then_adding_up_is_not_splitting(
    records: list[dict[str, Any]], every: timedelta
) -> None:
    split = stats_series(records, "chat", "thumbs_up", every=every, by_version=True)
    whole = stats_series(records, "chat", "thumbs_up", every=every)

    added: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for row in split.rows:
        for index, value in enumerate((row.count, row.true, row.false, row.numbers, row.sum)):
            added[row.bucket][index] += value
    assert added == {
        row.bucket: [row.count, row.true, row.false, row.numbers, row.sum] for row in whole.rows
    }


@pytest.mark.unit
@settings(max_examples=200, deadline=None)
@given(st.lists(shares(), max_size=40), durations)
def test_the_buckets_add_up_to_every_matching_share(
    records: list[dict[str, Any]], every: timedelta
) -> None:
    series = stats_series(records, "chat", "thumbs_up", every=every, by_version=True)

    matching = [r for r in records if (r["application"], r["field"]) == ("chat", "thumbs_up")]
    for name in SUMMED:
        assert sum(getattr(row, name) for row in series.rows) == sum(r[name] for r in matching)
    assert sum(row.sum for row in series.rows) == sum(r["sum"] for r in matching)
    order = [(row.bucket, row.version is not None, str(row.version)) for row in series.rows]
    assert order == sorted(order)


@pytest.mark.unit
def test_percent_positive_and_mean() -> None:
    records = [
        share(NOW_MS, 0, true=3, false=1),
        share(NOW_MS + MINUTE, 1, true=1, numbers=2, total=7),
        share(NOW_MS + HOUR, 0, others=4),
    ]

    rows = stats_series(records, "chat", "thumbs_up", now=NOW).rows

    assert [row.as_dict(False) for row in rows] == [
        {
            "bucket": format_ts(NOW_MS),
            "count": 7,
            "true": 4,
            "false": 1,
            "positive_pct": 80.0,
            "numbers": 2,
            "mean": 3.5,
        },
        {
            "bucket": format_ts(NOW_MS + HOUR),
            "count": 4,
            "true": 0,
            "false": 0,
            "positive_pct": None,
            "numbers": 0,
            "mean": None,
        },
    ]


@pytest.mark.unit
def test_buckets_are_aligned_to_the_epoch_in_utc() -> None:
    day = 24 * HOUR
    minute = NOW_MS + 5 * HOUR + 17 * MINUTE  # 13:17 UTC

    [row] = stats_series([share(minute, true=1)], "chat", "thumbs_up", every=timedelta(days=1)).rows
    [row_90] = stats_series(
        [share(minute, true=1)], "chat", "thumbs_up", every=timedelta(minutes=90)
    ).rows

    assert row.bucket == format_ts(minute // day * day)
    assert row.bucket.endswith("T00:00:00.000Z")
    assert parse_ts(row_90.bucket) == minute - minute % (90 * MINUTE)


@pytest.mark.unit
def test_since_keeps_the_minutes_from_now_minus_since() -> None:
    records = [share(NOW_MS - 60 * MINUTE, true=1), share(NOW_MS - 61 * MINUTE, false=1)]

    series = stats_series(
        records, "chat", "thumbs_up", every=timedelta(minutes=1), since=timedelta(hours=1), now=NOW
    )

    assert [(row.bucket, row.true, row.false) for row in series.rows] == [
        (format_ts(NOW_MS - HOUR), 1, 0)
    ]


@pytest.mark.unit
def test_versions_are_ordered_as_strings_null_first() -> None:
    records = [share(NOW_MS, version=v, true=1) for v in ["v2", 10, None, "2", 2, "10"]]

    rows = stats_series(records, "chat", "thumbs_up", by_version=True).rows

    assert [row.version for row in rows] == [None, 10, "10", 2, "2", "v2"]


@pytest.mark.unit
def test_other_applications_and_fields_are_left_out() -> None:
    records = [
        share(NOW_MS, application="loans", true=1),
        share(NOW_MS, field="rating", numbers=1, total=4),
    ]

    assert stats_series(records, "chat", "thumbs_up").rows == ()


@pytest.mark.unit
def test_a_bucket_must_be_whole_milliseconds_and_now_aware() -> None:
    with pytest.raises(ValueError, match="every"):
        stats_series([], "chat", "thumbs_up", every=timedelta(microseconds=1500))
    naive = datetime(2026, 1, 1)  # noqa: DTZ001 (the point of the test)
    with pytest.raises(ValueError, match="naive"):
        stats_series([], "chat", "thumbs_up", since=timedelta(days=1), now=naive)


# --- formats and chart -------------------------------------------------------------------


def sample(by_version: bool) -> StatsSeries:
    records = [
        share(NOW_MS, 0, version=None, true=3, false=1),
        share(NOW_MS, 1, version="v2", true=2, numbers=3, total=10),
        share(NOW_MS + HOUR, 2, version=7, others=5),
        share(NOW_MS + 2 * HOUR, 3, version="v2", false=6, numbers=1, total=-0.25),
    ]
    return stats_series(
        records, "chat", "thumbs_up", since=timedelta(days=7), by_version=by_version, now=NOW
    )


@pytest.mark.unit
@pytest.mark.parametrize("by_version", [False, True])
def test_json_parses_back_to_the_series(by_version: bool) -> None:
    series = sample(by_version)

    document = orjson.loads(format_series(series, "json"))

    assert document == {
        "application": "chat",
        "field": "thumbs_up",
        "every": "1h",
        "since": "7d",
        "by_version": by_version,
        "rows": [row.as_dict(by_version) for row in series.rows],
    }
    assert ("version" in document["rows"][0]) is by_version


@pytest.mark.unit
@pytest.mark.parametrize("by_version", [False, True])
def test_csv_parses_back_to_the_same_numbers(by_version: bool) -> None:
    series = sample(by_version)

    parsed = list(csv.DictReader(io.StringIO(format_series(series, "csv"))))

    assert len(parsed) == len(series.rows)
    for line, row in zip(parsed, series.rows, strict=True):
        expected = row.as_dict(by_version)
        assert list(line) == list(expected)
        for name, value in expected.items():
            if value is None:
                assert line[name] == ""
            elif isinstance(value, float):
                assert float(line[name]) == value
            else:
                assert line[name] == str(value)


@pytest.mark.unit
@pytest.mark.parametrize("by_version", [False, True])
def test_the_table_shows_the_same_numbers_in_aligned_columns(by_version: bool) -> None:
    series = sample(by_version)

    lines = format_series(series, "table").splitlines()

    header = lines[0].split()
    assert header == list(series.rows[0].as_dict(by_version))
    # Bucket and version start where their header starts; numbers end where theirs ends.
    spans = [[m.span() for m in re.finditer(r"\S+", line)] for line in lines]
    for column, name in enumerate(header):
        edge = 0 if name in ("bucket", "version") else 1
        assert len({span[column][edge] for span in spans}) == 1, name
    for line, row in zip(lines[1:], series.rows, strict=True):
        cells = dict(zip(header, line.split(), strict=True))
        expected = row.as_dict(by_version)
        assert cells["bucket"] == row.bucket
        for name in SUMMED:
            assert int(cells[name]) == expected[name]
        pct, mean = expected["positive_pct"], expected["mean"]
        assert cells["positive_pct"] == ("-" if pct is None else f"{pct:.1f}%")
        assert cells["mean"] == ("-" if mean is None else f"{mean:.3f}")
        if by_version:
            assert cells["version"] == ("-" if row.version is None else str(row.version))


@pytest.mark.unit
def test_an_empty_series_prints_the_header_only() -> None:
    empty = stats_series([], "chat", "thumbs_up")

    assert format_table(empty).split() == [
        "bucket",
        "count",
        "true",
        "false",
        "positive_pct",
        "numbers",
        "mean",
    ]
    assert format_csv(empty) == "bucket,count,true,false,positive_pct,numbers,mean\n"
    assert orjson.loads(format_json(empty))["rows"] == []


@pytest.mark.unit
@pytest.mark.parametrize(
    "series",
    [
        sample(by_version=False),
        sample(by_version=True),
        # No booleans: the chart draws the mean.
        stats_series([share(NOW_MS, numbers=2, total=9)], "chat", "thumbs_up"),
        stats_series([], "chat", "thumbs_up"),
    ],
    ids=["one-line", "by-version", "mean", "empty"],
)
def test_the_chart_is_a_png(series: StatsSeries) -> None:
    png = plot_png(series)

    assert png.startswith(PNG_SIGNATURE)
    assert len(png) > 5000


# --- the command -------------------------------------------------------------------------


def streams_stats(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "stats", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.unit
@pytest.mark.parametrize(("option", "value"), [("--every", "3 weeks"), ("--since", "0")])
def test_a_bad_duration_exits_2_naming_the_option(option: str, value: str) -> None:
    result = streams_stats("--application", "chat", "--field", "f", option, value, env={})

    assert result.returncode == 2
    assert f"argument {option}: {value!r}" in result.stderr


@pytest.mark.unit
def test_no_broker_is_a_clear_error_after_the_timeout() -> None:
    result = streams_stats(
        "--application",
        "chat",
        "--field",
        "f",
        "--timeout",
        "2",
        env={"STREAMS_BOOTSTRAP_SERVERS": "127.0.0.1:9"},  # discard: nothing listens
    )

    assert result.returncode == 1
    assert result.stderr.startswith(
        "streams: no Kafka broker answers at STREAMS_BOOTSTRAP_SERVERS=127.0.0.1:9"
    )
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.integration
def test_streams_stats_reads_the_latest_shares_from_the_broker(
    env: dict[str, str], producer: RawProducer, bootstrap: str, tmp_path: Path
) -> None:
    """Invariant: the printed series is the series of the topic's compacted content."""
    stats_settings = Settings.from_env(env)
    topic = stats_settings.topic(FEEDBACK_STATS)
    create_topics(
        stats_settings, [spec for spec in topic_specs(stats_settings) if spec.name == topic]
    )
    now_ms = int(datetime.now(UTC).timestamp() * 1000) // MINUTE * MINUTE
    # Two hours ago and earlier: far from `--since 7d`'s edge, and one record beyond it.
    written = [
        share(now_ms - 2 * HOUR, 0, version="v1", true=3, false=1),
        share(now_ms - 2 * HOUR, 1, version="v1", true=2, false=2),
        share(now_ms - 2 * HOUR + 5 * MINUTE, 2, version=2, true=1, numbers=1, total=4),
        share(now_ms - 3 * HOUR, 3, version=None, false=4, others=1),
        share(now_ms - 3 * HOUR, 0, version="v1", true=9),  # deleted below
        share(now_ms - 8 * 24 * HOUR, 1, version="v1", true=50),  # before --since
        share(now_ms - 2 * HOUR, 2, application="loans", true=7),  # another application
        share(now_ms - 2 * HOUR, 3, field="rating", numbers=2, total=9),  # another field
    ]
    compacted: dict[bytes, dict[str, Any] | None] = {}
    for record in written:
        producer.send(FEEDBACK_STATS, record, key=key_of(record), partition=record["partition"] % 4)
        compacted[key_of(record)] = record
    producer.send(FEEDBACK_STATS, b"{unreadable", key=b"junk-1", partition=1)
    producer.flush()
    # A newer value and a tombstone, in a transaction: partitions 0 and 2 then end in
    # a commit marker, an offset that holds no record.
    newer = {**written[0], "true": 5, "false": 0, "count": 5}
    deleted = written[4]
    transactional = Producer(
        {"bootstrap.servers": bootstrap, "transactional.id": f"test-{uuid.uuid4()}"}
    )
    transactional.init_transactions(30)
    transactional.begin_transaction()
    transactional.produce(topic, key=key_of(newer), value=orjson.dumps(newer), partition=0)
    transactional.produce(topic, key=key_of(deleted), value=None, partition=0)
    transactional.produce(topic, key=b"junk-2", value=b"{unreadable too", partition=2)
    transactional.commit_transaction(30)
    compacted[key_of(newer)] = newer
    compacted[key_of(deleted)] = None
    current = [record for record in compacted.values() if record is not None]
    cutoff = now_ms - 7 * 24 * HOUR

    for by_version in (False, True):
        flag = ["--by-version"] if by_version else []
        result = streams_stats(
            *("--application", "chat", "--field", "thumbs_up", "--since", "7d", "--format", "json"),
            *flag,
            env=env,
        )
        assert result.returncode == 0, result.stderr
        assert "skipped 2 unreadable record(s)" in result.stderr  # junk-1 and junk-2
        rows = orjson.loads(result.stdout)["rows"]
        expected = reference(current, timedelta(hours=1), cutoff, by_version)
        assert len(expected) >= (3 if by_version else 2)
        assert [(parse_ts(row["bucket"]), row.get("version")) for row in rows] == sorted(
            expected, key=lambda g: (g[0], g[1] is not None, str(g[1]))
        )
        for row in rows:
            count, true, false, numbers, total = expected[
                parse_ts(row["bucket"]), row.get("version")
            ]
            assert (row["count"], row["true"], row["false"], row["numbers"]) == (
                count,
                true,
                false,
                numbers,
            )
            assert row["positive_pct"] == (100 * true / (true + false) if true + false else None)
            assert row["mean"] == (total / numbers if numbers else None)

    chart = tmp_path / "chart.png"
    plotted = streams_stats(
        *("--application", "chat", "--field", "thumbs_up", "--by-version", "--plot", str(chart)),
        env=env,
    )
    assert plotted.returncode == 0, plotted.stderr
    assert f"wrote the chart to {chart}" in plotted.stderr
    assert plotted.stdout.splitlines()[0].split()[:2] == ["bucket", "version"]
    assert chart.read_bytes().startswith(PNG_SIGNATURE)
    assert chart.stat().st_size > 5000

    # Nothing about that application: said, with what exists (issue #12), not an empty table.
    nothing = streams_stats("--application", "nobody", "--field", "thumbs_up", env=env)
    assert nothing.returncode == 1, nothing.stderr
    assert nothing.stdout == ""
    assert "no feedback for application 'nobody'; applications: chat, loans" in nothing.stderr


@pytest.mark.unit
def test_the_stats_page_reads_the_options_of_the_command_as_parameters() -> None:
    query = StatsQuery.from_params(
        {
            "application": "chat",
            "field": "thumbs_up",
            "every": "1d",
            "since": "7d",
            "by_version": "1",
        }
    )
    assert query == StatsQuery("chat", "thumbs_up", timedelta(days=1), timedelta(days=7), True)
    assert StatsQuery.from_params({"application": "a", "field": "f"}) == StatsQuery("a", "f")
    assert (
        StatsQuery.from_params({"application": "a", "field": "f", "format": "csv"}).format == "csv"
    )


@pytest.mark.unit
@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"field": "f"}, "application"),
        ({"application": "a"}, "field"),
        ({"application": "a", "field": "f", "every": "soon"}, "every"),
        ({"application": "a", "field": "f", "since": "-1d"}, "since"),
        ({"application": "a", "field": "f", "format": "xml"}, "format"),
        ({"application": "a", "field": "f", "by_version": "maybe"}, "by_version"),
    ],
)
def test_a_bad_stats_parameter_is_named(params: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=f"^{named}: "):
        StatsQuery.from_params(params)
