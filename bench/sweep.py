"""What an expiry sweep costs: `python -m bench.sweep [--latency] [--quick]`.

Sweep cost (default). Fills one partition's `state` and `due` databases, opened with
the worker's own RocksDB options, with N predictions (about 1 KB each) as the agent
stores them, then sweeps groups of 0.1 %, 1 % and 10 % of them as they fall due, in
turn and `--repeats` times, at N = `--rows` (1,000,000) and N = `--small-rows`
(100,000). It prints, per stored size and fraction, the seconds per sweep and the
microseconds per expired key (medians), and the time of a sweep with nothing due
right after: from where the sweep ended, as the worker does, and from the first
index entry, as every 60th sweep does. Flat microseconds per key across fractions
and stored sizes is the claim: the sweep costs in proportion to what expires, not to
what is stored. Changelog records are counted, not produced: producing them is part
of the second figure.

Joins during a sweep (`--latency`). Runs `streams worker` against the broker in
STREAMS_BOOTSTRAP_SERVERS with `--bulk` predictions (25,000) that all expire at one
instant, while an open-loop producer sends `--rate` feedback records a second
(100) for other, live predictions. Latency is feedback sent to joined record read
(one host, one clock). It prints p50/p99/max for feedback sent while the worker
swept (from its `swept ... started_ms ... seconds` log line) and for feedback sent
while it did not (up to 20 s before the expiry, and after the sweep), and the ratio
of the two p99s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from streams.worker import join
from streams.worker.expiry import PartitionStore, SweepTotals, sweep_partition
from streams.worker.state import due_key, encode_row, row_key

SECOND = 1000
DAY = 86_400 * SECOND
T0 = 1_800_000_000_000  # the instant the first group falls due
FRACTIONS = (0.001, 0.01, 0.1)


def bench_prediction(i: int, key: str) -> dict[str, Any]:
    """A prediction of about 1 KB, as a loan model would log it."""
    return {
        "schema": "prediction/v1",
        "application": "bench",
        "join_key": key,
        "event_id": f"e-{key}",
        "version": "3",
        "inputs": {
            "applicant_id": f"A-{i:08d}",
            "amount": 1000 + i % 50_000,
            "income": 20_000.0 + (i * 37) % 180_000,
            "region": f"region-{i % 17}",
            "credit_history": [round(0.1 * ((i + k) % 10), 1) for k in range(24)],
            "notes": "customer asked for a faster decision; documents complete " * 10,
        },
        "outputs": {"approved": i % 4 != 0, "score": (i % 100) / 100},
        "tags": {"env": "bench"},
    }


def open_partition(path: Path) -> tuple[Any, Any]:
    """A partition's `state` and `due` databases, with the options the worker opens them with."""
    from streams.worker.tables import RocksOptions

    rocks = RocksOptions()
    return rocks.open(path / "state-0.db"), rocks.open(path / "due-0.db")


def fill(state: Any, due: Any, rows: int, groups: list[int]) -> None:
    """Store `rows` predictions; `groups[k]` of them expire at T0 + k s, the rest a day later."""
    import rocksdict

    expiry = [T0 + k * SECOND for k, size in enumerate(groups) for _ in range(size)]
    retention = 30 * DAY
    batch_state, batch_due = (
        rocksdict.WriteBatch(raw_mode=True),
        rocksdict.WriteBatch(raw_mode=True),
    )
    for i in range(rows):
        key = uuid.uuid4().hex
        exp = expiry[i] if i < len(expiry) else T0 + DAY
        now = exp - retention
        row = join.on_prediction(None, bench_prediction(i, key), now, f"p0:{i}", now, retention)
        assert row.row is not None
        rk = row_key("bench", key)
        batch_state.put(rk, encode_row(row.row))
        batch_due.put(due_key(exp, rk), b"")
        if len(batch_state) >= 5000 or i == rows - 1:
            state.write(batch_state)
            due.write(batch_due)
            batch_state, batch_due = (
                rocksdict.WriteBatch(raw_mode=True),
                rocksdict.WriteBatch(raw_mode=True),
            )
    for db in (state, due):
        db.flush()
        while db.property_int_value("rocksdb.num-running-compactions") or db.property_int_value(
            "rocksdb.compaction-pending"
        ):
            time.sleep(0.2)


