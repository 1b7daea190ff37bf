"""The worker's per-input cost without Kafka: `python -m bench.apply [--n N]`.

Builds N predictions of about 1 KB and N feedback records with the SDK's record builder
(as `make bench` logs them), then runs them through the worker's own per-input path,
`Processor.process` (decode, partition check, join rule, row and index writes, the
emitted records encoded), over the worker's tables (`streams.worker.tables`: overlays,
one RocksDB write batch per commit every 20,000 inputs, changelog records counted, not
produced). Prints inputs/s and joined/s, medians of `--repeats` runs, with a fresh data
directory each time. What Kafka and the batch loop add is `make bench`'s business.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from bench.sdk import sample_inputs
from bench.workload import APPLICATION, feedback_row, model_outputs
from streams.clock import SystemClock
from streams.sdk.records import build_batch, new_uuids
from streams.settings import Settings
from streams.worker.checkpoint import COMMIT_EVERY_RECORDS
from streams.worker.metrics import Metrics
from streams.worker.outbox import Outbox
from streams.worker.processing import Processor
from streams.worker.tables import Tables

KINDS = {"predictions": "predictions", "feedback": "feedback"}


class Input:
    """An input record as the worker's consumer hands it over (confluent-kafka's accessors)."""

    __slots__ = ("_key", "_offset", "_topic", "_value")

    def __init__(self, topic: str, key: bytes, value: bytes, offset: int) -> None:
        self._topic, self._key, self._value, self._offset = topic, key, value, offset

    def topic(self) -> str:
        """The topic."""
        return self._topic

    def key(self) -> bytes:
        """The key."""
        return self._key

    def value(self) -> bytes:
        """The value."""
        return self._value

    def partition(self) -> int:
        """The partition."""
        return 0

    def offset(self) -> int:
        """The offset."""
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        """No timestamp: the processor takes the time of processing."""
        return (1, 0)

    def error(self) -> None:
        """No error."""
        return None


class CountingOutbox:
    """Stands in for the producer: counts what would be sent."""

    def __init__(self) -> None:
        self.sent = 0
        self.changelogs: set[str] = set()
        self.delivered: dict[tuple[str, int], int] = {}

    def send(self, topic: str, key: bytes | None, value: bytes | None, *args: Any) -> None:
        """Count one record."""
        self.sent += 1
        self.delivered[(topic, 0)] = self.sent

    def send_many(self, topic: str, partition: int, records: list[Any]) -> None:
        """Count changelog records."""
        self.sent += len(records)
        self.delivered[(topic, partition)] = self.sent


def workload(n: int) -> list[Input]:
    """N predictions, then N feedback on them."""
    keys = new_uuids(n)
    inputs, outputs = sample_inputs(500), model_outputs(500)
    records: list[Input] = []
    for start in range(0, n, 500):
        chunk = keys[start : start + 500]
        batch = build_batch(
            APPLICATION,
            inputs=inputs[: len(chunk)],
            outputs=outputs[: len(chunk)],
            join_keys=chunk,
            version="gbm-3",
            now_ms=SystemClock().now_ms(),
            max_bytes=1_000_000,
        )
        for key, value in zip(batch.keys, batch.values, strict=True):
            records.append(Input("predictions", key, value, len(records)))
    for start in range(0, n, 500):
        chunk = keys[start : start + 500]
        batch = build_batch(
            APPLICATION,
            feedbacks=[feedback_row(start + i) for i in range(len(chunk))],
            join_keys=chunk,
            now_ms=SystemClock().now_ms(),
            max_bytes=1_000_000,
        )
        for key, value in zip(batch.keys, batch.values, strict=True):
            records.append(Input("feedback", key, value, len(records)))
    return records


def run_once(records: list[Input], workdir: Path) -> float:
    """Seconds to apply every record, commits (RocksDB write batches) included."""
    settings = replace(Settings.from_env({}), partitions=1, data_dir=workdir)
    outbox = CountingOutbox()
    tables = Tables(workdir, "bench", cast(Outbox, outbox))
    tables.open(0)
    processor = Processor(settings, SystemClock(), Metrics(), tables, KINDS)
    started = time.perf_counter()
    for i, record in enumerate(records, 1):
        processor.process(record)
        if i % 500 == 0:  # a batch
            tables.log_changes()
            processor.flush_metrics()
        if i % COMMIT_EVERY_RECORDS == 0:
            tables.log_changes()
            tables.persist()
    tables.log_changes()
    processor.flush_metrics()
    tables.persist()
    seconds = time.perf_counter() - started
    tables.close_all()
    return seconds


def measure(n: int, repeats: int = 1, where: Path | None = None) -> dict[str, float]:
    """Inputs/s and joined/s of `n` predictions and their feedback, medians of `repeats`."""
    records = workload(n)
    times, cpu = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-apply-", dir=where) as workdir:
            started = time.process_time()
            times.append(run_once(records, Path(workdir)))
            cpu.append(time.process_time() - started)
    seconds = statistics.median(times)
    return {
        "inputs": len(records),
        "inputs_per_s": len(records) / seconds,
        "joined_per_s": n / seconds,
        # Every prediction gets one feedback: n joins. CPU of this process (RocksDB's
        # background flushes included), opening and closing the databases included.
        "cpu_s_per_1000": statistics.median(cpu) / n * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    """Print the per-input rate of the worker's path without Kafka."""
    parser = argparse.ArgumentParser(prog="python -m bench.apply", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="predictions (and feedback)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    found = measure(args.n, args.repeats)
    print(
        f"per-input path, no Kafka: {found['inputs_per_s']:,.0f} inputs/s, "
        f"{found['joined_per_s']:,.0f} joined/s, {found['cpu_s_per_1000']:.3f} CPU s/1k joins "
        f"({found['inputs']:,} inputs, median of {args.repeats})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
