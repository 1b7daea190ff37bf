"""Feedback analysis: read `feedback-stats`, turn it into a series, print it, chart it.

Three steps; the last two are pure, for the worker's `GET /stats` page and the demo:

1. `read_feedback_stats()` reads the compacted topic from the beginning up to the end
   offsets taken at its start (`read_committed`, a throwaway group, nothing
   committed) and keeps the latest value per key as compaction would
   (`latest_stats()`): a later offset replaces an earlier one, a tombstone deletes
   its key, and an unreadable record is counted and passed over.
2. `stats_series()` keeps one application and field, and sums the input partitions'
   shares, the minutes of each bucket and, unless split by version, the versions.
3. `format_series()` writes it as a table, JSON or CSV; `streams.stats.chart` draws it.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from streams.errors import BrokerTimeout, ConfigError, RecordError, StreamsError
from streams.kafka_config import error_callback, librdkafka_config, list_topics
from streams.records import Record, format_ts, parse_ts, to_ms, validate
from streams.settings import Settings, format_duration, parse_duration
from streams.topics import FEEDBACK_STATS

log = logging.getLogger(__name__)

Version = str | int | None
FORMATS = ("table", "json", "csv")
PARAMETERS = ("application", "field", "every", "since", "by_version", "format")
COLUMNS = ("bucket", "version", "count", "true", "false", "positive_pct", "numbers", "mean")
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class LatestStats:
    """The current `stats/v1` records of the topic, and how many records could not be used."""

    records: list[Record]
    skipped: int


def decode_stats(value: bytes) -> Record | None:
    """One `feedback-stats` value as a valid `stats/v1` dict, or None when it is not one."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    try:
        validate("stats", record)
        parse_ts(record["minute"])  # the schema's pattern lets through 2026-02-30
    except (RecordError, ValueError):
        return None
    return record


def latest_stats(entries: Iterable[tuple[bytes | None, bytes | None]]) -> LatestStats:
    """Keep the last value per key of (key, value) pairs given in offset order.

    As compaction does: a later value replaces an earlier one, a null value (tombstone)
    deletes the key until a later value brings it back. A record without a key, or a
    surviving value that is not valid `stats/v1`, is skipped and counted.
    """
    latest: dict[bytes, bytes] = {}
    skipped = 0
    for key, value in entries:
        if key is None:
            skipped += 1
        elif value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    records: list[Record] = []
    # Decoded last: a bad value that a later one replaced never counted.
    for value in latest.values():
        record = decode_stats(value)
        if record is None:
            skipped += 1
        else:
            records.append(record)
    return LatestStats(records, skipped)


def read_feedback_stats(settings: Settings, timeout: float = 30.0) -> LatestStats:
    """Read all of `feedback-stats` up to its end offsets at the start; the latest value per key.

    Raises `BrokerTimeout` when the broker does not answer within `timeout` seconds
    (the topic's metadata, its end offsets, or that long with no record while some
    partition is not read to its end), and `StreamsError` when the topic is missing.
    """
    topic = settings.topic(FEEDBACK_STATS)
    consumer = Consumer(
        {
            **librdkafka_config(settings),
            "error_cb": error_callback(settings, log),
            "group.id": f"streams-stats-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            # End offsets can point past the last record (a transaction's commit marker,
            # a removed tombstone): the end-of-partition event says we got there anyway.
            "enable.partition.eof": True,
            "logger": log,
        }
    )
    try:
        ends = _end_offsets(consumer, topic, timeout, settings.bootstrap_servers)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        stats = latest_stats(_read_to_ends(consumer, topic, ends, timeout))
    finally:
        consumer.close()
    log.info("stats_read topic=%s records=%d skipped=%d", topic, len(stats.records), stats.skipped)
    return stats


def _end_offsets(
    consumer: Consumer, topic: str, timeout: float, servers: str
) -> dict[int, tuple[int, int]]:
    """(first offset, end offset) per partition of `topic`."""
    deadline = time.monotonic() + timeout
    try:
        metadata = list_topics(consumer, timeout, topic)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            if found is None or found.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                raise StreamsError(f"topic {topic} does not exist (check STREAMS_TOPIC_PREFIX)")
            raise StreamsError(f"topic {topic}: {found.error.str()}")
        ends: dict[int, tuple[int, int]] = {}
        for partition in sorted(found.partitions):
            wait = max(0.1, deadline - time.monotonic())
            offsets = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=wait, cached=False
            )
            if offsets is None:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT))
            ends[partition] = offsets
    except KafkaException as error:
        raise BrokerTimeout(
            f"the broker at {servers} did not answer about {topic} within {timeout} s: {error}"
        ) from None
    return ends


