"""The benchmark's measurements of one contender: throughput (with restart) and latency.

Throughput: preload both topics, start the contender, read `joined` until every
expected record is there (or, for a peer that cannot join some, until its group has
committed all its input and nothing new comes). The rate is the distinct expected joined
records it emitted over the time from its first input read (`FirstRead`) to its last
joined record (its Kafka timestamp, stamped by the broker: `joined` is a LogAppendTime
topic here), the same for every contender. Completeness is those records over the
expected ones. CPU per 1,000 joins counts the contender's CPU from the first joined
record read to the last, so start-up is left out; peak RSS is read before it stops,
disk after (RocksDB has flushed by then).

Restart: with the contender stopped, log new feedback on stored predictions, start it
again on the same data directory, and time until the first of those joins is read.

Ceiling: preload the same workload and let `bench.ceiling` (the worker's
faust app with an agent that only counts) read it; its records per second, in joined
records at this workload's mix, are the most any worker on faust can reach here.

Latency: start the contender on fresh topics, wait for the warm-up joins, then send at a
fixed rate (open loop) and take, per joined record, read time minus the feedback's
`timestamp` (set by the SDK when it queued the record; one host, one clock).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import orjson

from bench.proc import (
    Contender,
    FirstRead,
    JoinedReader,
    cpu_seconds,
    disk_mib,
    input_drained,
    peak_rss_mib,
)
from bench.workload import OpenLoopProducer, preload, send_feedback_on
from streams.records import parse_ts
from streams.settings import Settings
from streams.topics import JOINED, TopicSpec, create_topics, topic_specs

log = logging.getLogger(__name__)

START_TIMEOUT = 180.0  # a contender's start, rebalance and recovery
STALL_TIMEOUT = 60.0  # no new joined record for this long: give up, report what was read
QUIET_S = 2.0  # all input committed and nothing new for this long: a contender is done
RESTART_PROBES = 50
MARK = '{"records"'  # how the ceiling's result line starts


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile (`share` in 0..1) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def create_bench_topics(settings: Settings) -> None:
    """The contract's topics, `joined` stamped by the broker (LogAppendTime).

    Every contender's last joined record is then timed by the same clock: Kafka Streams and
    Quix Streams give an output the timestamp of the input that caused it, not the time
    it was written.
    """
    joined = settings.topic(JOINED)
    stamped = {"message.timestamp.type": "LogAppendTime"}
    create_topics(
        settings,
        [
            TopicSpec(spec.name, spec.partitions, {**spec.config, **stamped})
            if spec.name == joined
            else spec
            for spec in topic_specs(settings)
        ],
    )


def throughput(contender: Contender, n: int, seed: int) -> dict[str, Any]:
    """Preload `n` predictions and their feedback, then time the contender draining them.

    Reads `joined` until every expected record is there, or, for a contender that misses
    some, until its group has committed every input and nothing new came for `QUIET_S`.
    """
    settings = contender.settings
    create_bench_topics(settings)
    plan = preload(settings, n, seed)
    log.info("preloaded contender=%s plan=%s", contender.name, plan.summary())
    reader = JoinedReader(settings, settings.topic(JOINED), from_start=True)
    seen: set[str] = set()
    records = 0
    stamps: list[int] = []
    cpu_first = joins_first = None
    first_join_s = math.nan
    started = last_new = last_check = time.monotonic()
    contender.start()
    first_read = FirstRead(contender)
    first_read.start()
    try:
        while not plan.expected_ids <= seen:
            contender.check_alive()
            batch = list(reader.poll(0.1))
            now = time.monotonic()
            if batch:
                if cpu_first is None:
                    cpu_first, joins_first = cpu_seconds(contender.pid), len(batch)
                    first_join_s = now - started
                records += len(batch)
                seen.update(str(joined.value["id"]) for joined in batch)
                stamps.extend(joined.kafka_ts for joined in batch)
                last_new = now
            if cpu_first is not None and now - last_new > QUIET_S and now - last_check > 1:
                last_check = now
                if input_drained(settings):
                    break
            limit = STALL_TIMEOUT if cpu_first is not None else START_TIMEOUT
            if now - last_new > limit:
                log.error("stalled contender=%s joined=%d", contender.name, len(seen))
                break
        drained_s = time.monotonic() - started
        cpu_last, peak = cpu_seconds(contender.pid), peak_rss_mib(contender.pid)
        # A moment more, to see any duplicate or unexpected record behind the last one.
        for _ in range(10):
            for joined in reader.poll(0.1):
                records += 1
                seen.add(str(joined.value["id"]))
    finally:
        first_read.stop()
        reader.close()
        contender.stop()
    first_read_ms = first_read.ms()
    span_s = (max(stamps) - first_read_ms) / 1000 if stamps else math.nan
    joins = len(seen & plan.expected_ids)
    after_first = joins - (joins_first or 0)
    return {
        "plan": plan.summary(),
        "joined": joins,
        "joined_records": records,
        "duplicates": records - len(seen),
        "unexpected": len(seen - plan.expected_ids),
        "complete": joins == plan.expected_joined,
        "completeness": joins / plan.expected_joined,
        "span_s": span_s,
        "output_span_s": (max(stamps) - min(stamps)) / 1000 if stamps else math.nan,
        "joined_per_s": joins / span_s if span_s > 0 else math.nan,
        "first_join_s": first_join_s,
        "first_read_to_first_join_s": (min(stamps) - first_read_ms) / 1000 if stamps else math.nan,
        "drained_s": drained_s,
        "cpu_s_per_1000": (
            (cpu_last - cpu_first) / after_first * 1000
            if cpu_first is not None and after_first > 0
            else math.nan
        ),
        "peak_rss_mib": peak,
        "state_disk_mib": disk_mib(settings.data_dir),
        **restart(contender, plan.known_keys[:RESTART_PROBES]),
    }


def ceiling(contender: Contender, n: int, seed: int) -> dict[str, Any]:
    """Preload `n` predictions and their feedback; time faust reading them with a no-op agent."""
    settings = contender.settings
    create_topics(settings)
    plan = preload(settings, n, seed)
    inputs = plan.predictions + plan.feedback
    contender.start()
    assert contender.process is not None
    try:
        status = contender.process.wait(START_TIMEOUT + STALL_TIMEOUT)
    finally:
        contender.stop()
    lines = contender.log_path.read_text(errors="replace").splitlines()
    # The line may follow faust's terminal control codes.
    found = [orjson.loads(line[line.index(MARK) :]) for line in lines if MARK in line]
    if status != 0 or not found:
        raise RuntimeError(f"ceiling exited with {status}:\n" + "\n".join(lines[-30:]))
    records_per_s = found[-1]["records"] / found[-1]["seconds"]
    return {
        "records": found[-1]["records"],
        "complete": found[-1]["records"] == inputs,
        "records_per_s": records_per_s,
        # The joined records a worker would emit at that rate if joining cost nothing.
        "joined_per_s": records_per_s * plan.expected_joined / inputs,
    }


def restart(contender: Contender, keys: list[str]) -> dict[str, Any]:
    """Seconds from starting the stopped contender on its data dir until it joins again."""
    settings = contender.settings
    expected = send_feedback_on(settings, keys)
    reader = JoinedReader(settings, settings.topic(JOINED))
    seen: set[str] = set()
    first = math.nan
    started = time.monotonic()
    contender.start()
    try:
        while not expected <= seen and time.monotonic() - started < START_TIMEOUT:
            contender.check_alive()
            for joined in reader.poll(0.1):
                if joined.value["id"] in expected:
                    seen.add(str(joined.value["id"]))
                    if math.isnan(first):
                        first = time.monotonic() - started
    finally:
        reader.close()
        contender.stop()
    return {"restart_s": first, "restart_joined": len(seen), "restart_expected": len(expected)}


def latency(contender: Contender, rate: float, seconds: float, seed: int) -> dict[str, Any]:
    """Send at `rate` feedback/s for `seconds`, open loop; latency of each joined record."""
    settings = contender.settings
    create_topics(settings)
    reader = JoinedReader(settings, settings.topic(JOINED), from_start=True)
    contender.start()
    try:
        warm = preload(settings, 20, seed)
        warm_seen: set[str] = set()
        deadline = time.monotonic() + START_TIMEOUT
        warm_last = last_check = time.monotonic()
        # Every warm-up join, or (a peer that drops feedback it reads before the prediction,
        # as Quix does while it restores the predictions' store at start) all input read.
        while not warm.expected_ids <= warm_seen:
            contender.check_alive()
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"{contender.name}: no warm-up in {START_TIMEOUT:.0f} s")
            fresh = {str(joined.value["id"]) for joined in reader.poll(0.1)} - warm_seen
            if fresh:
                warm_seen |= fresh
                warm_last = now
            elif now - warm_last > QUIET_S and now - last_check > 1:
                last_check = now
                if input_drained(settings):
                    break
        producer = OpenLoopProducer(settings, rate, seconds, seed=seed)
        cpu_start, started = cpu_seconds(contender.pid), time.monotonic()
        producer.start()
        # id: (sent, latency, processed): ms since the epoch, then ms from send to
        # readable and from send to the contender's `joined_at` (before its output).
        latencies: dict[str, tuple[int, float, float]] = {}
        last_new = time.monotonic()
        while producer.is_alive() or (
            len(latencies) < producer.expected_joined and time.monotonic() - last_new < 10
        ):
            contender.check_alive()
            for joined in reader.poll(0.05):
                key = str(joined.value["id"])
                if key in warm.expected_ids or key in latencies:
                    continue
                sent = parse_ts(str(joined.value["feedback_timestamp"]))
                processed = parse_ts(str(joined.value["joined_at"])) - sent
                latencies[key] = (sent, joined.read_ms - sent, processed)
                last_new = time.monotonic()
        cpu_used = cpu_seconds(contender.pid) - cpu_start
        elapsed = time.monotonic() - started
    finally:
        reader.close()
        contender.stop()
    producer.join()
    if producer.error is not None:
        raise producer.error
    values = [latency for _, latency, _ in latencies.values()]
    to_joined_at = [delay for _, _, delay in latencies.values()]
    return {
        "rate": rate,
        "sent_feedback": producer.sent_feedback,
        "expected_joined": producer.expected_joined,
        "joined": len(values),
        "complete": len(values) == producer.expected_joined,
        "p50_ms": percentile(values, 0.50),
        "p99_ms": percentile(values, 0.99),
        "max_ms": max(values) if values else math.nan,
        "processed_p50_ms": percentile(to_joined_at, 0.50),
        "processed_p99_ms": percentile(to_joined_at, 0.99),
        "cpu_share": cpu_used / elapsed,
        "windows": windows(list(latencies.values())),
    }


def windows(samples: list[tuple[int, float, float]], width_s: float = 2.0) -> list[list[float]]:
    """Latency over time, per `width_s` of send time.

    Rows are [start s, count, p50, p99, max, p99 from send to `joined_at`].
    """
    if not samples:
        return []
    origin = min(sent for sent, _, _ in samples)
    buckets: dict[int, list[tuple[float, float]]] = {}
    for sent, latency, processed in samples:
        buckets.setdefault(int((sent - origin) / 1000 / width_s), []).append((latency, processed))
    rows = []
    for i, bucket in sorted(buckets.items()):
        ends = [end for end, _ in bucket]
        starts = [start for _, start in bucket]
        rows.append(
            [
                i * width_s,
                len(bucket),
                percentile(ends, 0.5),
                percentile(ends, 0.99),
                max(ends),
                percentile(starts, 0.99),
            ]
        )
    return rows