@dataclass
class SweepFigure:
    """One timed sweep."""

    stored: int
    fraction: float
    expired: int
    seconds: float
    empty_after_seconds: float  # nothing due, from where the sweep ended (the worker's way)
    full_after_seconds: float  # nothing due, from the first index entry (every 60th sweep)


def sweep_costs(rows: int, repeats: int, workdir: Path) -> list[SweepFigure]:
    """Fill a partition of `rows` and time sweeps of each fraction, `repeats` times, interleaved."""
    order = [f for _ in range(repeats) for f in FRACTIONS]
    groups = [max(1, round(rows * f)) for f in order]
    path = Path(tempfile.mkdtemp(prefix=f"sweep-{rows}-", dir=workdir))
    state, due = open_partition(path)
    started = time.perf_counter()
    fill(state, due, rows, groups)
    print(f"  filled {rows:,} rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    changelog = [0]

    def count(key: bytes, value: bytes | None) -> None:
        changelog[0] += 1

    store = PartitionStore(state, due, count, count)
    figures = []
    empty = _timed_sweep(store, T0 - SECOND, None)[1]
    print(f"  nothing due before any sweep: {empty * 1e3:.2f} ms", file=sys.stderr)
    floor = None
    for k, (fraction, size) in enumerate(zip(order, groups, strict=True)):
        now = T0 + k * SECOND
        totals, seconds = _timed_sweep(store, now, floor)
        assert totals.expired == size, (totals.expired, size)
        floor = totals.floor
        after = _timed_sweep(store, now, floor)[1]
        full = _timed_sweep(store, now, None)[1]
        figures.append(SweepFigure(rows, fraction, size, seconds, after, full))
    for db in (state, due):
        db.close()
    return figures


def _timed_sweep(store: PartitionStore, now: int, start: bytes | None) -> tuple[SweepTotals, float]:
    started = time.perf_counter()
    totals = sweep_partition(store, now, DAY, start=start)
    return totals, time.perf_counter() - started


def print_costs(figures: list[SweepFigure]) -> list[dict[str, Any]]:
    """Print the medians per (stored, fraction); return them as dicts."""
    table = []
    print(
        f"{'stored':>10} {'due':>6} {'expired':>8} {'s/sweep':>9} {'us/key':>8} "
        f"{'empty ms':>9} {'full ms':>8}"
    )
    for stored, fraction in sorted({(f.stored, f.fraction) for f in figures}):
        runs = [f for f in figures if (f.stored, f.fraction) == (stored, fraction)]
        seconds = statistics.median(f.seconds for f in runs)
        expired = runs[0].expired
        line = {
            "stored": stored,
            "fraction": fraction,
            "expired": expired,
            "seconds_per_sweep": round(seconds, 4),
            "us_per_expired_key": round(seconds / expired * 1e6, 1),
            "empty_sweep_after_ms": round(
                statistics.median(f.empty_after_seconds for f in runs) * 1e3, 2
            ),
            "full_scan_after_ms": round(
                statistics.median(f.full_after_seconds for f in runs) * 1e3, 2
            ),
            "runs": len(runs),
        }
        table.append(line)
        print(
            f"{stored:>10,} {fraction:>6.1%} {expired:>8,} {seconds:>9.3f} "
            f"{line['us_per_expired_key']:>8.1f} {line['empty_sweep_after_ms']:>9.2f} "
            f"{line['full_scan_after_ms']:>8.2f}"
        )
    return table


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _http_ok(port: int, path: str) -> bytes | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            body: bytes = response.read()
            return body if response.status == 200 else None
    except OSError:
        return None


def _metric(port: int, name: str, label: str = "") -> float:
    body = _http_ok(port, "/metrics") or b""
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith((name + "{", name + " ")) and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


SWEPT = re.compile(r"swept rows=(\d+) started_ms=(\d+) seconds=([\d.]+)")


def join_latency(bulk: int, rate: float, retention_s: int, after_s: int) -> dict[str, Any]:
    """Run a worker through a sweep of `bulk` predictions under open-loop feedback; return p99s."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    from streams.records import format_ts

    bootstrap = os.environ.get("STREAMS_BOOTSTRAP_SERVERS", "localhost:9092")
    run_id = uuid.uuid4().hex[:8]
    prefix, app_id = f"sweepbench-{run_id}.", f"sweepbench-{run_id}"
    workdir = Path(tempfile.mkdtemp(prefix="sweep-latency-"))
    port = _free_port()
    env = {
        **os.environ,
        "STREAMS_BOOTSTRAP_SERVERS": bootstrap,
        "STREAMS_TOPIC_PREFIX": prefix,
        "STREAMS_APP_ID": app_id,
        "STREAMS_PARTITIONS": "4",
        "STREAMS_DATA_DIR": str(workdir / "data"),
        "STREAMS_WEB_PORT": str(port),
        "STREAMS_RETENTION": "1h",
        "STREAMS_RETENTION_BY_APPLICATION": f"bulk={retention_s}s",
        "PYTHONUNBUFFERED": "1",
    }
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        deadline = time.monotonic() + 120
        while _http_ok(port, "/health") is None:
            if worker.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker did not start; see {log_path}")
            time.sleep(0.3)
        producer = Producer(
            {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5}
        )

        def send(topic: str, record: dict[str, Any]) -> None:
            while True:
                try:
                    producer.produce(prefix + topic, orjson.dumps(record), record["join_key"])
                    return
                except BufferError:
                    producer.poll(0.05)

        # Feedback cycles over these: a few feedback records per row, all rows alike.
        live = min(int(rate * (retention_s + after_s)), 3000)
        bulk_ms = int(time.time() * 1000)
        for i in range(live + bulk):
            record = bench_prediction(i, f"live-{i}" if i < live else f"bulk-{i}")
            record.update(application="live" if i < live else "bulk", event_id=str(uuid.uuid4()))
            if i >= live:
                record["timestamp"] = format_ts(bulk_ms)
            send("predictions", record)
        producer.flush(60)
        expiry_s = bulk_ms / 1000 + retention_s
        while _metric(port, "streams_outcomes_total", 'outcome="stored"') < live + bulk:
            if time.time() > expiry_s - 5:
                raise SystemExit("the worker stored too slowly: raise --retention")
            time.sleep(0.5)
        loaded = time.time()
        received: dict[str, float] = {}
        stop = threading.Event()

        def consume() -> None:
            consumer = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"sweepbench-reader-{run_id}",
                    "auto.offset.reset": "earliest",
                }
            )
            consumer.subscribe([prefix + "joined"])
            while not stop.is_set():
                message = consumer.poll(0.05)
                if message is not None and not message.error():
                    seen = time.time()
                    received[orjson.loads(message.value() or b"{}")["feedback_event_id"]] = seen
            consumer.close()

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        sent: dict[str, float] = {}
        start, i = time.time(), 0
        swept_at, checked = 0.0, 0.0  # when the worker had expired the whole bulk
        while True:
            at = start + i / rate
            if at > expiry_s and not swept_at and at - checked >= 1:
                checked = at
                if _metric(port, "streams_expired_total") >= bulk:
                    swept_at = at
            if (swept_at and at > swept_at + after_s) or at > expiry_s + 600:
                break
            time.sleep(max(0.0, at - time.time()))
            event_id = str(uuid.uuid4())
            sent_at = time.time()
            send(
                "feedback",
                {
                    "schema": "feedback/v1",
                    "application": "live",
                    "join_key": f"live-{i % live}",
                    "event_id": event_id,
                    "timestamp": format_ts(int(sent_at * 1000)),
                    "feedback": {"thumbs_up": i % 2 == 0},
                },
            )
            producer.poll(0)
            sent[event_id] = sent_at
            i += 1
        producer.flush(30)
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        reader.join(10)
    finally:
        worker.terminate()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
        names = [t for t in admin.list_topics(timeout=10).topics if t.startswith((prefix, app_id))]
        if names:
            admin.delete_topics(names, operation_timeout=30)
    sweeps = [
        (int(m[2]) / 1000, int(m[2]) / 1000 + float(m[3]), int(m[1]))
        for m in SWEPT.finditer(log_path.read_text(errors="replace"))
    ]
    shutil.rmtree(workdir, ignore_errors=True)
    busy = [(a, b) for a, b, rows in sweeps if rows >= bulk / 2]
    latency = {e: (received[e] - s) * 1000 for e, s in sent.items() if e in received}

    def during(t: float) -> bool:
        return any(a <= t <= b for a, b in busy)

    # Quiet: up to 20 s before the expiry and what follows the sweep, so that the load
    # others put on a shared machine weighs on both sides alike.
    last = max((b for _, b in busy), default=expiry_s)

    def quiet_time(t: float) -> bool:
        before = max(loaded + 5, expiry_s - 20) <= t < expiry_s
        return (before or t > last + 1) and not during(t)

    quiet = [ms for e, ms in latency.items() if quiet_time(sent[e])]
    swept = [ms for e, ms in latency.items() if during(sent[e])]
    summary: dict[str, Any] = {
        "bulk": bulk,
        "rate": rate,
        "sweep_seconds": [round(b - a, 3) for a, b in busy],
        "swept_rows": [rows for *_, rows in sweeps if rows >= bulk / 2],
        "missing_joins": len(sent) - len(latency),
    }
    for name, values in (("quiet", quiet), ("sweep", swept)):
        summary[name] = {
            "n": len(values),
            "p50_ms": round(_percentile(values, 0.5), 1),
            "p99_ms": round(_percentile(values, 0.99), 1),
            "max_ms": round(max(values, default=float("nan")), 1),
        }
    summary["p99_ratio"] = round(summary["sweep"]["p99_ms"] / summary["quiet"]["p99_ms"], 2)
    return summary


def main(argv: list[str] | None = None) -> None:
    """Print the sweep's cost per expired key and, with --latency, join latency during a sweep."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="stored predictions (large)")
    parser.add_argument(
        "--small-rows", type=int, default=100_000, help="stored predictions (small)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="sweeps per fraction")
    parser.add_argument("--latency", action="store_true", help="also run a worker through a sweep")
    parser.add_argument("--no-costs", action="store_true", help="skip the sweep-cost part")
    parser.add_argument("--bulk", type=int, default=25_000, help="predictions expiring at once")
    parser.add_argument("--rate", type=float, default=100.0, help="feedback records a second")
    parser.add_argument("--retention", type=int, default=90, help="seconds until the bulk expires")
    parser.add_argument("--after", type=int, default=15, help="seconds of feedback after the sweep")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the databases")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.small_rows, args.repeats = 20_000, 5_000, 1
        args.bulk, args.rate, args.retention, args.after = 2_000, 50.0, 25, 8
    report: dict[str, Any] = {"argv": sys.argv[1:] if argv is None else argv}
    if not args.no_costs:
        with tempfile.TemporaryDirectory(prefix="sweep-bench-", dir=args.workdir) as workdir:
            figures = []
            for rows in (args.small_rows, args.rows):
                print(f"sweep cost at {rows:,} stored ...", file=sys.stderr)
                figures += sweep_costs(rows, args.repeats, Path(workdir))
        report["costs"] = print_costs(figures)
    if args.latency:
        print("join latency during a sweep ...", file=sys.stderr)
        summary = join_latency(args.bulk, args.rate, args.retention, args.after)
        report["latency"] = summary
        for name in ("quiet", "sweep"):
            s = summary[name]
            print(
                f"{name:>6}: n={s['n']:>5} p50={s['p50_ms']:.1f} ms p99={s['p99_ms']:.1f} ms "
                f"max={s['max_ms']:.1f} ms"
            )
        print(
            f"p99 during sweep / without: {summary['p99_ratio']:.2f}x "
            f"(sweep of {summary['swept_rows']} rows took {summary['sweep_seconds']} s; "
            f"missing joins: {summary['missing_joins']})"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