def _read_to_ends(
    consumer: Consumer, topic: str, ends: dict[int, tuple[int, int]], timeout: float
) -> Iterator[tuple[bytes | None, bytes | None]]:
    """(key, value) of every record before the end offsets, in offset order per partition."""
    unread = {partition for partition, (first, end) in ends.items() if end > first}
    progress = time.monotonic()
    while unread:
        # consume() waits for the whole batch or the timeout: keep the timeout short.
        messages = consumer.consume(1000, timeout=0.1)
        for message in messages:
            partition = message.partition()
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    unread.discard(partition)
                    progress = time.monotonic()
                elif error.fatal():
                    raise KafkaException(error)
                else:
                    log.warning("stats_read_error topic=%s error=%s", topic, error.str())
                continue
            progress = time.monotonic()
            offset = message.offset()
            end = ends[partition][1] if partition is not None else 0
            if partition not in unread or offset is None or offset >= end:
                continue  # written after we started: not part of this reading
            yield message.key(), message.value()
            if offset >= end - 1:
                unread.discard(partition)
        if unread and time.monotonic() - progress >= timeout:
            raise BrokerTimeout(
                f"no record from {topic} for {timeout} s; partition(s) "
                f"{sorted(unread)} not read to their end"
            )


@dataclass(frozen=True)
class StatsRow:
    """One bucket of the series (of one version, when split by version)."""

    bucket: str
    version: Version
    count: int
    true: int
    false: int
    numbers: int
    sum: float

    @property
    def positive_pct(self) -> float | None:
        """100 * true / (true + false); None when no value was a boolean."""
        answered = self.true + self.false
        return None if answered == 0 else 100 * self.true / answered

    @property
    def mean(self) -> float | None:
        """The mean of the numeric values; None when none was a number."""
        return None if self.numbers == 0 else self.sum / self.numbers

    def as_dict(self, by_version: bool) -> dict[str, Any]:
        """The row as printed: `version` only when the series is split by version."""
        row: dict[str, Any] = {"bucket": self.bucket}
        if by_version:
            row["version"] = self.version
        row.update(count=self.count, true=self.true, false=self.false)
        row.update(positive_pct=self.positive_pct, numbers=self.numbers, mean=self.mean)
        return row


@dataclass(frozen=True)
class StatsSeries:
    """One application's and field's aggregates per bucket, and the query that made them."""

    application: str
    field: str
    every: timedelta
    since: timedelta | None
    by_version: bool
    rows: tuple[StatsRow, ...]

    def as_dict(self) -> dict[str, Any]:
        """The series as one JSON-ready document (durations written as `1h`, `7d`)."""
        return {
            "application": self.application,
            "field": self.field,
            "every": format_duration(self.every),
            "since": None if self.since is None else format_duration(self.since),
            "by_version": self.by_version,
            "rows": [row.as_dict(self.by_version) for row in self.rows],
        }


def _version_order(version: Version) -> tuple[bool, str, str]:
    # Versions compare as strings, null first; 3 and "3" stay apart, the number first.
    return (version is not None, str(version), type(version).__name__)


def stats_series(
    records: Iterable[Mapping[str, Any]],
    application: str,
    field: str,
    *,
    every: timedelta = timedelta(hours=1),
    since: timedelta | None = None,
    by_version: bool = False,
    now: datetime | None = None,
) -> StatsSeries:
    """Sum valid `stats/v1` records (each one partition's share) into buckets of `every`.

    Buckets are aligned to the epoch in UTC, and `every` must be a whole number of
    milliseconds (else `ValueError`). `since` keeps the minutes starting at or after
    `now - since` (`now`: an aware datetime, default the current time); None keeps all.
    Rows come ordered by bucket, then version (as strings, null first).
    """
    every_ms, remainder = divmod(every, _MS)
    if every_ms < 1 or remainder:
        raise ValueError(f"every={every} must be a whole number of milliseconds, at least 1")
    cutoff = None
    if since is not None:
        cutoff = to_ms(now or datetime.now(UTC)) - since // _MS
    totals: dict[tuple[int, Version], list[int]] = {}
    sums: dict[tuple[int, Version], list[float]] = {}
    for record in records:
        if record["application"] != application or record["field"] != field:
            continue
        minute = parse_ts(record["minute"])
        if cutoff is not None and minute < cutoff:
            continue
        group = (minute - minute % every_ms, record["version"] if by_version else None)
        counts = totals.setdefault(group, [0, 0, 0, 0])
        for index, name in enumerate(("count", "true", "false", "numbers")):
            counts[index] += record[name]
        sums.setdefault(group, []).append(record["sum"])
    rows = []
    for bucket, version in sorted(totals, key=lambda group: (group[0], _version_order(group[1]))):
        count, true, false, numbers = totals[bucket, version]
        # fsum: the same total whatever order the partitions were read in.
        total = math.fsum(sums[bucket, version])
        rows.append(StatsRow(format_ts(bucket), version, count, true, false, numbers, total))
    return StatsSeries(application, field, every, since, by_version, tuple(rows))


def no_match(records: Iterable[Mapping[str, Any]], application: str, field: str) -> str | None:
    """Why no record is about `application` and `field`, listing what exists; None if some is."""
    fields: dict[str, set[str]] = {}
    for record in records:
        fields.setdefault(record["application"], set()).add(record["field"])
    if field in fields.get(application, ()):
        return None
    if application not in fields:
        known = ", ".join(sorted(fields)) or "none yet"
        return f"no feedback for application {application!r}; applications: {known}"
    known = ", ".join(sorted(fields[application]))
    return f"application {application!r} has no feedback field {field!r}; its fields: {known}"


def _columns(by_version: bool) -> list[str]:
    return [name for name in COLUMNS if by_version or name != "version"]


def format_table(series: StatsSeries) -> str:
    """Aligned columns under a header line; `87.5%`, and `-` where a value is None."""
    header = _columns(series.by_version)
    lines = [header]
    for row in series.rows:
        values = row.as_dict(series.by_version)
        pct, mean = values.pop("positive_pct"), values.pop("mean")
        text = {name: "-" if value is None else str(value) for name, value in values.items()}
        text["positive_pct"] = "-" if pct is None else f"{pct:.1f}%"
        text["mean"] = "-" if mean is None else f"{mean:.3f}"
        lines.append([text[name] for name in header])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for line in lines:
        # Bucket and version read left to right; numbers line up on the right.
        cells = [
            cell.ljust(width) if name in ("bucket", "version") else cell.rjust(width)
            for name, cell, width in zip(header, line, widths, strict=True)
        ]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def format_json(series: StatsSeries) -> str:
    """One JSON document: the query (`application`, `field`, `every`, ...) and its `rows`."""
    return orjson.dumps(series.as_dict()).decode() + "\n"


def format_csv(series: StatsSeries) -> str:
    """A header line, then one line per row; None is an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = _columns(series.by_version)
    writer.writerow(header)
    for row in series.rows:
        values = row.as_dict(series.by_version)
        writer.writerow(["" if values[name] is None else values[name] for name in header])
    return out.getvalue()


def format_series(series: StatsSeries, fmt: str) -> str:
    """The series as `table`, `json` or `csv` text."""
    formatters = {"table": format_table, "json": format_json, "csv": format_csv}
    if fmt not in formatters:
        raise ValueError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return formatters[fmt](series)


@dataclass(frozen=True)
class StatsQuery:
    """A `GET /stats` request: the arguments of `streams stats`, as query parameters."""

    application: str
    field: str
    every: timedelta = timedelta(hours=1)
    since: timedelta | None = None
    by_version: bool = False
    format: str = "json"

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> StatsQuery:
        """Parse `application`, `field`, `every`, `since`, `by_version`, `format`.

        Raises `ValueError` naming the parameter that is missing, bad or unknown.
        """
        unknown = sorted(set(params) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown parameter; use {', '.join(PARAMETERS)}")
        missing = [name for name in ("application", "field") if not params.get(name)]
        if missing:
            raise ValueError(f"{missing[0]}: required, e.g. ?application=chat&field=thumbs_up")
        durations: dict[str, timedelta | None] = {}
        for name in ("every", "since"):
            text = params.get(name)
            try:
                durations[name] = parse_duration(text) if text else None
            except ConfigError as error:
                raise ValueError(f"{name}: {error}") from None
        fmt = params.get("format", "json")
        if fmt not in FORMATS:
            raise ValueError(f"format: {fmt!r} is not one of {', '.join(FORMATS)}")
        flag = params.get("by_version", "false").lower()
        if flag not in ("1", "true", "yes", "0", "false", "no", ""):
            raise ValueError(f"by_version: {flag!r} is not true or false")
        return cls(
            params["application"],
            params["field"],
            durations["every"] or timedelta(hours=1),
            durations["since"],
            flag in ("1", "true", "yes"),
            fmt,
        )

    def series(self, records: Iterable[Mapping[str, Any]], now: datetime) -> StatsSeries:
        """The series this query asks for (`ValueError` names `every` when it is not usable)."""
        try:
            return stats_series(
                records,
                self.application,
                self.field,
                every=self.every,
                since=self.since,
                by_version=self.by_version,
                now=now,
            )
        except ValueError as error:
            raise ValueError(f"every: {error}") from None
